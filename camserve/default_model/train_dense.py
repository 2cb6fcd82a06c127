"""Deterministic training of the dense default model (DigitSegNet on the digit scenes' exact masks).

    python -m camserve.default_model.train --dense --out camserve/default_model/dense_weights.pt

reproduces the committed dense weights on the same machine and torch build, as the classifier's
training does (``camserve.default_model.train``): fixed seeds, deterministic kernels, 2 threads, a
fixed number of steps. The backbone starts from the shipped DigitCamNet weights (its digit features
are what a per-pixel class needs; training them from scratch takes several times longer for a lower
mIoU), so the record names their sha256 too. Every pixel's target is the image's digit class on the
digits' ink and ``BACKGROUND`` elsewhere; digit pixels weigh ``foreground_weight`` in the loss (about
a tenth of the pixels are ink). It writes the weights and ``dense_training.json`` beside them: the
plan, the losses, pixel accuracy and mIoU on held-out scenes, the weights' sha256.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from camserve.default_model.data import CLASS_NAMES, LocalisationDataset, make_localisation_dataset
from camserve.default_model.net import BACKGROUND, DigitSegNet, normalize
from camserve.default_model.train import (
    TRAINING_THREADS,
    EpochPlan,
    deterministic_torch,
    run_epochs,
    state_dict_bytes,
)
from camserve.errors import InvalidArgumentError

logger = logging.getLogger(__name__)

DENSE_CLASSES = len(CLASS_NAMES) + 1  # the digits, then the background
RECORD_NAME = "dense_training.json"


@dataclass(frozen=True)
class DenseTrainingPlan:
    """Everything that decides the dense weights. The defaults produced the committed ones."""

    seed: int = 0
    train_images: int = 4000
    train_instances: tuple[int, int] = (1, 4)
    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 5e-3
    weight_decay: float = 1e-4
    foreground_weight: float = 2.0
    init_from_classifier: bool = True  # the backbone starts from the shipped DigitCamNet weights
    test_images: int = 500
    test_seed: int = 1  # held-out scenes: make_localisation_dataset(test_images, test_seed, (1, 4), "test")

    @property
    def steps(self) -> int:
        return self.epochs * -(-self.train_images // self.batch_size)


@dataclass(frozen=True)
class SegmentationScores:
    """Per-pixel scores of a dense model on a dataset."""

    pixel_accuracy: float
    mean_iou: float  # over the 11 classes (background included), as the segmentation papers report
    class_iou: list[float]
    foreground_iou: float  # digit ink vs background, whatever the class


@dataclass
class DenseTrainingResult:
    model: DigitSegNet
    epoch_losses: list[float]
    scores: SegmentationScores
    seconds: float
    cpu_seconds: float


def make_dense_test_set(plan: DenseTrainingPlan = DenseTrainingPlan()) -> LocalisationDataset:
    """The held-out scenes (test-split digits, 1-4 copies) whose scores dense_training.json records."""
    return make_localisation_dataset(plan.test_images, seed=plan.test_seed, instances=(1, 4), split="test")


def train_dense(
    plan: DenseTrainingPlan = DenseTrainingPlan(), max_steps: int | None = None
) -> DenseTrainingResult:
    """Train a DigitSegNet; max_steps stops early (tests use a few steps)."""
    if plan.train_images < plan.batch_size:
        raise InvalidArgumentError("train_images", f"need at least one batch of {plan.batch_size}")
    started, started_cpu = time.perf_counter(), time.process_time()
    with deterministic_torch():
        torch.manual_seed(plan.seed)
        train_set = make_localisation_dataset(
            plan.train_images, seed=plan.seed, instances=plan.train_instances, split="train"
        )
        inputs, targets = normalize(train_set.images), train_set.pixel_labels(BACKGROUND)
        model = DigitSegNet(num_classes=DENSE_CLASSES)
        if plan.init_from_classifier:
            from camserve.default_model import load_default_model

            model.features.load_state_dict(load_default_model().features.state_dict())
        weight = torch.full((DENSE_CLASSES,), plan.foreground_weight)
        weight[BACKGROUND] = 1.0
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=plan.learning_rate, weight_decay=plan.weight_decay
        )
        epoch_losses = run_epochs(
            model,
            optimizer,
            lambda batch: F.cross_entropy(model(inputs[batch]), targets[batch], weight=weight),
            len(train_set),
            EpochPlan(plan.seed, plan.epochs, plan.batch_size, plan.learning_rate, plan.steps),
            max_steps,
        )
        scores = segmentation_scores(model, make_dense_test_set(plan))
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - started_cpu
    logger.info(
        "held-out scenes: pixel accuracy %.4f, mIoU %.4f; %.1f s (%.1f CPU s)",
        scores.pixel_accuracy,
        scores.mean_iou,
        seconds,
        cpu_seconds,
    )
    return DenseTrainingResult(model, epoch_losses, scores, seconds, cpu_seconds)


@torch.no_grad()
def segmentation_scores(
    model: torch.nn.Module, dataset: LocalisationDataset, batch_size: int = 250
) -> SegmentationScores:
    """Pixel accuracy, per-class and mean IoU of ``model`` (eval mode) on ``dataset``'s exact masks."""
    truth = dataset.pixel_labels(BACKGROUND)
    intersection = torch.zeros(DENSE_CLASSES, dtype=torch.int64)
    union = torch.zeros(DENSE_CLASSES, dtype=torch.int64)
    correct = fg_inter = fg_union = 0
    for start in range(0, len(dataset), batch_size):
        predicted = model(normalize(dataset.images[start : start + batch_size])).argmax(dim=1)
        true = truth[start : start + batch_size]
        correct += int((predicted == true).sum())
        classes = torch.arange(DENSE_CLASSES).reshape(-1, 1, 1, 1)
        is_pred, is_true = predicted[None] == classes, true[None] == classes
        intersection += (is_pred & is_true).flatten(1).sum(1)
        union += (is_pred | is_true).flatten(1).sum(1)
        fg_pred, fg_true = predicted != BACKGROUND, true != BACKGROUND
        fg_inter += int((fg_pred & fg_true).sum())
        fg_union += int((fg_pred | fg_true).sum())
    iou = (intersection.double() / union.clamp_min(1).double()).tolist()
    return SegmentationScores(
        pixel_accuracy=correct / truth.numel(),
        mean_iou=sum(iou) / len(iou),
        class_iou=iou,
        foreground_iou=fg_inter / max(fg_union, 1),
    )


