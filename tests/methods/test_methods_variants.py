"""The methods of issue 24 inside compute_maps: what they run (and how often), their maths against
numpy / scikit-learn on hand-made tensors, and their refusals. (Agreement with the anchors
themselves: test_methods_anchors.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from camserve.config import ExplainOptions, RuntimeConfig
from camserve.errors import UnsupportedError
from camserve.export.eager import TorchGraphRunner
from camserve.methods import compute_maps
from camserve.methods.eigen import KPCACAM, principal_projection
from camserve.methods.score_variants import sscam_noise
from camserve.outputs import ExplainOutputs
from tests.methods.methods_fixtures import CountingRunner, context_for

CHANNELS = 4


@pytest.fixture(scope="module")
def runner() -> TorchGraphRunner:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, CHANNELS, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(CHANNELS, 5),
    ).eval()
    return TorchGraphRunner(net, "1", (3, 8, 8))


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 2.0 - 1.0


def test_gradient_variants_share_the_explain_run(runner, images):
    counting = CountingRunner(runner)
    methods = ["eigengradcam", "kpcacam", "gradcamelementwise", "refinecam", "fem", "shapleycam"]
    out = compute_maps(
        counting, images, [[0, 3]], methods, num_classes=5, cam_weights=torch.zeros(5, CHANNELS)
    )
    assert counting.calls == {"explain": [2]}
    assert all(out.maps[m].shape == (2, 2, 8, 8) for m in methods)


def test_class_agnostic_methods_give_every_target_the_same_map(runner, images):
    out = compute_maps(runner, images, [[0, 3, -1]], ["kpcacam", "fem"], num_classes=5)
    for maps in out.maps.values():
        assert torch.equal(maps[:, 0], maps[:, 1]) and torch.equal(maps[:, 0], maps[:, 2])


class TargetRecorder(CountingRunner):
    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.targets: list[torch.Tensor] = []

    def explain(self, images, targets):
        self.targets.append(targets.ids.clone())
        return super().explain(images, targets)


def test_finercam_runs_one_more_explain_for_the_three_nearest_classes(runner, images):
    counting = TargetRecorder(runner)
    runtime = RuntimeConfig(max_graph_batch=1)
    out = compute_maps(counting, images, [[1, -1]], ["finercam"], num_classes=5, runtime=runtime)
    assert counting.calls["explain"] == [1, 1, 1, 1]  # the shared run, then the comparisons, in chunks of 1
    assert torch.equal(torch.cat(counting.seen["explain"][2:]), images)
    comparisons = torch.cat(counting.targets[2:])  # [N, T*3]
    for n in range(2):
        for t in range(2):
            c = int(out.target_ids[n, t])
            distance = (out.logits[n] - out.logits[n, c]).abs()
            nearest = sorted((j for j in range(5) if j != c), key=lambda j: float(distance[j]))[:3]
            assert comparisons[n, 3 * t : 3 * t + 3].tolist() == nearest
    assert out.maps["finercam"].shape == (2, 2, 8, 8)


def test_score_variants_run_samples_times_channels_forward_images(runner, images):
    options = ExplainOptions(smooth_n=3, score_top_n=2)
    for method in ("sscam", "iscam"):
        counting = CountingRunner(runner)
        compute_maps(
            counting,
            images,
            [[0]],
            [method],
            num_classes=5,
            options=options,
            runtime=RuntimeConfig(max_graph_batch=5),
        )
        assert sum(counting.calls["forward"]) == 2 * 2 * 3  # images x score_top_n x smooth_n
        assert max(counting.calls["forward"]) <= 5


def test_iscam_masks_scale_by_the_running_sum(runner, images):
    """Sample i of a channel's masked image is (1 + ... + i)/S times sample 1's (S = 4)."""
    counting = CountingRunner(runner)
    compute_maps(
        counting,
        images[:1],
        [[0]],
        ["iscam"],
        num_classes=5,
        options=ExplainOptions(smooth_n=4, score_top_n=1),
    )
    masked = torch.cat(counting.seen["forward"])  # one channel x 4 samples
    for i in range(4):
        assert torch.allclose(masked[i], masked[0] * (i + 1) * (i + 2) / 2, atol=1e-6)


def test_sscam_noise_is_seeded_per_sample_and_channel():
    options = ExplainOptions(smooth_sigma=0.5, smooth_seed=3)
    a = sscam_noise(options, torch.Size((6, 6)), torch.tensor([0, 1, 0]), torch.tensor([2, 2, 5]), "cpu")
    b = sscam_noise(options, torch.Size((6, 6)), torch.tensor([0]), torch.tensor([2]), "cpu")
    assert torch.equal(a[0], b[0])  # the same (sample, channel) whatever else is in the chunk
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[0], a[2])
    other = sscam_noise(
        ExplainOptions(smooth_sigma=0.5, smooth_seed=4),
        torch.Size((6, 6)),
        torch.tensor([0]),
        torch.tensor([2]),
        "cpu",
    )
    assert not torch.equal(a[0], other[0])


def test_shapleycam_is_refused_without_a_gap_linear_head(runner, images):
    with pytest.raises(UnsupportedError, match="Hessian-vector product"):
        compute_maps(runner, images, None, ["shapleycam"], num_classes=5)
    out = compute_maps(
        runner, images, None, ["shapleycam", "gradcam"], num_classes=5, cam_weights=torch.zeros(5, CHANNELS)
    )
    assert torch.equal(out.maps["shapleycam"], out.maps["gradcam"])


@pytest.mark.parametrize(
    "shape", [(2, 6, 3, 3), (2, 3, 4, 5)]
)  # Z <= K (pixel Gram) and Z > K (channel Gram)
def test_principal_projection_is_the_centred_first_component(shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    ours = principal_projection(x)
    for b in range(shape[0]):
        rows = x[b].reshape(shape[1], -1).T.double().numpy()
        rows = rows - rows.mean(axis=0)
        projection = rows @ np.linalg.svd(rows)[2][0]
        if abs(projection.min()) > abs(projection.max()):
            projection = -projection
        np.testing.assert_allclose(ours[b].reshape(-1).numpy(), projection, rtol=1e-4, atol=1e-5)


def test_kpcacam_equals_scikit_learns_kernel_pca_past_its_arpack_switch():
    """Z = 225 pixels > 200: scikit-learn solves with ARPACK; the top eigenpair is the same."""
    from sklearn.decomposition import KernelPCA

    activations = torch.rand(1, 6, 15, 15, generator=torch.Generator().manual_seed(4))
    outputs = ExplainOutputs(
        torch.zeros(1, 2), activations, torch.zeros(1, 1, 6, 15, 15), torch.zeros(1, 1, dtype=torch.int64)
    )
    ours = KPCACAM().compute(context_for(outputs, torch.zeros(1, 3, 15, 15))).maps[0, 0]
    rows = activations[0].reshape(6, -1).T.double().numpy()
    rows = rows - rows.mean(axis=0)
    theirs = KernelPCA(n_components=1, kernel="sigmoid").fit_transform(rows)[:, 0]
    np.testing.assert_allclose(ours.reshape(-1).numpy(), np.maximum(theirs, 0), atol=1e-5)
