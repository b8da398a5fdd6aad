"""Statistics over per-item scores: bootstrap confidence intervals."""

from __future__ import annotations

import numpy as np

DEFAULT_BOOTSTRAP = 1000


def bootstrap_ci(
    values: np.ndarray,
    *,
    n_boot: int = DEFAULT_BOOTSTRAP,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``values`` (resampling items with replacement).

    Returns ``(nan, nan)`` for an empty array and ``(v, v)`` for a single item.

    >>> lo, hi = bootstrap_ci(np.array([0.0, 1.0] * 50), seed=0)
    >>> bool(lo < 0.5 < hi)
    True
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    n = values.size
    if n == 0:
        return float("nan"), float("nan")
    if n == 1:
        return float(values[0]), float(values[0])
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot, dtype=np.float64)
    chunk = max(1, 2_000_000 // n)  # bound memory of the (chunk, n) index matrix
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = values[idx].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


DEFAULT_PERMUTATIONS = 2000


def paired_comparison(
    a: np.ndarray,
    b: np.ndarray,
    *,
    n_boot: int = DEFAULT_BOOTSTRAP,
    n_perm: int = DEFAULT_PERMUTATIONS,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, float]:
    """Compare two metrics' per-item scores on the same items.

    Returns ``diff`` = mean(a - b), its paired percentile-bootstrap CI (items resampled together), and a
    two-sided p-value from a paired sign-flip permutation test on the per-item differences (valid for
    soft 2AFC scores too; ``p = (1 + #{|mean(s * d)| >= |mean(d)|}) / (1 + n_perm)``). Identical scores
    give ``diff = 0`` and ``p = 1``.

    >>> r = paired_comparison(np.ones(50), np.zeros(50), seed=0)
    >>> r["diff"], r["p_value"] < 0.01
    (1.0, True)
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired scores must have the same length, got {a.size} and {b.size}")
    d = a - b
    n = d.size
    if n == 0:
        return {"diff": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "p_value": float("nan")}
    observed = float(d.mean())
    lo, hi = bootstrap_ci(d, n_boot=n_boot, alpha=alpha, seed=seed)
    if not np.any(d):
        return {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0}
    rng = np.random.default_rng(seed + 1)
    exceed = 0
    chunk = max(1, 2_000_000 // n)
    for start in range(0, n_perm, chunk):
        m = min(chunk, n_perm - start)
        signs = rng.integers(0, 2, size=(m, n)) * 2 - 1
        exceed += int((np.abs((signs * d).mean(axis=1)) >= abs(observed) - 1e-12).sum())
    return {"diff": observed, "ci_low": lo, "ci_high": hi, "p_value": (1 + exceed) / (1 + n_perm)}
