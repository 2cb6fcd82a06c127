"""Each method against the paper's formula computed directly with PyTorch autograd on a seeded
torchvision ResNet-18 at 64x64 input (camserve runs it through ``TorchGraphRunner``; the references
use plain forward hooks, ``torch.autograd.grad`` and their own loops)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from camserve.config import ExplainOptions, RuntimeConfig
from camserve.export.eager import TorchGraphRunner
from camserve.methods import compute_maps
from camserve.methods.gradient import GradCAMPlusPlus
from camserve.outputs import ExplainOutputs
from tests.methods.methods_fixtures import CountingRunner, GapLinearHeadRunner, context_for
from tests.reference.autograd_cam import autograd_guided, gradient_cam_maps, layer_gradients, minmax, upsample

SIZE = (64, 64)
TORCH = RuntimeConfig(kernels="torch")
ATOL = 2e-4  # normalised maps in [0, 1]


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def layer3_runner(resnet) -> TorchGraphRunner:
    return TorchGraphRunner(resnet, "layer3", (3, *SIZE))


def test_gradient_methods_match_autograd_from_one_explain_run(resnet, images, layer3_runner):
    runner = CountingRunner(layer3_runner)
    methods = ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam"]
    out = compute_maps(runner, images, [[-1, 3]], methods, num_classes=10, runtime=TORCH)
    assert runner.calls == {"explain": [2]}  # five methods, one run of the explain graph

    logits = resnet(images).detach()
    assert torch.equal(out.target_ids[:, 0], logits.argmax(dim=1))
    for t in range(2):
        classes = out.target_ids[:, t]
        _, acts, grads = layer_gradients(resnet, resnet.layer3, images, classes)
        expected = gradient_cam_maps(acts, grads)
        for method in methods:
            reference = minmax(upsample(expected[method], SIZE))
            assert torch.allclose(out.maps[method][:, t], reference, atol=ATOL), (method, t)


def test_gradcam_plus_plus_closed_form_equals_the_general_higher_derivative_formula():
    # Grad-CAM++'s general alpha (eq. 10 of the paper) uses the 2nd and 3rd derivatives of the score
    # Y = exp(S). For a piecewise-linear head those are exp(S) g^2 and exp(S) g^3, and the closed form
    # follows; here the derivatives come from autograd (Hessian diagonal, then its Jacobian).
    torch.manual_seed(3)
    acts = torch.rand(1, 2, 2, 2) + 0.2
    head = nn.Sequential(
        nn.Conv2d(2, 3, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)
    )
    target = 1

    def exp_score(flat: torch.Tensor) -> torch.Tensor:
        return head(flat.reshape(1, 2, 2, 2))[0, target].exp()

    def hessian_diagonal(flat: torch.Tensor) -> torch.Tensor:
        return torch.autograd.functional.hessian(exp_score, flat, create_graph=True).diagonal()

    flat = acts.flatten()
    d1 = torch.autograd.functional.jacobian(exp_score, flat).reshape(2, 4)
    d2 = hessian_diagonal(flat).detach().reshape(2, 4)
    d3 = torch.autograd.functional.jacobian(hessian_diagonal, flat).diagonal().reshape(2, 4)
    sum_a = acts.reshape(2, 4).sum(dim=1, keepdim=True)
    alpha = torch.where(d2 != 0, d2 / (2 * d2 + sum_a * d3), 0.0)
    weights = (alpha * d1.clamp_min(0)).sum(dim=1)
    general = torch.relu((weights.reshape(2, 1, 1) * acts[0]).sum(dim=0))

    g = d1 / exp_score(flat).detach()  # dS/dA
    outputs = ExplainOutputs(torch.zeros(1, 2), acts, g.reshape(1, 1, 2, 2, 2), torch.tensor([[target]]))
    closed = GradCAMPlusPlus().compute(context_for(outputs, torch.zeros(1, 3, 2, 2))).maps[0, 0]
    # the closed form drops the common factor exp(S) of the weights
    assert torch.allclose(closed * exp_score(flat).detach(), general, rtol=1e-4, atol=1e-6)


def test_smooth_gradcam_plus_plus_matches_autograd_on_the_noisy_copies(resnet, images, layer3_runner):
    runner = CountingRunner(layer3_runner)
    options = ExplainOptions(smooth_n=2, smooth_sigma=0.2)
    out = compute_maps(
        runner, images, None, ["smoothgradcam++"], num_classes=10, options=options, runtime=TORCH
    )
    # -1 is resolved on the clean images first (forward), then clean + 2 noisy copies in one explain run
    assert runner.calls["forward"] == [2]
    assert runner.calls["explain"] == [6]
    batch = runner.seen["explain"][0]
    assert torch.equal(batch[:2], images)
    classes = resnet(images).argmax(dim=1)
    _, clean_acts, _ = layer_gradients(resnet, resnet.layer3, images, classes)
    _, _, noisy_grads = layer_gradients(resnet, resnet.layer3, batch[2:], classes.repeat(2))
    noisy_grads = noisy_grads.unflatten(0, (2, 2))  # [copy, image, K, h, w]
    d1, d2, d3 = noisy_grads.mean(dim=0), (noisy_grads**2).mean(dim=0), (noisy_grads**3).mean(dim=0)
    sum_a = clean_acts.sum(dim=(2, 3), keepdim=True)
    alpha = torch.nan_to_num(d2 / (2 * d2 + sum_a * d3), nan=0.0)
    weights = (alpha * torch.relu(d1)).sum(dim=(2, 3), keepdim=True)
    expected = minmax(upsample(torch.relu((weights * clean_acts).sum(dim=1)), SIZE))
    assert torch.allclose(out.maps["smoothgradcam++"][:, 0], expected, atol=ATOL)


def test_smooth_gradcam_plus_plus_without_noise_is_gradcam_plus_plus(images, layer3_runner):
    options = ExplainOptions(smooth_n=2, smooth_sigma=0.0)
    out = compute_maps(
        layer3_runner,
        images,
        None,
        ["smoothgradcam++", "gradcam++"],
        num_classes=10,
        options=options,
        runtime=TORCH,
    )
    assert torch.allclose(out.maps["smoothgradcam++"], out.maps["gradcam++"], atol=1e-5)


def test_scorecam_matches_masked_forward_passes(resnet, images, layer3_runner):
    top_n = 6
    runner = CountingRunner(layer3_runner)
    options = ExplainOptions(score_top_n=top_n)
    out = compute_maps(
        runner,
        images,
        None,
        ["scorecam"],
        num_classes=10,
        options=options,
        runtime=RuntimeConfig(max_graph_batch=5),
    )
    assert sum(runner.calls["forward"]) == 2 * top_n and max(runner.calls["forward"]) <= 5
    for n in range(2):
        image = images[n : n + 1]
        c = int(out.target_ids[n, 0])
        _, acts, _ = layer_gradients(resnet, resnet.layer3, image, torch.tensor([c]))
        acts = acts[0]
        kept = acts.mean(dim=(1, 2)).topk(top_n).indices
        scores = []
        with torch.no_grad():
            for k in kept:
                mask = minmax(
                    F.interpolate(acts[k][None, None], size=SIZE, mode="bilinear", align_corners=False)
                )
                scores.append(resnet(image * mask)[0, c])
        weights = torch.softmax(torch.stack(scores), dim=0)
        raw = torch.relu((weights.reshape(-1, 1, 1) * acts[kept]).sum(dim=0))
        assert torch.allclose(out.maps["scorecam"][n, 0], minmax(upsample(raw, SIZE)), atol=ATOL)


def test_ablationcam_on_a_gap_linear_head_weighs_channels_by_their_share_of_the_score(resnet, images):
    # y_c = sum_k W_ck mean(A^k) + b_c, so zeroing channel k removes W_ck mean(A^k):
    # w_k = (y - y_k)/y = W_ck mean(A^k) / y_c exactly.
    runner = GapLinearHeadRunner(resnet, (3, *SIZE))
    acts = runner.explain(images[:1], torch.tensor([[-1]])).activations
    eager_head = TorchGraphRunner(resnet, "layer4", (3, *SIZE)).head(acts)
    assert torch.allclose(runner.head(acts), eager_head, atol=1e-4)  # the fast head is the real head

    counting = CountingRunner(runner)
    out = compute_maps(
        counting, images, None, ["ablationcam"], num_classes=10, runtime=RuntimeConfig(max_graph_batch=256)
    )
    logits, acts, _ = layer_gradients(resnet, resnet.layer4, images, out.target_ids[:, 0])
    live = int((acts.flatten(2) != 0).any(dim=-1).sum())
    assert sum(counting.calls["head"]) == live and max(counting.calls["head"]) <= 256
    classes = out.target_ids[:, 0]
    y = logits.gather(1, classes[:, None])  # [N,1]
    weights = resnet.fc.weight[classes].detach() * acts.mean(dim=(2, 3)) / y  # [N,K]
    expected = torch.relu((weights[:, :, None, None] * acts).sum(dim=1))
    assert torch.allclose(out.maps["ablationcam"][:, 0], minmax(upsample(expected, SIZE)), atol=ATOL)


def test_cam_equals_gradcam_on_a_gap_linear_head(resnet, images):
    # With y = W mean(A) + b the gradient is W_c/Z at every pixel: Grad-CAM's weights are CAM's / Z.
    runner = TorchGraphRunner(resnet, "layer4", (3, *SIZE))
    out = compute_maps(
        runner, images, [[-1, 4]], ["cam", "gradcam"], num_classes=10, cam_weights=resnet.fc.weight.detach()
    )
    assert torch.allclose(out.maps["cam"], out.maps["gradcam"], atol=1e-5)


def test_guided_methods_match_a_model_with_guided_relus(resnet, images, layer3_runner):
    out = compute_maps(layer3_runner, images, [[2]], ["guidedbackprop", "guidedgradcam"], num_classes=10)
    classes = torch.tensor([2, 2])
    guided = autograd_guided(resnet, images, classes.unsqueeze(1))[:, 0]
    assert torch.allclose(out.rgb["guidedbackprop"][:, 0], guided, atol=1e-5)
    assert torch.allclose(out.maps["guidedbackprop"][:, 0], minmax(guided.abs().amax(dim=1)), atol=ATOL)
    _, acts, grads = layer_gradients(resnet, resnet.layer3, images, classes)
    cam = upsample(gradient_cam_maps(acts, grads)["gradcam"], SIZE)
    expected = minmax((guided * cam[:, None]).abs().amax(dim=1))
    assert torch.allclose(out.maps["guidedgradcam"][:, 0], expected, atol=ATOL)


def test_eigencam_matches_the_first_singular_vector_of_the_activations(resnet, images, layer3_runner):
    out = compute_maps(layer3_runner, images, None, ["eigencam"], num_classes=10)
    _, acts, _ = layer_gradients(resnet, resnet.layer3, images, torch.tensor([0, 0]))
    for n in range(2):
        pixels = acts[n].flatten(1).T.double()  # [Z,K]
        _, _, vh = torch.linalg.svd(pixels, full_matrices=False)
        projection = pixels @ vh[0]
        projection = projection if projection.sum() >= 0 else -projection
        expected = minmax(upsample(torch.relu(projection).reshape(acts.shape[-2:]).float(), SIZE))
        assert torch.allclose(out.maps["eigencam"][n, 0], expected, atol=ATOL)