def write_dense_weights(result: DenseTrainingResult, plan: DenseTrainingPlan, out: Path) -> dict[str, object]:
    """Write the state_dict to ``out`` and the record to ``out``'s folder/dense_training.json."""
    from camserve.default_model import WEIGHTS_PATH

    payload = state_dict_bytes(result.model)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(payload)
    scores = result.scores
    record: dict[str, object] = {
        "plan": asdict(plan),
        "steps": plan.steps,
        "epoch_losses": [round(loss, 6) for loss in result.epoch_losses],
        "pixel_accuracy": scores.pixel_accuracy,
        "mean_iou": scores.mean_iou,
        "foreground_iou": scores.foreground_iou,
        "class_iou": [round(v, 6) for v in scores.class_iou],
        "test_set": {
            "images": plan.test_images,
            "seed": plan.test_seed,
            "instances": [1, 4],
            "split": "test",
        },
        "classifier_weights_sha256": hashlib.sha256(WEIGHTS_PATH.read_bytes()).hexdigest()
        if plan.init_from_classifier
        else None,
        "weights_file": out.name,
        "weights_sha256": hashlib.sha256(payload).hexdigest(),
        "weights_bytes": len(payload),
        "torch_version": torch.__version__,
        "threads": TRAINING_THREADS,
        "training_seconds": round(result.seconds, 1),
        "training_cpu_seconds": round(result.cpu_seconds, 1),
    }
    (out.parent / RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n")
    return record
