"""Every method on tensors small enough to work out by hand (K = 2 channels, 2x2 maps).

    A^1 = [[1, 2], [0, 1]]  (sum 4, mean 1)      g^1 = dy0/dA^1 = [[1, 1], [1, 1]]
    A^2 = [[0, 1], [4, 0]]  (sum 5, mean 1.25)   g^2 = dy0/dA^2 = [[1, -1], [1, 0]]
    head: y_c = sum_k W_ck mean(A^k), W = [[1, 2], [3, -1]]  ->  y0 = 3.5, y1 = 1.75

Maps are compared raw (normalize=False) at feature resolution, then a few normalised/upsampled.
"""

from __future__ import annotations

import math

import pytest
import torch

from camserve.config import ExplainOptions, RuntimeConfig
from camserve.methods import compute_maps
from camserve.methods.activation import EigenCAM
from camserve.methods.gradient import GradCAMPlusPlus, LayerCAM, SmoothGradCAMPlusPlus
from camserve.outputs import ExplainOutputs
from tests.methods.methods_fixtures import (
    A1,
    A2,
    HEAD_W,
    ScriptedRunner,
    context_for,
    golden_activations,
    golden_runner,
)

RAW = ExplainOptions(normalize=False, output_size="feature")
TORCH = RuntimeConfig(kernels="torch")
IMAGE = torch.ones(1, 3, 2, 2)  # input as large as the feature map: upsampling is the identity


def raw_map(method: str, targets=None, runner=None, options: ExplainOptions = RAW, **kwargs) -> torch.Tensor:
    runner = runner or golden_runner()
    out = compute_maps(
        runner, IMAGE, targets, [method], num_classes=2, options=options, runtime=TORCH, **kwargs
    )
    return out.maps[method]


def test_gradcam():
    # w = mean g: w1 = 1, w2 = (1 - 1 + 1 + 0)/4 = 0.25; A^1 + 0.25 A^2
    assert torch.allclose(raw_map("gradcam")[0, 0], torch.tensor([[1.0, 2.25], [1.0, 1.0]]))


def test_gradcam_plus_plus():
    # channel 1, g = 1 everywhere: alpha = 1/(2 + 4*1) = 1/6, w1 = 4 * 1/6 = 2/3
    # channel 2: g = 1 at two pixels: alpha = 1/(2 + 5) = 1/7; g = -1: ReLU(g) = 0; g = 0: alpha = 0
    #            w2 = 2/7.  2/3 A^1 + 2/7 A^2 = [[2/3, 4/3 + 2/7], [8/7, 2/3]]
    expected = torch.tensor([[2 / 3, 34 / 21], [8 / 7, 2 / 3]])
    assert torch.allclose(raw_map("gradcam++")[0, 0], expected)


def test_xgradcam():
    # w1 = sum(A^1 g^1)/4 = 1; w2 = (0*1 + 1*(-1) + 4*1 + 0*0)/5 = 3/5;  A^1 + 0.6 A^2
    assert torch.allclose(raw_map("xgradcam")[0, 0], torch.tensor([[1.0, 2.6], [2.4, 1.0]]))


def test_layercam():
    # ReLU(g^1) A^1 + ReLU(g^2) A^2 = A^1 + [[0, 0], [4, 0]]
    assert torch.allclose(raw_map("layercam")[0, 0], torch.tensor([[1.0, 2.0], [4.0, 1.0]]))


def test_hirescam():
    # g^1 A^1 + g^2 A^2 = A^1 + [[0, -1], [4, 0]]
    assert torch.allclose(raw_map("hirescam")[0, 0], torch.tensor([[1.0, 1.0], [4.0, 1.0]]))


def test_cam_uses_the_classifier_row_of_each_target():
    # class 0: A^1 + 2 A^2 = [[1, 4], [8, 1]]; class 1: ReLU(3 A^1 - A^2) = ReLU([[3, 5], [-4, 3]])
    maps = raw_map("cam", targets=[[0, 1]], cam_weights=torch.tensor(HEAD_W))
    assert torch.allclose(maps[0, 0], torch.tensor([[1.0, 4.0], [8.0, 1.0]]))
    assert torch.allclose(maps[0, 1], torch.tensor([[3.0, 5.0], [0.0, 3.0]]))


