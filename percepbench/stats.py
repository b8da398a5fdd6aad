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
