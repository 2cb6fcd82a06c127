"""The base class every CAM method derives from, the context it reads, and the method registry.

A method turns what the graphs returned into maps. It never runs the explain graph itself: the
explainer runs it once for all requested methods (``camserve.methods.compute``) and hands each
method a :class:`MethodContext`. Methods that need more (Score-CAM's masked images, Ablation-CAM's
head runs, guided backprop) ask the runner through the context, in batches of
``runtime.max_graph_batch``.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

import torch

from camserve import kernels
from camserve.config import ExplainOptions, RuntimeConfig
from camserve.errors import InvalidArgumentError, UnsupportedError
from camserve.kernels import WeightMethod
from camserve.methods import smoothing
from camserve.methods.target_kinds import TARGET_KINDS, TargetTable
from camserve.outputs import ExplainOutputs, GraphRunner

#: What a method may need beyond the explain graph: graph names of the model directory, plus
#: "cam_weights" (the classifier's W [C,K], present only for GAP -> linear heads).
Requirement = str
#: Where a method's maps live: the target layer's h x w, or the model input's H x W.
Resolution = Literal["feature", "input"]

_T = TypeVar("_T")


@dataclass
class MethodContext:
    """Everything a method may read for one batch of N images and T targets per image.

    images          [N,3,H,W] preprocessed input (what the explain graph saw)
    outputs         the explain graph's outputs for ``images``; ``outputs.target_ids`` are resolved
    targets         the targets of ``images`` as the explain graph took them, ids resolved (what a
                    method hands to another graph run: guided backprop); None only in hand-made
                    contexts, where the targets are class logits ``outputs.target_ids``
    noisy_gradients [S,N,T,K,h,w] gradients of S noisy copies of every image (same target ids), or
                    None when no method asked for noisy copies
    cam_weights     classifier W [C,K] when the head is GAP -> linear, else None
    """

    runner: GraphRunner
    images: torch.Tensor
    outputs: ExplainOutputs
    options: ExplainOptions
    runtime: RuntimeConfig
    noisy_gradients: torch.Tensor | None = None
    cam_weights: torch.Tensor | None = None
    model_name: str = "model"
    # channel-weight rules the batch's methods read (one pass for all)
    weight_rules: tuple[WeightMethod, ...] = ()
    targets: TargetTable | None = None
    _shared: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    @property
    def target_table(self) -> TargetTable:
        """:attr:`targets`, or the class logits of ``outputs.target_ids`` when it is None."""
        if self.targets is not None:
            return self.targets
        return TargetTable.of_ids(self.outputs.target_ids)

    @property
    def input_size(self) -> tuple[int, int]:
        return int(self.images.shape[-2]), int(self.images.shape[-1])

    @property
    def backend(self) -> str:
        return self.runtime.kernels

    @property
    def layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(activations, gradients) of each target layer, the primary one first (a model exported
        with several target layers; ``ExplainOutputs.layers``)."""
        return [(self.outputs.activations, self.outputs.gradients), *self.outputs.layers]

    def for_layer(self, index: int) -> MethodContext:
        """This context with target layer ``index`` as the only one (its own shared products)."""
        acts, grads = self.layers[index]
        outputs = dataclasses.replace(self.outputs, activations=acts, gradients=grads, layers=[])
        return dataclasses.replace(self, outputs=outputs)

    def shared(self, key: str, make: Callable[[], _T]) -> _T:
        """``make()`` computed once per batch: products several methods use (guided gradients,
        the Grad-CAM map under guided Grad-CAM) are not computed twice."""
        if key not in self._shared:
            self._shared[key] = make()
        return self._shared[key]


@dataclass
class MethodMaps:
    """What a method returns: maps [N,T,h,w] (ReLU'd, not normalised) at the method's
    ``resolution``, and, for ``colour`` methods, the raw signed per-channel array [N,T,3,H,W]."""

    maps: torch.Tensor
    rgb: torch.Tensor | None = None


