"""Summary statistics for the report: mean with a 95 % confidence interval."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MeanCI:
    """Mean of n values and the half-width of its confidence interval (nan when n < 2)."""

    mean: float
    half_width: float
    n: int

    def format(self, digits: int = 3) -> str:
        if self.n == 0:
            return "–"
        if math.isnan(self.half_width):
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f}"


def mean_ci(values: torch.Tensor, confidence: float = 0.95) -> MeanCI:
    """Mean and Student-t confidence interval of the mean: t_{(1+c)/2, n-1} * s / sqrt(n), s the sample
    standard deviation (n - 1 denominator). NaN values are left out. For 0/1 values (hit rates) this is
    the usual normal-approximation interval with the small-sample t correction."""
    v = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    v = v[~torch.isnan(v)]
    n = int(v.numel())
    if n == 0:
        return MeanCI(float("nan"), float("nan"), 0)
    mean = float(v.mean())
    if n < 2:
        return MeanCI(mean, float("nan"), n)
    sd = float(v.std(unbiased=True))
    from scipy.special import stdtrit  # the t quantile (scipy.stats would take seconds to import)

    t = float(stdtrit(n - 1, 0.5 + confidence / 2))
    return MeanCI(mean, t * sd / math.sqrt(n), n)
