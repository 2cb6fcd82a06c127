"""Finding the target layer and reshaping its output to [N,K,h,w].

A *layout* says how a layer's raw output maps to channels × grid:

- ``nchw``: already [N,K,h,w] (CNNs);
- ``nhwc``: [N,h,w,K] (Swin, ConvNeXt-style channels-last stages);
- ``tokens``: [N,L,K] with ``prefix`` leading class/register tokens, then h·w patch tokens in
  row-major order (ViT). The prefix tokens are kept aside (``extra``) so the head can be re-run.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
from torch import nn

from camserve.errors import ExportError, NotFoundError

LAYOUTS = ("nchw", "nhwc", "tokens")


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """The sub-module at dotted ``name``; a NotFoundError listing the nearest names otherwise."""
    modules = dict(model.named_modules())
    if name in modules and name != "":
        return modules[name]
    names = [n for n in modules if n]
    near = difflib.get_close_matches(name, names, n=5, cutoff=0.4)
    if not near:  # fall back to names sharing the last component, or the top-level children
        tail = name.rsplit(".", 1)[-1]
        near = [n for n in names if n.endswith(tail)][:5] or [n for n, _ in model.named_children()][:8]
    raise NotFoundError(f"layer {name!r} not found in the model; nearest names: {', '.join(near)}")


@dataclass(frozen=True)
class Layout:
    kind: str = "nchw"
    prefix: int = 0  # tokens layout: leading tokens that are not patches
    grid: tuple[int, int] | None = None  # tokens layout: (h, w) of the patch grid

    def __post_init__(self) -> None:
        if self.kind not in LAYOUTS:
            raise ExportError(f"layout {self.kind!r} is not one of {', '.join(LAYOUTS)}")

    def to_nkhw(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Raw layer output -> (activations [N,K,h,w], extra tokens [N,E,K] or None)."""
        if self.kind == "nchw":
            return raw, None
        if self.kind == "nhwc":
            return raw.permute(0, 3, 1, 2), None
        if self.grid is None:
            raise ExportError("a tokens layout needs its patch grid (h, w)")
        h, w = self.grid
        extra = raw[:, : self.prefix]
        patches = raw[:, self.prefix :]
        acts = patches.transpose(1, 2).reshape(raw.shape[0], raw.shape[2], h, w)
        return acts, extra

    def from_nkhw(self, acts: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
        """Inverse of to_nkhw: activations [M,K,h,w] (+ extra tokens) -> the layer's raw layout."""
        if self.kind == "nchw":
            return acts
        if self.kind == "nhwc":
            return acts.permute(0, 2, 3, 1)
        patches = acts.flatten(2).transpose(1, 2)
        if not self.prefix:
            return patches
        if extra is None:
            raise ExportError(f"a tokens layout with {self.prefix} leading tokens needs them back")
        return torch.cat([extra, patches], dim=1)

    @staticmethod
    def infer(raw_shape: torch.Size, kind: str, prefix: int, input_hw: tuple[int, int]) -> Layout:
        """Complete a layout from the layer's output shape (the token grid from the input's aspect)."""
        if len(raw_shape) == 4 and kind in ("nchw", "nhwc"):
            return Layout(kind)
        if kind == "tokens" and len(raw_shape) == 3:
            patches = raw_shape[1] - prefix
            ratio = input_hw[0] / input_hw[1]
            h = max(1, round((patches * ratio) ** 0.5))
            if patches <= 0 or patches % h:
                raise ExportError(
                    f"cannot arrange {patches} patch tokens (after {prefix} prefix tokens) in a grid "
                    f"with the input's aspect {input_hw[0]}x{input_hw[1]}"
                )
            return Layout("tokens", prefix, (h, patches // h))
        raise ExportError(
            f"the target layer's output has shape {tuple(raw_shape)}, which layout {kind!r} cannot read as "
            f"[N,K,h,w]; use a 4-D feature map (nchw/nhwc) or [N,L,K] tokens"
        )


def guess_layout_kind(raw_shape: torch.Size) -> tuple[str, int]:
    """Default layout for a layer whose layout was not given: 4-D -> nchw, 3-D -> tokens.

    For tokens, one prefix (class) token is assumed when L - 1 is a perfect square and L is not.
    """
    if len(raw_shape) == 4:
        return "nchw", 0
    if len(raw_shape) == 3:
        length = raw_shape[1]
        if round(length**0.5) ** 2 == length:
            return "tokens", 0
        return "tokens", 1
    raise ExportError(f"the target layer's output has shape {tuple(raw_shape)}; expected 4-D or 3-D")
