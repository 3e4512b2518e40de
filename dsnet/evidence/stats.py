"""Paired statistics for comparing two models on the same images.

Every comparison here is *paired*: model A and model B were run on the same images, so what is
tested is the per-image difference, not two independent samples.

* Accuracy (one 0/1 correctness per image and model): the exact McNemar test, which is a two-sided
  binomial test (``scipy.stats.binomtest``, p = 0.5) on the discordant pairs (images only A gets
  right vs images only B gets right), and a paired bootstrap interval of the accuracy difference.
* Any per-image number (a focus or faithfulness metric): the Wilcoxon signed-rank test
  (``scipy.stats.wilcoxon``, two-sided, zero differences dropped as in Wilcoxon's original method)
  on B − A, and a paired bootstrap interval of the mean difference.

The bootstrap is ``scipy.stats.bootstrap`` of the mean of the per-image differences B − A
(resampling images, so the pairing is kept), percentile method, 10,000 resamples, seeded: the same
inputs always give the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 10_000
SEED = 0


@dataclass(frozen=True)
class McNemar:
    n: int  # paired images
    only_a: int  # images A gets right and B gets wrong
    only_b: int  # images B gets right and A gets wrong
    p_value: float  # exact two-sided McNemar (binomial test on only_a of only_a + only_b, p = 0.5)


@dataclass(frozen=True)
class PairedComparison:
    """B versus A on the same items; ``diff`` = mean(B) − mean(A) with its bootstrap interval."""

    n: int
    mean_a: float
    mean_b: float
    diff: float
    ci_low: float
    ci_high: float
    test: str  # "mcnemar-exact" or "wilcoxon"
    p_value: float

    def as_dict(self, scale: float = 1.0, digits: int = 6) -> dict:
        """The fields, the means and interval multiplied by ``scale`` (100 for percentage points)."""
        d = asdict(self)
        for k in ("mean_a", "mean_b", "diff", "ci_low", "ci_high"):
            d[k] = round(d[k] * scale, digits)
        d["p_value"] = float(f"{self.p_value:.4g}")
        return d


def mcnemar(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> McNemar:
    """Exact McNemar test of two classifiers' per-image correctness (same images, same order)."""
    a, b = _pair(a_correct, b_correct, bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    discordant = only_a + only_b
    from scipy import stats  # on use: scipy.stats takes most of a second to import

    p = stats.binomtest(only_a, discordant, 0.5).pvalue if discordant else 1.0
    return McNemar(len(a), only_a, only_b, float(p))


def bootstrap_ci(
    diff: Sequence[float], confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = SEED
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of paired differences (resampling the pairs)."""
    d = np.asarray(diff, dtype=float)
    if len(d) < 2:
        return math.nan, math.nan
    if np.all(d == d[0]):  # every resample has the same mean
        return float(d[0]), float(d[0])
    from scipy import stats

    res = stats.bootstrap(
        (d,),
        np.mean,
        confidence_level=confidence,
        n_resamples=resamples,
        method="percentile",
        vectorized=True,
        random_state=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def compare_accuracy(a_correct: Sequence[bool], b_correct: Sequence[bool], **bootstrap) -> PairedComparison:
    """Accuracy of B minus accuracy of A (fractions): exact McNemar p, paired bootstrap interval."""
    a, b = _pair(a_correct, b_correct, bool)
    low, high = bootstrap_ci(b.astype(float) - a.astype(float), **bootstrap)
    return PairedComparison(
        len(a),
        float(a.mean()),
        float(b.mean()),
        float(b.mean() - a.mean()),
        low,
        high,
        "mcnemar-exact",
        mcnemar(a, b).p_value,
    )


def compare_metric(a_values: Sequence[float], b_values: Sequence[float], **bootstrap) -> PairedComparison:
    """A per-image metric, B − A: Wilcoxon signed-rank p, paired bootstrap interval of the mean.

    Pairs where either value is missing (None / nan) are left out; ``n`` counts the pairs used.
    """
    a, b = _pair(a_values, b_values, float)
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    d = b - a
    if len(d) == 0:
        return PairedComparison(0, math.nan, math.nan, math.nan, math.nan, math.nan, "wilcoxon", math.nan)
    from scipy import stats

    p = float(stats.wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
    low, high = bootstrap_ci(d, **bootstrap)
    return PairedComparison(len(d), float(a.mean()), float(b.mean()), float(d.mean()), low, high, "wilcoxon", p)


def _pair(a, b, dtype) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray([math.nan if v is None else v for v in a] if dtype is float else a, dtype=dtype)
    b = np.asarray([math.nan if v is None else v for v in b] if dtype is float else b, dtype=dtype)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired samples need equal 1-D shapes, got {a.shape} and {b.shape}")
    return a, b


def mean_interval(values: Sequence[float], digits: int = 4) -> dict:
    """Mean and 95 % bootstrap interval of per-image values, as the artifacts store them: {mean, ci95, n}
    (one value: no interval, the mean twice; none: None)."""
    arr = np.asarray(values, dtype=float)
    if len(arr) == 0:
        return {"mean": None, "ci95": [None, None], "n": 0}
    low, high = bootstrap_ci(arr) if len(arr) > 1 else (math.nan, math.nan)
    if math.isnan(low):
        low = high = float(arr.mean())
    return {"mean": round(float(arr.mean()), digits), "ci95": [round(low, digits), round(high, digits)], "n": len(arr)}
