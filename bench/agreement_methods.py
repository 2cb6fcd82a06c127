"""Agreement of every camserve method with its anchor (pytorch-grad-cam, torchcam) on the default model.

The default model (DigitCamNet, 64², layer ``features``: 64 channels at 16×16) explains the true
class of `--images` test images. For each anchor method: camserve's map (ONNX Runtime,
`Explainer.explain`) and the anchor's (eager PyTorch, the same weights), both min-max normalised,
compared as the largest absolute difference and Pearson's r over all pixels. pytorch-grad-cam's maps
are compared at 64×64, torchcam's at the layer's 16×16 (torchcam returns that size). SS-CAM draws
its own noise on each side, so only r is meaningful there. The tests (tests/methods) hold the
pass/fail bounds; this prints the figures docs/methods.md quotes.
Needs the benchmark-only extra: pip install -e '.[anchors]'.
Usage: python bench/agreement_methods.py [--images 8] [--samples 8]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from camserve.config import ExplainOptions
from camserve.default_model import load_default_model
from camserve.default_model.data import make_localisation_dataset
from camserve.default_model.net import TARGET_LAYER, normalize
from camserve.explainer import Explainer

GRAD_CAM = {  # pytorch-grad-cam class name -> camserve method
    "GradCAM": "gradcam",
    "HiResCAM": "hirescam",
    "GradCAMElementWise": "gradcamelementwise",
    "GradCAMPlusPlus": "gradcam++",
    "XGradCAM": "xgradcam",
    "AblationCAM": "ablationcam",
    "ScoreCAM": "scorecam",
    "EigenCAM": "eigencam",
    "EigenGradCAM": "eigengradcam",
    "KPCA_CAM": "kpcacam",
    "LayerCAM": "layercam",
    "FEM": "fem",
    "ShapleyCAM": "shapleycam",
    "FinerCAM": "finercam",
    "RefineCAM": "refinecam",
    "FullGrad": "fullgrad",  # ignores target_layers: every biased layer
}
TORCHCAM = {  # torchcam class name -> camserve method
    "CAM": "cam",
    "ScoreCAM": "scorecam",
    "SSCAM": "sscam",
    "ISCAM": "iscam",
    "GradCAM": "gradcam",
    "GradCAMpp": "gradcam++",
    "SmoothGradCAMpp": "smoothgradcam++",
    "XGradCAM": "xgradcam",
    "LayerCAM": "layercam",
}


def minmax(maps: np.ndarray) -> np.ndarray:
    maps = np.asarray(maps, dtype=np.float64)
    low = maps.min(axis=(-2, -1), keepdims=True)
    span = maps.max(axis=(-2, -1), keepdims=True) - low
    return np.where(span > 1e-7, (maps - low) / np.where(span > 1e-7, span, 1.0), 0.0)


def agreement(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, float]:
    ours, theirs = minmax(ours), minmax(theirs)
    return float(np.abs(ours - theirs).max()), float(np.corrcoef(ours.ravel(), theirs.ravel())[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--samples", type=int, default=8, help="SS-CAM / IS-CAM / Smooth Grad-CAM++ samples")
    parser.add_argument("--methods", default="", help="comma-separated camserve names (default: all)")
    args = parser.parse_args()
    import pytorch_grad_cam as gc
    import torchcam.methods as tc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    dataset = make_localisation_dataset(args.images, seed=11, split="test")
    images = normalize(dataset.images)
    classes = dataset.labels.tolist()
    model = load_default_model()
    layer = model.get_submodule(TARGET_LAYER)
    explainer = Explainer()
    options = ExplainOptions(smooth_n=args.samples, smooth_sigma=2.0)  # torchcam's SS-CAM sigma
    targets = [[c] for c in classes]

    def ours(method: str, output_size: str) -> np.ndarray:
        run = ExplainOptions(**{**vars(options), "output_size": output_size})
        return explainer.explain(images, methods=[method], targets=targets, options=run).maps[method][:, 0]

    print(
        f"default model, {args.images} test images, true class; {args.samples} samples where methods sample"
    )
    print(f"{'anchor':42s} {'camserve':20s} {'max |diff|':>10s} {'r':>7s}")
    everything = {*GRAD_CAM.values(), *TORCHCAM.values(), "guidedbackprop"}
    wanted = set(args.methods.split(",")) if args.methods else everything
    for name, method in GRAD_CAM.items():
        if method not in wanted:
            continue
        cam = getattr(gc, name)(model=model, target_layers=[layer])
        if name == "FinerCAM":  # its own targets: the prediction against its nearest classes
            theirs = cam(images.clone())
            mine = explainer.explain(images, methods=[method], targets=[[-1]]).maps[method][:, 0]
        else:
            theirs = cam(images.clone(), [ClassifierOutputTarget(c) for c in classes])
            mine = ours(method, "input")
        diff, r = agreement(mine, theirs)
        print(f"{'pytorch-grad-cam ' + name:42s} {method:20s} {diff:10.2e} {r:7.4f}", flush=True)
    if "guidedbackprop" in wanted:  # per image, as the anchor takes them; the map is max over colours of |G|
        guided = gc.GuidedBackpropReLUModel(model, device="cpu")
        theirs = np.stack(
            [np.abs(guided(images[n : n + 1].clone(), c)).max(axis=-1) for n, c in enumerate(classes)]
        )
        diff, r = agreement(ours("guidedbackprop", "input"), theirs)
        print(
            f"{'pytorch-grad-cam GuidedBackpropReLUModel':42s} {'guidedbackprop':20s} {diff:10.2e} {r:7.4f}"
        )
    for name, method in TORCHCAM.items():
        if method not in wanted:
            continue
        kwargs: dict[str, object] = {"input_shape": (3, 64, 64)}
        if name in ("SSCAM", "ISCAM", "SmoothGradCAMpp"):
            kwargs["num_samples"] = args.samples
        if name == "SSCAM":
            kwargs["std"] = 2.0
        if name == "CAM":
            kwargs["fc_layer"] = "fc"
        with getattr(tc, name)(model, TARGET_LAYER, **kwargs) as extractor:
            scores = model(images.clone())
            theirs = extractor(class_idx=classes, scores=scores)[0].detach().numpy()
        model.zero_grad()
        diff, r = agreement(ours(method, "feature"), theirs)
        print(f"{'torchcam ' + name:42s} {method:20s} {diff:10.2e} {r:7.4f}", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
