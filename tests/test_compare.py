"""``percepbench compare``: the regression gate between two result files (reports/compare.py).

Runs are crafted with ``write_results``: a 2AFC task of 400 items in two subsets, three metrics, per-item
scores from seeded distances; a "new" run is the baseline with chosen items flipped.
"""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from percepbench.cli import main
from percepbench.errors import DataError, UsageError
from percepbench.reports.compare import Comparison, compare_runs, main_compare, write_outputs
from percepbench.results import RESULTS_FILE, RunResults, load_results, write_results
from percepbench.stats import bootstrap_ci

TASK = "toy2afc"
SUBSETS = ("s1", "s2")
METRICS = ("m_a", "m_b", "m_c")
PER_SUBSET = 200
V1_RUN = Path(__file__).parent / "data" / "v1_run"
N_BOOT = 200  # the records' CIs only; compare_runs keeps its own default


def score_2afc(d0: np.ndarray, d1: np.ndarray, p: np.ndarray) -> np.ndarray:
    return np.where(d0 < d1, 1.0 - p, np.where(d1 < d0, p, 0.5))


def make_samples(seed: int = 0, metrics=METRICS) -> pd.DataFrame:
    """One row per (metric, item): hard labels, about 75% of items correct per metric."""
    rng = np.random.default_rng(seed)
    items = [f"{s}/{k:04d}" for s in SUBSETS for k in range(PER_SUBSET)]
    subsets = np.repeat(SUBSETS, PER_SUBSET)
    p = rng.integers(0, 2, size=len(items)).astype(float)
    frames = []
    for metric in metrics:
        correct = rng.random(len(items)) < 0.75
        small, large = rng.uniform(0, 0.5, len(items)), rng.uniform(0.5, 1.0, len(items))
        left_closer = correct == (p == 0)
        d0, d1 = np.where(left_closer, small, large), np.where(left_closer, large, small)
        frames.append(pd.DataFrame({"task": TASK, "metric": metric, "item": items, "subset": subsets, "p": p,
                                    "d0": d0, "d1": d1, "score": score_2afc(d0, d1, p)}))
    return pd.concat(frames, ignore_index=True)


def flip(samples: pd.DataFrame, metric: str, subset: str, k: int, *, to: float) -> pd.DataFrame:
    """Make ``k`` items of ``metric`` in ``subset`` score ``to`` (0 or 1) by swapping their distances."""
    s = samples.copy()
    idx = s.index[(s["metric"] == metric) & (s["subset"] == subset) & (s["score"] != to)][:k]
    assert len(idx) == k
    s.loc[idx, ["d0", "d1"]] = s.loc[idx, ["d1", "d0"]].to_numpy()
    s["score"] = score_2afc(s["d0"].to_numpy(), s["d1"].to_numpy(), s["p"].to_numpy())
    assert (s.loc[idx, "score"] == to).all()
    return s


def records_from(samples: pd.DataFrame, measure: str = "2afc_accuracy") -> pd.DataFrame:
    """Records as the runner writes them: per subset and pooled, mean score x 100 with a bootstrap CI."""
    rows = []
    for (task, metric), f in samples.groupby(["task", "metric"], sort=False):
        groups = [(s, f[f["subset"] == s]) for s in pd.unique(f["subset"])] + [("all", f)]
        for subset, g in groups:
            vals = g["score"].to_numpy() * 100
            lo, hi = bootstrap_ci(vals, n_boot=N_BOOT, seed=0)
            rows.append({"task": task, "subset": subset, "metric": metric, "measure": measure,
                         "value": float(vals.mean()), "ci_low": lo, "ci_high": hi, "n": len(vals)})
    return pd.DataFrame(rows)


def make_meta(**overrides) -> dict:
    meta = {"percepbench_version": "0.1.0", "git_sha": "aaaa111", "torch_version": "2.4.0", "device": "cpu",
            "device_name": "", "finished": "2025-01-01T00:00:00+00:00",
            "config": {"task_args": {}, "seed": 0},
            "tasks": {TASK: {"name": TASK, "target": "tests:Toy2AFC", "kwargs": {}, "measure": "2afc_accuracy"}}}
    meta.update(overrides)
    return meta


def write_run(path: Path, samples: pd.DataFrame | None, *, records: pd.DataFrame | None = None,
              meta: dict | None = None, keep_samples: bool = True) -> Path:
    rec = records_from(samples) if records is None else records
    write_results(path, RunResults(meta=meta or make_meta(), records=rec,
                                   samples=samples if keep_samples else None))
    return path


@pytest.fixture(scope="module")
def base_samples() -> pd.DataFrame:
    return make_samples(seed=0)


@pytest.fixture
def baseline(tmp_path, base_samples) -> Path:
    return write_run(tmp_path / "baseline", base_samples)


def row(c: Comparison, subset: str, metric: str) -> pd.Series:
    r = c.rows[(c.rows["subset"] == subset) & (c.rows["metric"] == metric)]
    assert len(r) == 1
    return r.iloc[0]


def flagged(c: Comparison) -> set[tuple[str, str]]:
    return {(r.subset, r.metric) for r in c.rows.itertuples() if r.status not in ("ok",)}


