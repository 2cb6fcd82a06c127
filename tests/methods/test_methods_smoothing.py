"""eigen_smooth and aug_smooth against pytorch-grad-cam (the anchor, a test-only oracle) on the same
seeded ResNet-18, layer, images and targets: camserve runs it through ``TorchGraphRunner``, the
anchor through its own hooks and ttach's transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from camserve.config import ExplainOptions, RuntimeConfig, check_options
from camserve.errors import InvalidArgumentError
from camserve.export.eager import TorchGraphRunner
from camserve.methods import compute_maps
from camserve.methods.smoothing import augment, deaugment, principal_maps
from tests.methods.methods_fixtures import CountingRunner

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

SIZE = (64, 64)
TORCH = RuntimeConfig(kernels="torch")
CLASSES = (2, 7)
ATOL = 2e-3  # the bound on normalised maps
ANCHORS = {
    "gradcam": pgc.GradCAM,
    "xgradcam": pgc.XGradCAM,
    "layercam": pgc.LayerCAM,
    "hirescam": pgc.HiResCAM,
    "gradcamelementwise": pgc.GradCAMElementWise,
}


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(len(CLASSES), 3, *SIZE, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def runner(resnet) -> TorchGraphRunner:
    return TorchGraphRunner(resnet, "layer3", (3, *SIZE))


def minmax(maps: np.ndarray) -> np.ndarray:
    low = maps.min(axis=(-2, -1), keepdims=True)
    return (maps - low) / (maps.max(axis=(-2, -1), keepdims=True) - low + 1e-7)


def signed_like_camserve(projection):
    """pytorch-grad-cam's get_2d_projection with camserve's sign rule (its own sign is whatever
    LAPACK returns): the projection of each image agrees with the plain sum over the channels."""

    def project(weighted: np.ndarray) -> np.ndarray:
        out = projection(weighted)
        agreement = (out * weighted.sum(axis=1)).sum(axis=(-2, -1))
        return np.where(agreement[:, None, None] < 0, -out, out).astype(np.float32)

    return project


@pytest.fixture()
def anchor_sign(monkeypatch):
    for module in ("base_cam", "layer_cam", "hirescam", "grad_cam_elementwise"):
        target = f"pytorch_grad_cam.{module}.get_2d_projection"
        original = pgc.utils.svd_on_activations.get_2d_projection
        monkeypatch.setattr(target, signed_like_camserve(original))


def anchor_maps(resnet, method: str, images, eigen: bool, aug: bool) -> np.ndarray:
    cam = ANCHORS[method](resnet, [resnet.layer3])
    targets = [ClassifierOutputTarget(c) for c in CLASSES]
    return minmax(cam(images, targets, aug_smooth=aug, eigen_smooth=eigen))


def camserve_maps(runner, method: str, images, eigen: bool, aug: bool, targets=None):
    options = ExplainOptions(eigen_smooth=eigen, aug_smooth=aug)
    table = [[c] for c in CLASSES] if targets is None else targets
    return compute_maps(runner, images, table, [method], num_classes=10, options=options, runtime=TORCH)


CASES = [(method, True, False) for method in sorted(ANCHORS)]
CASES += [("gradcam", False, True), ("layercam", False, True), ("xgradcam", True, True)]


@pytest.mark.parametrize(("method", "eigen", "aug"), CASES)
def test_smoothing_equals_pytorch_grad_cam(resnet, images, runner, anchor_sign, method, eigen, aug):
    expected = anchor_maps(resnet, method, images, eigen, aug)
    counting = CountingRunner(runner)
    ours = camserve_maps(counting, method, images, eigen, aug).maps[method][:, 0].numpy()
    assert np.abs(ours - expected).max() <= ATOL
    # the 6 augmented copies are more images of the one explain run
    assert counting.calls == {"explain": [len(CLASSES) * (6 if aug else 1)]}


def test_eigen_smooth_follows_the_plain_map_where_the_anchor_sign_is_arbitrary():
    # two pixels carry the signal: the plain sum is high at pixel 0; the principal component's sign
    # is chosen so that its ReLU keeps pixel 0 (LAPACK could return either sign)
    weighted = torch.tensor([[[[3.0, 0.0], [0.0, 1.0]], [[3.0, 0.0], [0.0, 1.0]]]])  # [1,K=2,2,2]
    maps = principal_maps(weighted)
    # Mc: pixels (3,3),(0,0),(0,0),(1,1) minus the mean (1,1): projection on (1,1)/sqrt2
    expected = torch.tensor([[2.0, 0.0], [0.0, 0.0]]) * 2**0.5
    torch.testing.assert_close(maps[0], expected)
    torch.testing.assert_close(principal_maps(-weighted)[0], torch.tensor([[0.0, 1.0], [1.0, 0.0]]) * 2**0.5)


def test_augment_and_deaugment_are_inverse_on_flip_equivariant_maps():
    x = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).reshape(2, 3, 2, 4)
    copies = augment(x)
    assert copies.shape == (12, 3, 2, 4)
    torch.testing.assert_close(copies[2:4], x)  # copy 1: unflipped, x1.0
    torch.testing.assert_close(copies[6:8], 0.9 * x.flip(-1))  # copy 3: flipped, x0.9
    maps = copies[:, 0] / copies[:, 0].amax(dim=(-2, -1), keepdim=True)  # scale-free, follows the flip
    torch.testing.assert_close(deaugment(maps, 2), maps[2:4])


def test_aug_smooth_explains_the_clean_images_class_in_every_copy(resnet, images, runner):
    counting = CountingRunner(runner)
    out = camserve_maps(counting, "gradcam", images, False, True, targets=[[-1, -2]])
    top = resnet(images).detach().topk(2, dim=1).indices
    assert torch.equal(out.target_ids, top)
    # one forward run of the clean images resolves -k, then one explain run of the 6 copies
    assert counting.calls == {"forward": [2], "explain": [12]}
    explicit = camserve_maps(runner, "gradcam", images, False, True, targets=top.tolist())
    torch.testing.assert_close(out.maps["gradcam"], explicit.maps["gradcam"])


@pytest.mark.parametrize(
    ("method", "eigen", "aug"),
    [
        ("eigencam", True, False),
        ("eigengradcam", True, False),
        ("fem", True, False),
        ("refinecam", False, True),
    ],
)
def test_methods_without_the_option_ignore_it(images, runner, method, eigen, aug):
    # as pytorch-grad-cam's EigenCAM, EigenGradCAM and FEM ignore eigen_smooth and RefineCAM has no aug_smooth
    plain = camserve_maps(runner, method, images, False, False).maps[method]
    torch.testing.assert_close(camserve_maps(runner, method, images, eigen, aug).maps[method], plain)


def test_options_must_be_booleans():
    with pytest.raises(InvalidArgumentError, match="options.aug_smooth: expected true or false"):
        check_options(ExplainOptions(aug_smooth=1))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="method_options.eigen_smooth"):
        check_options(
            ExplainOptions(eigen_smooth="yes"),  # type: ignore[arg-type]
            {"eigen_smooth": "method_options.eigen_smooth"},
        )
