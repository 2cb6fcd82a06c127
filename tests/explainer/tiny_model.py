"""The tiny classifier of the explainer tests: 3x16x16 inputs, target layer "3" (8 channels at 8x8),
four classes; its normalisation constants are shared with the tests that build inputs by hand."""

from __future__ import annotations

import torch
from torch import nn

INPUT_SIZE = (3, 16, 16)
MEAN = [0.5, 0.4, 0.3]
STD = [0.25, 0.2, 0.3]
CLASS_NAMES = ["ant", "bee", "cat", "dog"]


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.ReLU(),  # "3": the target layer, 8 channels at 8x8
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()
