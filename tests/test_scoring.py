"""2AFC scoring rule and task scoring, on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from percepbench.stats import bootstrap_ci
from percepbench.tasks.base import TwoAFCTask, score_2afc


def test_hard_labels():
    d0 = np.array([0.1, 0.9, 0.2, 0.7])
    d1 = np.array([0.5, 0.3, 0.1, 0.8])
    p = np.array([0.0, 1.0, 0.0, 1.0])  # p = 1: right judged closer
    # left closer & p=0 -> 1; right closer & p=1 -> 1; right closer & p=0 -> 0; left closer & p=1 -> 0
    assert score_2afc(d0, d1, p).tolist() == [1.0, 1.0, 0.0, 0.0]


def test_ties_count_half_whatever_the_label():
    d = np.array([0.3, 0.3, 0.3])
    assert score_2afc(d, d.copy(), np.array([0.0, 1.0, 0.6])).tolist() == [0.5, 0.5, 0.5]


def test_fractional_labels():
    # BAPPS-style soft labels: 5 raters, 3 preferred the right image -> p = 0.6
    d0 = np.array([0.2, 0.4, 0.25])
    d1 = np.array([0.4, 0.2, 0.25])
    p = np.array([0.6, 0.6, 0.6])
    assert score_2afc(d0, d1, p) == pytest.approx([0.4, 0.6, 0.5])
    assert score_2afc(d0, d1, p).mean() == pytest.approx(0.5)


def test_distance_shape_trap_is_flattened():
    d0 = np.array([0.1, 0.5]).reshape(2, 1, 1, 1)
    d1 = np.array([0.2, 0.4]).reshape(2, 1, 1, 1)
    assert score_2afc(d0, d1, np.array([0.0, 1.0])).tolist() == [1.0, 1.0]


def test_bad_labels_and_lengths():
    with pytest.raises(ValueError, match=r"labels p must lie in \[0, 1\]"):
        score_2afc(np.array([0.1]), np.array([0.2]), np.array([1.5]))
    with pytest.raises(ValueError, match="same length"):
        score_2afc(np.array([0.1, 0.2]), np.array([0.2]), np.array([1.0]))


def test_task_score_per_subset_and_pooled():
    samples = pd.DataFrame({
        "item": list("abcde"),
        "subset": ["x", "x", "y", "y", "y"],
        "d0": [0.1, 0.9, 0.2, 0.3, 0.5],
        "d1": [0.2, 0.1, 0.1, 0.3, 0.6],
        "p": [0.0, 0.0, 1.0, 1.0, 0.8],
    })
    # item scores: a=1, b=0, c=1, d=0.5 (tie), e=1-0.8=0.2
    records = {r["subset"]: r for r in TwoAFCTask().score(samples, seed=0, n_boot=200)}
    assert records["x"]["value"] == pytest.approx(50.0) and records["x"]["n"] == 2
    assert records["y"]["value"] == pytest.approx((1 + 0.5 + 0.2) / 3 * 100)
    assert records["all"]["value"] == pytest.approx((1 + 0 + 1 + 0.5 + 0.2) / 5 * 100) and records["all"]["n"] == 5
    for r in records.values():
        assert r["measure"] == "2afc_accuracy"
        assert r["ci_low"] <= r["value"] <= r["ci_high"]


def test_single_subset_has_no_pooled_duplicate():
    samples = pd.DataFrame({"item": ["a"], "subset": ["only"], "d0": [0.1], "d1": [0.2], "p": [0.0]})
    records = TwoAFCTask().score(samples)
    assert [r["subset"] for r in records] == ["only"]
    assert records[0]["ci_low"] == records[0]["ci_high"] == 100.0


def test_bootstrap_ci():
    values = np.r_[np.ones(80), np.zeros(20)]
    lo, hi = bootstrap_ci(values, seed=1, n_boot=2000)
    # normal approximation: 0.8 +- 1.96 * sqrt(0.8 * 0.2 / 100) = [0.72, 0.88]
    assert lo == pytest.approx(0.72, abs=0.02) and hi == pytest.approx(0.88, abs=0.02)
    assert bootstrap_ci(values, seed=1) == bootstrap_ci(values, seed=1)
    assert all(np.isnan(bootstrap_ci(np.array([]))))
    assert bootstrap_ci(np.full(10, 0.5)) == (0.5, 0.5)


def test_bootstrap_ci_agrees_with_scipy():
    values = np.random.default_rng(4).gamma(2.0, size=150)  # skewed: the percentile CI is not symmetric
    lo, hi = bootstrap_ci(values, seed=0, n_boot=4000)
    ref = stats.bootstrap((values,), np.mean, method="percentile", n_resamples=20000, random_state=1)
    se = values.std(ddof=1) / np.sqrt(values.size)
    # two Monte Carlo estimates of the same percentiles; an endpoint drawn 4000 times varies by about
    # se * sqrt(0.025 * 0.975 / 4000) / phi(1.96) = 0.04 se, so 0.2 se is five of those
    assert lo == pytest.approx(ref.confidence_interval.low, abs=0.2 * se)
    assert hi == pytest.approx(ref.confidence_interval.high, abs=0.2 * se)


def test_paired_comparison_hand_cases():
    from percepbench.stats import paired_comparison

    # three items where A is right and B wrong, one tie: exact sign-flip p = P(all 3 signs equal) = 2/8
    r = paired_comparison(np.array([1.0, 1.0, 1.0, 0.0]), np.zeros(4), n_perm=4000, seed=0)
    assert r["diff"] == pytest.approx(0.75)
    assert r["p_value"] == pytest.approx(0.25, abs=0.03)
    assert r["ci_low"] <= 0.75 <= r["ci_high"]
    # six items, all in A's favour: only the two all-equal sign patterns reach |mean|, exact p = 2 / 2**6
    six = paired_comparison(np.ones(6), np.zeros(6), n_perm=4000, seed=0)
    assert six["p_value"] == pytest.approx(2 / 64, abs=4 * np.sqrt(2 / 64 * 62 / 64 / 4000))
    same = paired_comparison(np.full(10, 0.5), np.full(10, 0.5))
    assert same == {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0}
    rng = np.random.default_rng(0)
    strong = paired_comparison((rng.random(300) < 0.9).astype(float), (rng.random(300) < 0.6).astype(float))
    assert strong["p_value"] < 0.01 and strong["ci_low"] > 0
    with pytest.raises(ValueError, match="same length"):
        paired_comparison(np.ones(3), np.ones(4))
