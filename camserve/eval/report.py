"""Writing an evaluation: metrics.csv (one row per image and map), summary.md (maps x metrics, mean ±
95 % CI) and the figures (``camserve.eval.figures``)."""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from camserve.eval import figures
from camserve.eval.evaluate import METRICS, PERCENT_METRICS, REGION_METRICS, EvalSettings, SubsetResult
from camserve.eval.sanity import SanityResult
from camserve.eval.stats import mean_ci

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

log = logging.getLogger(__name__)

ROW_KEYS = ("subset", "image", "label", "predicted", "correct", "instances", "p_true", "method", "kind")

FAITHFULNESS = (
    "average_drop",
    "increase_in_confidence",
    "keep_top_change",
    "remove_top_change",
    "deletion_auc",
    "insertion_auc",
    "road_morf",
    "road_lerf",
    "road_combined",
)
LOCALISATION = (
    "iou_top_fraction",
    "iou_component",
    "localisation_error",
    "pointing_game",
    "energy_pointing",
    "instance_coverage",
)
HEADERS = {
    "average_drop": "Avg Drop %",
    "increase_in_confidence": "Incr. Conf. %",
    "keep_top_change": "keep top {f} Δ%",
    "remove_top_change": "remove top {f} Δ%",
    "deletion_auc": "deletion AUC",
    "insertion_auc": "insertion AUC",
    "road_morf": "ROAD MoRF",
    "road_lerf": "ROAD LeRF",
    "road_combined": "ROAD combined",
    "iou_top_fraction": "IoU top {f}",
    "iou_component": "IoU segment",
    "localisation_error": "loc. error %",
    "pointing_game": "pointing %",
    "energy_pointing": "energy in box %",
    "instance_coverage": "instances lit %",
    "iou_component_top": "IoU, predicted class",
    "iou_component_least": "IoU, least likely class",
    "energy_pointing_least": "energy %, least likely",
    "region_energy": "energy in mask %",
    "region_pointing": "pointing on mask %",
    "predicted_energy": "energy in masks %, predicted_region",
    "predicted_pointing": "pointing on masks %, predicted_region",
    "mask_area": "mask area % (chance)",
}


@dataclass
class ReportContext:
    """What the summary says about the run besides the numbers."""

    model: str
    data: str
    command: str
    settings: EvalSettings
    notes: list[str] = field(default_factory=list)


#: Metrics whose values are percentages (shown with one decimal); the rest are in [0, 1] (three).
_PERCENT_VALUED = PERCENT_METRICS | {"average_drop", "keep_top_change", "remove_top_change"}


def _scale(metric: str) -> float:
    return 100.0 if metric in PERCENT_METRICS else 1.0


def _digits(metric: str) -> int:
    return 1 if metric in _PERCENT_VALUED else 3


def _header(metric: str, settings: EvalSettings) -> str:
    arrow = {"lower": " ↓", "higher": " ↑"}.get(METRICS[metric][0], "")
    return f"{HEADERS[metric].format(f=f'{settings.fraction:.0%}')}{arrow}"


def write_csv(results: Sequence[SubsetResult], path: Path) -> Path:
    """metrics.csv: one row per subset, image and map; metric columns in METRICS order."""
    metric_keys = [m for m in METRICS if any(m in r for res in results for r in res.rows)]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*ROW_KEYS, *metric_keys], extrasaction="ignore")
        writer.writeheader()
        for res in results:
            for row in res.rows:
                writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return path


def _cell(
    result: SubsetResult, name: str, metric: str, where: Callable[[dict[str, Any]], bool] | None = None
) -> str:
    values = result.values(name, metric, where) * _scale(metric)
    if values.numel() == 0:
        return "–"
    return mean_ci(values).format(_digits(metric))


def _table(
    result: SubsetResult, names: Sequence[str], metrics: Sequence[str], settings: EvalSettings
) -> list[str]:
    metrics = [m for m in metrics if any(m in r for r in result.rows)]
    lines = [
        "| map | " + " | ".join(_header(m, settings) for m in metrics) + " |",
        "|---|" + "---:|" * len(metrics),
    ]
    for name in names:
        label = f"*{name}* (baseline)" if name in settings.baselines else f"**{name}**"
        lines.append(f"| {label} | " + " | ".join(_cell(result, name, m) for m in metrics) + " |")
    return lines


def _paired(
    result: SubsetResult, a: str, b: str, metric: str, where: Callable[[dict[str, Any]], bool] | None = None
) -> str:
    """Mean ± CI of the per-image difference a - b, and how often a > b / a < b."""
    va, vb = result.values(a, metric, where), result.values(b, metric, where)
    if va.numel() == 0 or va.numel() != vb.numel():
        return "–"
    diff = (va - vb) * _scale(metric)
    more, fewer = int((va > vb).sum()), int((va < vb).sum())
    return f"{mean_ci(diff).format(1)} ({more} images more, {fewer} fewer, {va.numel() - more - fewer} equal)"


