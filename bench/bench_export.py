"""Explain-graph cost vs a forward-only graph, and vs eager PyTorch forward + full backward.

For each architecture, in one run on the same inputs (batch 8, 224², T=1, ONNX Runtime and torch
both on `--threads` threads):
  explain / forward  = explain-graph time ÷ forward-only-graph time   (goal ≤ 1.10 CNNs, ≤ 1.30 ViT)
  eager / explain    = eager forward + full .backward() with hooks (how pytorch-grad-cam computes
                       Grad-CAM: parameters require grad, the backward runs through the whole network)
                       ÷ explain-graph time                              (goal ≥ 5)
Median of --repeats timed runs after one warm-up. Models have seeded random weights (timing does not
depend on the weights). Usage: python bench/bench_export.py [--archs resnet50,vgg16] [--threads 2]
(the segmentation models too: --archs lraspp_mobilenet_v3_large, their default predicted_region target)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from timing import median_seconds

from camserve.config import RuntimeConfig
from camserve.export import export_model
from camserve.export.architectures import ARCHITECTURES, build_torchvision
from camserve.runtime import OnnxGraphRunner


def eager_gradcam_inputs(
    model: torch.nn.Module, layer: str, images: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations and gradients the way pytorch-grad-cam gets them: hooks, full .backward()."""
    store = {}
    module = dict(model.named_modules())[layer]

    def save(_m, _i, out):
        store["a"] = out
        out.register_hook(lambda g: store.__setitem__("g", g))

    handle = module.register_forward_hook(save)
    try:
        model.zero_grad()
        out = model(images)
        # a segmentation model's dict: its "out" [N,C,H,W], scored as camserve's class scores
        logits = out["out"].mean(dim=(2, 3)) if isinstance(out, dict) else out
        best = logits.argmax(dim=1)
        logits.gather(1, best[:, None]).sum().backward()
    finally:
        handle.remove()
    return store["a"].detach(), store["g"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default="resnet50,vgg16,mobilenet_v3_large,vit_b_16")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    runtime = RuntimeConfig(device="cpu", intra_op_threads=args.threads, inter_op_threads=1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs.split(","):
            torch.manual_seed(0)
            defaults = ARCHITECTURES[arch]
            model = build_torchvision(arch, (3, args.size, args.size)).eval()
            model_dir = export_model(
                model,
                defaults.layer,
                (3, args.size, args.size),
                Path(tmp) / arch,
                name=arch,
                architecture=arch,
                mean=[0.0] * 3,
                std=[1.0] * 3,
                layout=defaults.layout,
                prefix_tokens=defaults.prefix_tokens,
                output=defaults.output,  # the segmentation models' "out"
                graphs=("explain", "forward"),
                verify=False,
            )
            runner = OnnxGraphRunner(model_dir, runtime)
            images = torch.randn(args.batch, 3, args.size, args.size)
            targets = torch.full((args.batch, 1), -1, dtype=torch.int64)
            t_explain = median_seconds(lambda: runner.explain(images, targets), args.repeats)
            t_forward = median_seconds(lambda: runner.forward(images), args.repeats)
            model.requires_grad_(True)
            t_eager = median_seconds(
                lambda: eager_gradcam_inputs(model, defaults.layer, images), args.repeats
            )
            rows.append((arch, t_forward, t_explain, t_eager))
            print(
                f"{arch:20s} forward {t_forward * 1e3:8.1f} ms  explain {t_explain * 1e3:8.1f} ms  "
                f"eager fwd+bwd {t_eager * 1e3:8.1f} ms",
                flush=True,
            )
    print()
    print(f"batch {args.batch}, {args.size}x{args.size}, {args.threads} threads, median of {args.repeats}")
    print(f"{'arch':20s} {'explain/forward':>16s} {'goal':>6s} {'eager/explain':>14s} {'goal':>6s}")
    for arch, t_forward, t_explain, t_eager in rows:
        goal = "≤1.30" if arch.startswith("vit") else "≤1.10"
        print(f"{arch:20s} {t_explain / t_forward:16.3f} {goal:>6s} {t_eager / t_explain:14.2f} {'≥5':>6s}")


if __name__ == "__main__":
    main()