# --------------------------------------------------------------------------- verdicts


def test_identical_runs_all_zero(tmp_path, baseline, base_samples):
    new = write_run(tmp_path / "new", base_samples)
    c = compare_runs(baseline, new)
    assert len(c.rows) == 9 and list(c.rows.columns) == [
        "task", "subset", "metric", "measure", "baseline", "new", "delta", "ci_low", "ci_high", "p_value", "n",
        "method", "status", "reason"]
    assert (c.rows["delta"] == 0).all() and (c.rows["p_value"] == 1).all()
    assert (c.rows["ci_low"] == 0).all() and (c.rows["ci_high"] == 0).all()
    assert set(c.rows["status"]) == {"ok"} and set(c.rows["method"]) == {"paired"}
    assert row(c, "all", "m_a")["n"] == 400 and row(c, "s1", "m_a")["n"] == 200
    assert c.exit_code == 0 and c.regressions.empty
    assert main_compare(baseline, new, out=io.StringIO()) == 0


def test_improvement_passes(tmp_path, baseline, base_samples):
    new = write_run(tmp_path / "new", flip(base_samples, "m_c", "s2", 30, to=1.0))
    c = compare_runs(baseline, new)
    r = row(c, "s2", "m_c")
    assert r["delta"] == pytest.approx(15.0) and r["status"] == "improvement" and r["p_value"] < 0.001
    assert row(c, "all", "m_c")["status"] == "improvement"
    assert flagged(c) == {("s2", "m_c"), ("all", "m_c")}
    assert c.exit_code == 0
    assert main_compare(baseline, new, out=io.StringIO()) == 0


def test_noise_level_drop_is_not_flagged(tmp_path, baseline, base_samples):
    # 3 of 200 items flipped: -1.5 points, beyond the tolerance but far from significant
    new = write_run(tmp_path / "new", flip(base_samples, "m_a", "s1", 3, to=0.0))
    c = compare_runs(baseline, new)
    r = row(c, "s1", "m_a")
    assert r["delta"] == pytest.approx(-1.5) and r["method"] == "paired"
    assert r["p_value"] > 0.05 and r["status"] == "ok" and r["reason"].startswith("not significant")
    pooled = row(c, "all", "m_a")
    assert pooled["delta"] == pytest.approx(-0.75) and pooled["reason"].startswith("within tolerance")
    assert flagged(c) == set() and c.exit_code == 0


def test_significant_drop_within_tolerance_is_not_flagged(tmp_path, baseline, base_samples):
    new = write_run(tmp_path / "new", flip(base_samples, "m_b", "s1", 16, to=0.0))
    c = compare_runs(baseline, new, max_drop=10)
    r = row(c, "s1", "m_b")
    assert r["delta"] == pytest.approx(-8.0) and r["p_value"] < 0.05
    assert r["status"] == "ok" and r["reason"].startswith("within tolerance") and c.exit_code == 0


def test_real_regression_fails(tmp_path, baseline, base_samples):
    new = write_run(tmp_path / "new", flip(base_samples, "m_b", "s1", 16, to=0.0))
    c = compare_runs(baseline, new)
    r = row(c, "s1", "m_b")
    assert r["delta"] == pytest.approx(-8.0) and r["p_value"] < 0.001 and r["ci_high"] < 0
    assert r["status"] == "regression" and r["reason"].startswith("drop of 8.00")
    # the pooled row of the same metric drops by 4 points and is flagged too; nothing else is
    assert flagged(c) == {("s1", "m_b"), ("all", "m_b")}
    assert list(c.regressions["metric"]) == ["m_b", "m_b"] and c.exit_code == 1
    # with a 5-point tolerance exactly that row fails
    c5 = compare_runs(baseline, new, max_drop=5)
    assert flagged(c5) == {("s1", "m_b")} and c5.exit_code == 1
    assert main_compare(baseline, new, out=io.StringIO()) == 1


