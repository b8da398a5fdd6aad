"""Statistics over per-item scores: bootstrap confidence intervals and paired comparisons."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

DEFAULT_BOOTSTRAP = 1000


def require_finite_distances(what: str, **columns: np.ndarray) -> None:
    """``ValueError`` naming ``what``, the column and the first item (index) when a distance is NaN or
    infinite: such a distance has no order, and scoring it would turn a failure into a number (a NaN
    compares false both ways, so ``score_2afc`` would call it a tie).

    >>> require_finite_distances("2AFC", d0=np.array([0.1, np.nan]))
    Traceback (most recent call last):
    ...
    ValueError: 2AFC distances must be finite numbers: d0 is non-finite (NaN or infinite) at item 1 (1 item in all); a non-finite distance is never scored
    """
    for name, values in columns.items():
        bad = np.flatnonzero(~np.isfinite(np.asarray(values, dtype=np.float64).reshape(-1)))
        if bad.size:
            raise ValueError(f"{what} distances must be finite numbers: {name} is non-finite (NaN or infinite) at "
                             f"item {bad[0]} ({bad.size} item{'s' if bad.size > 1 else ''} in all); a non-finite "
                             "distance is never scored")


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


def bootstrap_statistic_ci(
    statistic: Callable[[np.ndarray], float],
    n: int,
    *,
    n_boot: int = DEFAULT_BOOTSTRAP,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of any set-level statistic (e.g. JND average precision).

    ``statistic(idx)`` computes the statistic on the items ``idx`` (an index array into the ``n`` items,
    drawn with replacement). Resamples where the statistic is undefined (NaN) are dropped; ``(nan, nan)``
    when fewer than half are defined. Same seed, same CI.

    >>> values = np.array([0.0, 1.0] * 50)
    >>> lo, hi = bootstrap_statistic_ci(lambda idx: values[idx].mean(), values.size, seed=0)
    >>> bool(lo < 0.5 < hi)
    True
    """
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    stats = np.array([statistic(rng.integers(0, n, size=n)) for _ in range(n_boot)], dtype=np.float64)
    stats = stats[~np.isnan(stats)]
    if stats.size < max(1, n_boot // 2):
        return float("nan"), float("nan")
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def paired_statistic_comparison(
    statistic: Callable[[np.ndarray, np.ndarray], float],
    n: int,
    *,
    n_boot: int = DEFAULT_BOOTSTRAP,
    n_perm: int = DEFAULT_PERMUTATIONS,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, float]:
    """Paired comparison of two metrics under a set-level statistic (e.g. JND average precision).

    ``statistic(idx, swap)`` returns score(A) - score(B) on items ``idx`` where, for items with
    ``swap`` true, A's and B's per-item outputs are exchanged. ``diff`` is the statistic on all items;
    the CI is a paired percentile bootstrap (items resampled together); the two-sided p-value comes from
    a paired permutation test that swaps A and B per item at random (the set-level analogue of the
    sign flip in :func:`paired_comparison`).

    >>> a, b = np.linspace(0, 1, 40), np.linspace(0, 1, 40)
    >>> r = paired_statistic_comparison(lambda idx, swap: float(np.where(swap, b[idx], a[idx]).mean()
    ...                                 - np.where(swap, a[idx], b[idx]).mean()), 40, n_boot=50, n_perm=50)
    >>> r["diff"], r["p_value"]
    (0.0, 1.0)
    """
    if n == 0:
        return {"diff": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "p_value": float("nan")}
    everything, keep = np.arange(n), np.zeros(n, dtype=bool)
    observed = float(statistic(everything, keep))
    lo, hi = bootstrap_statistic_ci(lambda idx: statistic(idx, keep), n, n_boot=n_boot, alpha=alpha, seed=seed)
    if np.isnan(observed):
        return {"diff": observed, "ci_low": lo, "ci_high": hi, "p_value": float("nan")}
    if observed == 0.0 and lo == hi == 0.0:
        return {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0}
    rng = np.random.default_rng(seed + 1)
    exceed = sum(abs(statistic(everything, rng.integers(0, 2, size=n).astype(bool))) >= abs(observed) - 1e-12
                 for _ in range(n_perm))
    return {"diff": observed, "ci_low": lo, "ci_high": hi, "p_value": (1 + int(exceed)) / (1 + n_perm)}


# --- JND: VOC-style average precision (see percepbench.tasks.jnd for the protocol) -----------------
def jnd_average_precision(distances: np.ndarray, same: np.ndarray) -> float:
    """VOC-style AP of "same" ranked by ascending distance, soft labels, tied distances as one threshold.

    Returns a fraction in [0, 1]; NaN when no rater ever answered "same" (recall is undefined); a NaN or
    infinite distance is a ``ValueError`` (:func:`require_finite_distances`). NaN is
    meant for bootstrap resamples (:func:`bootstrap_statistic_ci` drops them); the JND tasks refuse a set
    or subset without such a pair before scoring (:func:`percepbench.tasks.jnd.require_same_pairs`).

    >>> jnd_average_precision(np.array([0.1, 0.2, 0.3]), np.array([1.0, 0.0, 1.0]))  # 1 * 1/2 + 2/3 * 1/2
    0.8333333333333333
    >>> jnd_average_precision(np.array([0.1, 0.1]), np.array([1.0, 0.0]))  # a tie: one threshold
    0.5
    """
    d = np.asarray(distances, dtype=np.float64).reshape(-1)
    s = np.asarray(same, dtype=np.float64).reshape(-1)
    if d.shape != s.shape:
        raise ValueError(f"distances and labels must have the same length, got {d.size} and {s.size}")
    require_finite_distances("JND", d=d)
    if np.any((s < 0) | (s > 1)) or np.any(np.isnan(s)):
        raise ValueError("JND labels (fraction answering 'same') must lie in [0, 1]")
    total = s.sum()
    if d.size == 0 or total <= 0:
        return float("nan")
    order = np.argsort(d, kind="stable")
    d, s = d[order], s[order]
    tp, fp = np.cumsum(s), np.cumsum(1.0 - s)
    last_of_tie = np.append(d[1:] != d[:-1], True)  # evaluate only after a whole group of tied distances
    tp, fp = tp[last_of_tie], fp[last_of_tie]
    recall = tp / total
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    changed = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[changed + 1] - mrec[changed]) * mpre[changed + 1]))


def paired_ap_comparison(d_a: np.ndarray, d_b: np.ndarray, same: np.ndarray, *, n_boot: int = DEFAULT_BOOTSTRAP,
                         seed: int = 0) -> dict[str, float]:
    """JND AP of distances ``d_a`` minus AP of ``d_b`` on the same pairs (labels ``same``), in points.

    Paired bootstrap CI and a per-pair swap permutation p-value (:func:`paired_statistic_comparison`).
    """
    d_a, d_b = np.asarray(d_a, np.float64).reshape(-1), np.asarray(d_b, np.float64).reshape(-1)
    s = np.asarray(same, np.float64).reshape(-1)

    def diff(idx: np.ndarray, swap: np.ndarray) -> float:
        x, y = np.where(swap, d_b, d_a)[idx], np.where(swap, d_a, d_b)[idx]
        return (jnd_average_precision(x, s[idx]) - jnd_average_precision(y, s[idx])) * 100.0

    return paired_statistic_comparison(diff, d_a.size, n_boot=n_boot, n_perm=n_boot, seed=seed)
