"""camserve's CAM methods next to pytorch-grad-cam's, measured side by side in one run.

ResNet-50 (seeded random weights; timing does not depend on the weights), layer4, 224², T=1 (the
best class), `--threads` threads for both ONNX Runtime and torch. For each method: images/s of
camserve (explain graph + CAM maths + upsampling, `Explainer.explain`) and of pytorch-grad-cam's
same method (eager forward + full backward with hooks), and the ratio. Goals: Grad-CAM ≥ 5×,
Score-CAM ≥ 3×, Ablation-CAM ≥ 10×, all four gradient methods together ≤ 1.15× Grad-CAM alone.

Score-CAM and Ablation-CAM cost K=2048 model runs per image, so they are timed on `--expensive-batch`
images (default 1) on this 2-core machine; the others on `--batch` (default 16).
Needs the benchmark-only extra: pip install -e '.[anchors]'.
Usage: python bench/bench_methods.py [--batch 16] [--threads 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from timing import median_seconds

from camserve.config import CamserveConfig
from camserve.explainer import Explainer
from camserve.export import export_model
from camserve.export.architectures import build_torchvision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--expensive-batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default="gradcam,gradcam++,xgradcam,layercam,ablationcam,scorecam")
    args = parser.parse_args()
    from pytorch_grad_cam import AblationCAM, GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM, XGradCAM

    theirs = {
        "gradcam": GradCAM,
        "gradcam++": GradCAMPlusPlus,
        "xgradcam": XGradCAM,
        "layercam": LayerCAM,
        "ablationcam": AblationCAM,
        "scorecam": ScoreCAM,
    }
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_torchvision("resnet50", (3, args.size, args.size)).eval()
    config = CamserveConfig().replace(
        runtime={
            "device": "cpu",
            "intra_op_threads": args.threads,
            "inter_op_threads": 1,
            "max_graph_batch": 64,
        }
    )
    images_all = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = export_model(
            model,
            "layer4",
            (3, args.size, args.size),
            Path(tmp) / "resnet50",
            name="resnet50",
            architecture="resnet50",
            mean=[0.0] * 3,
            std=[1.0] * 3,
            graphs=("explain", "forward", "head"),
            verify=False,
        )
        explainer = Explainer(model_dir, config)
        for method in args.methods.split(","):
            n = args.expensive_batch if method in ("scorecam", "ablationcam") else args.batch
            images = images_all[:n]
            ours = median_seconds(
                lambda: explainer.explain(images, methods=[method], targets=[[-1]]), args.repeats
            )
            cam = theirs[method](model=model, target_layers=[model.layer4])
            if method == "ablationcam":
                cam.batch_size = 64
            if method == "scorecam":
                cam.batch_size = 64
            ref = median_seconds(lambda: cam(input_tensor=images, targets=None), args.repeats)
            rows.append((method, n, n / ours, n / ref))
            print(
                f"{method:12s} n={n:3d}  camserve {n / ours:8.2f} img/s  "
                f"pytorch-grad-cam {n / ref:8.2f} img/s",
                flush=True,
            )
        gradient = ["gradcam", "gradcam++", "xgradcam", "layercam"]
        images = images_all
        t_one = median_seconds(
            lambda: explainer.explain(images, methods=["gradcam"], targets=[[-1]]), args.repeats
        )
        t_four = median_seconds(
            lambda: explainer.explain(images, methods=gradient, targets=[[-1]]), args.repeats
        )
    print()
    print(f"resnet50 layer4, {args.size}², {args.threads} threads, median of {args.repeats}")
    print(f"{'method':12s} {'images':>6s} {'camserve img/s':>15s} {'grad-cam img/s':>15s} {'ratio':>7s}")
    for method, n, ours, ref in rows:
        print(f"{method:12s} {n:6d} {ours:15.2f} {ref:15.2f} {ours / ref:7.2f}")
    print(
        f"all four gradient methods / Grad-CAM alone (batch {args.batch}): {t_four / t_one:.3f} (goal ≤ 1.15)"
    )


if __name__ == "__main__":
    main()