def test_paired_statistics_agree_with_scipy_and_the_exact_sign_flip_test(tmp_path, baseline, base_samples):
    """Oracles independent of percepbench.stats: the exact sign-flip p-value (enumerated by hand and by scipy)
    and scipy's percentile bootstrap of the mean per-item difference."""
    pick = (base_samples["metric"] == "m_a") & (base_samples["subset"] == "s1")
    right = base_samples.index[pick & (base_samples["score"] == 1)][:9]
    wrong = base_samples.index[pick & (base_samples["score"] == 0)][:4]
    changed = base_samples.copy()
    swap = right.append(wrong)  # 9 right items become wrong, 4 wrong ones right: distances swapped
    changed.loc[swap, ["d0", "d1"]] = changed.loc[swap, ["d1", "d0"]].to_numpy()
    changed["score"] = score_2afc(changed["d0"].to_numpy(), changed["d1"].to_numpy(), changed["p"].to_numpy())
    new = write_run(tmp_path / "new", changed)
    c = compare_runs(baseline, new)  # 2000 bootstrap resamples and 2000 sign flips
    d = (changed.loc[pick, "score"].to_numpy() - base_samples.loc[pick, "score"].to_numpy()) * 100
    assert sorted(np.unique(d, return_counts=True)[1]) == [4, 9, 187]  # 9 x -100, 4 x +100, 187 x 0
    r = row(c, "s1", "m_a")
    assert r["method"] == "paired" and r["n"] == 200 and r["delta"] == pytest.approx(-2.5)
    # only the 13 non-zero differences move under sign flips: |sum of 13 random signs| >= |4 - 9| = 5 happens
    # for at most 4 or at least 9 positive signs, so p = 2 * sum_{k<=4} C(13, k) / 2**13 = 2186 / 8192
    exact = 2 * sum(math.comb(13, k) for k in range(5)) / 2**13
    nonzero = d[d != 0]
    enumerated = scipy_stats.permutation_test(
        (nonzero, np.zeros_like(nonzero)), lambda x, y, axis: np.mean(x - y, axis=axis), vectorized=True,
        permutation_type="samples", n_resamples=np.inf, alternative="two-sided")
    assert enumerated.pvalue == pytest.approx(exact) == pytest.approx(0.26685, abs=1e-5)
    # compare draws 2000 sign flips: within 4 standard errors of the exact value
    assert abs(r["p_value"] - exact) < 4 * math.sqrt(exact * (1 - exact) / 2000)
    boot = scipy_stats.bootstrap((d,), np.mean, method="percentile", n_resamples=20000, random_state=0)
    assert r["ci_low"] == pytest.approx(boot.confidence_interval.low, abs=0.75)
    assert r["ci_high"] == pytest.approx(boot.confidence_interval.high, abs=0.75)
    assert r["ci_low"] < -2.5 < r["ci_high"] < 2.5  # not significant: the CI holds 0
    assert r["status"] == "ok" and r["reason"] == f"not significant (p = {r['p_value']:.3f}, alpha 0.05)"


# --------------------------------------------------------------------------- missing / new rows


def test_missing_metric_fails_unless_allowed(tmp_path, baseline, base_samples):
    kept = base_samples[base_samples["metric"] != "m_c"]
    new = write_run(tmp_path / "new", kept)
    c = compare_runs(baseline, new)
    missing = c.rows[c.rows["status"] == "missing"]
    assert set(missing["metric"]) == {"m_c"} and len(missing) == 3 and c.exit_code == 1
    assert missing["new"].isna().all() and (missing["method"] == "none").all()
    assert main_compare(baseline, new, out=io.StringIO()) == 1

    allowed = compare_runs(baseline, new, allow_missing=True)
    assert set(allowed.rows.loc[allowed.rows["metric"] == "m_c", "status"]) == {"info"}
    assert allowed.exit_code == 0
    assert main_compare(baseline, new, allow_missing=True, out=io.StringIO()) == 0


def test_rows_only_in_new_are_informational(tmp_path, baseline, base_samples):
    extra = make_samples(seed=3, metrics=("m_new",))
    new = write_run(tmp_path / "new", pd.concat([base_samples, extra], ignore_index=True))
    c = compare_runs(baseline, new)
    news = c.rows[c.rows["status"] == "new"]
    assert set(news["metric"]) == {"m_new"} and len(news) == 3 and news["baseline"].isna().all()
    assert c.exit_code == 0


def test_samples_that_do_not_reproduce_the_records_are_not_paired(tmp_path, baseline, base_samples):
    rec = records_from(base_samples)
    edited = rec["metric"].eq("m_a") & rec["subset"].eq("s1")
    rec.loc[edited, ["value", "ci_low", "ci_high"]] -= 30  # the records say one thing, the samples another
    c = compare_runs(baseline, write_run(tmp_path / "new", base_samples, records=rec))
    r = row(c, "s1", "m_a")
    assert r["method"] == "records (samples do not reproduce the records' values)"
    assert r["delta"] == pytest.approx(-30) and r["status"] == "regression" and c.exit_code == 1
    assert set(c.rows.loc[~(c.rows["metric"].eq("m_a") & c.rows["subset"].eq("s1")), "method"]) == {"paired"}


# --------------------------------------------------------------------------- records-only runs


def _records(value, lo, hi, n=400):
    return pd.DataFrame([{"task": TASK, "subset": "all", "metric": "m_a", "measure": "2afc_accuracy",
                          "value": value, "ci_low": lo, "ci_high": hi, "n": n}])


def test_records_only_runs_use_a_z_test_on_the_cis(tmp_path):
    b = write_run(tmp_path / "b", None, records=_records(80.0, 76.0, 84.0))
    n = write_run(tmp_path / "n", None, records=_records(75.0, 70.0, 80.0))
    c = compare_runs(b, n)
    r = row(c, "all", "m_a")
    se = math.sqrt((8 / (2 * 1.96)) ** 2 + (10 / (2 * 1.96)) ** 2)  # 3.267
    p = 2 * (1 - 0.5 * (1 + math.erf(5 / se / math.sqrt(2))))  # z = -1.530
    assert r["method"] == "records" and r["delta"] == pytest.approx(-5.0)
    assert r["p_value"] == pytest.approx(p, rel=1e-3) and r["p_value"] == pytest.approx(0.126, abs=1e-3)
    assert (r["ci_low"], r["ci_high"]) == (pytest.approx(-5 - 1.96 * se, rel=1e-3),
                                           pytest.approx(-5 + 1.96 * se, rel=1e-3))
    assert r["status"] == "ok" and r["reason"].startswith("not significant") and c.exit_code == 0

    worse = write_run(tmp_path / "w", None, records=_records(60.0, 56.0, 64.0))
    cw = compare_runs(b, worse)
    assert row(cw, "all", "m_a")["status"] == "regression" and cw.exit_code == 1


