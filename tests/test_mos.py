"""Correlation with MOS: statistics by hand, the logistic fit, grouped bootstrap, and mos_csv end to end."""

from __future__ import annotations

import numpy as np
import pytest

from percepbench.cli import main
from percepbench.correlation import correlations, fit_logistic, grouped_bootstrap_ci, logistic4
from percepbench.results import load_results
from percepbench.specs import MetricSpec

from layouts import make_csv_table


def test_rank_correlations_by_hand_with_ties():
    """x = [1, 2, 2, 3], y = [1, 3, 2, 4]. Spearman: ranks x [1, 2.5, 2.5, 4], y [1, 3, 2, 4] -> Pearson of the
    ranks = 4.5 / sqrt(4.5 * 5) = 0.9487. Kendall tau-b: 5 concordant, 0 discordant, 1 tie in x only ->
    5 / sqrt(5 * 6) = 0.9129."""
    values, _ = correlations(np.array([1.0, 2, 2, 3]), np.array([1.0, 3, 2, 4]))
    assert values["srcc"] == pytest.approx(4.5 / np.sqrt(4.5 * 5))
    assert values["krcc"] == pytest.approx(5 / np.sqrt(30))


def test_pearson_by_hand_and_the_fit_straightens_a_monotone_curve():
    x = np.linspace(-3, 3, 40)
    y = logistic4(x, 5.0, 1.0, 0.5, 0.7)  # a known monotone curve
    values, note = correlations(x, y)
    xc, yc = x - x.mean(), y - y.mean()
    assert values["plcc"] == pytest.approx((xc @ yc) / np.sqrt((xc @ xc) * (yc @ yc)))
    assert values["srcc"] == pytest.approx(1.0) and values["krcc"] == pytest.approx(1.0)
    assert values["plcc"] < 0.99 and values["plcc_fit"] == pytest.approx(1.0, abs=1e-6) and note == ""
    params, _ = fit_logistic(x, y)
    assert np.allclose(logistic4(x, *params), y, atol=1e-5)


def test_constant_predictions_have_no_correlation():
    values, note = correlations(np.ones(5), np.arange(5.0))
    assert values == dict.fromkeys(values) and "constant" in note


def test_bootstrap_resamples_whole_references():
    groups = np.array(["a"] * 1 + ["b"] * 3 + ["c"] * 6)
    sizes = set()

    def statistic(idx):
        sizes.add(len(idx))
        return float(len(idx))

    grouped_bootstrap_ci(statistic, groups, n_boot=200, seed=0)
    # every resample is a sum of three whole groups (1, 3 or 6 items each), never 10 loose items
    possible = {a + b + c for a in (1, 3, 6) for b in (1, 3, 6) for c in (1, 3, 6)}
    assert sizes <= possible and len(sizes) > 3


@pytest.fixture
def toy(register_temp):
    register_temp(MetricSpec(name="toy-meanabs", target="helpers_metrics:MeanAbs", description="|a - b| / 255"))
    return "toy-meanabs"


def scores_table(tmp_path, kind):
    """Two references (grey 100, 200), distorted by 10, 20, 40 levels ("blur", reference 1) and 5, 15, 30
    ("noise", reference 2); the human score is a perfect, nonlinear function of the difference (MOS falls,
    DMOS rises), so the rank correlations are 1 per type and pooled."""
    rows, images = [], {"r1.png": 100, "r2.png": 200}
    for ref, base, kind_name, deltas in (("r1.png", 100, "blur", (10, 20, 40)), ("r2.png", 200, "noise", (5, 15, 30))):
        for k, delta in enumerate(deltas):
            name = f"{ref[:2]}_{k}.png"
            images[name] = base - delta
            score = 5 - np.sqrt(delta) if kind == "mos" else delta ** 2
            rows.append({"ref": ref, "dist": name, "mos": score, "type": kind_name})
    return make_csv_table(tmp_path / "scores.csv", rows, images=images)


@pytest.mark.parametrize("kind", ["mos", "dmos"])
def test_mos_csv_end_to_end(tmp_path, clean_env, toy, capsys, kind):
    csv = scores_table(tmp_path, kind)
    out = tmp_path / "run"
    code = main(["run", "-m", toy, "-t", "mos_csv", "--task-args", f"mos_csv:path={csv},scores={kind}", "-o",
                 str(out), "-q", "--n-boot", "50"])
    assert code == 0, capsys.readouterr().err
    recs = load_results(out).records.set_index(["subset", "measure"])["value"]
    # a perfect metric whatever the kind of scores: +1 rank correlations, pooled and per type
    for subset in ("all", "blur", "noise"):
        assert recs[(subset, "srcc")] == pytest.approx(1.0) and recs[(subset, "krcc")] == pytest.approx(1.0)
    assert recs[("all", "plcc")] < 1.0


@pytest.mark.parametrize(("column", "value", "message"), [
    ("mos", "good", "column 'mos' has 1 value(s) not a number (line 2: 'good')"),
    ("dist", None, "missing column(s) dist"),
])
def test_bad_score_tables_exit_2_naming_the_file(tmp_path, clean_env, toy, capsys, column, value, message):
    import pandas as pd

    csv = scores_table(tmp_path, "mos")
    frame = pd.read_csv(csv)
    if value is None:
        frame = frame.drop(columns=[column])
    else:
        frame[column] = frame[column].astype(object)
        frame.loc[0, column] = value
    frame.to_csv(csv, index=False)
    code = main(["run", "-m", toy, "-t", "mos_csv", "--task-args", f"mos_csv:path={csv}", "-o", str(tmp_path / "r"),
                 "-q"])
    err = capsys.readouterr().err
    assert code == 2 and str(csv) in err and message in err, err
