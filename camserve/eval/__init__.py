"""Evaluation of CAM maps: faithfulness (Average Drop, Increase in Confidence, keep/remove top-k,
deletion/insertion, ROAD), localisation (box IoU, localisation error, pointing games, instance
coverage), the model-randomisation sanity check, baseline maps, and data loaders.

Every metric takes torch tensors, batched: maps [N,H,W] or [N,T,H,W], and, for the faithfulness
metrics, a ``forward(images) -> logits`` callable (``GraphRunner.forward``) that the perturbed images
run through in large chunks. ``camserve eval`` (``camserve.eval.evaluate`` and ``.report``) runs them
all and writes a report.
"""

from __future__ import annotations

from camserve.eval.baselines import BASELINE_NAMES, baseline_maps, centre_gaussian_maps, random_maps
from camserve.eval.data import BenchmarkData, EvalBatch, VocFolder
from camserve.eval.faithfulness import (
    ConfidenceResult,
    CurveResult,
    black_baseline,
    blurred_images,
    deletion_insertion_curve,
    explanation_map_confidence,
    top_fraction_confidence,
)
from camserve.eval.localisation import (
    box_iou,
    connected_components,
    energy_pointing_game,
    instance_coverage,
    largest_component_box,
    localisation_error,
    pairwise_iou,
    pointing_game,
    top_fraction_box,
)
from camserve.eval.road import RoadResult, linear_imputation, road
from camserve.eval.sanity import SanityResult, cascading_randomisation, spearman_rank_correlation
from camserve.eval.stats import MeanCI, mean_ci

__all__ = [
    "BASELINE_NAMES",
    "BenchmarkData",
    "ConfidenceResult",
    "CurveResult",
    "EvalBatch",
    "MeanCI",
    "RoadResult",
    "SanityResult",
    "VocFolder",
    "baseline_maps",
    "black_baseline",
    "blurred_images",
    "box_iou",
    "cascading_randomisation",
    "centre_gaussian_maps",
    "connected_components",
    "deletion_insertion_curve",
    "energy_pointing_game",
    "explanation_map_confidence",
    "instance_coverage",
    "largest_component_box",
    "linear_imputation",
    "localisation_error",
    "mean_ci",
    "pairwise_iou",
    "pointing_game",
    "random_maps",
    "road",
    "spearman_rank_correlation",
    "top_fraction_box",
    "top_fraction_confidence",
]
