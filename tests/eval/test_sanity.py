"""Spearman rank correlation against hand values and scipy, and the cascade on a tiny CNN."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from camserve.errors import InvalidArgumentError
from camserve.eval.sanity import (
    average_ranks,
    cascading_randomisation,
    randomisation_order,
    spearman_rank_correlation,
)


def test_average_ranks_match_scipy():
    from scipy.stats import rankdata

    values = torch.randint(0, 5, (3, 40), generator=torch.Generator().manual_seed(0)).float()
    expected = torch.from_numpy(rankdata(values.numpy(), axis=-1))
    torch.testing.assert_close(average_ranks(values), expected)


def test_spearman_by_hand():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert float(spearman_rank_correlation(a, -a)) == pytest.approx(-1.0)
    assert float(spearman_rank_correlation(a, a.exp())) == pytest.approx(1.0)
    assert float(spearman_rank_correlation(a, torch.ones(2, 2))) == 0.0
    # ranks [1, 2.5, 2.5, 4] vs [1, 3, 2, 4]: centred dot 4.5, norms^2 4.5 and 5
    tied = torch.tensor([[1.0, 2.0], [2.0, 3.0]])
    other = torch.tensor([[1.0, 3.0], [2.0, 4.0]])
    assert float(spearman_rank_correlation(tied, other)) == pytest.approx(4.5 / math.sqrt(22.5))
    with pytest.raises(InvalidArgumentError, match="maps"):
        spearman_rank_correlation(a, a[:1])


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def gradcam_maps(model: TinyNet, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Plain Grad-CAM [N,1,H,W] by autograd, for the cascade test."""
    acts = model.features(images)
    logits = model.fc(model.pool(acts).flatten(1))
    grads = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), acts)[0]
    return (grads.mean(dim=(2, 3), keepdim=True) * acts).sum(1, keepdim=True).clamp_min(0).detach()


def test_randomisation_order_is_top_first():
    assert randomisation_order(TinyNet()) == ["fc", "features.1", "features.0"]


def test_cascade_separates_model_maps_from_a_model_blind_map():
    torch.manual_seed(0)
    model = TinyNet().eval()
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 1, 2, 3])
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def maps_for_model(m: nn.Module) -> dict[str, torch.Tensor]:
        edges = (images[:, :, :, 1:] - images[:, :, :, :-1]).abs().sum(1, keepdim=True)
        return {"gradcam": gradcam_maps(m, images, targets), "edges": edges}

    result = cascading_randomisation(model, maps_for_model, seed=0)
    assert result.stages == ["fc", "features.1", "features.0"]
    assert result.correlations["gradcam"].shape == (3, 4, 1)
    # the model-blind map never changes; Grad-CAM's maps decorrelate once every layer is random
    assert result.mean_curve("edges").tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert float(result.final("gradcam").abs().mean()) < 0.6
    # the trained model is left as it was
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key])


def test_cascade_rejects_unknown_stage():
    with pytest.raises(InvalidArgumentError, match="stages"):
        cascading_randomisation(TinyNet(), lambda m: {}, stages=["nope"])
