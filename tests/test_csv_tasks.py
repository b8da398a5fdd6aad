"""``2afc_csv``: users' own triplets from a CSV, relative and absolute paths, scored by hand."""

from __future__ import annotations

import pandas as pd
import pytest

from percepbench.cli import main
from percepbench.results import load_results
from percepbench.specs import MetricSpec

from layouts import make_csv_table, write_png

FAST = ["--n-boot", "20", "-q", "--num-workers", "0"]


@pytest.fixture
def toy(register_temp):
    register_temp(MetricSpec(name="toy-meanabs", target="helpers_metrics:MeanAbs", description="test"))
    return "toy-meanabs"


def make_csv(tmp_path, **columns):
    """``mine/triplets.csv`` naming flat grey PNGs under ``mine/img`` and one by absolute path elsewhere."""
    absolute = write_png(tmp_path / "elsewhere" / "c.png", 105)
    table = {
        "ref": ["img/r.png", "img/r.png", "img/r.png"],
        "left": ["img/a.png", "img/b.png", str(absolute)],     # d0: 10, 50, 5 (/255)
        "right": ["img/b.png", str(absolute), "img/a.png"],    # d1: 50, 5, 10
        "p": [0.25, 1.0, 0.0],                                 # scores: 0.75, 1, 1
        **columns,
    }
    rows = [dict(zip(table, values, strict=True)) for values in zip(*table.values(), strict=True)]
    return make_csv_table(tmp_path / "mine" / "triplets.csv", rows,
                          images={"img/r.png": 100, "img/a.png": 110, "img/b.png": 150})


def run(capsys, *args):
    code = main(["run", *args, *FAST])
    out, err = capsys.readouterr()
    return code, out, err


def test_scores_by_hand_with_subsets(capsys, tmp_path, clean_env, toy):
    csv = make_csv(tmp_path, subset=["x", "x", "y"])
    code, _, err = run(capsys, "-m", toy, "-t", "2afc_csv", "--task-args", f"2afc_csv:path={csv}",
                       "-o", str(tmp_path / "run"))
    assert code == 0, err
    res = load_results(tmp_path / "run")
    recs = {r.subset: (r.value, r.n) for r in res.records.itertuples()}
    assert recs == {"x": pytest.approx((87.5, 2)), "y": pytest.approx((100.0, 1)),
                    "all": pytest.approx((275 / 3, 3))}
    assert res.samples["item"].tolist() == ["line2", "line3", "line4"]
    assert res.samples["d1"].to_numpy() == pytest.approx([50 / 255, 5 / 255, 10 / 255])
    assert res.meta["task_protocols"]["2afc_csv"]["source"] == str(csv)


def test_without_subset_column_one_pooled_record(capsys, tmp_path, clean_env, toy):
    csv = make_csv(tmp_path, item=["t1", "t2", "t3"])
    code, _, err = run(capsys, "-m", toy, "-t", "2afc_csv", "--task-args", f"2afc_csv:path={csv}",
                       "-o", str(tmp_path / "run"))
    assert code == 0, err
    res = load_results(tmp_path / "run")
    assert res.records[["subset", "n"]].values.tolist() == [["all", 3]]
    assert res.records["value"].iloc[0] == pytest.approx(275 / 3)
    assert res.samples["item"].tolist() == ["t1", "t2", "t3"]


@pytest.mark.parametrize(("edit", "message", "named"), [
    (lambda f: f.drop(columns=["p"]), "missing column(s) p", "triplets.csv"),
    (lambda f: f.assign(p=[0.5, -0.1, 1.0]), "'p' has 1 value(s) outside [0.0, 1.0] (line 3: -0.1)", "triplets.csv"),
    (lambda f: f.assign(p=["0.5", "half", "1"]), "'p' has 1 value(s) not a number (line 3: 'half')", "triplets.csv"),
    (lambda f: f.assign(left=["img/a.png", "img/none.png", "img/a.png"]), "1 of 5 referenced image file(s) do not exist",
     "img/none.png"),
])
def test_bad_csv_fails_naming_the_file(capsys, tmp_path, clean_env, toy, edit, message, named):
    csv = make_csv(tmp_path)
    edit(pd.read_csv(csv)).to_csv(csv, index=False)
    code, _, err = run(capsys, "-m", toy, "-t", "2afc_csv", "--task-args", f"2afc_csv:path={csv}",
                       "-o", str(tmp_path / "run"))
    assert code == 2
    assert message in err
    assert str(csv.parent / named) in err


def test_path_is_required_and_must_exist(capsys, tmp_path, clean_env, toy):
    code, _, err = run(capsys, "-m", toy, "-t", "2afc_csv", "-o", str(tmp_path / "r1"))
    assert code == 2 and "2afc_csv needs path=" in err
    missing = tmp_path / "nope.csv"
    code, _, err = run(capsys, "-m", toy, "-t", "2afc_csv", "--task-args", f"2afc_csv:path={missing}",
                       "-o", str(tmp_path / "r2"))
    assert code == 2 and f"{missing}: judgment table not found" in err
