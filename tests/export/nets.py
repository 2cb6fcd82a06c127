"""Tiny models for export tests, importable as ``tests.export.nets:<factory>``."""

from __future__ import annotations

import torch
from torch import nn


class TinyGapNet(nn.Module):
    """conv -> ReLU -> conv (the target, 'features') -> GAP -> linear: CAM applies."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.features = nn.Sequential(nn.Conv2d(8, 6, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(6, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(self.stem(x)).mean(dim=(2, 3)))


class ResidualNet(nn.Module):
    """A skip connection around 'inner': 'inner' is not a cut, 'block' is."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = nn.Module()
        self.inner = nn.Conv2d(4, 4, 3, padding=1)
        self.unused = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        h = h + self.inner(h)
        self.unused(h)  # computed, never used: its output does not reach the logits
        return self.fc(h.mean(dim=(2, 3)))


class MaxPoolHead(nn.Module):
    """'body' -> MaxPool2d(2) -> linear: a head whose gradient depends on max-pool tie-breaking."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 2, 1, bias=False), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(2 * 2 * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.body(x)).flatten(1))


class SliceFilledMaskHead(nn.Module):
    """A head that builds a mask by writing numbers into slices (``mask[a:b, c:d] = n``), the way
    Swin builds its shifted-window attention mask, and adds it to the target layer's output."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 2, 1)
        self.fc = nn.Linear(2 * 4 * 3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        mask = h.new_zeros((4, 3))
        count = 0
        for rows in ((0, 1), (1, 4)):
            for cols in ((0, 2), (2, 3)):
                mask[rows[0] : rows[1], cols[0] : cols[1]] = count
                count += 1
        mask[-1] = 7.5  # an integer index: a view as well
        return self.fc((h * mask).flatten(1))


class GapMlpHead(nn.Module):
    """'body' -> GAP -> linear -> ReLU -> linear: ignores where a value sits, but is not affine."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU())
        self.mlp = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.body(x).mean(dim=(2, 3)))


def build_tiny() -> nn.Module:
    torch.manual_seed(0)
    return TinyGapNet()


class _Block(nn.Module):
    """conv -> ReLU -> conv, plus a skip connection around both (a ResNet basic block)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


class BlockResidualNet(nn.Module):
    """stem -> block (residual) -> GAP -> linear: 'block.conv1' is not a cut, 'block' is its anchor."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.block = _Block(4)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(self.stem(x)).mean(dim=(2, 3)))