def test_a_drop_whose_significance_cannot_be_judged_fails(tmp_path, capsys):
    """No CI in a record and no samples: a drop beyond tolerance fails safe (``unjudged``, exit 1)."""
    b = write_run(tmp_path / "b", None, records=_records(80.0, None, None))
    n = write_run(tmp_path / "n", None, records=_records(50.0, 45.0, 55.0))
    c = compare_runs(b, n)
    r = row(c, "all", "m_a")
    assert math.isnan(r["p_value"]) and math.isnan(r["ci_low"])
    assert r["status"] == "unjudged" and c.exit_code == 1 and c.verdict == "FAIL"
    assert r["reason"] == ("drop of 30.00 > 1 points whose significance cannot be judged (no CI in a record and "
                           "no paired samples): fails the gate")
    # the case, through the CLI: 40 points lower, neither run has CIs or samples
    lower = write_run(tmp_path / "l", None, records=_records(40.0, None, None))
    assert main(["compare", str(b), str(lower)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("FAIL: 1 unjudged (1 rows;") and "PASS" not in out
    # within tolerance it is still ok, and a gain of unknown significance is shown but never fails
    close = write_run(tmp_path / "c", None, records=_records(79.5, None, None))
    assert compare_runs(b, close).exit_code == 0
    gain = compare_runs(n, b)
    assert row(gain, "all", "m_a")["status"] == "ok" and gain.exit_code == 0
    assert "gain of 30.00 > 1 points whose significance cannot be judged" in row(gain, "all", "m_a")["reason"]


@pytest.mark.parametrize(("vb", "vn"), [(float("nan"), float("nan")), (80.0, float("nan")), (float("nan"), 80.0),
                                        (80.0, float("inf"))])
def test_non_finite_values_fail(tmp_path, capsys, vb, vn):
    b = write_run(tmp_path / "b", None, records=_records(vb, 76.0, 84.0))
    n = write_run(tmp_path / "n", None, records=_records(vn, 76.0, 84.0))
    c = compare_runs(b, n)
    r = row(c, "all", "m_a")
    which = " and ".join(w for w, v in (("baseline", vb), ("new", vn)) if not math.isfinite(v))
    assert r["status"] == "invalid" and r["reason"] == f"the {which} value is not a finite number"
    assert c.exit_code == 1
    assert main(["compare", str(b), str(n)]) == 1
    assert capsys.readouterr().out.startswith("FAIL: 1 invalid")


def test_all_nan_runs_fail(tmp_path, base_samples):
    rec = records_from(base_samples)
    rec[["value", "ci_low", "ci_high"]] = np.nan
    c = compare_runs(write_run(tmp_path / "b", None, records=rec), write_run(tmp_path / "n", None, records=rec))
    assert set(c.rows["status"]) == {"invalid"} and c.exit_code == 1


def test_a_non_finite_value_only_in_the_new_run_fails(tmp_path, baseline, base_samples):
    extra = pd.DataFrame([{"task": TASK, "subset": "all", "metric": "m_new", "measure": "2afc_accuracy",
                           "value": np.nan, "ci_low": np.nan, "ci_high": np.nan, "n": 400}])
    rec = pd.concat([records_from(base_samples), extra], ignore_index=True)
    c = compare_runs(baseline, write_run(tmp_path / "new", base_samples, records=rec))
    r = row(c, "all", "m_new")
    assert r["status"] == "invalid" and r["reason"] == "the new value is not a finite number (only in the new run)"
    assert c.exit_code == 1


def test_samples_in_one_run_only_fall_back_to_records(tmp_path, baseline, base_samples):
    new = write_run(tmp_path / "new", base_samples, keep_samples=False)
    c = compare_runs(baseline, new)
    assert set(c.rows["method"]) == {"records (no samples in the new run)"}


def test_labels_that_disagree_are_not_paired(tmp_path, baseline, base_samples):
    relabeled = base_samples.copy()
    first = relabeled["item"].isin(["s1/0000", "s1/0001"])
    relabeled.loc[first, "p"] = 1 - relabeled.loc[first, "p"]
    relabeled["score"] = score_2afc(relabeled["d0"].to_numpy(), relabeled["d1"].to_numpy(),
                                    relabeled["p"].to_numpy())
    c = compare_runs(baseline, write_run(tmp_path / "new", relabeled))
    assert row(c, "s1", "m_a")["method"] == "records (labels differ on 2 of 200 items (p))"
    assert row(c, "all", "m_b")["method"].startswith("records (labels differ on 2 of 400")
    assert row(c, "s2", "m_a")["method"] == "paired"


# --------------------------------------------------------------------------- incompatible inputs


@pytest.mark.parametrize("damage", ["schema_version", "garbage", "missing"])
def test_unreadable_inputs_exit_2_naming_the_file(tmp_path, baseline, base_samples, damage, capsys):
    new = write_run(tmp_path / "new", base_samples)
    path = new / RESULTS_FILE
    if damage == "schema_version":
        payload = json.loads(path.read_text())
        payload["schema_version"] = 99
        path.write_text(json.dumps(payload))
    elif damage == "garbage":
        path.write_text("{not json")
    else:
        path.unlink()
    junit = tmp_path / "out" / "junit.xml"
    assert main_compare(baseline, new, junit=junit, out=io.StringIO()) == 2
    err = capsys.readouterr().err
    assert err.startswith("percepbench compare: error: ") and str(path) in err
    # CI still finds a JUnit file that says why
    suite = ET.parse(junit).getroot()
    assert suite.get("errors") == "1" and str(path) in suite.find(".//error").get("message")
    with pytest.raises(DataError, match=str(path)):
        compare_runs(baseline, new)


def test_different_measure_is_incompatible(tmp_path, base_samples):
    b = write_run(tmp_path / "b", base_samples)
    n = write_run(tmp_path / "n", base_samples, records=records_from(base_samples, measure="jnd_map"))
    with pytest.raises(DataError, match=r"n/results\.json: toy2afc/s1/m_a is measured as jnd_map"):
        compare_runs(b, n)


def test_no_records_in_common_is_incompatible(tmp_path, baseline, base_samples):
    other = base_samples.assign(task="othertask")
    n = write_run(tmp_path / "n", other)
    with pytest.raises(DataError, match="no records in common"):
        compare_runs(baseline, n)
    assert main_compare(baseline, n, out=io.StringIO()) == 2


def test_duplicate_records_name_the_file(tmp_path, base_samples):
    rec = records_from(base_samples)
    b = write_run(tmp_path / "b", base_samples, records=pd.concat([rec, rec.iloc[:1]], ignore_index=True))
    n = write_run(tmp_path / "n", base_samples)
    with pytest.raises(DataError, match=r"b/results\.json: duplicate records .*toy2afc/s1/m_a/2afc_accuracy"):
        compare_runs(b, n)


def _subset_of_items(samples: pd.DataFrame, keep: int) -> pd.DataFrame:
    """Keep the first ``keep`` items of every subset (a smaller dataset)."""
    k = samples["item"].str.split("/").str[1].astype(int)
    return samples[k < keep].reset_index(drop=True)


def test_other_items_and_other_settings_are_incompatible(tmp_path, base_samples):
    b = write_run(tmp_path / "b", base_samples)
    meta = make_meta(config={"task_args": {TASK: {"path": "other.csv"}}})
    n = write_run(tmp_path / "n", _subset_of_items(base_samples, 150), meta=meta)
    with pytest.raises(DataError, match=r"task 'toy2afc' was run on other items \(subset all: n=\[400\] vs "
                                        r"n=\[300\]; subset s1"):
        compare_runs(b, n)


def test_other_items_with_the_same_settings_compare_unpaired(tmp_path, base_samples):
    b = write_run(tmp_path / "b", base_samples)
    n = write_run(tmp_path / "n", _subset_of_items(base_samples, 150))
    c = compare_runs(b, n)
    assert row(c, "s1", "m_a")["method"] == "records (items differ: 50 only in baseline, 0 only in new)"
    assert any("item counts differ" in note for note in c.notes)
    assert all(m.startswith("records (items differ: ") for m in c.rows["method"])
    # the delta is that of the two item sets' accuracies, read off the samples
    pick = (base_samples["metric"] == "m_a") & (base_samples["subset"] == "s1")
    scores = base_samples.loc[pick, "score"].to_numpy()
    assert row(c, "s1", "m_a")["delta"] == pytest.approx((scores[:150].mean() - scores.mean()) * 100)
    # a quarter of the items dropped at random moves no accuracy by a significant amount
    assert set(c.rows["status"]) == {"ok"} and (c.rows["p_value"] > 0.5).all() and c.exit_code == 0


def test_other_settings_with_the_same_items_still_pair(tmp_path, base_samples):
    b = write_run(tmp_path / "b", base_samples)
    meta = make_meta(config={"task_args": {TASK: {"path": "/moved/triplets.csv"}}})
    c = compare_runs(b, write_run(tmp_path / "n", base_samples, meta=meta))
    assert set(c.rows["method"]) == {"paired"} and c.exit_code == 0
    assert any("settings differ" in note for note in c.notes)


def test_other_device_and_version_are_comparable_and_shown(tmp_path, baseline, base_samples):
    meta = make_meta(percepbench_version="0.2.0", git_sha="bbbb222", device="cuda:0", device_name="NVIDIA H100",
                     torch_version="2.5.1", cpu_model="AMD EPYC 9654")
    new = write_run(tmp_path / "new", base_samples, meta=meta)
    c = compare_runs(baseline, new)
    assert c.exit_code == 0 and c.new_meta["device"] == "cuda:0" and c.baseline_meta["device"] == "cpu"
    md = c.to_markdown()
    assert "| device | cpu | cuda:0 (NVIDIA H100) |" in md
    assert "| percepbench | 0.1.0 | 0.2.0 |" in md and "| git sha | aaaa111 | bbbb222 |" in md
    assert "| cpu | ? | AMD EPYC 9654 |" in md  # the baseline's file has no cpu_model
    text = io.StringIO()
    assert main_compare(baseline, new, out=text) == 0
    assert "device: cpu -> cuda:0 (NVIDIA H100)" in text.getvalue()


def test_loaded_runs_and_json_paths_are_accepted(tmp_path, baseline, base_samples):
    new = write_run(tmp_path / "new", flip(base_samples, "m_b", "s1", 16, to=0.0))
    by_path = compare_runs(baseline / RESULTS_FILE, new / RESULTS_FILE)
    loaded = compare_runs(load_results(baseline), load_results(new))
    pd.testing.assert_frame_equal(by_path.rows, loaded.rows)
    assert loaded.baseline_path == str(baseline / RESULTS_FILE)


# --------------------------------------------------------------------------- outputs


@pytest.fixture
def regression(tmp_path, baseline, base_samples) -> Comparison:
    """m_b drops 8 points in s1 (regression), m_c gains in s2, m_a vanishes, 'lp|ips' is new."""
    s = flip(flip(base_samples, "m_b", "s1", 16, to=0.0), "m_c", "s2", 30, to=1.0)
    s = s[s["metric"] != "m_a"]
    s = pd.concat([s, make_samples(seed=5, metrics=("lp|ips",))], ignore_index=True)
    return compare_runs(baseline, write_run(tmp_path / "new", s))


def test_junit_xml_counts(regression):
    root = ET.fromstring(regression.to_junit_xml())
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == [TASK]
    suite = suites[0]
    cases = suite.findall("testcase")
    # 12 rows: m_b regresses in s1 and pooled (s2 ok), m_c improves in s2 and pooled (s1 ok),
    # m_a is missing (3 failures), lp|ips is new (3 skipped)
    assert len(cases) == len(regression.rows) == 12
    failures = [c for c in cases if c.find("failure") is not None]
    skipped = [c for c in cases if c.find("skipped") is not None]
    assert len(failures) == 5 and len(skipped) == 3
    for node in (root, suite):
        assert (node.get("tests"), node.get("failures"), node.get("skipped"), node.get("errors")) == (
            "12", "5", "3", "0")
    case = next(c for c in cases if c.get("classname") == f"{TASK}.s1" and c.get("name") == "m_b 2afc_accuracy")
    assert case.find("failure").get("message").startswith("regression: drop of 8.00")
    assert {c.get("name") for c in skipped} == {"lp|ips 2afc_accuracy"}


def test_markdown_verdict_flagged_first_and_escaped(regression):
    md = regression.to_markdown()
    assert md.startswith("## percepbench compare: FAIL\n")
    assert "**FAIL: 2 regression, 3 missing, 2 improvement, 3 new" in md
    table = [ln for ln in md.splitlines() if ln.startswith("| **") or ln.startswith("| ok") or
             ln.startswith("| new") or ln.startswith("| improvement")]
    assert table[0].startswith("| **regression** | toy2afc | s1 | m_b | 2afc_accuracy | ")
    assert "-8.00 [" in table[0]
    assert table[2].startswith("| **missing** |")
    assert "lp\\|ips" in md and "| lp|ips |" not in md
    # every table line has the same number of unescaped separators
    rows = [ln for ln in md.splitlines() if ln.startswith("| ") and "2afc_accuracy" in ln]
    assert {len(ln.replace("\\|", "")) - len(ln.replace("\\|", "").replace("|", "")) for ln in rows} == {13}
    # failing rows survive any row cap; the rest is counted
    short = regression.to_markdown(max_rows=1)
    assert short.count("| **regression** |") == 2 and short.count("| **missing** |") == 3
    assert "6 more row(s) not shown" in short


def test_pass_markdown(tmp_path, baseline, base_samples):
    c = compare_runs(baseline, write_run(tmp_path / "new", base_samples))
    assert c.to_markdown().startswith("## percepbench compare: PASS\n")


def test_write_outputs_atomically(tmp_path, regression):
    md, junit = tmp_path / "o" / "compare.md", tmp_path / "o" / "junit.xml"
    md.parent.mkdir()
    md.write_text("stale")
    write_outputs(regression, markdown=md, junit=junit, step_summary=None)
    assert md.read_text() == regression.to_markdown()
    ET.parse(junit)
    assert sorted(p.name for p in md.parent.iterdir()) == ["compare.md", "junit.xml"]  # no temp files left


def test_step_summary_is_appended(tmp_path, monkeypatch, baseline, base_samples):
    new = write_run(tmp_path / "new", flip(base_samples, "m_b", "s1", 16, to=0.0))
    summary = tmp_path / "summary.md"
    summary.write_text("# earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    md = tmp_path / "compare.md"
    assert main_compare(baseline, new, markdown=md, out=io.StringIO()) == 1
    assert main_compare(baseline, baseline, out=io.StringIO()) == 0
    text = summary.read_text()
    assert text.startswith("# earlier step\n")
    assert text.count("## percepbench compare: FAIL") == 1 and text.count("## percepbench compare: PASS") == 1
    assert md.read_text() in text
    monkeypatch.delenv("GITHUB_STEP_SUMMARY")
    main_compare(baseline, baseline, out=io.StringIO())
    assert summary.read_text() == text


def test_main_compare_prints_a_table(tmp_path, baseline, base_samples):
    out = io.StringIO()
    new = write_run(tmp_path / "new", flip(base_samples, "m_b", "s1", 16, to=0.0))
    assert main_compare(baseline, new, max_drop=5, out=out) == 1
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("FAIL: 1 regression, 8 ok")
    table = lines[lines.index("") + 1:]
    assert table[0].split()[:3] == ["status", "task", "subset"]
    assert table[1].split()[:4] == ["regression", TASK, "s1", "m_b"]


def test_bad_options_exit_2(baseline, capsys):
    assert main_compare(baseline, baseline, alpha=1.5, out=io.StringIO()) == 2
    assert "--alpha" in capsys.readouterr().err


def test_reports_do_not_import_torch():
    code = "import sys, percepbench.reports.compare; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def _jnd_run(path: Path, d: np.ndarray, same: np.ndarray) -> Path:
    """A JND run as the runner writes it: AP records (set-level), per-item distances, NaN item scores."""
    from percepbench.tasks.jnd import JNDTask

    items = [f"jnd/{k:04d}" for k in range(d.size)]
    samples = pd.DataFrame({"task": "toyjnd", "metric": "m", "item": items, "subset": "traditional",
                            "same": same, "d": d, "score": np.nan})
    records = pd.DataFrame([{"task": "toyjnd", "metric": "m", **r}
                            for r in JNDTask().score(samples, n_boot=N_BOOT)])
    meta = make_meta(tasks={"toyjnd": {"name": "toyjnd", "target": "x", "kwargs": {}, "measure": "jnd_map"}})
    write_results(path, RunResults(meta=meta, records=records, samples=samples))
    return path


def voc_ap(d: np.ndarray, same: np.ndarray) -> float:
    """Oracle: VOC all-point AP of the "same" pairs ranked by ascending distance (hard labels).

    Each hit adds 1/P times the best precision at its rank or any later rank. Tied distances here are only
    copies of one pair (bootstrap draws), which this per-rank sum handles like one threshold.
    """
    order = np.argsort(d, kind="stable")
    hits = same[order]
    precision = np.cumsum(hits) / np.arange(1, d.size + 1)
    best_from_here = np.maximum.accumulate(precision[::-1])[::-1]
    return float(best_from_here[hits == 1].sum() / hits.sum())


def test_voc_ap_oracle_by_hand():
    # ranks: hit, miss, hit -> precisions 1, 1/2, 2/3; AP = (1 + 2/3) / 2
    assert voc_ap(np.array([0.1, 0.2, 0.3]), np.array([1.0, 0.0, 1.0])) == pytest.approx(5 / 6)
    # interpolation: the miss at rank 1 is lifted by the later precision 2/3 -> AP = (2/3 + 2/3) / 2
    assert voc_ap(np.array([0.1, 0.2, 0.3]), np.array([0.0, 1.0, 1.0])) == pytest.approx(2 / 3)


def test_jnd_runs_pair_on_distances(tmp_path):
    """JND AP is set-level: compare pairs the runs on per-item distances (bootstrap of the AP difference).
    Oracles: a hand-written VOC AP, scipy's paired bootstrap and scipy's paired permutation test."""
    rng = np.random.default_rng(3)
    same = (rng.random(400) < 0.5).astype(float)
    good = np.where(same > 0, rng.random(400) * 0.6, 0.4 + rng.random(400) * 0.6)
    worse = np.where(rng.random(400) < 0.5, rng.random(400), good)  # half the pairs get random distances
    assert np.unique(good).size == np.unique(worse).size == 400  # no tied distances
    base = _jnd_run(tmp_path / "base", good, same)
    same_again = compare_runs(base, _jnd_run(tmp_path / "same", good, same))
    assert same_again.exit_code == 0 and set(same_again.rows["method"]) == {"paired"}
    assert (same_again.rows["delta"] == 0).all() and (same_again.rows["p_value"] == 1).all()
    c = compare_runs(base, _jnd_run(tmp_path / "worse", worse, same))
    (r,) = c.rows.itertuples()
    assert r.method == "paired" and r.status == "regression" and c.exit_code == 1

    def ap_diff(x, y, s):
        return (voc_ap(x, s) - voc_ap(y, s)) * 100

    assert r.delta == pytest.approx(ap_diff(worse, good, same), abs=1e-9) and r.delta < -5
    boot = scipy_stats.bootstrap((worse, good, same), ap_diff, paired=True, vectorized=False,
                                 method="percentile", n_resamples=2000, random_state=0)
    assert r.ci_low == pytest.approx(boot.confidence_interval.low, abs=1.0)
    assert r.ci_high == pytest.approx(boot.confidence_interval.high, abs=1.0) and r.ci_high < 0
    perm = scipy_stats.permutation_test((worse, good), lambda x, y: ap_diff(x, y, same), vectorized=False,
                                        permutation_type="samples", n_resamples=999, random_state=0)
    # no swap of the pairs reaches the observed drop: both tests give their smallest p-value
    assert perm.pvalue == pytest.approx(2 / 1000) and r.p_value == pytest.approx(1 / 2001)


# --------------------------------------------------------------------------- schema version 1


def test_the_committed_v1_run_compares_with_itself():
    c = compare_runs(V1_RUN, V1_RUN)
    assert len(c.rows) == 27 and set(c.rows["method"]) == {"paired"} and set(c.rows["status"]) == {"ok"}
    assert (c.rows["delta"] == 0).all() and c.exit_code == 0
    assert c.header()[3] == ("device", "cpu", "cpu")  # v1 wrote an empty device_name on the CPU


@pytest.mark.slow
def test_a_new_run_reproduces_the_committed_v1_run(tmp_path):
    """The v1 run directory was written by psnr, ssim and a random-weight lpips on severity2afc
    (2 triplets per family, 50 bootstrap draws, seed 0): today's runner gives the same psnr and ssim rows."""
    from percepbench.config import RunConfig
    from percepbench.runner import run

    v1 = load_results(V1_RUN)
    run(RunConfig(metrics=["psnr", "ssim"], tasks=["severity2afc"], n_boot=v1.meta["config"]["n_boot"],
                  task_args=v1.meta["config"]["task_args"], seed=v1.meta["seed"], progress=False,
                  out=str(tmp_path / "new")))
    c = compare_runs(V1_RUN, tmp_path / "new", allow_missing=True)
    kept = c.rows[c.rows["metric"] != "lpips.alex"]
    assert len(kept) == 18 and set(kept["method"]) == {"paired"} and (kept["delta"] == 0).all()
    assert set(c.rows.loc[c.rows["metric"] == "lpips.alex", "status"]) == {"info"} and c.exit_code == 0
    new = load_results(tmp_path / "new")
    pd.testing.assert_frame_equal(new.records.reset_index(drop=True),
                                  v1.records[v1.records["metric"] != "lpips.alex"].reset_index(drop=True))


# --------------------------------------------------------------------------- outputs never overwrite a run


@pytest.mark.parametrize("victim", ["baseline/results.json", "new/results.json", "new/samples.parquet",
                                    "baseline/report/report.html", "new/notes.txt", "new", "new/report/new.md"])
def test_outputs_refuse_an_input_runs_files(tmp_path, baseline, base_samples, capsys, victim):
    new = write_run(tmp_path / "new", base_samples)
    (baseline / "report").mkdir()
    (baseline / "report" / "report.html").write_text("<html>")
    (new / "notes.txt").write_text("mine")
    files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    target = tmp_path / victim
    for flag in ("--junit", "--markdown"):
        assert main(["compare", str(baseline), str(new), flag, str(target)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"percepbench compare: error: {flag} {target}: refusing to write") and "input run" in err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == files  # nothing written anywhere
    with pytest.raises(UsageError, match="refusing to write"):
        write_outputs(compare_runs(baseline, new), junit=target, step_summary=None)
    # a link pointing at a run file is refused too
    link = tmp_path / "link.xml"
    link.symlink_to(baseline / RESULTS_FILE)
    assert main(["compare", str(baseline), str(new), "--junit", str(link)]) == 2
    assert (baseline / RESULTS_FILE).read_bytes() == files[baseline / RESULTS_FILE]


def test_outputs_refused_before_incomparable_inputs_write_the_error(tmp_path, baseline, base_samples, capsys):
    """Incomparable inputs write the error into the outputs, but never into a run's files either."""
    new = write_run(tmp_path / "new", base_samples)
    (new / RESULTS_FILE).write_text("{not json")
    before = (baseline / RESULTS_FILE).read_bytes()
    assert main(["compare", str(baseline), str(new), "--junit", str(baseline / RESULTS_FILE)]) == 2
    assert "refusing to write" in capsys.readouterr().err and (baseline / RESULTS_FILE).read_bytes() == before


def test_new_files_in_a_run_directory_are_allowed_and_rewritable(tmp_path, baseline, base_samples, capsys):
    """The CI recipe writes compare.xml and compare.md into the new run's folder, and a rerun overwrites them."""
    new = write_run(tmp_path / "new", flip(base_samples, "m_b", "s1", 16, to=0.0))
    junit, md = new / "compare.xml", new / "compare.md"
    for _ in range(2):
        assert main(["compare", str(baseline), str(new), "--junit", str(junit), "--markdown", str(md)]) == 1
        ET.parse(junit)
        assert md.read_text().startswith("## percepbench compare: FAIL")
    capsys.readouterr()
    # the error outputs of incomparable inputs are compare's own too
    (tmp_path / "bad").mkdir()
    assert main(["compare", str(baseline), str(tmp_path / "bad"), "--junit", str(junit)]) == 2
    assert main(["compare", str(baseline), str(new), "--junit", str(junit)]) == 1
    capsys.readouterr()


def test_junit_and_markdown_must_differ(tmp_path, baseline, capsys):
    out = tmp_path / "same.txt"
    assert main(["compare", str(baseline), str(baseline), "--junit", str(out), "--markdown", str(out)]) == 2
    assert "--junit and --markdown name the same file" in capsys.readouterr().err and not out.exists()
