"""Measure the CAM methods on a model directory (default: the embedded default model) and print the
Markdown tables of docs/readme/methods.md:

    python scripts/measure_methods.py [--model DIR] [--images 64] [--repeats 3]

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
    explainer.explain(images[:2], methods=methods, options=options)  # warm-up (sessions, caches)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = explainer.explain(images, methods=methods, options=options)
        best = min(best, time.perf_counter() - start)
    return result, best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory (default: the embedded default model)")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)

    config = CamserveConfig.load()
    explainer = Explainer(args.model, config=config)
    dataset = make_localisation_dataset(args.images, seed=args.seed, split="test")
    pixels = (dataset.images * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1)
    images = explainer.preprocess(pixels)
    options = config.explain
    print(
        f"model {explainer.name!r}, {args.images} test images, device {config.runtime.device}, "
        f"torch threads {torch.get_num_threads()}, best of {args.repeats}\n"
    )

    print("| method | batch time (s) | ms / image | peak in box |")
    print("|---|---:|---:|---:|")
    for method in explainer.supported_methods:
        result, seconds = timed(explainer, images, [method], options, args.repeats)
        hits = peak_in_box(torch.from_numpy(result.maps[method][:, 0]), dataset.boxes)
        print(f"| {method} | {seconds:.3f} | {1000 * seconds / args.images:.1f} | {hits:.0%} |")

    _, alone = timed(explainer, images, ["gradcam"], options, args.repeats)
    _, together = timed(explainer, images, GRADIENT_METHODS, options, args.repeats)
    print(
        f"\nGrad-CAM alone: {alone:.3f} s; {', '.join(GRADIENT_METHODS)} in one call: {together:.3f} s "
        f"({together / alone:.2f}x)\n"
    )

    print("| score_top_n | batch time (s) | correlation with all channels | peak in box |")
    print("|---:|---:|---:|---:|")
    full = None
    channels = int(explainer.manifest.activation_shape[0])
    for top_n in (0, 32, 16, 8, 4):
        if top_n >= channels:
            continue
        sweep = dataclasses.replace(options, score_top_n=top_n)
        result, seconds = timed(explainer, images, ["scorecam"], sweep, args.repeats)
        maps = torch.from_numpy(result.maps["scorecam"][:, 0]).flatten(1)
        full = maps if full is None else full
        correlation = torch.stack(
            [torch.corrcoef(torch.stack([a, b]))[0, 1] for a, b in zip(maps, full, strict=True)]
        )
        hits = peak_in_box(maps.reshape(result.maps["scorecam"][:, 0].shape), dataset.boxes)
        label = f"{top_n} of {channels}" if top_n else f"all {channels}"
        print(f"| {label} | {seconds:.3f} | {float(correlation.nanmean()):.3f} | {hits:.0%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
