"""Tiny models for export tests, importable as ``tests.export.nets:<factory>``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
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


class TinyDetector(nn.Module):
    """A dense detection head (RetinaNet/FCOS-style, one anchor per cell of an 8 px grid): 'body' ->
    per-anchor class logits [N,A,C] and decoded boxes [N,A,4] (x1, y1, x2, y2 input pixels, clipped
    to the image), returned as a dict; no NMS."""

    def __init__(self, classes: int = 4, size: int = 32) -> None:
        super().__init__()
        self.size = size
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=8, padding=1), nn.ReLU()
        )
        self.cls = nn.Conv2d(8, classes, 3, padding=1)
        self.reg = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.body(x)
        n, _, gh, gw = h.shape
        scores = self.cls(h).flatten(2).transpose(1, 2)  # [N, gh·gw, C]
        deltas = 0.1 * self.reg(h).flatten(2).transpose(1, 2)  # [N, A, 4]
        stride = self.size / gh
        ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
        centres = (torch.stack([xs, ys], dim=-1).reshape(1, -1, 2).to(x.dtype) + 0.5) * stride
        centre = centres + deltas[..., :2] * stride
        half = 0.5 * 2 * stride * torch.exp(deltas[..., 2:])  # anchors of 2 cells
        boxes = torch.cat([centre - half, centre + half], dim=-1).clamp(0, self.size)
        return {"boxes": boxes, "scores": scores}


class GreyNet(nn.Module):
    """A 1-channel classifier on non-square images: conv -> ReLU -> conv ('features') -> GAP -> linear."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU())
        self.features = nn.Sequential(nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(self.stem(x)).mean(dim=(2, 3)))


class TupleNet(nn.Module):
    """Returns a tuple (features [N,6], logits [N,3]): the explained output is chosen by index."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = self.features(x).mean(dim=(2, 3))
        return pooled, self.fc(pooled)


def build_tiny_detector() -> nn.Module:
    torch.manual_seed(0)
    return TinyDetector()


class TinySegmenter(nn.Module):
    """conv ('body') -> 1x1 conv to 3 classes at half resolution, upsampled: {"aux", "out": [N,3,H,W]}."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.ReLU())
        self.classifier = nn.Conv2d(6, 3, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.classifier(self.body(x))
        return {"aux": logits, "out": F.interpolate(logits, size=x.shape[-2:], mode="bilinear")}
