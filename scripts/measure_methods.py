"""Measure the CAM methods on a model directory (default: the embedded default model) and print the
Markdown tables of docs/methods.md:

    python scripts/measure_methods.py [--model DIR] [--images 64] [--repeats 3] [--threads 1]

1. each method's wall time for one batch and how often its map's peak lies inside a true box;
2. the five gradient methods in one call against Grad-CAM alone (the shared explain run);
3. Score-CAM's ``score_top_n``: time against fidelity to the all-channel map.
Images come from the default model's test split (``make_localisation_dataset(..., split="test")``).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from camserve.config import CamserveConfig
from camserve.default_model.data import make_localisation_dataset
from camserve.explainer import Explainer

GRADIENT_METHODS = ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam"]


def peak_in_box(maps: torch.Tensor, boxes: list[torch.Tensor]) -> float:
    """Share of images whose map [N,H,W] peaks inside one of its boxes (x0, y0, x1, y1 half-open)."""
    hits = 0
    width = maps.shape[-1]
    for image_map, image_boxes in zip(maps, boxes, strict=True):
        index = int(image_map.flatten().argmax())
        y, x = divmod(index, width)
        hits += any(x0 <= x < x1 and y0 <= y < y1 for x0, y0, x1, y1 in image_boxes.tolist())
    return hits / len(boxes)


def timed(explainer: Explainer, images: torch.Tensor, methods: list[str], options, repeats: int):
    """The result and the best (wall seconds, CPU seconds of all threads) of ``repeats`` calls. CPU
    time is what the work costs; wall time also counts waiting for cores other jobs hold."""
    explainer.explain(images[:2], methods=methods, options=options)  # warm-up (sessions, caches)
    wall, cpu = float("inf"), float("inf")
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = explainer.explain(images, methods=methods, options=options)
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
    return result, wall, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory (default: the embedded default model)")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch and ONNX Runtime threads (1: steadiest on a shared machine)",
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    config = CamserveConfig.load(overrides={"runtime": {"intra_op_threads": args.threads}})
    explainer = Explainer(args.model, config=config)
    dataset = make_localisation_dataset(args.images, seed=args.seed, split="test")  # one digit each
    pixels = (dataset.images * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1)
    images = explainer.preprocess(pixels)
    options = config.explain
    print(
        f"model {explainer.name!r}, {args.images} test images, device {config.runtime.device}, "
        f"torch threads {torch.get_num_threads()}, best of {args.repeats}\n"
    )

    print("| method | wall (s) | CPU (s) | CPU ms / image | peak in box |")
    print("|---|---:|---:|---:|---:|")
    for method in explainer.supported_methods:
        result, wall, cpu = timed(explainer, images, [method], options, args.repeats)
        maps = torch.from_numpy(result.maps[method][:, 0])
        per_image, hits = 1000 * cpu / args.images, peak_in_box(maps, dataset.boxes)
        print(f"| {method} | {wall:.3f} | {cpu:.3f} | {per_image:.1f} | {hits:.0%} |")

    _, _, alone = timed(explainer, images, ["gradcam"], options, args.repeats)
    _, _, together = timed(explainer, images, GRADIENT_METHODS, options, args.repeats)
    print(
        f"\nCPU time: Grad-CAM alone {alone:.3f} s; {', '.join(GRADIENT_METHODS)} in one call "
        f"{together:.3f} s ({together / alone:.2f}x)\n"
    )

    channels = int(explainer.manifest.activation_shape[0])
    print("| score_top_n | wall (s) | CPU (s) | r with all channels | peak in box |")
    print("|---:|---:|---:|---:|---:|")
    full = None
    for top_n in (0, 32, 16, 8, 4):
        if top_n >= channels:
            continue
        sweep = dataclasses.replace(options, score_top_n=top_n)
        result, wall, cpu = timed(explainer, images, ["scorecam"], sweep, args.repeats)
        square = torch.from_numpy(result.maps["scorecam"][:, 0])
        maps = square.flatten(1)
        full = maps if full is None else full
        pairs = zip(maps, full, strict=True)
        r = float(torch.stack([torch.corrcoef(torch.stack([a, b]))[0, 1] for a, b in pairs]).nanmean())
        label = f"{top_n} of {channels}" if top_n else f"all {channels}"
        print(f"| {label} | {wall:.3f} | {cpu:.3f} | {r:.3f} | {peak_in_box(square, dataset.boxes):.0%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
