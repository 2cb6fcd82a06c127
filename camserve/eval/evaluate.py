"""The evaluation run behind ``camserve eval``: every metric for every method and baseline map.

For each batch of images the explain graph runs once with three targets per image:

    true   the ground-truth class   -> faithfulness (Average Drop, keep/remove top 25 %, deletion,
                                       insertion) and localisation (IoU, pointing, energy, coverage)
    top    the predicted class (-1) -> localisation error (the Grad-CAM paper scores the predicted
                                       class's map) and the top-vs-least case study
    least  the least likely class   -> the top-vs-least case study: a map of a class the model does
           (-C)                        not see should not localise the object

The true-vs-false case study splits the true-class rows by whether the prediction was right (for a
wrong prediction, the map of the true class shows whether the model looked at the object at all).

Baseline maps (``camserve.eval.baselines``) go through exactly the same metrics as the methods; they
do not depend on the target, so one baseline map serves all three targets of an image.

Removed pixels become black (the paper's "image multiplied by the map", see ``camserve.eval.faithfulness``)
or, with ``fill="mean"``, the dataset mean colour; insertion starts from a blurred image (RISE) or,
with ``insertion_start="fill"``, from the fill.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TextIO

import torch

from camserve import defaults
from camserve.errors import InvalidArgumentError
from camserve.eval import faithfulness, regions
from camserve.eval import localisation as loc
from camserve.eval.baselines import BASELINE_NAMES, baseline_maps
from camserve.eval.data import EvalBatch, EvalData
from camserve.eval.road import road
from camserve.methods.target_kinds import Target

if TYPE_CHECKING:
    from camserve.explainer import Explainer

log = logging.getLogger(__name__)

TARGET_KINDS = ("true", "top", "least")

#: Every per-image metric, with the direction that is better ("reference": a value to compare with,
#: not a score) and a short description for the report.
METRICS: dict[str, tuple[str, str]] = {
    "average_drop": ("lower", "Average Drop % (Grad-CAM++), image x map"),
    "increase_in_confidence": ("higher", "Increase in Confidence % (Grad-CAM++)"),
    "keep_top_change": ("higher", "confidence change % keeping the top fraction"),
    "remove_top_change": ("lower", "confidence change % removing the top fraction"),
    "deletion_auc": ("lower", "deletion AUC (RISE)"),
    "insertion_auc": ("higher", "insertion AUC (RISE)"),
    "road_morf": ("lower", "ROAD MoRF: mean probability, most relevant removed first"),
    "road_lerf": ("higher", "ROAD LeRF: mean probability, least relevant removed first"),
    "road_combined": ("higher", "ROAD combined: (LeRF - MoRF) / 2"),
    "iou_top_fraction": ("higher", "IoU of the top-fraction box"),
    "iou_component": ("higher", "IoU of the largest-segment box (15 % of max)"),
    "localisation_error": ("lower", "top-1 localisation error % (Grad-CAM paper)"),
    "pointing_game": ("higher", "pointing game hit rate % (Zhang et al.)"),
    "energy_pointing": ("higher", "energy inside the boxes % (Score-CAM)"),
    "instance_coverage": ("higher", "share of instances lit (peak >= 50 % of max, 2x background)"),
    "iou_component_top": ("higher", "IoU (largest segment), map of the predicted class"),
    "iou_component_least": ("lower", "IoU (largest segment), map of the least likely class"),
    "energy_pointing_least": ("lower", "energy inside the boxes %, least likely class"),
    # dense models (``evaluate_regions_batch``): region targets scored against the true masks
    "region_energy": ("higher", "energy inside the object's mask %, one region target per object"),
    "region_pointing": ("higher", "peak on the object's mask %, one region target per object"),
    "predicted_energy": ("higher", "energy inside the class's masks %, the predicted_region target"),
    "predicted_pointing": ("higher", "peak on the class's masks %, the predicted_region target"),
    "mask_area": ("reference", "the object's share of the image % (a uniform map's energy inside it)"),
}
REGION_METRICS = ("region_energy", "region_pointing", "predicted_energy", "predicted_pointing", "mask_area")
#: Metrics stored as 0/1 or fractions that the report shows as percentages.
PERCENT_METRICS = {
    "increase_in_confidence",
    "localisation_error",
    "pointing_game",
    "energy_pointing",
    "instance_coverage",
    "energy_pointing_least",
    *REGION_METRICS,
}


@dataclass(frozen=True)
class EvalSettings:
    """What ``evaluate`` computes; the defaults follow the papers (see each metric's docstring)."""

    methods: tuple[str, ...]
    baselines: tuple[str, ...] = BASELINE_NAMES
    fraction: float = defaults.EVAL_FRACTION  # keep/remove top fraction, top-fraction box
    threshold: float = defaults.EVAL_THRESHOLD  # largest-segment box: threshold x max (Grad-CAM)
    iou_threshold: float = 0.5  # localisation error
    tolerance: float | None = None  # pointing game, px; None: 15 px at 224 px, scaled
    coverage_level: float = 0.5  # instance coverage: peak in the box >= level x the map's max
    coverage_contrast: float = 2.0  # ... and mean in the box > contrast x mean outside the boxes
    steps: int = defaults.EVAL_STEPS  # deletion/insertion steps
    curves: bool = True  # deletion/insertion (the costliest part: 2 x (steps + 1) runs per map)
    road: bool = False  # ROAD MoRF/LeRF/combined (18 imputed images per map, each a conjugate-gradient solve)
    fill: str = defaults.EVAL_FILL  # removed pixels: "black" (pixels x map) or "mean" (normalised zero)
    insertion_start: str = defaults.EVAL_INSERTION_START  # "blur" (RISE) or "fill"
    blur_sigma: float | None = None  # None: max(H, W) / 16 px
    batch_size: int = 64  # images per explain run and perturbed images per forward run
    seed: int = defaults.EVAL_SEED  # random baseline maps
    examples: int = defaults.EVAL_EXAMPLES  # images of each subset kept for the figure grid

    def check(self) -> None:
        if not self.methods:
            raise InvalidArgumentError("methods", "no method given")
        for name in self.baselines:
            if name not in BASELINE_NAMES:
                raise InvalidArgumentError(
                    "baselines", f"unknown baseline {name!r}; known: {', '.join(BASELINE_NAMES)}"
                )
        overlap = set(self.methods) & set(self.baselines)
        if overlap:
            raise InvalidArgumentError("methods", f"{sorted(overlap)} are baseline names, not methods")
        if self.fill not in ("black", "mean"):
            raise InvalidArgumentError("fill", f"expected 'black' or 'mean', got {self.fill!r}")
        if self.insertion_start not in ("blur", "fill"):
            raise InvalidArgumentError(
                "insertion_start", f"expected 'blur' or 'fill', got {self.insertion_start!r}"
            )
        if not 0 < self.fraction <= 1:
            raise InvalidArgumentError("fraction", f"must be in (0, 1], got {self.fraction}")
        if not 0 <= self.threshold <= 1:
            raise InvalidArgumentError("threshold", f"must be in [0, 1], got {self.threshold}")
        if self.steps < 1:
            raise InvalidArgumentError("steps", f"must be at least 1, got {self.steps}")
        if self.batch_size < 1:
            raise InvalidArgumentError("batch_size", f"must be at least 1, got {self.batch_size}")

    @property
    def map_names(self) -> list[str]:
        return [*self.methods, *self.baselines]


class Progress:
    """A plain-text progress bar on stderr: redrawn in place on a terminal, one line per 10 % otherwise."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None, width: int = 30) -> None:
        self.total, self.label, self.width = max(total, 1), label, width
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self.start = time.monotonic()
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last_decile = -1

    def update(self, n: int = 1, label: str | None = None) -> None:
        self.done = min(self.total, self.done + n)
        if label is not None:
            self.label = label
        filled = int(self.width * self.done / self.total)
        elapsed = time.monotonic() - self.start
        eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        line = (
            f"{self.label:<28} [{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} "
            f"{elapsed:5.0f}s elapsed, ~{eta:.0f}s left"
        )
        if self._tty:
            self.stream.write("\r" + line + ("\n" if self.done == self.total else ""))
            self.stream.flush()
        else:
            decile = 10 * self.done // self.total
            if decile != self._last_decile:
                self._last_decile = decile
                self.stream.write(line + "\n")
                self.stream.flush()


@dataclass
class Example:
    """One image kept for the figure grid: pixels [3,H,W] in [0, 1], boxes, maps per name [H,W]."""

    pixels: torch.Tensor
    boxes: torch.Tensor
    label: int
    predicted: int
    maps: dict[str, torch.Tensor]
    subset: str


@dataclass
class SubsetResult:
    """Per-image rows (one per image and map name) and mean curves of one subset of the data."""

    name: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    deletion: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # name -> [B,S+1] chunks
    insertion: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    fractions: torch.Tensor | None = None
    examples: list[Example] = field(default_factory=list)
    images: int = 0
    correct: int = 0

    def curve(self, kind: str, name: str) -> torch.Tensor:
        """All curves [N,S+1] of one map name."""
        store = self.deletion if kind == "deletion" else self.insertion
        return torch.cat(store[name]) if store.get(name) else torch.zeros(0, 0)

    def values(
        self, name: str, metric: str, where: Callable[[dict[str, Any]], bool] | None = None
    ) -> torch.Tensor:
        vals = [
            r[metric]
            for r in self.rows
            if r["method"] == name and metric in r and (where is None or where(r))
        ]
        return torch.tensor(vals, dtype=torch.float64)


def _fill_and_start(
    settings: EvalSettings, images: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> tuple[torch.Tensor | float, torch.Tensor | float]:
    fill: torch.Tensor | float = (
        faithfulness.black_baseline(mean, std).to(images) if settings.fill == "black" else 0.0
    )
    start = (
        faithfulness.blurred_images(images, settings.blur_sigma)
        if settings.insertion_start == "blur"
        else fill
    )
    return fill, start


def evaluate_batch(
    explainer: Explainer,
    batch: EvalBatch,
    settings: EvalSettings,
    result: SubsetResult,
    generator: torch.Generator,
) -> None:
    """All metrics for one batch, appended to ``result``."""
    from camserve.images import normalize

    manifest = explainer.manifest
    mean, std = manifest.mean, manifest.std
    num_classes = len(manifest.class_names)
    forward = explainer.runner.forward
    images = normalize(batch.images, mean, std)
    n, _, h, w = images.shape
    labels = batch.labels
    targets = torch.stack([labels, torch.full_like(labels, -1), torch.full_like(labels, -num_classes)], 1)
    # metrics need maps at the input's resolution, min-max normalised to [0, 1]
    options = replace(explainer.config.explain, output_size="input", normalize=True)
    computed = explainer.compute(images, targets, list(settings.methods), options)
    logits = computed.logits.detach().float().cpu()
    predicted = logits.argmax(1)
    probs = torch.softmax(logits, 1)
    all_maps = {name: m.detach().float().cpu() for name, m in computed.maps.items()}
    feature_size = computed.feature_size
    for name in settings.baselines:
        single = baseline_maps(name, n, (h, w), feature_size=feature_size, generator=generator)
        all_maps[name] = single.unsqueeze(1).expand(n, len(TARGET_KINDS), h, w)
    fill, start = _fill_and_start(settings, images, mean, std)
    bs = settings.batch_size
    n_boxes = [len(b) for b in batch.boxes]

    for name, maps in all_maps.items():
        if tuple(maps.shape) != (n, len(TARGET_KINDS), h, w):
            raise InvalidArgumentError(
                "methods", f"{name!r} returned maps {tuple(maps.shape)}, not [N,3,{h},{w}]"
            )
        true_maps = maps[:, 0]
        conf = faithfulness.explanation_map_confidence(
            forward, images, true_maps, labels, baseline=fill, batch_size=bs
        )
        keep = faithfulness.top_fraction_confidence(
            forward, images, true_maps, labels, settings.fraction, keep=True, baseline=fill, batch_size=bs
        )
        remove = faithfulness.top_fraction_confidence(
            forward, images, true_maps, labels, settings.fraction, keep=False, baseline=fill, batch_size=bs
        )
        iou_top = loc.box_iou(true_maps, batch.boxes, "top_fraction", fraction=settings.fraction)
        iou_cc = loc.box_iou(maps, batch.boxes, "component", threshold=settings.threshold)  # [N,3]
        pointing = loc.pointing_game(true_maps, batch.boxes, settings.tolerance)
        energy = loc.energy_pointing_game(maps, batch.boxes)  # [N,3]
        coverage = loc.instance_coverage(
            true_maps, batch.boxes, settings.coverage_level, settings.coverage_contrast
        )
        # the Grad-CAM paper scores the predicted class's map (target column 1)
        loc_error = loc.localisation_error_from_iou(iou_cc[:, 1], predicted, labels, settings.iou_threshold)
        columns: dict[str, torch.Tensor] = {
            "average_drop": conf.drop,
            "increase_in_confidence": conf.increase.float(),
            "keep_top_change": keep.change,
            "remove_top_change": remove.change,
            "iou_top_fraction": iou_top,
            "iou_component": iou_cc[:, 0],
            "localisation_error": loc_error.float(),
            "pointing_game": pointing.float(),
            "energy_pointing": energy[:, 0],
            "instance_coverage": coverage,
            "iou_component_top": iou_cc[:, 1],
            "iou_component_least": iou_cc[:, 2],
            "energy_pointing_least": energy[:, 2],
        }
        if settings.curves:
            deletion = faithfulness.deletion_insertion_curve(
                forward, images, true_maps, labels, "deletion", settings.steps, fill, batch_size=bs
            )
            insertion = faithfulness.deletion_insertion_curve(
                forward, images, true_maps, labels, "insertion", settings.steps, start, batch_size=bs
            )
            columns["deletion_auc"] = deletion.auc
            columns["insertion_auc"] = insertion.auc
            result.deletion.setdefault(name, []).append(deletion.curve.cpu())
            result.insertion.setdefault(name, []).append(insertion.curve.cpu())
            result.fractions = deletion.fractions.cpu()
        if settings.road:
            scores = road(forward, images, true_maps, labels, seed=settings.seed, batch_size=bs)
            columns["road_morf"] = scores.morf_mean
            columns["road_lerf"] = scores.lerf_mean
            columns["road_combined"] = scores.combined
        _add_rows(result, settings, batch, name, columns, labels, predicted, probs, n_boxes)
    _add_examples(result, settings, batch, labels, predicted, {k: m[:, 0] for k, m in all_maps.items()})


def object_masks(batch: EvalBatch, height: int, width: int) -> list[torch.Tensor]:
    """Each image's objects as masks bool [M_i,H,W]: the data's own masks, else each box's pixels."""
    if batch.masks is not None:
        return batch.masks
    return [loc.boxes_mask([box[None] for box in boxes], height, width) for boxes in batch.boxes]


def region_targets(
    labels: torch.Tensor, masks: Sequence[torch.Tensor], grid: tuple[int, int]
) -> tuple[list[list[Target]], torch.Tensor]:
    """One ``region`` target per object (its mask on the output grid, the image's class), padded
    to the batch's most objects by repeating the last, then one ``predicted_region`` target of the
    class. Returns the rows and which region columns are real, bool [N,M]."""
    width = max(len(m) for m in masks)
    rows, valid = [], torch.zeros(len(masks), width, dtype=torch.bool)
    for i, (label, image_masks) in enumerate(zip(labels.tolist(), masks, strict=True)):
        on_grid = regions.masks_on_grid(image_masks, grid).numpy()
        row = [Target("region", class_id=label, mask=mask) for mask in on_grid]
        valid[i, : len(row)] = True
        rows.append([*row, *[row[-1]] * (width - len(row)), Target("predicted_region", class_id=label)])
    return rows, valid


def evaluate_regions_batch(
    explainer: Explainer,
    batch: EvalBatch,
    settings: EvalSettings,
    result: SubsetResult,
    generator: torch.Generator,
) -> None:
    """The region metrics of a dense model for one batch, appended to ``result``: each object's
    region target against the object's mask, the class's predicted_region target against the
    union of the class's masks (the truth of what it explains); pointing is exact unless
    ``settings.tolerance`` is set."""
    from camserve.images import normalize

    manifest = explainer.manifest
    images = normalize(batch.images, manifest.mean, manifest.std)
    n, _, h, w = images.shape
    masks = object_masks(batch, h, w)
    if any(len(m) == 0 for m in masks):
        raise InvalidArgumentError("data", "every image needs at least one object for region targets")
    grid = (int(explainer.target_spec.output_shape[1]), int(explainer.target_spec.output_shape[2]))
    rows, valid = region_targets(batch.labels, masks, grid)
    width = valid.shape[1]
    truth = torch.zeros(n, width, h, w, dtype=torch.bool)
    for i, image_masks in enumerate(masks):
        truth[i, : len(image_masks)] = image_masks
    union = truth.any(dim=1)
    options = replace(explainer.config.explain, output_size="input", normalize=True)
    computed = explainer.compute(images, rows, list(settings.methods), options)
    logits = computed.logits.detach().float().cpu()
    predicted = logits.argmax(1)
    probs = torch.softmax(logits, 1)
    all_maps = {name: m.detach().float().cpu() for name, m in computed.maps.items()}
    for name in settings.baselines:
        single = baseline_maps(name, n, (h, w), feature_size=computed.feature_size, generator=generator)
        all_maps[name] = single.unsqueeze(1).expand(n, width + 1, h, w)
    tolerance = settings.tolerance or 0.0
    count = valid.sum(1).double()
    area = (regions.mask_area(truth) * valid).sum(1) / count
    for name, maps in all_maps.items():
        if tuple(maps.shape) != (n, width + 1, h, w):
            raise InvalidArgumentError(
                "methods", f"{name!r} returned maps {tuple(maps.shape)}, not [N,{width + 1},{h},{w}]"
            )
        energy = regions.energy_in_mask(maps[:, :width], truth)
        pointing = regions.pointing_in_mask(maps[:, :width], truth, tolerance)
        columns = {
            "region_energy": (energy * valid).sum(1) / count,
            "region_pointing": (pointing & valid).sum(1) / count,
            "predicted_energy": regions.energy_in_mask(maps[:, width], union),
            "predicted_pointing": regions.pointing_in_mask(maps[:, width], union, tolerance).double(),
            "mask_area": area,
        }
        instances = [len(mask) for mask in masks]
        _add_rows(result, settings, batch, name, columns, batch.labels, predicted, probs, instances)
    _add_examples(
        result, settings, batch, batch.labels, predicted, {k: m[:, width] for k, m in all_maps.items()}
    )


def _add_rows(
    result: SubsetResult,
    settings: EvalSettings,
    batch: EvalBatch,
    method: str,
    columns: dict[str, torch.Tensor],
    labels: torch.Tensor,
    predicted: torch.Tensor,
    probs: torch.Tensor,
    instances: Sequence[int],
) -> None:
    """One report row per image of ``batch`` for ``method``: who it is, and its metric ``columns``."""
    values = {k: v.detach().cpu().double().tolist() for k, v in columns.items()}
    for i in range(len(batch.ids)):
        row: dict[str, Any] = {
            "subset": result.name,
            "image": batch.ids[i],
            "label": int(labels[i]),
            "predicted": int(predicted[i]),
            "correct": int(predicted[i] == labels[i]),
            "instances": int(instances[i]),
            "p_true": float(probs[i, labels[i]]),
            "method": method,
            "kind": "baseline" if method in settings.baselines else "method",
        }
        row.update({k: v[i] for k, v in values.items()})
        result.rows.append(row)


def _add_examples(
    result: SubsetResult,
    settings: EvalSettings,
    batch: EvalBatch,
    labels: torch.Tensor,
    predicted: torch.Tensor,
    maps: dict[str, torch.Tensor],
) -> None:
    """The batch's first images as report examples (up to ``settings.examples`` in all), with each
    method's map [N,H,W]; then the batch's counts."""
    n = len(batch.ids)
    for i in range(min(n, settings.examples - len(result.examples))):
        result.examples.append(
            Example(
                pixels=batch.images[i].clone(),
                boxes=batch.boxes[i].clone(),
                label=int(labels[i]),
                predicted=int(predicted[i]),
                maps={name: m[i].clone() for name, m in maps.items()},
                subset=result.name,
            )
        )
    result.images += n
    result.correct += int((predicted == labels).sum())


def is_dense(explainer: Explainer) -> bool:
    """Whether the model explains a dense output (region targets, region metrics)."""
    return explainer.target_spec.output_kind == "dense"


def evaluate(
    explainer: Explainer,
    subsets: Sequence[tuple[EvalData, int | None]],
    settings: EvalSettings,
    progress: Progress | None = None,
) -> list[SubsetResult]:
    """Run every metric over each (data, limit) subset in batches of ``settings.batch_size`` images."""
    settings.check()
    explainer.check_methods(list(settings.methods))
    generator = torch.Generator().manual_seed(settings.seed)
    per_batch = evaluate_regions_batch if is_dense(explainer) else evaluate_batch
    results = []
    for data, limit in subsets:
        result = SubsetResult(name=data.name)
        for batch in data.batches(settings.batch_size, limit):
            per_batch(explainer, batch, settings, result, generator)
            if progress is not None:
                progress.update(len(batch), label=f"eval {data.name}")
        log.info(
            "%s: %d images, accuracy %.1f %%",
            data.name,
            result.images,
            100.0 * result.correct / max(result.images, 1),
        )
        results.append(result)
    return results
