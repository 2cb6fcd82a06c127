"""What the batcher runs for one model: a batch of preprocessed images -> one Explainer run -> one
result per image. This is the only service module that talks to the Explainer.

Items share a batch when their ``BatchKey`` is equal: same number of targets, same options and the
same set of methods that cost extra runs (Score-CAM, Ablation-CAM, Smooth Grad-CAM++...). Methods that
only read the shared explain run (Grad-CAM, Grad-CAM++, Layer-CAM...) are not part of the key: the
batch computes the union of its items' cheap methods, and each item keeps the maps it asked for.

Targets of kind ``dot_image`` / ``cosine_image`` name an image of their own request; the images of
such a request run as one batch of their own (``BatchKey.request``) and the runner turns the
request's image index into the batch row.

Before every graph run (each chunk of the explain run, each Score-CAM / Ablation-CAM / noisy-copy run)
the batch's ``stop()`` is asked: once nobody waits for the batch, the rest of its runs are skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from camserve import kernels
from camserve.config import ExplainOptions
from camserve.errors import InvalidArgumentError
from camserve.explainer import Explainer
from camserve.methods.base import method_class
from camserve.methods.target_kinds import IMAGE_KINDS, KIND_CODE, Target, TargetSpec, TargetTable
from camserve.outputs import ExplainOutputs, GraphRunner
from camserve.result import Prediction
from camserve.service.cancellation import RequestCancelledError, StopCheck

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchKey:
    num_targets: int
    costly_methods: tuple[str, ...]  # sorted; methods that run extra graphs
    options: ExplainOptions
    request: int | None = None  # set for a request with *_image targets: its images run alone


@dataclass(frozen=True)
class ImageWork:
    """One image of a request: the batcher's payload."""

    image: np.ndarray  # float32 [3,H,W], preprocessed
    targets: tuple[int | Target, ...]  # checked (``target_kinds.check_one``); ints: the default kind
    methods: tuple[str, ...]  # what this image's request asked for, in its order
    request: int | None = None  # the request's number when a target names another of its images
    index: int = 0  # the image's index in its request


@dataclass(frozen=True)
class ImageResult:
    maps: dict[str, np.ndarray]  # method -> float32 [T,H,W] on the host (one copy per batch: hostcopy)
    rgb: dict[str, np.ndarray]  # method -> float32 [T,3,H,W], for methods with colour evidence
    logits: np.ndarray  # float32 [C]
    target_ids: np.ndarray  # int64 [T]
    predictions: list[Prediction]
    target_kinds: np.ndarray  # int64 [T]: kind codes (``target_kinds.TARGET_KINDS``)
    target_scores: np.ndarray | None = None  # float32 [T]: the explained scalars


def batch_key(work: ImageWork, options: ExplainOptions) -> BatchKey:
    costly = tuple(sorted(m for m in work.methods if not method_class(m)().shares_explain_run(options)))
    return BatchKey(len(work.targets), costly, options, work.request)


def names_images(targets: tuple[int | Target, ...]) -> bool:
    """Whether a target names another image of the request (``dot_image`` / ``cosine_image``)."""
    return any(isinstance(t, Target) and t.kind in IMAGE_KINDS for t in targets)


def batch_rows(works: Sequence[ImageWork]) -> list[list[int | Target]]:
    """The batch's targets, a request's image index j in ``*_image`` targets turned into the row of
    that image in this batch."""
    rows: dict[tuple[int | None, int], int] = {(w.request, w.index): n for n, w in enumerate(works)}
    table: list[list[int | Target]] = []
    for work in works:
        row: list[int | Target] = []
        for target in work.targets:
            if isinstance(target, Target) and target.kind in IMAGE_KINDS:
                batch_row = rows.get((work.request, int(target.image or 0)))
                if batch_row is None:  # only when a failed batch reruns its images one by one
                    raise InvalidArgumentError(
                        "target_specs.image", f"image {target.image} of the request is not in its batch"
                    )
                target = replace(target, image=batch_row)
            row.append(target)
        table.append(row)
    return table


