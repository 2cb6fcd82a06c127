"""The methods of issue 24 against the anchors themselves (pytorch-grad-cam, torchcam) on the same
model, layer, images and targets: the tiny classifier exported once for this module (ONNX Runtime
explain and forward graphs), its eager twin in the anchors' hands.

Deterministic methods must agree within 2e-3 (max abs, normalised maps). Where the anchor is
randomised (SS-CAM's noise) it is fed camserve's noise; where it departs from its paper (FinerCAM
differentiates through the comparison weights) camserve equals the paper's formula, run by the
anchor's own machinery, and stays correlated with the anchor's default (docs/methods.md).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("pytorch_grad_cam")
pytest.importorskip("torchcam")

from pytorch_grad_cam import (  # noqa: E402
    FEM,
    KPCA_CAM,
    EigenGradCAM,
    FinerCAM,
    FullGrad,
    GradCAMElementWise,
    GradCAMPlusPlus,
    RefineCAM,
    SegEigenCAM,
    ShapleyCAM,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, FinerWeightedTarget  # noqa: E402
from torchcam.methods import ISCAM, SSCAM  # noqa: E402

from camserve import Explainer  # noqa: E402
from camserve.config import ExplainOptions  # noqa: E402
from camserve.export import export_model  # noqa: E402
from camserve.methods.score_variants import sscam_noise  # noqa: E402
from tests.explainer.tiny_model import CLASS_NAMES, INPUT_SIZE, MEAN, STD, tiny_net  # noqa: E402

TOLERANCE = 2e-3


@pytest.fixture(scope="module")
def explainer(tmp_path_factory) -> Explainer:
    model_dir = export_model(
        tiny_net(),
        "3",
        INPUT_SIZE,
        tmp_path_factory.mktemp("anchors") / "tiny",
        name="tiny",
        architecture="module:tests.explainer.tiny_model:tiny_net",
        mean=MEAN,
        std=STD,
        class_names=CLASS_NAMES,
        graphs=("explain", "forward", "fullgradient"),
        verify=False,
    )
    return Explainer(model_dir)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """Four preprocessed images: a bright square on noise, so maps have a place to point at."""
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(4, 3, 16, 16, generator=generator) * 0.6 - 0.3
    for n, (top, left) in enumerate([(2, 3), (8, 8), (1, 10), (9, 1)]):
        x[n, :, top : top + 5, left : left + 5] += 1.5
    return x


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return tiny_net()


def camserve_maps(explainer, images, method, targets, **options) -> np.ndarray:
    result = explainer.explain(images, methods=[method], targets=targets, options=ExplainOptions(**options))
    return result.maps[method]


def grad_cam_maps(anchor_class, model, images, classes, **kwargs) -> np.ndarray:
    with anchor_class(model, [model[3]], **kwargs) as cam:
        return cam(input_tensor=images.clone(), targets=[ClassifierOutputTarget(int(c)) for c in classes])


def per_image_targets(classes) -> list[list[int]]:
    return [[int(c)] for c in classes]


def max_abs(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


def correlation(a, b) -> float:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    return float(np.corrcoef(a, b)[0, 1])


CLASSES = [0, 1, 2, 3]  # every class once, one per image


@pytest.mark.parametrize(
    ("method", "anchor"),
    [
        ("gradcamelementwise", GradCAMElementWise),
        ("fem", FEM),
        ("kpcacam", KPCA_CAM),
        ("shapleycam", ShapleyCAM),
        ("segeigencam", SegEigenCAM),  # the anchor turns the component's sign as camserve does
    ],
)
def test_deterministic_methods_equal_pytorch_grad_cam(explainer, images, model, method, anchor):
    ours = camserve_maps(explainer, images, method, per_image_targets(CLASSES))[:, 0]
    theirs = grad_cam_maps(anchor, model, images, CLASSES)
    assert ours.shape == theirs.shape == (4, 16, 16)
    assert max_abs(ours, theirs) <= TOLERANCE
    assert (ours.reshape(4, -1).max(axis=1) == 1).sum() >= 3  # real maps, not flat ones


def test_eigengradcam_equals_pytorch_grad_cam_up_to_the_principal_components_sign(explainer, images, model):
    """pytorch-grad-cam leaves the sign of the component to LAPACK; camserve turns it so that
    |max| >= |min|. The anchor with its projection negated gives the other sign's map."""

    class Negated(EigenGradCAM):
        def get_cam_image(self, *args):
            return -super().get_cam_image(*args)

    ours = camserve_maps(explainer, images, "eigengradcam", per_image_targets(CLASSES))[:, 0]
    as_is = grad_cam_maps(EigenGradCAM, model, images, CLASSES)
    negated = grad_cam_maps(Negated, model, images, CLASSES)
    for n in range(4):
        assert min(max_abs(ours[n], as_is[n]), max_abs(ours[n], negated[n])) <= TOLERANCE
    # and the sign rule holds on the anchor's raw projection: the positive end is the larger
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    with EigenGradCAM(model, [model[3]]) as cam:
        cam(input_tensor=images.clone(), targets=[ClassifierOutputTarget(c) for c in CLASSES])
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy()
    projection = get_2d_projection(grads * acts).reshape(4, -1)
    picked_as_is = [max_abs(ours[n], as_is[n]) <= max_abs(ours[n], negated[n]) for n in range(4)]
    larger_positive = [abs(p.max()) >= abs(p.min()) for p in projection]
    assert picked_as_is == larger_positive


