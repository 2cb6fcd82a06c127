"""What camserve knows per torchvision architecture: defaults only (target layer, token layout,
explained output, classes).

The export itself never depends on the architecture; these entries only save the user from
naming a layer. Each classifier's default is a *cut* of the network (the head reads nothing else
from the body); LR-ASPP's head also reads an early stage, so its head re-runs the backbone
(``SplitModel``'s anchor).
"""

from __future__ import annotations

from dataclasses import dataclass

import torchvision
from torch import nn

from camserve.errors import NotFoundError

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# torchvision's segmentation weights' categories (COCO_WITH_VOC_LABELS_V1 meta), without a download
VOC_CLASSES = [
    "__background__", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
]  # fmt: skip


@dataclass(frozen=True)
class ArchDefaults:
    layer: str  # dotted module name of the default target layer
    layout: str = "nchw"
    prefix_tokens: int = 0
    input_size: tuple[int, int, int] = (3, 224, 224)
    output: str | None = None  # the explained output of a model returning a dict
    num_classes: int = 1000


def _segmentation(layer: str) -> ArchDefaults:
    # dict output {"out": [N,C,H,W]} (aux_loss off); 21 classes as torchvision's VOC-labelled weights
    return ArchDefaults(layer, output="out", num_classes=len(VOC_CLASSES))


def _vgg(layer: str) -> ArchDefaults:
    # the last ReLU of `features` (14x14 at 224 px): the layer Grad-CAM's paper uses for VGG-16
    return ArchDefaults(layer)


ARCHITECTURES: dict[str, ArchDefaults] = {
    "resnet18": ArchDefaults("layer4"),
    "resnet50": ArchDefaults("layer4"),
    "resnet101": ArchDefaults("layer4"),
    "vgg11": _vgg("features.19"),
    "vgg11_bn": _vgg("features.27"),
    "vgg16": _vgg("features.29"),
    "vgg16_bn": _vgg("features.42"),
    "densenet121": ArchDefaults("features"),  # norm5; the head applies ReLU, GAP, linear
    "mobilenet_v2": ArchDefaults("features"),
    "mobilenet_v3_large": ArchDefaults("features"),
    "efficientnet_b0": ArchDefaults("features"),
    "convnext_tiny": ArchDefaults("features"),
    # the input of the last encoder block: its attention mixes the patch tokens into the class token
    "vit_b_16": ArchDefaults("encoder.layers.encoder_layer_10", layout="tokens", prefix_tokens=1),
    "swin_t": ArchDefaults("features", layout="nhwc"),
    # segmentation (output kind dense): the backbone's last stage
    "fcn_resnet50": _segmentation("backbone.layer4"),
    "deeplabv3_mobilenet_v3_large": _segmentation("backbone.16"),
    "lraspp_mobilenet_v3_large": _segmentation("backbone.16"),
}
SEGMENTATION = ("fcn_resnet50", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large")


def arch_defaults(arch: str) -> ArchDefaults:
    if arch not in ARCHITECTURES:
        raise NotFoundError(f"unknown architecture {arch!r}; supported: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch]


def build_torchvision(
    arch: str, input_size: tuple[int, int, int] | None = None, num_classes: int | None = None
) -> nn.Module:
    """An untrained torchvision model (weights are loaded from a file afterwards); ``num_classes``
    None: the architecture's default."""
    defaults = arch_defaults(arch)
    kwargs: dict = {"num_classes": defaults.num_classes if num_classes is None else num_classes}
    if arch in SEGMENTATION:
        kwargs["weights_backbone"] = None  # no download
        if not arch.startswith("lraspp"):
            kwargs["aux_loss"] = False  # one output, "out"
    if arch.startswith("vit") and input_size is not None:
        kwargs["image_size"] = input_size[1]  # ViT's position embedding fixes the input size
    return torchvision.models.get_model(arch, weights=None, **kwargs)


def default_class_names(arch: str, num_classes: int) -> list[str] | None:
    """The class names of an architecture's torchvision weights when the class count is theirs."""
    if arch in SEGMENTATION:
        return list(VOC_CLASSES) if num_classes == len(VOC_CLASSES) else None
    return imagenet_class_names() if num_classes == 1000 else None


def imagenet_class_names() -> list[str]:
    """ImageNet-1k class names, as torchvision ships them (no download)."""
    return list(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
