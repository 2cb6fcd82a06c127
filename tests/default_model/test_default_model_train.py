"""Training is bit-for-bit reproducible, and the committed weights are the ones training.json describes."""

from __future__ import annotations

import hashlib
import json

import torch

from camserve.default_model import TRAINING_RECORD_PATH, WEIGHTS_PATH, load_default_model
from camserve.default_model.net import DigitCamNet
from camserve.default_model.train import (
    TrainingPlan,
    deterministic_torch,
    evaluate_accuracy,
    make_test_set,
    state_dict_bytes,
    train,
)

SHORT_PLAN = TrainingPlan(train_images=128, epochs=1, batch_size=32, test_images=20)


def test_a_short_training_run_is_bit_for_bit_reproducible() -> None:
    first = train(SHORT_PLAN, max_steps=3)
    second = train(SHORT_PLAN, max_steps=3)
    other_seed = train(TrainingPlan(**{**SHORT_PLAN.__dict__, "seed": 1}), max_steps=3)
    assert state_dict_bytes(first.model) == state_dict_bytes(second.model)
    assert first.epoch_losses == second.epoch_losses
    # The three steps did change the weights, and the seed matters.
    assert state_dict_bytes(first.model) != state_dict_bytes(other_seed.model)
    torch.manual_seed(SHORT_PLAN.seed)  # train() draws the initial weights right after this seed
    initial = DigitCamNet()
    assert not torch.equal(initial.fc.weight, first.model.fc.weight)


def test_deterministic_torch_restores_the_callers_settings() -> None:
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    with deterministic_torch(threads=1):
        assert torch.get_num_threads() == 1
        assert torch.are_deterministic_algorithms_enabled()
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic


def test_committed_weights_match_their_training_record() -> None:
    record = json.loads(TRAINING_RECORD_PATH.read_text())
    payload = WEIGHTS_PATH.read_bytes()
    assert len(payload) < 2 * 1024 * 1024
    assert hashlib.sha256(payload).hexdigest() == record["weights_sha256"]
    plan = TrainingPlan(**{**record["plan"], "train_instances": tuple(record["plan"]["train_instances"])})
    assert plan == TrainingPlan(), "training.json was written with a plan other than the default"
    model = load_default_model()
    accuracy = evaluate_accuracy(model, make_test_set(plan))
    assert abs(accuracy - record["test_accuracy"]) <= 0.005
    assert accuracy >= 0.95