def full_grad_maps(model, images, classes, aug_smooth=False) -> np.ndarray:
    cam = FullGrad(model, [])  # every biased layer: the tiny model's two convolutions
    return cam(images.clone(), [ClassifierOutputTarget(int(c)) for c in classes], aug_smooth=aug_smooth)


def test_fullgrad_equals_pytorch_grad_cam(explainer, images, model):
    ours = camserve_maps(explainer, images, "fullgrad", per_image_targets(CLASSES))[:, 0]
    theirs = full_grad_maps(model, images, CLASSES)
    assert ours.shape == theirs.shape == (4, 16, 16)
    assert max_abs(ours, theirs) <= TOLERANCE
    assert (ours.reshape(4, -1).max(axis=1) == 1).all() and (ours.reshape(4, -1).min(axis=1) == 0).all()
    # the bias terms count: the input-gradient term alone is another map
    with torch.enable_grad():
        x = images.clone().requires_grad_(True)
        model(x).gather(1, torch.tensor(CLASSES)[:, None]).sum().backward()
    alone = (x.grad * images).abs().sum(dim=1).numpy()
    assert (
        max_abs(
            ours, (alone - alone.min(axis=(1, 2), keepdims=True)) / np.ptp(alone, axis=(1, 2), keepdims=True)
        )
        > 0.1
    )


def test_fullgrad_explains_each_of_several_targets_on_its_own(explainer, images, model):
    """T = 2 (the prediction and class 2) in one fullgradient run: each target's map is the
    anchor's for that class alone."""
    ours = camserve_maps(explainer, images, "fullgrad", [[-1, 2]])
    predicted = model(images).argmax(dim=1).tolist()
    assert max_abs(ours[:, 0], full_grad_maps(model, images, predicted)) <= TOLERANCE
    assert max_abs(ours[:, 1], full_grad_maps(model, images, [2] * 4)) <= TOLERANCE


def test_fullgrad_aug_smooth_equals_pytorch_grad_cam(explainer, images, model):
    ours = camserve_maps(explainer, images, "fullgrad", per_image_targets(CLASSES), aug_smooth=True)[:, 0]
    theirs = full_grad_maps(model, images, CLASSES, aug_smooth=True)
    low = theirs.min(axis=(1, 2), keepdims=True)  # the anchor averages its normalised copies, camserve
    theirs = (theirs - low) / (theirs.max(axis=(1, 2), keepdims=True) - low)  # also normalises the mean
    assert max_abs(ours, theirs) <= TOLERANCE


class PaperGradCAMPlusPlus(GradCAMPlusPlus):
    """pytorch-grad-cam's Grad-CAM++ without the 1e-6 it adds to alpha's denominator (the paper has
    none; with small gradients, g^2 ~ 1e-6, it changes the map)."""

    def get_cam_weights(self, input_tensor, target_layers, target_category, activations, grads):
        g2, g3 = grads**2, grads**3
        denominator = 2 * g2 + activations.sum(axis=(2, 3), keepdims=True) * g3
        alpha = np.where(denominator != 0, g2 / np.where(denominator != 0, denominator, 1), 0)
        return (np.maximum(grads, 0) * alpha).sum(axis=(2, 3))


def test_refinecam_on_one_layer_is_pytorch_grad_cam_refinecam_on_the_papers_grad_cam_plus_plus(
    explainer, images, model
):
    """One target layer: the product has one factor, the Grad-CAM++ map."""
    ours = camserve_maps(explainer, images, "refinecam", per_image_targets(CLASSES))[:, 0]
    targets = [ClassifierOutputTarget(c) for c in CLASSES]
    paper = RefineCAM(model, [model[3]], base_method=PaperGradCAMPlusPlus)(images.clone(), targets)
    anchor = RefineCAM(model, [model[3]])(images.clone(), targets)
    assert max_abs(ours, paper) <= TOLERANCE
    assert correlation(ours, anchor) > 0.7
    assert max_abs(ours, camserve_maps(explainer, images, "gradcam++", per_image_targets(CLASSES))[:, 0]) == 0