def summary_markdown(
    results: Sequence[SubsetResult],
    ctx: ReportContext,
    sanity: SanityResult | None,
    figure_files: Sequence[str],
) -> str:
    s = ctx.settings
    names = s.map_names
    tol = "15 px at 224 px, scaled to the image" if s.tolerance is None else f"{s.tolerance:g} px"
    fill = "black (pixels x map)" if s.fill == "black" else "the dataset mean colour"
    start = "a blurred copy (RISE)" if s.insertion_start == "blur" else "the fill"
    out = [
        f"# camserve evaluation: {ctx.model}",
        "",
        f"Command: `{ctx.command}`",
        "",
        f"Data: {ctx.data}. Maps explain the **true class** unless a column says otherwise; values are "
        "mean ± 95 % CI (Student t) over images. ↑/↓: higher/lower is better. Baselines: *random* "
        "(noise at the feature resolution, upsampled like a CAM) and *centre_gaussian* "
        "(σ = 25 % of the side).",
        "",
    ]
    notes = [f"- {note}" for note in ctx.notes] + ([""] if ctx.notes else [])
    if any(_is_regions(res) for res in results):  # a dense model: only the region metrics apply
        return "\n".join(out + notes + _regions_markdown(results, ctx, figure_files))
    out += [
        f"Settings: removed pixels become {fill}; insertion starts from {start}; {s.steps} "
        f"deletion/insertion steps; top fraction {s.fraction:.0%}; segment threshold "
        f"{s.threshold:.0%} of max; localisation error at IoU < {s.iou_threshold}; pointing tolerance "
        f"{tol}; an instance is lit when the map reaches {s.coverage_level:.0%} of its max inside the box "
        f"and the box's mean is over {s.coverage_contrast:g}x the mean outside the boxes.",
        "",
    ]
    if s.road:
        out += [
            "ROAD (Rong et al. 2022): removed pixels imputed from their neighbours plus noise (σ 0.01), "
            "10 %–90 % removed; MoRF/LeRF are the mean probabilities over those fractions, combined is "
            "(LeRF − MoRF) / 2 (pytorch-grad-cam's ROADCombined). The random baseline's row is the floor.",
            "",
        ]
    out += notes
    for res in results:
        acc = 100.0 * res.correct / max(res.images, 1)
        out += [f"## {res.name}: {res.images} images, top-1 accuracy {acc:.1f} %", ""]
        out += ["### Faithfulness", ""] + _table(res, names, FAITHFULNESS, s) + [""]
        out += ["### Localisation", ""] + _table(res, names, LOCALISATION, s) + [""]

    multi = [
        (res, lambda r: r["instances"] >= 2) for res in results if any(r["instances"] >= 2 for r in res.rows)
    ]
    if multi and "gradcam" in s.methods and "gradcam++" in s.methods:
        out += ["## Several instances: does Grad-CAM++ light up more of them than Grad-CAM?", ""]
        out += [
            "| subset | instances lit %, gradcam | gradcam++ | gradcam++ − gradcam (per image) |",
            "|---|---:|---:|---|",
        ]
        for res, where in multi:
            out.append(
                f"| {res.name} | {_cell(res, 'gradcam', 'instance_coverage', where)} | "
                f"{_cell(res, 'gradcam++', 'instance_coverage', where)} | "
                f"{_paired(res, 'gradcam++', 'gradcam', 'instance_coverage', where)} |"
            )
        out.append("")

    out += ["## Case study: predicted class vs least likely class", ""]
    out += [
        "IoU of the largest-segment box and energy inside the true boxes, for the map of the class the "
        "model predicts and of the class it finds least likely (a class-discriminative map of an absent "
        "class should not land on the object).",
        "",
    ]
    for res in results:
        out += [f"### {res.name}", ""]
        cols = ["iou_component_top", "iou_component_least", "energy_pointing_least"]
        out += _table(res, names, cols, s) + [""]

    out += ["## Case study: correct vs wrong predictions (maps of the true class)", ""]
    for res in results:
        wrong = res.images - res.correct
        out += [f"### {res.name}: {res.correct} correct, {wrong} wrong", ""]
        if wrong == 0:
            out += ["No wrong predictions: nothing to compare.", ""]
            continue
        metrics = ("iou_component", "pointing_game", "energy_pointing")
        head = " | ".join(f"{HEADERS[m]} (correct) | {HEADERS[m]} (wrong)" for m in metrics)
        out += [f"| map | {head} |", "|---|" + "---:|" * (2 * len(metrics))]
        for name in names:
            cells = []
            for m in metrics:
                cells.append(_cell(res, name, m, lambda r: r["correct"] == 1))
                cells.append(_cell(res, name, m, lambda r: r["correct"] == 0))
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        out.append("")

    if sanity is not None:
        n_maps = next(iter(sanity.correlations.values())).shape[1:].numel() if sanity.correlations else 0
        out += [
            "## Sanity check: cascading model-parameter randomisation (Adebayo et al. 2018)",
            "",
            f"Mean Spearman rank correlation between the trained model's maps and the maps after "
            f"re-initialising the layers from the top down to each column's layer ({n_maps} maps per "
            "method; the last column has every layer random). A map that explains the model must "
            "decorrelate; 1.0 would mean the map ignores the weights.",
            "",
            "| method | " + " | ".join(sanity.stages) + " |",
            "|---|" + "---:|" * len(sanity.stages),
        ]
        for method, corr in sanity.correlations.items():
            cells = [mean_ci(corr[i].reshape(-1)).format(2) for i in range(corr.shape[0])]
            out.append(f"| {method} | " + " | ".join(cells) + " |")
        out.append("")

    if figure_files:
        out += ["## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figure_files] + [""]
    return "\n".join(out)


def _is_regions(result: SubsetResult) -> bool:
    return any("region_energy" in r for r in result.rows)


def _regions_markdown(
    results: Sequence[SubsetResult], ctx: ReportContext, figure_files: Sequence[str]
) -> list[str]:
    """The dense model's report: region targets scored against the true masks."""
    s = ctx.settings
    tol = "exactly on the mask" if not s.tolerance else f"within {s.tolerance:g} px of the mask"
    out = [
        "Dense model: every object of an image is a `region` target (its true mask on the output grid, "
        "the image's class), and the class is a `predicted_region` target. *energy in mask*: the share "
        "of the map's sum inside the object's mask (Score-CAM's energy-based pointing game on the mask); "
        f"*pointing on mask*: the map's maximum lies {tol}; both averaged over an image's objects. The "
        "predicted_region columns score the class's map against the union of its masks. *mask area*: "
        "the object's share of the image, which a map spread evenly scores on energy: the chance level.",
        "",
    ]
    for res in results:
        out += [f"## {res.name}: {res.images} images", ""]
        out += _table(res, s.map_names, [*REGION_METRICS], s) + [""]
    if figure_files:
        out += ["## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figure_files] + [""]
    return out


def write_report(
    results: Sequence[SubsetResult],
    out_dir: Path,
    ctx: ReportContext,
    class_names: Sequence[str],
    sanity: SanityResult | None = None,
    make_figures: bool = True,
) -> dict[str, Path]:
    """Write metrics.csv, summary.md and (``make_figures``) the PNGs into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"metrics.csv": write_csv(results, out_dir / "metrics.csv")}
    s = ctx.settings
    names = s.map_names
    figure_files: list[str] = []
    if make_figures:
        examples = [ex for res in results for ex in res.examples]
        if examples:
            figure_files.append(figures.grid_figure(examples, names, class_names, out_dir / "grid.png").name)
        for res in results:
            if not res.rows or _is_regions(res):
                continue
            tag = figures.slug(res.name)
            figure_files.append(
                figures.iou_scatter_figure(res, names, out_dir / f"iou_top_vs_least_{tag}.png").name
            )
            if s.curves:
                figure_files.append(
                    figures.curves_figure(res, names, s.baselines, out_dir / f"curves_{tag}.png").name
                )
        if sanity is not None:
            figure_files.append(figures.sanity_figure(sanity, out_dir / "sanity.png").name)
    for f in figure_files:
        written[f] = out_dir / f
    summary = summary_markdown(results, ctx, sanity, figure_files)
    (out_dir / "summary.md").write_text(summary)
    written["summary.md"] = out_dir / "summary.md"
    if sanity is not None:
        written["sanity.csv"] = write_sanity_csv(sanity, out_dir / "sanity.csv")
    return written


def write_sanity_csv(sanity: SanityResult, path: Path) -> Path:
    """sanity.csv: Spearman rho per method, cascade stage (the last layer randomised) and map."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["method", "stage", "randomised_down_to", "map", "spearman"])
        for method, corr in sanity.correlations.items():
            flat = corr.reshape(corr.shape[0], -1)
            for stage, layer in enumerate(sanity.stages):
                for i, rho in enumerate(flat[stage].tolist()):
                    writer.writerow([method, stage + 1, layer, i, f"{rho:.6g}"])
    return path
