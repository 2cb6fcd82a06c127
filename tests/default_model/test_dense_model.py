"""The dense default model: the scenes' exact masks, reproducible training, the shipped weights' scores."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from camserve.default_model import (
    DENSE_CLASS_NAMES,
    DENSE_TRAINING_RECORD_PATH,
    DENSE_WEIGHTS_PATH,
    WEIGHTS_PATH,
    load_dense_model,
)
from camserve.default_model.data import make_localisation_dataset
from camserve.default_model.net import BACKGROUND, DigitSegNet
from camserve.default_model.train import state_dict_bytes
from camserve.default_model.train_dense import (
    DenseTrainingPlan,
    make_dense_test_set,
    segmentation_scores,
    train_dense,
)
from camserve.errors import InvalidArgumentError

SHORT_PLAN = DenseTrainingPlan(train_images=64, epochs=1, batch_size=32, test_images=4)


def test_each_copys_pixels_are_its_own_ink_inside_its_box() -> None:
    ds = make_localisation_dataset(6, seed=5, instances=(2, 4), split="test")
    assert torch.equal(ds.masks, ds.instances > 0)
    for i in range(len(ds)):
        copies = ds.instance_masks(i)
        assert copies.shape == (len(ds.boxes[i]), 64, 64)
        assert torch.equal(copies.any(0), ds.masks[i]) and int(copies.sum(0).max()) == 1
        for copy, (x0, y0, x1, y1) in zip(copies, ds.boxes[i].tolist(), strict=True):
            rows, cols = torch.nonzero(copy, as_tuple=True)
            # the box is the exact extent of the copy's ink
            assert (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1) == (
                x0,
                y0,
                x1,
                y1,
            )
    labels = ds.pixel_labels(BACKGROUND)
    assert torch.equal(labels[~ds.masks], torch.full_like(labels[~ds.masks], BACKGROUND))
    assert torch.equal(labels[0][ds.masks[0]].unique(), ds.labels[:1])


def test_the_dense_net_returns_per_pixel_logits_at_the_input_size() -> None:
    model = DigitSegNet().eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 11, 64, 64)
    assert DENSE_CLASS_NAMES[BACKGROUND] == "background" and DENSE_CLASS_NAMES[:10] == [
        str(d) for d in range(10)
    ]


def test_a_short_dense_training_run_is_bit_for_bit_reproducible() -> None:
    first = train_dense(SHORT_PLAN, max_steps=2)
    second = train_dense(SHORT_PLAN, max_steps=2)
    assert state_dict_bytes(first.model) == state_dict_bytes(second.model)
    assert first.epoch_losses == second.epoch_losses
    # the backbone starts from the shipped classifier and the two steps moved it
    classifier = torch.load(WEIGHTS_PATH, weights_only=True)
    assert not torch.equal(classifier["features.block1.conv.weight"], first.model.features.block1.conv.weight)
    with pytest.raises(InvalidArgumentError, match="train_images"):
        train_dense(DenseTrainingPlan(train_images=8))


def test_segmentation_scores_by_hand() -> None:
    ds = make_localisation_dataset(2, seed=0, split="test")
    truth = ds.pixel_labels(BACKGROUND)

    class Oracle(torch.nn.Module):
        """Predicts the truth except on image 1, which it calls all background."""

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            labels = truth.clone()
            labels[1] = BACKGROUND
            return torch.nn.functional.one_hot(labels, 11).permute(0, 3, 1, 2).float()

    scores = segmentation_scores(Oracle(), ds)
    ink0, ink1 = int(ds.masks[0].sum()), int(ds.masks[1].sum())
    total = 2 * 64 * 64
    assert scores.pixel_accuracy == pytest.approx((total - ink1) / total)
    background_iou = (total - ink0 - ink1) / (total - ink0)
    assert scores.class_iou[BACKGROUND] == pytest.approx(background_iou)
    assert scores.foreground_iou == pytest.approx(ink0 / (ink0 + ink1))
    c0, c1 = int(ds.labels[0]), int(ds.labels[1])
    assert c0 != c1  # (seed 0 draws two classes)
    assert scores.class_iou[c0] == 1.0 and scores.class_iou[c1] == 0.0
    assert all(scores.class_iou[c] == 0.0 for c in range(10) if c not in (c0, c1))  # absent: 0 / 0 -> 0
    assert scores.mean_iou == pytest.approx((1.0 + background_iou) / 11)


def test_the_shipped_dense_weights_reach_their_recorded_scores() -> None:
    record = json.loads(DENSE_TRAINING_RECORD_PATH.read_text())
    payload = DENSE_WEIGHTS_PATH.read_bytes()
    assert len(payload) < 1024 * 1024
    assert hashlib.sha256(payload).hexdigest() == record["weights_sha256"]
    assert record["classifier_weights_sha256"] == hashlib.sha256(WEIGHTS_PATH.read_bytes()).hexdigest()
    plan = DenseTrainingPlan(
        **{**record["plan"], "train_instances": tuple(record["plan"]["train_instances"])}
    )
    assert plan == DenseTrainingPlan(), "dense_training.json was written with a plan other than the default"
    scores = segmentation_scores(load_dense_model(), make_dense_test_set(plan))
    assert scores.pixel_accuracy == pytest.approx(record["pixel_accuracy"], abs=1e-4)
    assert scores.mean_iou == pytest.approx(record["mean_iou"], abs=1e-3)
    assert scores.pixel_accuracy >= 0.95 and scores.mean_iou >= 0.6