def target_codes(targets: Sequence[int | Target], spec: TargetSpec) -> np.ndarray:
    """Kind codes [T] of checked targets (an int is the output kind's default kind)."""
    default = spec.kinds[0]
    return np.asarray(
        [KIND_CODE[t.kind if isinstance(t, Target) else default] for t in targets], dtype=np.int64
    )


class StopCheckingGraphRunner:
    """A GraphRunner that asks ``stop`` before every graph run and raises instead of running."""

    def __init__(self, graphs: GraphRunner) -> None:
        self.graphs = graphs
        self.stop: StopCheck = lambda: False

    def _check(self, graph: str) -> None:
        if self.stop():
            raise RequestCancelledError(f"{graph} run skipped: no request waits for this batch any more")

    def explain(self, images: torch.Tensor, targets: TargetTable) -> ExplainOutputs:
        self._check("explain")
        return self.graphs.explain(images, targets)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self._check("forward")
        return self.graphs.forward(images)

    def head(self, activations: torch.Tensor, extra_tokens: torch.Tensor | None = None) -> torch.Tensor:
        self._check("head")
        return self.graphs.head(activations, extra_tokens)

    def guided(self, images: torch.Tensor, targets: TargetTable) -> torch.Tensor:
        self._check("guided")
        return self.graphs.guided(images, targets)

    def fullgradient(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self._check("fullgradient")
        return self.graphs.fullgradient(images, targets)

    def __getattr__(self, name: str) -> Any:  # anything else a runner offers (device, providers...)
        return getattr(self.graphs, name)


class ExplainBatchRunner:
    """``runner(key, works, stop)`` for the DynamicBatcher: one Explainer run for the whole batch.

    The explainer's graphs are wrapped once in a StopCheckingGraphRunner; batches of one model run one
    after another in the batcher's thread, so the wrapper holds the running batch's ``stop``.
    """

    def __init__(self, explainer: Explainer) -> None:
        self.explainer = explainer
        self.spec = explainer.manifest.target_spec()
        self._graphs = StopCheckingGraphRunner(explainer.runner)
        explainer.runner = self._graphs

    def __call__(self, key: BatchKey, works: list[ImageWork], stop: StopCheck) -> Sequence[ImageResult]:
        # Smooth Grad-CAM++'s noise is the same for every image of a batch, so coalescing requests
        # never changes an image's maps.
        self._graphs.stop = stop
        try:
            return self._run(works, key.options)
        finally:
            self._graphs.stop = lambda: False

    def _run(self, works: list[ImageWork], options: ExplainOptions) -> list[ImageResult]:
        methods: list[str] = []
        for work in works:
            methods.extend(m for m in work.methods if m not in methods)
        images = self.explainer.preprocess(torch.from_numpy(np.stack([w.image for w in works])))
        targets = batch_rows(works)
        log.debug("explain run: images=%d methods=%s", len(works), ",".join(methods))
        computed = self.explainer.compute(images, targets, methods, options)
        # every map of the batch reaches the host in one copy (camserve.hostcopy), not per image
        result = self.explainer.result(images, computed, options)
        scores = result.target_scores
        return [
            ImageResult(
                maps={m: result.maps[m][n] for m in work.methods},
                rgb={m: result.rgb[m][n] for m in work.methods if m in result.rgb},
                logits=result.logits[n],
                target_ids=result.target_ids[n],
                predictions=list(result.predictions[n]),
                target_kinds=target_codes(work.targets, self.spec),
                target_scores=None if scores is None else np.asarray(scores[n], dtype=np.float32),
            )
            for n, work in enumerate(works)
        ]


def maps_as(maps: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Float32 host maps [..., H, W] -> ``dtype`` (float32, float16 or uint8), for both front doors.
    uint8 is ``camserve.kernels.quantize_uint8``'s torch reference: round(255 * clip(m, 0, 1)) with
    ties to even, numpy's ``np.rint`` rule, bit for bit (the bytes the Triton kernel gives on a GPU)."""
    if dtype == np.uint8:
        flat = torch.from_numpy(np.ascontiguousarray(maps).reshape(-1, 1, *maps.shape[-2:]))
        return kernels.quantize_uint8(flat, "torch").reshape(maps.shape).numpy()
    return maps.astype(dtype, copy=False)
