"""JND: VOC-style AP with soft labels and ties (hand-computed), ``bapps_jnd`` and ``jnd_csv`` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from percepbench.cli import main
from percepbench.results import load_results
from percepbench.specs import MetricSpec
from percepbench.stats import paired_statistic_comparison
from percepbench.tasks.jnd import jnd_average_precision

from layouts import JNDPair, make_bapps_jnd, make_csv_table

FAST = ["--n-boot", "50", "-q", "--num-workers", "0"]
REF = 100


def official_style_ap(d, s):
    """The LPIPS script's computation written out plainly (argsort, cumsum, VOC envelope); no tie handling."""
    order = np.argsort(np.asarray(d).reshape(-1), kind="stable")
    s = np.asarray(s, dtype=float)[order]
    tp, fp = np.cumsum(s), np.cumsum(1 - s)
    rec, prec = tp / s.sum(), tp / (tp + fp)
    mrec, mpre = [0.0, *rec, 1.0], [0.0, *prec, 0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return sum((mrec[i + 1] - mrec[i]) * mpre[i + 1] for i in range(len(mrec) - 1) if mrec[i + 1] != mrec[i])


# --- the AP itself ---------------------------------------------------------------------------------
def test_ap_hard_labels_by_hand():
    # ranked: same, diff, same, diff -> precision at the two hits 1 and 2/3, each half the recall
    assert jnd_average_precision(np.array([0.1, 0.2, 0.3, 0.4]), np.array([1, 0, 1, 0])) == pytest.approx(
        0.5 * 1 + 0.5 * 2 / 3)
    assert jnd_average_precision(np.array([0.4, 0.3, 0.2, 0.1]), np.array([1, 0, 1, 0])) == pytest.approx(
        0.5 * 0.5 + 0.5 * 0.5)  # hits at ranks 2 and 4: precision 1/2 both, envelope keeps 1/2
    assert jnd_average_precision(np.array([0.1, 0.2]), np.array([1, 1])) == pytest.approx(1.0)


def test_ap_soft_labels_by_hand():
    # s sorted by distance: 0.6, 0.2, 1.0; sum 1.8
    # TP = .6, .8, 1.8; FP = .4, 1.2, 1.2; precision = .6, .4, .6; recall = 1/3, 4/9, 1
    # envelope (right-to-left max): .6, .6, .6 -> AP = .6 * 1 = 0.6
    assert jnd_average_precision(np.array([0.3, 0.5, 0.9]), np.array([0.6, 0.2, 1.0])) == pytest.approx(0.6)
    # s = 1.0, 0.0, 0.5: TP 1, 1, 1.5; FP 0, 1, 1.5; prec 1, .5, .5; recall 2/3, 2/3, 1
    # AP = 2/3 * 1 + 1/3 * .5
    assert jnd_average_precision(np.array([1.0, 2.0, 3.0]), np.array([1.0, 0.0, 0.5])) == pytest.approx(
        2 / 3 + 1 / 6)


def test_ap_ties_are_one_threshold_and_order_free():
    # d: 0.1 (s=1), then a tie at 0.2 between s=0 and s=1, then 0.3 (s=0)
    # thresholds: after 0.1 -> TP 1 FP 0 (p 1, r .5); after the tie -> TP 2 FP 1 (p 2/3, r 1); after 0.3 -> r 1
    d = np.array([0.1, 0.2, 0.2, 0.3])
    want = 0.5 * 1 + 0.5 * 2 / 3
    assert jnd_average_precision(d, np.array([1, 0, 1, 0])) == pytest.approx(want)
    assert jnd_average_precision(d, np.array([1, 1, 0, 0])) == pytest.approx(want)  # tie order does not matter
    # the official argsort order would give 5/6 one way and 1.0 the other
    assert official_style_ap(d, [1, 1, 0, 0]) == pytest.approx(1.0)
    assert official_style_ap(d, [1, 0, 1, 0]) == pytest.approx(want)
    # everything tied: AP = precision of the whole set = mean label
    assert jnd_average_precision(np.zeros(4), np.array([1.0, 0.5, 0.0, 0.5])) == pytest.approx(0.5)


def test_ap_agrees_with_the_official_computation_without_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        d, s = rng.random(200), rng.random(200)
        assert jnd_average_precision(d, s) == pytest.approx(official_style_ap(d, s), abs=1e-12)


def test_ap_flattens_n111_distances():
    """The (N,1,1,1) trap: LPIPS returns that shape; sorting it unflattened ranks nothing."""
    rng = np.random.default_rng(1)
    d, s = rng.random(50), rng.random(50)
    assert jnd_average_precision(d.reshape(-1, 1, 1, 1), s) == jnd_average_precision(d, s)
    assert jnd_average_precision(torch.tensor(d).view(-1, 1, 1, 1).numpy(), s.reshape(-1, 1)) == pytest.approx(
        official_style_ap(d, s))


def test_ap_edge_cases_and_bad_input():
    assert np.isnan(jnd_average_precision(np.array([0.1, 0.2]), np.array([0.0, 0.0])))  # nobody said "same"
    assert np.isnan(jnd_average_precision(np.array([]), np.array([])))
    with pytest.raises(ValueError, match="same length"):
        jnd_average_precision(np.array([0.1, 0.2]), np.array([1.0]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        jnd_average_precision(np.array([0.1]), np.array([1.5]))
    with pytest.raises(ValueError, match="NaN"):
        jnd_average_precision(np.array([np.nan]), np.array([1.0]))


def test_paired_statistic_comparison_on_ap():
    rng = np.random.default_rng(2)
    s = (rng.random(300) < 0.5).astype(float)
    good = np.where(s > 0, rng.random(300) * 0.5, 0.5 + rng.random(300) * 0.5)  # separates same/different
    noise = rng.random(300)

    def diff(a, b):
        return lambda idx, swap: (jnd_average_precision(np.where(swap, b, a)[idx], s[idx])
                                  - jnd_average_precision(np.where(swap, a, b)[idx], s[idx])) * 100

    r = paired_statistic_comparison(diff(good, noise), 300, n_boot=200, n_perm=200, seed=0)
    assert r["diff"] == pytest.approx((jnd_average_precision(good, s) - jnd_average_precision(noise, s)) * 100)
    assert r["ci_low"] < r["diff"] < r["ci_high"] and r["ci_low"] > 0 and r["p_value"] < 0.01
    same = paired_statistic_comparison(diff(good, good), 300, n_boot=50, n_perm=50)
    assert same == {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0}


# --- bapps_jnd and jnd_csv end to end ------------------------------------------------------------
# subset: [JND pair of flat grey patches p0, p1 and the fraction "same"] -> toy metric distance |p0 - p1| / 255
PAIRS = {
    "traditional": [JNDPair("000000", 100, 110, 1.0), JNDPair("000001", 100, 130, 0.0),
                    JNDPair("000002", 100, 120, 2 / 3)],
    "cnn": [JNDPair("000000", 50, 52, 1 / 3), JNDPair("000005", 50, 90, 1.0)],
}


def make_jnd(dataset, pairs=PAIRS):
    """``dataset/jnd/val/<subset>/{p0,p1,same}`` (labels as float64); returns ``dataset``."""
    return make_bapps_jnd(dataset, pairs, size=16, label_dtype=np.float64)


def by_hand(rows):
    d = np.array([abs(r.p1 - r.p0) / 255 for r in rows])
    return 100 * official_style_ap(d, [r.same for r in rows])


@pytest.fixture
def toy(register_temp):
    register_temp(MetricSpec(name="toy-meanabs", target="helpers_metrics:MeanAbs", description="test"))
    register_temp(MetricSpec(name="toy-flipped", target="helpers_metrics:Flipped", description="test"))
    return "toy-meanabs"


def run(capsys, *args):
    code = main(["run", *args, *FAST])
    out, err = capsys.readouterr()
    return code, out, err


def test_bapps_jnd_scores_by_hand(capsys, tmp_path, clean_env, toy):
    make_jnd(tmp_path / "data" / "bapps" / "dataset")
    code, out, err = run(capsys, "-m", "toy-meanabs,toy-flipped", "-t", "bapps_jnd", "--data-root",
                         str(tmp_path / "data"), "-o", str(tmp_path / "run"))
    assert code == 0, err
    res = load_results(tmp_path / "run")
    recs = {(r.metric, r.subset): r for r in res.records.itertuples()}
    # traditional: d = 10, 30, 20 (/255), same 1, 0, 2/3 -> sorted s = 1, 2/3, 0:
    # TP 1, 5/3, 5/3; FP 0, 1/3, 4/3; precision 1, 5/6, 5/9; recall 3/5, 1, 1 -> AP = 3/5 + 2/5 * 5/6 = 14/15
    assert recs["toy-meanabs", "traditional"].value == pytest.approx(100 * 14 / 15)
    assert by_hand(PAIRS["traditional"]) == pytest.approx(100 * 14 / 15)
    # cnn: d = 2, 40 -> s = 1/3, 1: TP 1/3, 4/3; FP 2/3, 2/3; prec 1/3, 2/3; recall 1/4, 1 -> AP = 2/3
    assert recs["toy-meanabs", "cnn"].value == pytest.approx(100 * 2 / 3)
    all_rows = PAIRS["traditional"] + PAIRS["cnn"]
    assert recs["toy-meanabs", "all"].value == pytest.approx(by_hand(all_rows))
    assert recs["toy-meanabs", "all"].n == 5 and recs["toy-meanabs", "cnn"].measure == "jnd_map"
    for r in recs.values():
        assert r.ci_low <= r.value + 1e-9 and r.value - 1e-9 <= r.ci_high
    assert "bapps_jnd" in out and "jnd_map" in out
    samples = res.samples[res.samples["metric"] == "toy-meanabs"].set_index("item")
    assert samples.loc["cnn/000005", "d"] == pytest.approx(40 / 255)
    assert samples.loc["traditional/000002", "same"] == pytest.approx(2 / 3)
    assert samples["score"].isna().all()  # AP is set-level: no per-item score
    comps = res.comparisons
    assert set(comps["subset"]) == {"traditional", "cnn", "all"} and set(comps["measure"]) == {"jnd_map"}
    row = comps[comps["subset"] == "cnn"].iloc[0]
    flipped = recs["toy-flipped", "cnn"].value
    sign = 1 if row["metric_a"] == "toy-meanabs" else -1
    assert row["diff"] == pytest.approx(sign * (100 * 2 / 3 - flipped))
    proto = res.meta["task_protocols"]["bapps_jnd"]
    assert proto["items"] == 5 and "average precision" in proto["measure"]
    # metrics without a fixed input size get BAPPS at 64x64 bilinear (the LPIPS protocol), recorded
    (row,) = [p for p in res.meta["protocol"] if p["metric"] == "toy-meanabs"]
    assert row["resize"] == "64x64 bilinear (the task's official protocol)" and row["inputs"]["size"] == 64


def test_bapps_jnd_bad_data_names_the_file(capsys, tmp_path, clean_env, toy):
    dataset = make_jnd(tmp_path / "data" / "bapps" / "dataset")
    folder = dataset / "jnd" / "val" / "cnn"
    same = folder / "same" / "000005.npy"
    np.save(same, np.array([1.5]))
    code, _, err = run(capsys, "-m", toy, "-t", "bapps_jnd", "--data-root", str(tmp_path / "data"),
                       "-o", str(tmp_path / "r1"))
    assert code == 2 and str(same) in err and "outside [0, 1]" in err
    same.write_bytes(b"junk")
    code, _, err = run(capsys, "-m", toy, "-t", "bapps_jnd", "--data-root", str(tmp_path / "data"),
                       "-o", str(tmp_path / "r2"))
    assert code == 2 and str(same) in err and "cannot read" in err
    same.unlink()
    code, _, err = run(capsys, "-m", toy, "-t", "bapps_jnd", "--data-root", str(tmp_path / "data"),
                       "-o", str(tmp_path / "r3"))
    assert code == 2 and str(folder) in err and "same/ lacks 1 stem(s) (000005)" in err
    code, _, err = run(capsys, "-m", toy, "-t", "bapps_jnd", "--data-root", str(tmp_path / "nothing"),
                       "-o", str(tmp_path / "r4"))
    assert code == 2 and str(tmp_path / "nothing" / "bapps" / "dataset" / "jnd" / "val") in err


def test_bapps_jnd_subsets_option(capsys, tmp_path, clean_env, toy):
    dataset = make_jnd(tmp_path / "x")
    code, _, err = run(capsys, "-m", toy, "-t", "bapps_jnd", "--task-args",
                       f"bapps_jnd:root={dataset},subsets=cnn", "-o", str(tmp_path / "run"))
    assert code == 0, err
    recs = load_results(tmp_path / "run").records
    assert list(recs["subset"]) == ["cnn"]
    code, _, err = run(capsys, "-m", toy, "-t", "bapps_jnd", "--task-args", "bapps_jnd:subsets=mix",
                       "-o", str(tmp_path / "r2"))
    assert code == 2 and "unknown BAPPS JND subsets ['mix']" in err


def write_csv(tmp_path, rows):
    """``pairs.csv`` (columns p0, p1, same, subset) naming flat grey PNGs ``img/<i>a.png``, ``img/<i>b.png``."""
    images = {f"img/{i}{ab}.png": v for i, (v0, v1, *_) in enumerate(rows) for ab, v in (("a", v0), ("b", v1))}
    table = [{"p0": f"img/{i}a.png", "p1": f"img/{i}b.png", "same": same, "subset": subset}
             for i, (_, _, same, subset) in enumerate(rows)]
    return make_csv_table(tmp_path / "pairs.csv", table, images=images, size=16)


def test_jnd_csv_end_to_end(capsys, tmp_path, clean_env, toy):
    rows = [(10, 20, 1.0, "a"), (10, 50, 0.0, "a"), (10, 30, 0.5, "a"), (200, 201, 1.0, "b"), (200, 250, 0.25, "b")]
    csv = write_csv(tmp_path, rows)
    code, _, err = run(capsys, "-m", toy, "-t", "jnd_csv", "--task-args", f"jnd_csv:path={csv}",
                       "-o", str(tmp_path / "run"))
    assert code == 0, err
    res = load_results(tmp_path / "run")
    recs = {r.subset: r.value for r in res.records.itertuples()}
    d = np.array([abs(v1 - v0) for v0, v1, *_ in rows], dtype=float)
    s = np.array([r[2] for r in rows])
    assert recs["a"] == pytest.approx(100 * official_style_ap(d[:3], s[:3]))
    assert recs["b"] == pytest.approx(100 * official_style_ap(d[3:], s[3:]))
    assert recs["all"] == pytest.approx(100 * official_style_ap(d, s))
    assert res.meta["tasks"]["jnd_csv"]["kind"] == "jnd"
    assert json.loads((tmp_path / "run" / "results.json").read_text())["complete"] is True


@pytest.mark.parametrize(("edit", "message", "named"), [
    (lambda csv: csv.write_text("p0,p1\nimg/0a.png,img/0b.png\n"), "missing column(s) same", "pairs.csv"),
    (lambda csv: csv.write_text("p0,p1,same\nimg/0a.png,img/0b.png,1.2\n"), "outside [0.0, 1.0]", "pairs.csv"),
    (lambda csv: csv.write_text("p0,p1,same\nimg/0a.png,img/nope.png,1\n"), "do not exist", "img/nope.png"),
    (lambda csv: csv.write_text('p0,p1,same\n"img/0a.png,img/0b.png,1\n'), "cannot parse CSV", "pairs.csv"),
])
def test_jnd_csv_bad_input_names_the_file(capsys, tmp_path, clean_env, toy, edit, message, named):
    csv = write_csv(tmp_path, [(10, 20, 1.0, "a")])
    edit(csv)
    code, _, err = run(capsys, "-m", toy, "-t", "jnd_csv", "--task-args", f"jnd_csv:path={csv}",
                       "-o", str(tmp_path / "run"))
    assert code == 2, err
    assert message in err and str(tmp_path / named) in err


def test_jnd_csv_needs_a_path(capsys, tmp_path, clean_env, toy):
    code, _, err = run(capsys, "-m", toy, "-t", "jnd_csv", "-o", str(tmp_path / "run"))
    assert code == 2 and "jnd_csv needs path=<CSV file> (columns p0,p1,same" in err