def test_ablationcam():
    # class 0: y = 3.5; zeroing A^1 leaves 2*1.25 = 2.5 -> w1 = 1/3.5 = 2/7; zeroing A^2 leaves 1 -> w2 = 5/7
    #          2/7 A^1 + 5/7 A^2 = [[2/7, 9/7], [20/7, 2/7]]
    # class 1: y = 3 - 1.25 = 1.75; zeroing A^1 -> -1.25, w1 = 3/1.75 = 12/7; zeroing A^2 -> 3, w2 = -5/7
    #          ReLU(12/7 A^1 - 5/7 A^2) = ReLU([[12/7, 19/7], [-20/7, 12/7]])
    runner = golden_runner()
    maps = raw_map("ablationcam", targets=[[0, 1]], runner=runner)
    assert torch.allclose(maps[0, 0], torch.tensor([[2 / 7, 9 / 7], [20 / 7, 2 / 7]]))
    assert torch.allclose(maps[0, 1], torch.tensor([[12 / 7, 19 / 7], [0.0, 12 / 7]]))
    assert runner.calls["head"] == [2]  # both ablated copies in one head run; the body never re-runs


def test_scorecam():
    # masks: A^1/2 = [[.5, 1], [0, .5]] (sum 2), A^2/4 = [[0, .25], [1, 0]] (sum 1.25); the image is all
    # ones and forward scores class 0 as the sum of channel 0, so s = (2, 1.25):
    # w = softmax(s) = (1, e^-0.75) / (1 + e^-0.75)
    w1 = 1 / (1 + math.exp(-0.75))
    a1, a2 = torch.tensor(A1), torch.tensor(A2)
    runner = golden_runner()
    maps = raw_map("scorecam", targets=[[0, 1]], runner=runner)
    assert torch.allclose(maps[0, 0], w1 * a1 + (1 - w1) * a2)
    # class 1 scores are the negatives, (-2, -1.25): the weights swap
    assert torch.allclose(maps[0, 1], (1 - w1) * a1 + w1 * a2)
    assert runner.calls["forward"] == [2]  # one masked image per channel, one batch


def test_scorecam_top_n_keeps_the_most_active_channels():
    # mean A^1 = 1 < mean A^2 = 1.25: top-1 keeps channel 2 alone, softmax over one score is 1
    runner = golden_runner()
    maps = raw_map(
        "scorecam",
        runner=runner,
        options=ExplainOptions(normalize=False, output_size="feature", score_top_n=1),
    )
    assert torch.allclose(maps[0, 0], torch.tensor(A2))
    assert runner.calls["forward"] == [1]


def test_scorecam_skips_constant_channels_and_ablationcam_skips_zero_channels():
    # A third channel that is constant (3 everywhere): no mask (weight 0), no forward run for it;
    # a fourth channel that is zero everywhere: ablating it changes nothing (weight 0), no head run.
    acts = torch.cat([golden_activations(), torch.full((1, 1, 2, 2), 3.0), torch.zeros(1, 1, 2, 2)], dim=1)
    head = torch.tensor([[1.0, 2.0, 0.0, 5.0], [3.0, -1.0, 0.0, 5.0]])
    runner = ScriptedRunner(acts, torch.zeros(1, 2, 4, 2, 2), head, forward_signs=torch.tensor([1.0, -1.0]))
    score = raw_map("scorecam", runner=runner)
    w1 = 1 / (1 + math.exp(-0.75))
    assert torch.allclose(score[0, 0], w1 * torch.tensor(A1) + (1 - w1) * torch.tensor(A2))
    assert runner.calls["forward"] == [2]
    ablation = raw_map("ablationcam", runner=runner)
    # y0 = 1 + 2.5 + 0*3 + 5*0 = 3.5 as before: same weights 2/7, 5/7 for channels 1, 2; channel 3 has W = 0
    assert torch.allclose(ablation[0, 0], torch.tensor([[2 / 7, 9 / 7], [20 / 7, 2 / 7]]))
    assert runner.calls["head"] == [3]


