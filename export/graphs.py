"""The four functions camserve exports, written once in plain PyTorch.

``SplitModel`` cuts a classifier at its target layer. Its methods are ordinary eager functions
(the reference runner calls them directly) and are also what ``export.tracing`` traces to ONNX:

- ``explain(images, targets)``: the body runs once on N images; the layer's output A is captured,
  repeated T times and the *head* (everything after the layer) runs on the N·T copies, so the
  backward pass ``torch.autograd.grad`` of the selected logits runs through the head only;
- ``forward(images)``: logits only;
- ``head(activations, extra)``: logits from given activations (the body is not run);
- ``guided(images, targets)``: guided-backprop input gradients (ReLU backward passes only positive
  gradients at positive inputs), T copies of the image, one backward pass;
- ``fullgradient(images, targets)``: FullGrad's maps of class logits (``export.fullgrad``), T copies of
  the image, one backward pass to the input and every biased layer.

Layers that are not *cuts* work too (a conv inside a residual block, ViT's ``ln_1``: tensors
computed before the layer bypass it and are read after it). The export then re-enters at the
*anchor*, the innermost module around the layer whose input is a cut (the residual block, the
encoder block): the anchor's input, per image, is the head's extra input (``extra_tokens``, as ViT's
class token is for a cut), and the head re-runs the anchor from it with the layer's output replaced
— the part of the anchor before the layer (a skip, a downsample, the other tokens) is recomputed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.hooks import RemovableHandle

from camserve.errors import ExportError
from camserve.export.fullgrad import fullgrad_maps
from camserve.export.layers import Layout, find_layer, guess_layout_kind
from camserve.methods.targets import resolve_targets

if TYPE_CHECKING:
    from collections.abc import Collection
    from typing import Any


def _select(ids: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """One-hot rows [N·T, C]: the vector-Jacobian product with it is d logit[id] / d input."""
    flat = ids.reshape(-1, 1)
    return torch.zeros(flat.shape[0], num_classes, dtype=dtype, device=ids.device).scatter(1, flat, 1.0)


def _repeat(x: torch.Tensor, times: int) -> torch.Tensor:
    """[N,...] -> [N·times,...], each row repeated ``times`` times consecutively."""
    return x.unsqueeze(1).expand(x.shape[0], times, *x.shape[1:]).reshape(-1, *x.shape[1:])


class _GuidedReluMode(TorchDispatchMode):
    """Guided backprop (Springenberg et al. 2015): the ReLU backward ``threshold_backward(g, x, 0)``
    becomes g · [x > 0] · [g > 0]. Implemented at the aten level, so it applies to every ReLU
    (modules, functional and in-place) without touching the model, eagerly and under tracing."""

    def __torch_dispatch__(
        self,
        func: Callable[..., Any],
        types: Collection[type],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func is torch.ops.aten.threshold_backward.default:
            grad, inp, threshold = args
            keep = (inp > threshold) & (grad > 0)
            return torch.where(keep, grad, torch.zeros_like(grad))
        return func(*args, **kwargs)


@dataclass
class _Capture:
    acts: torch.Tensor | None = None
    extra: torch.Tensor | None = None
    leaf: torch.Tensor | None = None
    calls: int = 0


@dataclass(frozen=True)
class Anchor:
    """Where a non-cut layer's head re-enters: the module ``name`` around the layer, whose input
    (one tensor, ``shape`` per image) is a cut of the network."""

    name: str
    module: nn.Module
    shape: tuple[int, ...]


class SplitModel(nn.Module):
    """A classifier cut at ``layer``; never modifies the given model (it keeps a frozen copy)."""

    def __init__(
        self,
        model: nn.Module,
        layer: str,
        input_size: tuple[int, int, int],
        layout: str | None = None,
        prefix_tokens: int | None = None,
    ) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.layer_name = layer
        self.input_size: tuple[int, int, int] = (int(input_size[0]), int(input_size[1]), int(input_size[2]))
        self._layer = find_layer(self.model, layer)
        self._one_image_body = False
        self.anchor: Anchor | None = None  # set by _probe when the layer is not a cut
        # per-image shape of the head's extra input (explain's ``extra_tokens``): ViT's prefix tokens
        # [E,K] at a cut, the anchor's input at a non-cut layer; None when the head needs only A
        self.extra_shape: tuple[int, ...] | None = None
        self.layout, self.num_classes = self._probe(layout, prefix_tokens)

    # -- the exported functions -------------------------------------------------------------

    def explain(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.anchor is not None:
            return self._explain_from_anchor(images, targets)
        n, t = targets.shape
        cap = _Capture()

        def hook(_module: nn.Module, _inputs: tuple[Any, ...], raw: torch.Tensor) -> torch.Tensor:
            cap.calls += 1
            acts, extra = self.layout.to_nkhw(raw.detach())
            cap.acts = acts.clone()  # a copy: an in-place op after the layer must not change it
            cap.extra = None if extra is None else extra.clone()
            cap.leaf = _repeat(cap.acts, t).requires_grad_(True)
            extra_rep = None if cap.extra is None else _repeat(cap.extra, t)
            return self.layout.from_nkhw(cap.leaf, extra_rep).clone()

        with torch.enable_grad(), _hooked(self._layer, hook):
            logits_rep = self.model(images)
        assert cap.leaf is not None and cap.acts is not None  # _probe checked that the layer runs
        logits = logits_rep.reshape(n, t, -1)[:, 0].detach()
        ids = resolve_targets(targets, logits)
        (grads,) = torch.autograd.grad(
            logits_rep, cap.leaf, grad_outputs=_select(ids, logits.shape[1], logits.dtype)
        )
        grads = grads.reshape(n, t, *cap.acts.shape[1:])
        outs = (logits, cap.acts, grads, ids)
        return outs + ((cap.extra,) if cap.extra is not None else ())

    def _explain_from_anchor(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``explain`` for a non-cut layer: the body runs once up to the anchor's input, which is
        repeated T times; the anchor (its part before the layer included) and the rest run on N·T."""
        n, t = targets.shape
        cap = _Capture()

        def enter(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            cap.extra = args[0].detach().clone()
            return (_repeat(cap.extra, t), *args[1:])

        def hook(_module: nn.Module, _inputs: tuple[Any, ...], raw: torch.Tensor) -> torch.Tensor:
            acts, extra = self.layout.to_nkhw(raw.detach())
            cap.leaf = acts.clone().requires_grad_(True)
            cap.acts = cap.leaf.detach().reshape(n, t, *acts.shape[1:])[:, 0].clone()
            return self.layout.from_nkhw(cap.leaf, extra).clone()

        assert self.anchor is not None
        with torch.enable_grad(), _pre_hooked(self.anchor.module, enter), _hooked(self._layer, hook):
            logits_rep = self.model(images)
        assert cap.leaf is not None and cap.acts is not None and cap.extra is not None
        logits = logits_rep.reshape(n, t, -1)[:, 0].detach()
        ids = resolve_targets(targets, logits)
        (grads,) = torch.autograd.grad(
            logits_rep, cap.leaf, grad_outputs=_select(ids, logits.shape[1], logits.dtype)
        )
        return logits, cap.acts, grads.reshape(n, t, *cap.acts.shape[1:]), ids, cap.extra

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def head(self, activations: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """Logits from activations; the body runs on a zero image whose result is discarded (dead code
        that tracing removes: the head graph contains the head only). One zero image, not M: at a cut
        nothing of the body but the replaced output reaches the logits (``_probe`` checks that the
        model agrees), and the eager head stays as cheap as the head (CAM-weight probing runs it on
        hundreds of activations)."""
        if self.anchor is not None:
            return self._head_from_anchor(activations, extra)

        def hook(_module: nn.Module, _inputs: tuple[Any, ...], _raw: torch.Tensor) -> torch.Tensor:
            # a copy: an in-place op after the layer (DenseNet's ReLU) must not write into the caller's tensor
            return self.layout.from_nkhw(activations, extra).clone()

        body_batch = 1 if self._one_image_body else activations.shape[0]
        dummy = activations.new_zeros((body_batch, *self.input_size))
        with _hooked(self._layer, hook):
            return self.model(dummy)

    def _head_from_anchor(self, activations: torch.Tensor, anchor_input: torch.Tensor | None) -> torch.Tensor:
        """Logits of a non-cut layer's head: the anchor re-runs from its input, the layer's output is
        replaced by ``activations`` (prefix tokens, if any, come from the re-run)."""
        if anchor_input is None:
            raise ExportError(f"the head of non-cut layer {self.layer_name!r} needs the anchor's input")

        def enter(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            return (anchor_input, *args[1:])

        def hook(_module: nn.Module, _inputs: tuple[Any, ...], raw: torch.Tensor) -> torch.Tensor:
            return self.layout.from_nkhw(activations, self.layout.to_nkhw(raw)[1]).clone()

        assert self.anchor is not None
        body_batch = 1 if self._one_image_body else activations.shape[0]
        dummy = activations.new_zeros((body_batch, *self.input_size))
        with _pre_hooked(self.anchor.module, enter), _hooked(self._layer, hook):
            return self.model(dummy)

    def guided(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        n, t = targets.shape
        with torch.enable_grad():
            rep = _repeat(images, t).detach().requires_grad_(True)
            logits_rep = self.model(rep)
            logits = logits_rep.reshape(n, t, -1)[:, 0].detach()
            ids = resolve_targets(targets, logits)
            with _GuidedReluMode():
                (grads,) = torch.autograd.grad(
                    logits_rep, rep, grad_outputs=_select(ids, logits.shape[1], logits.dtype)
                )
        return grads.reshape(n, t, *images.shape[1:])

    def fullgradient(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """FullGrad maps [N,T,H,W] of the class logits ``targets`` (``export.fullgrad``)."""
        return fullgrad_maps(self.model, self.forward, images, targets)

    # -- checks done once, eagerly ------------------------------------------------------------

    def _probe(self, layout: str | None, prefix_tokens: int | None) -> tuple[Layout, int]:
        """Run the model once to learn the layer's output shape, and whether it is a cut (else find
        the anchor where a head that recomputes the bypassing tensors can start)."""
        example = torch.zeros(2, *self.input_size)
        seen: list[torch.Tensor] = []

        def record(_module: nn.Module, _inputs: tuple[Any, ...], raw: object) -> None:
            if not isinstance(raw, torch.Tensor):
                raise ExportError(
                    f"layer {self.layer_name!r} returns {type(raw).__name__}, not a tensor; "
                    "choose a layer whose output is one feature tensor"
                )
            seen.append(raw.detach())

        try:
            with torch.no_grad(), _hooked(self._layer, record):
                logits = self.model(example)
        except ExportError:
            raise
        except Exception as exc:  # the model cannot take this input size
            raise ExportError(
                f"the model fails on an input of size {'x'.join(map(str, self.input_size))}: {exc}"
            ) from exc
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            raise ExportError(f"the model must return logits [N,C]; it returned {_describe(logits)}")
        if not seen:
            raise ExportError(f"layer {self.layer_name!r} is not called by the model's forward pass")
        if len(seen) > 1:
            raise ExportError(
                f"layer {self.layer_name!r} is called {len(seen)} times per forward pass; "
                "choose a module that runs once"
            )
        raw = seen[0]
        kind, prefix = guess_layout_kind(raw.shape)
        kind = layout or kind
        prefix = prefix if prefix_tokens is None else prefix_tokens
        lay = Layout.infer(raw.shape, kind, prefix, self.input_size[1:])
        self.layout = lay
        acts, extra = lay.to_nkhw(raw)
        if not self._is_cut(acts, extra):
            self.anchor = self._find_anchor(example)
            extra = self.anchor_input(example)
        self.extra_shape = None if extra is None else tuple(extra.shape[1:])
        with torch.no_grad():  # a model that reads the batch size before the layer needs the full body
            self._one_image_body = True
            try:
                one_body = self.head(acts, extra)
                self._one_image_body = one_body.shape == logits.shape and torch.allclose(
                    one_body, logits, rtol=1e-4, atol=1e-5 * float(logits.abs().max())
                )
            except Exception:
                self._one_image_body = False
        return lay, logits.shape[1]

    def _is_cut(self, acts: torch.Tensor, extra: torch.Tensor | None) -> bool:
        """Whether the layers after the layer read nothing computed before it but its output."""
        acts = acts.clone().requires_grad_(True)
        dummy = torch.zeros(acts.shape[0], *self.input_size, requires_grad=True)

        def hook(_module: nn.Module, _inputs: tuple[Any, ...], _raw: torch.Tensor) -> torch.Tensor:
            return self.layout.from_nkhw(acts, extra).clone()  # in-place ops after the layer need a non-leaf

        with torch.enable_grad(), _hooked(self._layer, hook):
            logits = self.model(dummy)
        g_acts, g_body = torch.autograd.grad(logits.sum(), (acts, dummy), allow_unused=True)
        if g_acts is None:
            raise ExportError(f"the output of layer {self.layer_name!r} does not reach the logits")
        return g_body is None

    def anchor_input(self, images: torch.Tensor) -> torch.Tensor:
        """The anchor's input for ``images`` (the body's part before the anchor), detached."""
        assert self.anchor is not None
        seen: list[torch.Tensor] = []

        def record(_module: nn.Module, args: tuple[Any, ...]) -> None:
            seen.append(args[0].detach().clone())

        with torch.no_grad(), _pre_hooked(self.anchor.module, record):
            self.model(images)
        return seen[0]

    def _find_anchor(self, example: torch.Tensor) -> Anchor:
        """The innermost module around the layer that runs once on one tensor that is a cut."""
        parts = self.layer_name.split(".")
        modules = dict(self.model.named_modules())
        for depth in range(len(parts) - 1, 0, -1):
            name = ".".join(parts[:depth])
            module = modules[name]
            inputs: list[tuple[Any, ...]] = []

            def record(
                _module: nn.Module, args: tuple[Any, ...], inputs: list[tuple[Any, ...]] = inputs
            ) -> None:
                inputs.append(args)

            with torch.no_grad(), _pre_hooked(module, record):
                self.model(example)
            if len(inputs) != 1 or not inputs[0] or not isinstance(inputs[0][0], torch.Tensor):
                continue
            if self._input_is_cut(module, inputs[0][0]):
                return Anchor(name, module, tuple(inputs[0][0].shape[1:]))
        raise ExportError(
            f"layer {self.layer_name!r} is not a cut of the network (the layers after it also read tensors "
            "computed before it) and no module around it takes one tensor that is: choose the output of a "
            "whole block or stage (e.g. 'layer4' for a ResNet)."
        )

    def _input_is_cut(self, module: nn.Module, example_input: torch.Tensor) -> bool:
        leaf = example_input.clone().requires_grad_(True)
        dummy = torch.zeros(leaf.shape[0], *self.input_size, requires_grad=True)

        def enter(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            return (leaf.clone(), *args[1:])

        with torch.enable_grad(), _pre_hooked(module, enter):
            logits = self.model(dummy)
        g_leaf, g_body = torch.autograd.grad(logits.sum(), (leaf, dummy), allow_unused=True)
        return g_leaf is not None and g_body is None


class _hooked:
    """A forward hook that is removed on exit, whatever happens."""

    def __init__(self, module: nn.Module, hook: Callable[..., object]) -> None:
        self.module, self.hook = module, hook
        self.handle: RemovableHandle | None = None

    def __enter__(self) -> _hooked:
        self.handle = self.module.register_forward_hook(self.hook)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self.handle.remove()


class _pre_hooked(_hooked):
    """A forward pre-hook (it may replace the module's inputs) that is removed on exit."""

    def __enter__(self) -> _pre_hooked:
        self.handle = self.module.register_forward_pre_hook(self.hook)
        return self


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return type(value).__name__
