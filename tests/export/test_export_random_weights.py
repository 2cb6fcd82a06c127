"""`camserve export --random-weights`: seeded weights that give distinct logits and non-zero
gradients, even for ViT, whose classifier torchvision initialises to zeros."""

from __future__ import annotations

import pytest
import torch

from camserve.cli import main
from camserve.modeldir import ModelDirectory
from camserve.runtime import OnnxGraphRunner


@pytest.mark.slow
def test_vit_random_weights_do_not_tie_every_logit(tmp_path) -> None:
    out = tmp_path / "vit"
    argv = ["export", "--arch", "vit_b_16", "--random-weights", "--input-size", "3x32x32", "--out", str(out)]
    assert main([*argv, "--graphs", "explain"]) == 0
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    got = OnnxGraphRunner(ModelDirectory(out)).explain(images, torch.tensor([[-1], [-2]]))
    assert bool((got.logits.std(dim=1) > 1e-3).all())  # a zero classifier gives std 0: every logit ties
    assert bool((got.gradients.flatten(1).abs().amax(dim=1) > 0).all())
    # the seed fixes the weights: a second export explains to the same numbers
    assert main([*argv, "--graphs", "explain", "--force"]) == 0
    again = OnnxGraphRunner(ModelDirectory(out)).explain(images, torch.tensor([[-1], [-2]]))
    torch.testing.assert_close(again.logits, got.logits, rtol=0, atol=0)