def test_smooth_gradcam_plus_plus_averages_the_derivative_powers():
    # Two noisy copies; channel 1 has g = 1 in one and g = 3 in the other, channel 2 has g = 0:
    # D1 = 2, D2 = (1 + 9)/2 = 5, D3 = (1 + 27)/2 = 14, sum A^1 = 4 (clean activations)
    # alpha = 5/(2*5 + 4*14) = 5/66, w1 = 4 pixels * 5/66 * ReLU(2) = 20/33, w2 = 0
    acts = golden_activations()
    clean_grads = torch.zeros(1, 1, 2, 2, 2)
    noisy = torch.zeros(2, 1, 1, 2, 2, 2)
    noisy[0, 0, 0, 0] = 1.0
    noisy[1, 0, 0, 0] = 3.0
    outputs = ExplainOutputs(torch.zeros(1, 2), acts, clean_grads, torch.zeros(1, 1, dtype=torch.int64))
    maps = SmoothGradCAMPlusPlus().compute(context_for(outputs, IMAGE, noisy_gradients=noisy)).maps
    assert torch.allclose(maps[0, 0], 20 / 33 * torch.tensor(A1))
    # Grad-CAM++ on the averaged gradient (g = 2) would differ: alpha = 4/(8 + 4*8) = 1/10, w1 = 4/5
    averaged = ExplainOutputs(
        torch.zeros(1, 2), acts, noisy.mean(dim=0), torch.zeros(1, 1, dtype=torch.int64)
    )
    plain = GradCAMPlusPlus().compute(context_for(averaged, IMAGE)).maps
    assert torch.allclose(plain[0, 0], 0.8 * torch.tensor(A1))


def test_gradcam_plus_plus_constant_gradient_gives_alpha_one_over_two_plus_sum_a_g():
    # g = c on a channel: alpha = c^2/(2c^2 + S c^3) = 1/(2 + S c), w = Z c/(2 + S c) (Z pixels, S = sum A)
    acts = torch.tensor([[A1]])  # K = 1, S = 4, Z = 4
    for c in (0.5, 2.0):
        grads = torch.full((1, 1, 1, 2, 2), c)
        outputs = ExplainOutputs(torch.zeros(1, 1), acts, grads, torch.zeros(1, 1, dtype=torch.int64))
        maps = GradCAMPlusPlus().compute(context_for(outputs, IMAGE)).maps
        assert torch.allclose(maps[0, 0], 4 * c / (2 + 4 * c) * torch.tensor(A1))


def test_eigencam_rank_one_activations_project_onto_their_direction():
    # A^1 = u, A^2 = 2u: pixel rows (u_ij, 2 u_ij) all lie along v1 = (1, 2)/sqrt(5), so M v1 = sqrt(5) u.
    u = torch.tensor(A1)
    acts = torch.stack([u, 2 * u]).unsqueeze(0)
    outputs = ExplainOutputs(torch.zeros(1, 2), acts, torch.zeros(1, 2, 2, 2, 2), torch.tensor([[0, 1]]))
    maps = EigenCAM().compute(context_for(outputs, IMAGE)).maps
    assert torch.allclose(maps[0, 0], math.sqrt(5) * u, atol=1e-5)
    assert torch.equal(maps[0, 0], maps[0, 1])  # class-agnostic: both targets get the same map


def test_eigencam_picks_the_dominant_channel():
    # A^1 = [[1, 0], [0, 0]], A^2 = [[0, 0], [0, 2]]: M^T M = diag(1, 4), v1 = +-(0, 1), M v1 = +-A^2;
    # the sign fix makes the projection's sum positive.
    acts = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 2.0]]]])
    outputs = ExplainOutputs(torch.zeros(1, 2), acts, torch.zeros(1, 1, 2, 2, 2), torch.tensor([[0]]))
    maps = EigenCAM().compute(context_for(outputs, IMAGE)).maps
    assert torch.allclose(maps[0, 0], torch.tensor([[0.0, 0.0], [0.0, 2.0]]), atol=1e-6)


