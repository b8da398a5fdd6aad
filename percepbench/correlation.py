"""Correlation with mean opinion scores (MOS): SRCC, KRCC, PLCC and PLCC after a logistic fit (REFERENCE §9).

A quality-score benchmark gives, per distorted image, a human score: a MOS (higher = better) or a DMOS
(higher = worse). A percepbench metric gives a distance d(reference, distorted) (lower = more similar). So
that a perfect metric scores +1 on either kind of set, the correlations are taken between the metric's
**predicted quality** ``-d`` and the human score turned into quality (``mos``, or ``-dmos``):

- ``srcc``: Spearman's rank correlation (``scipy.stats.spearmanr``; ties get average ranks);
- ``krcc``: Kendall's tau-b (``scipy.stats.kendalltau``, which corrects for ties);
- ``plcc``: Pearson's correlation on the raw values (as pyiqa reports it);
- ``plcc_fit``: Pearson's correlation after fitting the VQEG 4-parameter monotonic logistic
  ``q(x) = (b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2`` from predicted to human quality by least squares
  (``scipy.optimize.curve_fit``). When the fit does not converge the measure is **not** given (None) and
  the reason is returned: a number is either right or absent.

A constant prediction or constant scores have no correlation: None (scipy's NaN), never 0.

Images that share a reference image are not independent, so confidence intervals resample **reference
images** (:func:`grouped_bootstrap_ci`), and paired comparisons of two metrics resample the same references
for both (:func:`paired_grouped_comparison`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from percepbench.stats import DEFAULT_BOOTSTRAP

MEASURES = ("srcc", "krcc", "plcc", "plcc_fit")


def _valid(x: np.ndarray, y: np.ndarray) -> bool:
    return x.size >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0


def logistic4(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """The VQEG monotonic logistic ``(b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2``."""
    z = np.clip(-(x - b3) / max(abs(b4), 1e-12), -500, 500)
    return (b1 - b2) / (1.0 + np.exp(z)) + b2


def fit_logistic(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray | None, str]:
    """Least-squares fit of :func:`logistic4` from ``x`` to ``y``: ``(params, "")`` or ``(None, why not)``."""
    from scipy.optimize import OptimizeWarning, curve_fit

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if not _valid(x, y):
        return None, "constant predictions or scores"
    if x.size <= 4:
        return None, f"{x.size} items: the 4-parameter logistic needs at least 5"
    start = [y.max(), y.min(), float(np.median(x)), float(np.std(x)) or 1.0]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", OptimizeWarning)
            params, _ = curve_fit(logistic4, x, y, p0=start, maxfev=20000)
    except (RuntimeError, OptimizeWarning, ValueError, TypeError) as exc:
        return None, f"the logistic fit did not converge ({exc})"
    if not np.all(np.isfinite(params)):
        return None, "the logistic fit gave non-finite parameters"
    return params, ""


def correlations(predicted: np.ndarray, quality: np.ndarray) -> tuple[dict[str, float | None], str]:
    """``({measure: value or None}, note)`` between predicted quality and human quality (module docstring).

    >>> values, _ = correlations(np.array([1.0, 2.0, 3.0, 4.0]), np.array([10.0, 20.0, 25.0, 40.0]))
    >>> values["srcc"], values["krcc"]
    (1.0, 1.0)
    """
    from scipy import stats

    x, y = np.asarray(predicted, np.float64).reshape(-1), np.asarray(quality, np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"predictions and scores must have the same length, got {x.size} and {y.size}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("correlations need finite predictions and scores")
    if not _valid(x, y):
        return dict.fromkeys(MEASURES), "constant predictions or scores (or fewer than 3 items): no correlation"
    out: dict[str, float | None] = {
        "srcc": float(stats.spearmanr(x, y).statistic),
        "krcc": float(stats.kendalltau(x, y).statistic),
        "plcc": float(stats.pearsonr(x, y).statistic),
    }
    params, why = fit_logistic(x, y)
    if params is None:
        out["plcc_fit"] = None
    else:
        fitted = logistic4(x, *params)
        out["plcc_fit"] = float(stats.pearsonr(fitted, y).statistic) if np.ptp(fitted) > 0 else None
        why = "" if out["plcc_fit"] is not None else "the fitted logistic is flat"
    return {k: (None if v is None or math.isnan(v) else v) for k, v in out.items()}, why


def _groups(groups: np.ndarray) -> list[np.ndarray]:
    _, inverse = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    return [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)] if inverse.size else []


def _resample(members: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    pick = rng.integers(0, len(members), size=len(members))
    return np.concatenate([members[i] for i in pick])


def grouped_bootstrap_ci(statistic: Callable[[np.ndarray], float | None], groups: np.ndarray, *,
                         n_boot: int = DEFAULT_BOOTSTRAP, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic(idx)`` resampling whole groups (reference images) with
    replacement; undefined resamples (None/NaN) are dropped, ``(nan, nan)`` when fewer than half are defined
    or there is a single group."""
    members = _groups(groups)
    if len(members) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        v = statistic(_resample(members, rng))
        if v is not None and not math.isnan(v):
            values.append(v)
    if len(values) < max(1, n_boot // 2):
        return float("nan"), float("nan")
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def paired_grouped_comparison(stat_a: Callable[[np.ndarray], float | None], stat_b: Callable[[np.ndarray], float | None],
                              groups: np.ndarray, *, n_boot: int = DEFAULT_BOOTSTRAP, alpha: float = 0.05,
                              seed: int = 0) -> dict[str, Any]:
    """``stat_a - stat_b`` on all items, its CI over the same group resamples for both, and a two-sided
    bootstrap p-value (twice the share of resampled differences on the other side of 0, at most 1)."""
    everything = np.arange(len(groups))
    a, b = stat_a(everything), stat_b(everything)
    nan = float("nan")
    if a is None or b is None:
        return {"diff": nan, "ci_low": nan, "ci_high": nan, "p_value": nan}
    observed = a - b
    members = _groups(groups)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot if len(members) > 1 else 0):
        idx = _resample(members, rng)
        va, vb = stat_a(idx), stat_b(idx)
        if va is not None and vb is not None:
            diffs.append(va - vb)
    if len(diffs) < max(1, n_boot // 2):
        return {"diff": observed, "ci_low": nan, "ci_high": nan, "p_value": nan}
    d = np.asarray(diffs)
    lo, hi = np.quantile(d, [alpha / 2, 1 - alpha / 2])
    if observed == 0 and lo == hi == 0:
        return {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0}
    p = min(1.0, 2 * min(float((d <= 0).mean()), float((d >= 0).mean())))
    return {"diff": float(observed), "ci_low": float(lo), "ci_high": float(hi), "p_value": p}