class DetachedWeightsTarget(FinerWeightedTarget):
    """FinerWeightedTarget with the softmax weights held constant, as the paper's formula has them."""

    def __call__(self, model_output):
        wn = model_output[self.main_category]
        prob = torch.softmax(model_output, dim=-1).detach()
        weights = [prob[idx] for idx in self.comparison_categories]
        numerator = sum(
            w * (wn - self.alpha * model_output[idx])
            for w, idx in zip(weights, self.comparison_categories, strict=True)
        )
        return numerator / (sum(weights) + 1e-9)


def test_finercam_is_the_papers_formula_and_correlates_with_pytorch_grad_cam(explainer, images, model):
    ours = camserve_maps(explainer, images, "finercam", [[-1]])[:, 0]
    logits = model(images).detach()
    predicted = logits.argmax(dim=1)
    nearest = (logits - logits.gather(1, predicted[:, None])).abs().argsort(dim=1)[:, 1:4]
    paper_targets = [DetachedWeightsTarget(int(predicted[n]), nearest[n].tolist(), 1.0) for n in range(4)]
    with FinerCAM(model, [model[3]]) as cam:
        paper = cam(images.clone(), targets=paper_targets)
    with FinerCAM(model, [model[3]]) as cam:
        anchor = cam(images.clone())  # targets=None: the prediction vs its 3 nearest classes
    assert max_abs(ours, paper) <= TOLERANCE
    assert correlation(ours, anchor) > 0.7


def test_finercam_explicit_target_compares_with_the_classes_nearest_it(explainer, images, model):
    """A target that is not the prediction: its comparison classes are the 3 nearest logits."""
    ours = camserve_maps(explainer, images, "finercam", [[2]])[:, 0]
    logits = model(images).detach()
    nearest = (logits - logits[:, 2:3]).abs().argsort(dim=1)[:, 1:4]
    assert (nearest != 2).all()
    targets = [DetachedWeightsTarget(2, nearest[n].tolist(), 1.0) for n in range(4)]
    with FinerCAM(model, [model[3]]) as cam:
        paper = cam(images.clone(), targets=targets)
    assert max_abs(ours, paper) <= TOLERANCE


def torchcam_maps(anchor_class, model, images, classes, **kwargs) -> torch.Tensor:
    with anchor_class(model, "3", input_shape=INPUT_SIZE, **kwargs) as extractor:
        scores = model(images.clone())
        return extractor(class_idx=[int(c) for c in classes], scores=scores)[0]  # [N,h,w]


def test_iscam_equals_torchcam(explainer, images, model):
    ours = camserve_maps(
        explainer, images, "iscam", per_image_targets(CLASSES), output_size="feature", smooth_n=6
    )
    theirs = torchcam_maps(ISCAM, model, images, CLASSES, num_samples=6, batch_size=16).numpy()
    assert max_abs(ours[:, 0], theirs) <= TOLERANCE


def test_sscam_equals_torchcam_fed_the_same_noise(explainer, images, model):
    samples, sigma = 5, 0.4
    options = ExplainOptions(smooth_n=samples, smooth_sigma=sigma, smooth_seed=7)
    ours = camserve_maps(
        explainer,
        images,
        "sscam",
        per_image_targets(CLASSES),
        output_size="feature",
        smooth_n=samples,
        smooth_sigma=sigma,
        smooth_seed=7,
    )
    channels = 8
    draws = iter(
        sscam_noise(
            options, torch.Size(INPUT_SIZE[1:]), torch.full((channels,), s), torch.arange(channels), "cpu"
        )
        for s in range(samples)
    )

    class CamserveNoise:
        def sample(self, size):  # [N,K,H,W]: sample s of every channel, the same for every image
            return next(draws).unsqueeze(0).expand(size)

    with SSCAM(
        model, "3", input_shape=INPUT_SIZE, num_samples=samples, std=sigma, batch_size=16
    ) as extractor:
        extractor._distrib = CamserveNoise()
        theirs = extractor(class_idx=CLASSES, scores=model(images.clone()))[0].numpy()
    assert max_abs(ours[:, 0], theirs) <= TOLERANCE
    # with its own noise, torchcam's map still points at the same place
    random = torchcam_maps(
        SSCAM, model, images, CLASSES, num_samples=samples, std=sigma, batch_size=16
    ).numpy()
    assert correlation(ours[:, 0], random) > 0.8