def test_guided_backprop_and_guided_gradcam():
    # guided gradient per colour channel; the map is max_c |G_c| = [[2, 3], [1, 2]]
    guided = torch.tensor([[[1.0, -3.0], [0.0, 2.0]], [[-2.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [-1.0, 1.0]]])
    runner = golden_runner()
    runner.guided_gradients = guided.reshape(1, 1, 3, 2, 2)  # [N,T,3,H,W]
    out = compute_maps(
        runner, IMAGE, None, ["guidedbackprop", "guidedgradcam"], num_classes=2, options=RAW, runtime=TORCH
    )
    assert torch.allclose(out.maps["guidedbackprop"][0, 0], torch.tensor([[2.0, 3.0], [1.0, 2.0]]))
    assert torch.equal(out.rgb["guidedbackprop"][0, 0], guided)
    # Grad-CAM map [[1, 2.25], [1, 1]] times [[2, 3], [1, 2]]
    assert torch.allclose(out.maps["guidedgradcam"][0, 0], torch.tensor([[2.0, 6.75], [1.0, 2.0]]))
    assert torch.allclose(out.rgb["guidedgradcam"][0, 0], guided * torch.tensor([[1.0, 2.25], [1.0, 1.0]]))
    assert runner.calls["guided"] == [1]  # the guided graph ran once for both methods


def test_layercam_fuses_layers_by_the_max_of_tanh_scaled_normalised_maps():
    fine = torch.tensor([[[[0.0, 1.0, 2.0, 3.0]] * 4]])  # [1,1,4,4], columns normalised 0, 1/3, 2/3, 1
    coarse = torch.tensor([[[[0.0, 4.0], [0.0, 4.0]]]])  # normalised columns 0, 1; upsampled: 0, 1/4, 3/4, 1
    fused = LayerCAM.fuse([fine, coarse], eps=1e-7)
    t2 = math.tanh(2.0)
    expected_row = torch.tensor(
        [0.0, max(math.tanh(2 / 3), t2 / 4), max(math.tanh(4 / 3), 0.75 * t2), t2]
    )  # tanh(2m) of each, the coarse one upsampled after scaling, then the element-wise max
    assert fused.shape == (1, 1, 4, 4)
    assert torch.allclose(fused[0, 0], expected_row.expand(4, 4))
    assert LayerCAM.fuse([coarse], eps=1e-7) is coarse  # one layer: the raw map as it is


def test_normalised_and_upsampled_gradcam():
    # raw [[1, 2.25], [1, 1]]; bilinear (half-pixel centres) to 4x4: first row [1, 1.3125, 1.9375, 2.25],
    # second row 0.75 * first + 0.25 * 1, third 0.25 * first + 0.75 * 1, last all ones; min 1, max 2.25.
    maps = raw_map("gradcam", options=ExplainOptions(output_size="4x4"))[0, 0]
    expected = torch.tensor(
        [
            [0.0, 0.25, 0.75, 1.0],
            [0.0, 0.1875, 0.5625, 0.75],
            [0.0, 0.0625, 0.1875, 0.25],
            [0.0, 0.0, 0.0, 0.0],
        ]
    )
    assert torch.allclose(maps, expected, atol=1e-6)


@pytest.mark.parametrize(
    "method", ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "ablationcam"]
)
def test_normalised_maps_span_zero_to_one(method):
    maps = raw_map(method, options=ExplainOptions(output_size="feature"))
    assert float(maps.min()) == 0.0
    assert float(maps.max()) == pytest.approx(1.0)


def test_a_constant_map_normalises_to_zeros_not_nan():
    # All gradients zero: every weight 0, the map is constant 0 -> all zeros (no location), not NaN.
    runner = ScriptedRunner(golden_activations(), torch.zeros(1, 2, 2, 2, 2), torch.tensor(HEAD_W))
    maps = raw_map("gradcam", runner=runner, options=ExplainOptions())
    assert torch.equal(maps, torch.zeros(1, 1, 2, 2))