class CamMethod(ABC):
    """A CAM method: one subclass per method, registered with ``@register``; its docstring carries
    the paper's formula and citation.

    The contract: a method describes itself with the class attributes below and implements
    :meth:`compute`. Everything outside ``camserve/methods/`` (the codec, admission, the batcher,
    the batch job, the CLI's method list) reads these; none of it tests a method's name
    (``tests/test_house_methods.py`` fails if one does).

    ``name``         the registry key, as users type it ("gradcam++").
    ``requires``     graphs of the model directory it needs besides "explain" ("forward", "head",
                     "guided"), and "cam_weights" (the classifier's W [C,K]).
    ``resolution``   where :meth:`compute`'s maps live: "feature" (the target layer's h x w) or
                     "input" (the model's H x W; resized by averaging when the output is smaller).
    ``colour``       True if :meth:`compute` also returns signed per-channel evidence
                     ``MethodMaps.rgb`` [N,T,3,H,W] (guided backprop); the answer then carries it.
    ``weight_rules`` the ``kernels.channel_weights`` rules it reads, so that a batch asking for
                     several methods gets all their weights from one pass over A and g.
    ``cost``         one line for people (``camserve explain --list-methods``, docs).
    ``not_in_graph`` why the maps graph (``export/maps.py``: the maths as ONNX operators) cannot
                     hold the method; "" for a method that implements :meth:`graph_maps`.
    ``layer_fusion`` how a model exported with several target layers (``MethodContext.layers``)
                     is used: "mean" (gradient methods that read only A and g of the explain
                     run) and "product" (RefineCAM): the method runs on each layer alone and
                     compute.py's ``layer_maps`` fuses the maps as pytorch-grad-cam does;
                     "method": :meth:`compute` reads every layer itself (Layer-CAM's fusion);
                     "primary": the primary layer only (methods that re-run the forward / head /
                     explain graphs, read noisy gradients or use CAM's weights of that layer).
    ``logit_targets_only`` True for a method whose maths reads class logits rather than the
                     explained scalar's gradient: it re-runs the forward / head / explain graphs
                     and reads their logits (Score-CAM, Ablation-CAM, Finer-CAM...) or uses the
                     classifier's weights W_c (CAM). :func:`check_target_kinds` refuses it for any
                     target that is not a class logit (``target_kinds``: probabilities, regions,
                     boxes, embeddings); gradient methods take every kind.

    and two methods, overridden only by methods that need more than the shared explain run:

    :meth:`noisy_copies`  noisy copies of each image added to the explain run (Smooth Grad-CAM++).
    :meth:`extra_runs`    graph runs per image beyond the explain run, which admission counts.
    :meth:`extra_gradients` gradients per target it holds beyond the explain run's (Finer-CAM's
                          comparison classes), which admission counts in the working memory.

    A method whose maps come from one explain run by operators a graph can hold also implements
    :meth:`graph_maps`, which the maps graph exports.

    Options a method takes (pytorch-grad-cam's ``BaseCAM`` options, ``camserve.methods.smoothing``);
    a method that does not take one ignores it, as pytorch-grad-cam's do:

    ``eigen_smoothable`` ``ExplainOptions.eigen_smooth`` changes its maps.
    ``aug_smoothable``   ``ExplainOptions.aug_smooth`` runs it on augmented copies of each image
                         (:meth:`augmented_copies`; admission multiplies its runs by them).
    """

    name: ClassVar[str]
    requires: ClassVar[frozenset[Requirement]] = frozenset()
    resolution: ClassVar[Resolution] = "feature"
    colour: ClassVar[bool] = False
    weight_rules: ClassVar[tuple[WeightMethod, ...]] = ()
    cost: ClassVar[str] = "nothing beyond the shared explain run"
    eigen_smoothable: ClassVar[bool] = True
    aug_smoothable: ClassVar[bool] = True
    not_in_graph: ClassVar[str] = "its maths is not written as graph operators (graph_maps)"
    logit_targets_only: ClassVar[bool] = False
    layer_fusion: ClassVar[Literal["mean", "product", "method", "primary"]] = "primary"

    def noisy_copies(self, options: ExplainOptions) -> int:
        """How many noisy copies of each image this method needs in the explain run."""
        return 0

    def extra_runs(self, options: ExplainOptions, channels: int) -> dict[str, int]:
        """Graph runs per image this method adds beyond the explain run (and its noisy copies),
        keyed by what they compute: methods giving the same key share those runs in one batch
        (guided backprop and guided Grad-CAM both give {"guided": 1}, run once). ``channels`` is
        K, the target layer's channel count."""
        return {}

    def extra_gradients(self, options: ExplainOptions) -> int:
        """Gradient tensors [K,h,w] per target this method holds at once beyond the explain run's
        (from its :meth:`extra_runs`): admission counts them in an image's working memory."""
        return 0

    def augmented_copies(self, options: ExplainOptions) -> int:
        """Copies of each image this method runs on: R (``smoothing.augmented_copies()``) with
        ``options.aug_smooth`` if it takes that option, else 1. The explain run, the noisy copies
        and :meth:`extra_runs` are all per copy."""
        return smoothing.augmented_copies() if options.aug_smooth and self.aug_smoothable else 1

    def shares_explain_run(self, options: ExplainOptions) -> bool:
        """True when the maps come from the shared explain run alone (no extra graph runs, no
        noisy copies, no augmented copies): the batcher may group such requests whatever else
        they ask."""
        return (
            not self.extra_runs(options, 1)
            and self.noisy_copies(options) == 0
            and self.augmented_copies(options) == 1
        )

    @abstractmethod
    def compute(self, ctx: MethodContext) -> MethodMaps:
        """Maps for every image and target of ``ctx``."""

    def graph_maps(
        self,
        activations: torch.Tensor,
        gradients: torch.Tensor,
        target_ids: torch.Tensor,
        class_weights: torch.Tensor | None,
    ) -> torch.Tensor:
        """:meth:`compute`'s maps [N,T,h,w] (ReLU'd, before resizing and min-max) from A [N,K,h,w],
        g [N,T,K,h,w], the target ids [N,T] and CAM's W [C,K] (None without a GAP -> linear head),
        written with torch operators a graph can hold: no branch on values, no further graph run.
        The maps graph exports it and checks it against :meth:`compute`."""
        raise UnsupportedError(f"methods: {self.name!r} cannot be in the maps graph: {self.not_in_graph}")

    @staticmethod
    def weighted_maps(ctx: MethodContext, weights: torch.Tensor) -> torch.Tensor:
        """ReLU(sum_k w_k A^k) with channel weights [N,T,K] on the explain run's activations, or
        their first principal component with ``options.eigen_smooth``."""
        if ctx.options.eigen_smooth:
            return smoothing.channel_principal_maps(ctx.outputs.activations, weights)
        return kernels.weighted_sum_relu(ctx.outputs.activations, weights, backend=ctx.backend)


