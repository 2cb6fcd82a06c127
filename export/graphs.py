"""The functions camserve exports, written once in plain PyTorch.

``SplitModel`` cuts a model at its target layer. Its methods are ordinary eager functions
(the reference runner calls them directly) and are also what ``export.tracing`` traces to ONNX:

- ``explain(images, targets, target_kinds, target_data)``: the body runs once on N images; the
  layer's output A is captured, repeated T times and the *head* (everything after the layer) runs
  on the N·T copies; every copy's target scalar (``target_kinds.target_scores``: a logit, a
  probability, a region of a dense output, a detection box, an embedding similarity) is computed
  in the graph, and ``torch.autograd.grad`` of their sum runs through the head only (each copy
  reaches only its own scalar, so the sum gives every target's gradient);
  With several layers (``layer`` a list), each is a cut; the graph repeats at the layer that runs
  first, the other layers' outputs are intermediates of the repeated part, and one
  ``autograd.grad`` gives the gradients w.r.t. every layer (outputs ``activations_i``,
  ``gradients_i`` for the i-th layer after the first, the primary one);
- ``forward(images)``: class scores only (``target_kinds.class_scores``);
- ``head(activations, extra)``: class scores from given activations (the body is not run);
- ``guided(images, targets, target_kinds, target_data)``: guided-backprop input gradients (ReLU
  backward passes only positive gradients at positive inputs), T copies of the image, one backward;
- ``fullgradient(images, targets)``: FullGrad's maps of class logits (``export.fullgrad``), T copies of
  the image, one backward pass to the input and every biased layer.

The model may return a tensor, a tuple or a dict; ``output`` (a name or an index) picks the explained
one (detection: ``output`` the scores [N,A,C], ``boxes_output`` the boxes [N,A,4]); its *output kind*
(classification, dense, detection, embedding; see ``camserve.methods.target_kinds``) decides the
target kinds the graphs take.

Layers that are not *cuts* work too (a conv inside a residual block, ViT's ``ln_1``: tensors
computed before the layer bypass it and are read after it). The export then re-enters at the
*anchor*, the innermost module around the layer whose input is a cut (the residual block, the
encoder block): the anchor's input, per image, is the head's extra input (``extra_tokens``, as ViT's
class token is for a cut), and the head re-runs the anchor from it with the layer's output replaced
— the part of the anchor before the layer (a skip, a downsample, the other tokens) is recomputed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.hooks import RemovableHandle

from camserve.errors import ExportError, InvalidArgumentError
from camserve.export.fullgrad import fullgrad_maps
from camserve.export.layers import Layout, find_layer, guess_layout_kind
from camserve.methods.target_kinds import KIND_CODE, OUTPUT_KINDS, TargetSpec, class_scores, target_scores
from camserve.methods.targets import resolve_targets

if TYPE_CHECKING:
    from collections.abc import Collection
    from typing import Any


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
class ExtraLayer:
    """A target layer after the first (primary) one: its module in the frozen copy and its layout."""

    name: str
    module: nn.Module
    layout: Layout


@dataclass(frozen=True)
class Anchor:
    """Where a non-cut layer's head re-enters: the module ``name`` around the layer, whose input
    (one tensor, ``shape`` per image) is a cut of the network."""

    name: str
    module: nn.Module
    shape: tuple[int, ...]


OutputKey = str | int | None  # a dict key, a tuple index, or None: the first output


class SplitModel(nn.Module):
    """A model cut at ``layer``; never modifies the given model (it keeps a frozen copy).

    ``layer`` may be a list: the first is the primary layer (activations, gradients, head graph),
    the others add explain outputs ``activations_i`` / ``gradients_i``; every listed layer must
    then be a cut.

    ``output`` / ``boxes_output`` pick the explained output (and a detection head's boxes) of a
    model returning a tuple or a dict; ``output_kind`` None infers it from the output's rank
    (2-D: classification, 4-D: dense; embedding and detection are given explicitly).
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str | Sequence[str],
        input_size: tuple[int, int, int],
        layout: str | None = None,
        prefix_tokens: int | None = None,
        output: OutputKey = None,
        output_kind: str | None = None,
        boxes_output: OutputKey = None,
    ) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        names = [layer] if isinstance(layer, str) else list(layer)
        if not names or len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
            raise InvalidArgumentError("layer", f"expected one or more distinct layer names, got {names!r}")
        layer = names[0]
        self.layer_names: list[str] = names
        self.layer_name = layer
        self.input_size: tuple[int, int, int] = (int(input_size[0]), int(input_size[1]), int(input_size[2]))
        self._layer = find_layer(self.model, layer)
        if output_kind is not None and output_kind not in OUTPUT_KINDS:
            raise InvalidArgumentError(
                "output_kind", f"{output_kind!r} is not one of {', '.join(OUTPUT_KINDS)}"
            )
        if (boxes_output is not None) != (output_kind == "detection"):
            raise InvalidArgumentError(
                "boxes_output",
                "a detection output (output_kind 'detection') needs boxes_output (the boxes [N,A,4]), "
                "and only a detection output takes it",
            )
        self.output, self.boxes_output = output, boxes_output
        self.output_kind: str = output_kind or "classification"  # settled by _probe
        self.output_names: list[str] = []  # the model's outputs: dict keys, tuple indices ([] a tensor)
        self.output_shape: tuple[int, ...] = ()  # per image, of the explained output
        self._one_image_body = False
        self.anchor: Anchor | None = None  # set by _probe when the layer is not a cut
        # per-image shape of the head's extra input (explain's ``extra_tokens``): ViT's prefix tokens
        # [E,K] at a cut, the anchor's input at a non-cut layer; None when the head needs only A
        self.extra_shape: tuple[int, ...] | None = None
        self.layout, self.num_classes = self._probe(layout, prefix_tokens, output_kind)
        # the other target layers, and the index (0: primary) of the layer that runs first
        self.extra_layers: list[ExtraLayer] = []
        self.layer_shapes: list[tuple[int, ...]] = []
        self._first = 0
        if len(names) > 1:
            self._probe_layers(names, layout, prefix_tokens, output, output_kind, boxes_output)

    @property
    def explain_outputs(self) -> list[str]:
        """The explain function's output names, in order."""
        return (
            ["logits", "activations", "gradients", "target_ids", "target_scores"]
            + (["extra_tokens"] if self.extra_shape is not None else [])
            + [
                f"{kind}_{i}"
                for i in range(1, len(self.layer_names))
                for kind in ("activations", "gradients")
            ]
        )

    @property
    def target_spec(self) -> TargetSpec:
        return TargetSpec(self.output_kind, self.num_classes, self.output_shape, self.input_size[1:])

    # -- the exported functions -------------------------------------------------------------

    def explain(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        target_kinds: torch.Tensor | None = None,
        target_data: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """logits [N,C], activations [N,K,h,w], gradients [N,T,K,h,w], target_ids [N,T],
        target_scores [N,T] (+ extra_tokens). ``target_kinds`` None: the output kind's default kind."""
        if self.anchor is not None:
            return self._explain_from_anchor(images, targets, target_kinds, target_data)
        if self.extra_layers:
            return self._explain_layers(images, targets, target_kinds, target_data)
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
            raw_rep = self.model(images)
            logits, ids, scores = self._scores(raw_rep, targets, target_kinds, target_data)
            total = scores.sum()
        assert cap.leaf is not None and cap.acts is not None  # _probe checked that the layer runs
        (grads,) = torch.autograd.grad(total, cap.leaf)
        grads = grads.reshape(n, t, *cap.acts.shape[1:])
        outs = (logits, cap.acts, grads, ids, scores.detach().reshape(n, t))
        return outs + ((cap.extra,) if cap.extra is not None else ())

    def _explain_layers(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        target_kinds: torch.Tensor | None,
        target_data: torch.Tensor | None,
    ) -> tuple[torch.Tensor, ...]:
        """``explain`` with several (cut) layers: the body runs once up to the layer that runs first,
        whose output is repeated T times; the later layers' outputs are intermediates of the
        repeated part; one backward pass gives the gradients w.r.t. every layer."""
        n, t = targets.shape
        count = len(self.layer_names)
        leaves: list[torch.Tensor | None] = [None] * count
        acts: list[torch.Tensor | None] = [None] * count
        extras: list[torch.Tensor | None] = [None] * count

        def make_hook(i: int, layout: Layout) -> Callable[..., torch.Tensor]:
            def hook(_module: nn.Module, _inputs: tuple[Any, ...], raw: torch.Tensor) -> torch.Tensor:
                if i == self._first:
                    a, extra = layout.to_nkhw(raw.detach())
                    acts[i] = a.clone()  # a copy: an in-place op after the layer must not change it
                    extras[i] = None if extra is None else extra.clone()
                    leaf = _repeat(a.clone(), t).requires_grad_(True)
                    extra_rep = None if extra is None else _repeat(extra.clone(), t)
                else:  # already N·T rows, computed from the first layer's repeated output
                    leaf, extra_rep = layout.to_nkhw(raw)
                    acts[i] = leaf.detach().reshape(n, t, *leaf.shape[1:])[:, 0].clone()
                    if extra_rep is not None:
                        extras[i] = extra_rep.detach().reshape(n, t, *extra_rep.shape[1:])[:, 0].clone()
                leaves[i] = leaf
                return layout.from_nkhw(leaf, extra_rep).clone()

            return hook

        hooks = [_hooked(self._layer, make_hook(0, self.layout))] + [
            _hooked(extra.module, make_hook(i, extra.layout)) for i, extra in enumerate(self.extra_layers, 1)
        ]
        with torch.enable_grad(), _all_hooked(hooks):
            raw_rep = self.model(images)
            logits, ids, scores = self._scores(raw_rep, targets, target_kinds, target_data)
            total = scores.sum()
        done = [leaf for leaf in leaves if leaf is not None]
        assert len(done) == count  # _probe_layers checked that every layer runs once
        grads = torch.autograd.grad(total, done)
        layer_outs: list[torch.Tensor] = []
        for a, g in zip(acts, grads, strict=True):
            assert a is not None
            layer_outs += [a, g.reshape(n, t, *a.shape[1:])]
        outs: tuple[torch.Tensor, ...] = (
            logits,
            layer_outs[0],
            layer_outs[1],
            ids,
            scores.detach().reshape(n, t),
        )
        if extras[0] is not None:
            outs += (extras[0],)
        return outs + tuple(layer_outs[2:])

    def _explain_from_anchor(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        target_kinds: torch.Tensor | None,
        target_data: torch.Tensor | None,
    ) -> tuple[torch.Tensor, ...]:
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
            raw_rep = self.model(images)
            logits, ids, scores = self._scores(raw_rep, targets, target_kinds, target_data)
            total = scores.sum()
        assert cap.leaf is not None and cap.acts is not None and cap.extra is not None
        (grads,) = torch.autograd.grad(total, cap.leaf)
        grads = grads.reshape(n, t, *cap.acts.shape[1:])
        return logits, cap.acts, grads, ids, scores.detach().reshape(n, t), cap.extra

    def _scores(
        self,
        raw_rep: object,
        targets: torch.Tensor,
        target_kinds: torch.Tensor | None,
        target_data: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """From the model's output on T copies of each image (copy-major per image): class scores
        [N,C] (of copy 0), resolved target ids [N,T] and the target scalars [N·T] (with grad)."""
        n, t = targets.shape
        output, boxes = self._pick(raw_rep)
        logits = class_scores(self.output_kind, output).reshape(n, t, -1)[:, 0].detach()
        ids = resolve_targets(targets, logits)
        if target_kinds is None:
            target_kinds = torch.full_like(targets, KIND_CODE[OUTPUT_KINDS[self.output_kind][0]])
        length = self.target_spec.data_length
        data = None
        if length:
            if target_data is None:
                target_data = torch.zeros(n, t, length, dtype=output.dtype, device=output.device)
            data = target_data.reshape(n * t, length)
        scores = target_scores(
            self.output_kind, output, ids.reshape(-1), target_kinds.reshape(-1), data, t, boxes
        )
        return logits, ids, scores

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return class_scores(self.output_kind, self._pick(self.model(images))[0])

    def head(self, activations: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """Class scores from activations; the body runs on a zero image whose result is discarded
        (dead code that tracing removes: the head graph contains the head only). One zero image, not
        M: at a cut nothing of the body but the replaced output reaches the logits (``_probe`` checks
        that the model agrees), and the eager head stays as cheap as the head (CAM-weight probing
        runs it on hundreds of activations)."""
        if self.anchor is not None:
            return self._head_from_anchor(activations, extra)

        def hook(_module: nn.Module, _inputs: tuple[Any, ...], _raw: torch.Tensor) -> torch.Tensor:
            # a copy: an in-place op after the layer (DenseNet's ReLU) must not write into the caller's tensor
            return self.layout.from_nkhw(activations, extra).clone()

        body_batch = 1 if self._one_image_body else activations.shape[0]
        dummy = activations.new_zeros((body_batch, *self.input_size))
        with _hooked(self._layer, hook):
            return class_scores(self.output_kind, self._pick(self.model(dummy))[0])

    def _head_from_anchor(self, activations: torch.Tensor, anchor_input: torch.Tensor | None) -> torch.Tensor:
        """Class scores of a non-cut layer's head: the anchor re-runs from its input, the layer's
        output is replaced by ``activations`` (prefix tokens, if any, come from the re-run)."""
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
            return class_scores(self.output_kind, self._pick(self.model(dummy))[0])

    def guided(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        target_kinds: torch.Tensor | None = None,
        target_data: torch.Tensor | None = None,
    ) -> torch.Tensor:
        n, t = targets.shape
        with torch.enable_grad():
            rep = _repeat(images, t).detach().requires_grad_(True)
            _logits, _ids, scores = self._scores(self.model(rep), targets, target_kinds, target_data)
            with _GuidedReluMode():
                (grads,) = torch.autograd.grad(scores.sum(), rep)
        return grads.reshape(n, t, *images.shape[1:])

    def fullgradient(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """FullGrad maps [N,T,H,W] of the class logits ``targets`` (``export.fullgrad``)."""
        return fullgrad_maps(self.model, self.forward, images, targets)

    # -- the model's outputs -------------------------------------------------------------------

    def _pick(self, raw: object) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The explained output (and a detection head's boxes) of the model's raw output."""
        output = _output(raw, self.output, "output")
        boxes = None if self.boxes_output is None else _output(raw, self.boxes_output, "boxes_output")
        return output, boxes

    def _check_output(self, raw: object, output_kind: str | None) -> str:
        """The output kind of the explained output (given or inferred); ExportError /
        InvalidArgumentError naming what does not fit."""
        self.output_names = _output_names(raw)
        output, boxes = self._pick(raw)
        shape = tuple(output.shape)
        if output_kind is None:
            inferred = {2: "classification", 4: "dense"}.get(output.dim())
            if inferred is None:
                raise ExportError(
                    f"the explained output is {_describe(output)}: give output_kind (classification "
                    "[N,C], dense [N,C,h,w], embedding [N,D], detection scores [N,A,C] + boxes_output)"
                )
            output_kind = inferred
        rank = {"classification": 2, "dense": 4, "detection": 3, "embedding": 2}[output_kind]
        if output.dim() != rank:
            raise ExportError(
                f"an output of kind {output_kind} must be {rank}-D; "
                f"the explained output is {_describe(output)}"
            )
        if boxes is not None and (
            boxes.dim() != 3 or boxes.shape[:2] != output.shape[:2] or boxes.shape[2] != 4
        ):
            raise ExportError(
                f"boxes_output must be boxes [N,A,4] for the scores {tuple(shape)}; it is {_describe(boxes)}"
            )
        self.output_shape = tuple(int(v) for v in shape[1:])
        return output_kind

    # -- checks done once, eagerly ------------------------------------------------------------

    def _probe(
        self, layout: str | None, prefix_tokens: int | None, output_kind: str | None
    ) -> tuple[Layout, int]:
        """Run the model once to learn its output and the layer's output shape, and whether the
        layer is a cut (else find the anchor where a head that recomputes the bypassing tensors
        can start)."""
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
                raw_output = self.model(example)
        except ExportError:
            raise
        except Exception as exc:  # the model cannot take this input size
            raise ExportError(
                f"the model fails on an input of size {'x'.join(map(str, self.input_size))}: {exc}"
            ) from exc
        self.output_kind = self._check_output(raw_output, output_kind)
        logits = class_scores(self.output_kind, self._pick(raw_output)[0])
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
        self._acts_shape = tuple(acts.shape[1:])
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

    def _probe_layers(
        self,
        names: list[str],
        layout: str | None,
        prefix_tokens: int | None,
        output: OutputKey,
        output_kind: str | None,
        boxes_output: OutputKey,
    ) -> None:
        """Check the layers after the primary one (each a cut that runs once), learn their layouts,
        and which layer runs first (where ``explain`` repeats the body's result)."""
        if self.anchor is not None:
            raise ExportError(
                f"layer {self.layer_name!r} is not a cut of the network; several target layers must all "
                "be cuts (e.g. whole stages such as 'layer3' and 'layer4' of a ResNet)"
            )
        self.layer_shapes = [tuple(int(v) for v in self._acts_shape)]
        for name in names[1:]:
            part = SplitModel(
                self.model,
                name,
                self.input_size,
                layout=layout,
                prefix_tokens=prefix_tokens,
                output=output,
                output_kind=output_kind,
                boxes_output=boxes_output,
            )
            if part.anchor is not None:
                raise ExportError(
                    f"layer {name!r} is not a cut of the network (the layers after it also read tensors "
                    "computed before it); several target layers must all be cuts (e.g. whole stages "
                    "such as 'layer3' and 'layer4' of a ResNet)"
                )
            self.extra_layers.append(ExtraLayer(name, find_layer(self.model, name), part.layout))
            self.layer_shapes.append(tuple(int(v) for v in part._acts_shape))
        order: list[int] = []
        modules = [self._layer] + [extra.module for extra in self.extra_layers]

        def make_record(i: int) -> Callable[..., None]:
            def record(_module: nn.Module, _inputs: tuple[Any, ...], _raw: object) -> None:
                order.append(i)

            return record

        with torch.no_grad(), _all_hooked([_hooked(m, make_record(i)) for i, m in enumerate(modules)]):
            self.model(torch.zeros(1, *self.input_size))
        self._first = order[0]

    def _is_cut(self, acts: torch.Tensor, extra: torch.Tensor | None) -> bool:
        """Whether the layers after the layer read nothing computed before it but its output."""
        acts = acts.clone().requires_grad_(True)
        dummy = torch.zeros(acts.shape[0], *self.input_size, requires_grad=True)

        def hook(_module: nn.Module, _inputs: tuple[Any, ...], _raw: torch.Tensor) -> torch.Tensor:
            return self.layout.from_nkhw(acts, extra).clone()  # in-place ops after the layer need a non-leaf

        with torch.enable_grad(), _hooked(self._layer, hook):
            output = self._pick(self.model(dummy))[0]
        g_acts, g_body = torch.autograd.grad(output.sum(), (acts, dummy), allow_unused=True)
        if g_acts is None:
            raise ExportError(f"the output of layer {self.layer_name!r} does not reach the model's output")
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
            output = self._pick(self.model(dummy))[0]
        g_leaf, g_body = torch.autograd.grad(output.sum(), (leaf, dummy), allow_unused=True)
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


class _all_hooked:
    """Several hooks, all removed on exit."""

    def __init__(self, hooks: Sequence[_hooked]) -> None:
        self.hooks = list(hooks)

    def __enter__(self) -> _all_hooked:
        for i, hook in enumerate(self.hooks):
            try:
                hook.__enter__()
            except BaseException:
                for entered in self.hooks[:i]:
                    entered.__exit__()
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        for hook in self.hooks:
            hook.__exit__()


class _pre_hooked(_hooked):
    """A forward pre-hook (it may replace the module's inputs) that is removed on exit."""

    def __enter__(self) -> _pre_hooked:
        self.handle = self.module.register_forward_pre_hook(self.hook)
        return self


def _output_names(raw: object) -> list[str]:
    """The names of a model's outputs: a dict's keys, a tuple's indices; [] for one tensor."""
    if isinstance(raw, Mapping):
        return [str(k) for k in raw]
    if isinstance(raw, (tuple, list)):
        return [str(i) for i in range(len(raw))]
    return []


def _output(raw: object, key: OutputKey, argument: str) -> torch.Tensor:
    """Output ``key`` (a dict key or an index; None: the first) of a model's raw output."""
    if isinstance(raw, torch.Tensor):
        if key not in (None, 0, "0"):
            raise InvalidArgumentError(argument, f"the model returns one tensor, it has no output {key!r}")
        return raw
    names = _output_names(raw)
    if not names:
        raise ExportError(f"the model returns {_describe(raw)}: expected a tensor, a tuple or a dict of them")
    values = list(raw.values()) if isinstance(raw, Mapping) else list(raw)  # type: ignore[call-overload]
    if key is None:
        index = 0
    elif isinstance(key, int) or (isinstance(key, str) and key.lstrip("-").isdigit() and key not in names):
        index = int(key)
        if not -len(values) <= index < len(values):
            raise InvalidArgumentError(
                argument,
                f"index {index} is out of range: the model has {len(values)} outputs ({', '.join(names)})",
            )
    elif key in names:
        index = names.index(key)
    else:
        raise InvalidArgumentError(
            argument, f"the model has no output {key!r}; its outputs: {', '.join(names)}"
        )
    value = values[index]
    if not isinstance(value, torch.Tensor):
        raise ExportError(f"output {names[index]!r} of the model is {_describe(value)}, not a tensor")
    return value


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return type(value).__name__
