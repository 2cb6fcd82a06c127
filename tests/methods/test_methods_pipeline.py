"""compute_maps as a whole: what it runs (and how often), targets, output sizes, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from camserve.config import ExplainOptions, RuntimeConfig
from camserve.errors import InvalidArgumentError, UnsupportedError
from camserve.export.eager import TorchGraphRunner
from camserve.methods import compute_maps, known_methods, parse_targets, resolve_targets
from tests.methods.methods_fixtures import CountingRunner, golden_runner

IMAGE = torch.ones(1, 3, 2, 2)


@pytest.fixture(scope="module")
def tiny_runner() -> TorchGraphRunner:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    ).eval()
    return TorchGraphRunner(net, "1", (3, 16, 16))


@pytest.fixture(scope="module")
def tiny_images() -> torch.Tensor:
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(5)) * 4.0 - 1.0  # range ~4


# -- what runs ------------------------------------------------------------------------------------


def test_cheap_methods_share_one_explain_run_and_nothing_else(tiny_runner, tiny_images):
    runner = CountingRunner(tiny_runner)
    methods = ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "eigencam"]
    out = compute_maps(runner, tiny_images, None, methods, num_classes=3)
    assert runner.calls == {"explain": [2]}
    assert list(out.maps) == methods


def test_smooth_noisy_copies_ride_in_the_explain_run_in_chunks(tiny_runner, tiny_images):
    runner = CountingRunner(tiny_runner)
    options = ExplainOptions(smooth_n=4, smooth_sigma=0.1)
    compute_maps(
        runner,
        tiny_images,
        [[1]],
        ["smoothgradcam++", "gradcam"],
        num_classes=3,
        options=options,
        runtime=RuntimeConfig(max_graph_batch=4),
    )
    # explicit targets: no forward pass to resolve them; 2 clean + 8 noisy images in chunks of 4
    assert "forward" not in runner.calls
    assert runner.calls["explain"] == [4, 4, 2]
    batch = torch.cat(runner.seen["explain"])
    assert torch.equal(batch[:2], tiny_images)
    noise = (batch[2:] - tiny_images.repeat(4, 1, 1, 1)).reshape(4, 2, -1)
    value_range = tiny_images.flatten(1).amax(dim=1) - tiny_images.flatten(1).amin(dim=1)
    measured = noise.transpose(0, 1).reshape(2, -1).std(dim=1)
    assert torch.allclose(measured, 0.1 * value_range, rtol=0.05)  # sigma = smooth_sigma * (max - min)


def test_smooth_noise_is_reproducible_from_its_seed(tiny_runner, tiny_images):
    def noisy_batch(seed: int) -> torch.Tensor:
        runner = CountingRunner(tiny_runner)
        options = ExplainOptions(smooth_n=2, smooth_seed=seed)
        out = compute_maps(runner, tiny_images, [[0]], ["smoothgradcam++"], num_classes=3, options=options)
        return runner.seen["explain"][0], out.maps["smoothgradcam++"]

    first, first_maps = noisy_batch(0)
    again, again_maps = noisy_batch(0)
    other, _ = noisy_batch(1)
    assert torch.equal(first, again) and torch.equal(first_maps, again_maps)
    assert not torch.equal(first[2:], other[2:])


def test_scorecam_and_ablationcam_batch_their_extra_runs():
    runner = golden_runner()
    compute_maps(
        runner,
        IMAGE,
        None,
        ["scorecam", "ablationcam"],
        num_classes=2,
        runtime=RuntimeConfig(max_graph_batch=1),
    )
    assert runner.calls["explain"] == [1]
    assert runner.calls["forward"] == [1, 1]  # two channels, batches of one
    assert runner.calls["head"] == [1, 1]


# -- targets --------------------------------------------------------------------------------------


def test_target_forms():
    assert parse_targets(None, 3, 10).tolist() == [[-1], [-1], [-1]]
    assert parse_targets(4, 2, 10).tolist() == [[4], [4]]
    assert parse_targets([[1, -2]], 2, 10).tolist() == [[1, -2], [1, -2]]  # [1,T] broadcast
    assert parse_targets([[1], [2]], 2, 10).tolist() == [[1], [2]]
    assert parse_targets(np.array([[9, -10]]), 1, 10).tolist() == [[9, -10]]
    assert parse_targets(torch.tensor([[0, 1]], dtype=torch.int32), 1, 10).dtype == torch.int64


@pytest.mark.parametrize(
    "targets, fragment",
    [
        ([[10]], "class 10 is out of range"),
        ([[-11]], "class -11 is out of range"),
        ([3, 5], "1-D"),
        ([[1.5]], "integer"),
        (np.array([[True]]), "integer"),
        (True, "ints"),
        ([[1], [2], [3]], "3 rows for 2 images"),
        ([[]], "at least one target"),
        ([[1, 2], [3]], "rectangular"),
        ("cat", "got str"),
    ],
)
def test_bad_targets_name_the_argument(targets, fragment):
    with pytest.raises(InvalidArgumentError, match=fragment) as info:
        parse_targets(targets, 2, 10)
    assert info.value.argument == "targets"


def test_negative_targets_resolve_like_the_explain_graph():
    # ranks: row 0 -> 1, 3, 0, 2; row 1 -> 0, 2, 1, 3
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.0], [5.0, 0.0, 1.0, -2.0]])
    targets = torch.tensor([[-1, -2, 2], [-4, 0, -3]])
    assert resolve_targets(targets, logits).tolist() == [[1, 3, 2], [3, 0, 1]]


def test_bad_target_fails_before_any_graph_runs():
    runner = golden_runner()
    with pytest.raises(InvalidArgumentError, match="targets"):
        compute_maps(runner, IMAGE, [[2]], ["gradcam"], num_classes=2)
    assert dict(runner.calls) == {}


# -- output size ----------------------------------------------------------------------------------


def test_output_sizes(tiny_runner, tiny_images):
    for output_size, shape in (
        ("input", (16, 16)),
        ("feature", (16, 16)),
        ("5x7", (5, 7)),
        ("32X32", (32, 32)),
    ):
        out = compute_maps(
            tiny_runner,
            tiny_images,
            None,
            ["gradcam", "guidedbackprop"],
            num_classes=3,
            options=ExplainOptions(output_size=output_size),
        )
        assert out.maps["gradcam"].shape == (2, 1, *shape)
        assert out.maps["guidedbackprop"].shape == (2, 1, *shape)
        assert out.rgb["guidedbackprop"].shape == (2, 1, 3, 16, 16)  # colour evidence stays at input size


def test_input_resolution_maps_shrink_by_averaging():
    # Columns 1, 0, 0, 1, 1, 0, 0, 1 shrunk 4x: each output pixel is the mean of its 4 columns, 0.5.
    # (Bilinear sampling at half-pixel centres would read columns 1-2 and 5-6 only, and give 0.)
    runner = golden_runner()
    stripes = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0]).expand(8, 8)
    runner.guided_gradients = stripes.expand(1, 1, 3, 8, 8)
    out = compute_maps(
        runner,
        torch.ones(1, 3, 8, 8),
        None,
        ["guidedbackprop"],
        num_classes=2,
        options=ExplainOptions(output_size="2x2", normalize=False),
    )
    assert torch.allclose(out.maps["guidedbackprop"], torch.full((1, 1, 2, 2), 0.5))


# -- bad input ------------------------------------------------------------------------------------


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(InvalidArgumentError) as info:
        compute_maps(golden_runner(), IMAGE, None, ["gradcam", "gradcamm"], num_classes=2)
    assert info.value.argument == "methods"
    assert "'gradcamm'" in str(info.value)
    for name in known_methods():
        assert name in str(info.value)


def test_no_methods():
    with pytest.raises(InvalidArgumentError, match="no method"):
        compute_maps(golden_runner(), IMAGE, None, [], num_classes=2)


def test_duplicate_methods_are_computed_once():
    out = compute_maps(golden_runner(), IMAGE, None, ["gradcam", "gradcam"], num_classes=2)
    assert list(out.maps) == ["gradcam"]


def test_cam_on_a_head_without_classifier_weights_says_why():
    with pytest.raises(UnsupportedError, match="global average pooling followed by one linear layer"):
        compute_maps(golden_runner(), IMAGE, None, ["cam"], num_classes=2, model_name="vit")


@pytest.mark.parametrize(
    "options, argument",
    [
        (ExplainOptions(output_size="huge"), "options.output_size"),
        (ExplainOptions(output_size="0x4"), "options.output_size"),
        (ExplainOptions(output_size="9000x9000"), "options.output_size"),
        (ExplainOptions(smooth_n=0), "options.smooth_n"),
        (ExplainOptions(smooth_sigma=-0.1), "options.smooth_sigma"),
        (ExplainOptions(smooth_sigma=float("nan")), "options.smooth_sigma"),
        (ExplainOptions(score_top_n=-1), "options.score_top_n"),
        (ExplainOptions(eps=-1.0), "options.eps"),
        (ExplainOptions(topk_predictions=0), "options.topk_predictions"),
    ],
)
def test_bad_options_name_the_field(options, argument):
    runner = golden_runner()
    with pytest.raises(InvalidArgumentError) as info:
        compute_maps(runner, IMAGE, None, ["gradcam"], num_classes=2, options=options)
    assert info.value.argument == argument
    assert dict(runner.calls) == {}


def test_empty_batch():
    with pytest.raises(InvalidArgumentError, match="non-empty") as info:
        compute_maps(golden_runner(), torch.zeros(0, 3, 2, 2), None, ["gradcam"], num_classes=2)
    assert info.value.argument == "images"
