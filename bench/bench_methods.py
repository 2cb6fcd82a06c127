"""camserve's CAM methods next to pytorch-grad-cam's, measured side by side in one run.

ResNet-50 (seeded random weights; timing does not depend on the weights), layer4, 224², T=1 (the
best class), `--threads` threads for both ONNX Runtime and torch. For each method: images/s of
camserve (explain graph + CAM maths + upsampling, `Explainer.explain`) and of pytorch-grad-cam's
same method (eager forward + full backward with hooks), and the ratio. Goals: Grad-CAM ≥ 5×,
Score-CAM ≥ 3×, Ablation-CAM ≥ 10×, all four gradient methods together ≤ 1.15× Grad-CAM alone.

Score-CAM, Ablation-CAM, SS-CAM and IS-CAM cost K=2048 model runs per image (times `--samples` for
SS-CAM and IS-CAM, whose anchor is torchcam), so they are timed on `--expensive-batch` images
(default 1) on this 2-core machine; the others on `--batch` (default 16). `--methods all` times every
method that has an anchor.
Needs the benchmark-only extra: pip install -e '.[anchors]'.
Usage: python bench/bench_methods.py [--batch 16] [--threads 2] [--repeats 3] [--arch resnet50]
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from timing import median_seconds

from camserve.config import CamserveConfig, ExplainOptions
from camserve.explainer import Explainer
from camserve.export import export_model
from camserve.export.architectures import build_torchvision

EXPENSIVE = ("scorecam", "ablationcam", "sscam", "iscam")
SEEDS = "gradcam,gradcam++,xgradcam,layercam,ablationcam,scorecam"


def anchor(
    method: str, model: torch.nn.Module, layer: str, size: int, samples: int
) -> Callable[[torch.Tensor], object]:
    """The anchor's ``method`` as a function of the images (explaining each image's best class)."""
    if method in ("sscam", "iscam"):
        from torchcam.methods import ISCAM, SSCAM

        extra = {"std": 2.0} if method == "sscam" else {}
        extractor = {"sscam": SSCAM, "iscam": ISCAM}[method]

        def run_torchcam(images: torch.Tensor) -> object:
            with extractor(
                model, layer, input_shape=(3, size, size), batch_size=64, num_samples=samples, **extra
            ) as cam:
                scores = model(images)
                return cam(class_idx=scores.argmax(dim=1).tolist(), scores=scores)

        return run_torchcam
    import pytorch_grad_cam as gc

    classes = {
        "gradcam": gc.GradCAM,
        "gradcam++": gc.GradCAMPlusPlus,
        "xgradcam": gc.XGradCAM,
        "layercam": gc.LayerCAM,
        "ablationcam": gc.AblationCAM,
        "scorecam": gc.ScoreCAM,
        "eigengradcam": gc.EigenGradCAM,
        "gradcamelementwise": gc.GradCAMElementWise,
        "kpcacam": gc.KPCA_CAM,
        "fem": gc.FEM,
        "shapleycam": gc.ShapleyCAM,
        "finercam": gc.FinerCAM,
        "refinecam": gc.RefineCAM,
        "fullgrad": gc.FullGrad,
        "segeigencam": gc.SegEigenCAM,
    }
    cam = classes[method](model=model, target_layers=[model.get_submodule(layer)])
    if method in ("ablationcam", "scorecam"):
        cam.batch_size = 64
    return lambda images: cam(images, None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--expensive-batch", type=int, default=1)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--arch", default="resnet50", help="a torchvision ResNet (its layer4 is explained)")
    parser.add_argument(
        "--samples", type=int, default=4, help="SS-CAM / IS-CAM samples per channel, both sides"
    )
    parser.add_argument("--methods", default=SEEDS)
    args = parser.parse_args()
    methods = (
        SEEDS.split(",")
        + ["eigengradcam", "gradcamelementwise", "kpcacam", "fem", "shapleycam", "finercam"]
        + ["refinecam", "sscam", "iscam", "fullgrad", "segeigencam"]
        if args.methods == "all"
        else args.methods.split(",")
    )
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_torchvision(args.arch, (3, args.size, args.size)).eval()
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
            Path(tmp) / args.arch,
            name=args.arch,
            architecture=args.arch,
            mean=[0.0] * 3,
            std=[1.0] * 3,
            graphs=("explain", "forward", "head", "fullgradient"),
            verify=False,
        )
        explainer = Explainer(model_dir, config)
        options = ExplainOptions(smooth_n=args.samples, smooth_sigma=2.0)  # torchcam's SS-CAM sigma
        for method in methods:
            n = args.expensive_batch if method in EXPENSIVE else args.batch
            images = images_all[:n]
            ours = median_seconds(
                lambda: explainer.explain(images, methods=[method], targets=[[-1]], options=options),
                args.repeats,
            )
            run_anchor = anchor(method, model, "layer4", args.size, args.samples)
            ref = median_seconds(lambda: run_anchor(images), args.repeats)
            rows.append((method, n, n / ours, n / ref))
            print(
                f"{method:18s} n={n:3d}  camserve {n / ours:8.2f} img/s  anchor {n / ref:8.2f} img/s",
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
    print(
        f"{args.arch} layer4, {args.size}², {args.threads} threads, median of {args.repeats}; "
        f"SS-CAM / IS-CAM: {args.samples} samples per channel (anchor: torchcam; others: pytorch-grad-cam)"
    )
    print(f"{'method':18s} {'images':>6s} {'camserve img/s':>15s} {'anchor img/s':>15s} {'ratio':>7s}")
    for method, n, ours, ref in rows:
        print(f"{method:18s} {n:6d} {ours:15.2f} {ref:15.2f} {ours / ref:7.2f}")
    print(
        f"all four gradient methods / Grad-CAM alone (batch {args.batch}): {t_four / t_one:.3f} (goal ≤ 1.15)"
    )


if __name__ == "__main__":
    main()