def check_target_kinds(
    methods: Sequence[CamMethod], targets: TargetTable | Iterable[str], output_kind: str
) -> None:
    """The one check of methods against target kinds (a batch's table, or the kind names of one
    request's targets, which a service checks before batching requests together): UnsupportedError
    naming the methods that explain class logits only (``logit_targets_only``) when a target is of
    any other kind."""
    if isinstance(targets, TargetTable):
        names = {TARGET_KINDS[int(code)] for code in targets.kinds.unique().tolist()}
    else:
        names = set(targets)
    others = [kind for kind in TARGET_KINDS if kind in names and kind != "logit"]
    refused = [method.name for method in methods if method.logit_targets_only]
    if not others or not refused:
        return
    kinds = ", ".join(others)
    raise UnsupportedError(
        f"methods: {', '.join(map(repr, refused))} explain class logits only (they re-run the model "
        f"or use its classifier weights and read class logits), and these targets are of kind {kinds} "
        f"(the model's output is {output_kind}); gradient methods such as 'gradcam' take every kind"
    )


_REGISTRY: dict[str, type[CamMethod]] = {}

_M = TypeVar("_M", bound=type[CamMethod])


def register(cls: _M) -> _M:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    if cls.name in _REGISTRY:
        raise ValueError(f"CAM method {cls.name!r} registered twice")
    if cls.resolution not in ("feature", "input"):
        raise ValueError(
            f"CAM method {cls.name!r}: resolution {cls.resolution!r} is not 'feature' or 'input'"
        )
    _REGISTRY[cls.name] = cls
    return cls


def known_methods() -> list[str]:
    """Names of every registered method, in registration order."""
    return list(_REGISTRY)


def method_class(name: str) -> type[CamMethod]:
    """The class registered under ``name``; an unknown name lists the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InvalidArgumentError(
            "methods", f"unknown method {name!r}; known: {', '.join(known_methods())}"
        ) from None


def get_method(name: str) -> CamMethod:
    return method_class(name)()
