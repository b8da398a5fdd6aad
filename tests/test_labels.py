"""Labels that cannot break scoring: reserved subset names, empty subset cells, JND sets without positives."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from percepbench import create_task
from percepbench.cli import main
from percepbench.errors import DataError
from percepbench.specs import MetricSpec
from percepbench.tasks.base import ALL_SUBSET

from layouts import JNDPair, make_bapps_jnd, make_csv_table

FAST = ["--n-boot", "20", "-q", "--num-workers", "0"]
IMAGES = {"img/r.png": 100, "img/a.png": 110, "img/b.png": 150}


def afc_table(tmp_path, subsets):
    rows = [{"ref": "img/r.png", "left": "img/a.png", "right": "img/b.png", "p": 0.25, "subset": s}
            for s in subsets]
    return make_csv_table(tmp_path / "mine" / "triplets.csv", rows, images=IMAGES)


def jnd_table(tmp_path, same, subsets=None):
    rows = [{"p0": "img/r.png", "p1": "img/a.png" if i % 2 else "img/b.png", "same": s} for i, s in enumerate(same)]
    if subsets is not None:
        for row, sub in zip(rows, subsets, strict=True):
            row["subset"] = sub
    return make_csv_table(tmp_path / "mine" / "pairs.csv", rows, images=IMAGES)


def prepare(task, csv):
    t = create_task(task, path=str(csv))
    t.prepare(progress=False)
    return t


@pytest.fixture
def toy(register_temp):
    register_temp(MetricSpec(name="toy-meanabs", target="helpers_metrics:MeanAbs", description="test"))
    return "toy-meanabs"


# ------------------------------------------------------------------ the pooled subset's name is reserved


def test_pooled_name_is_all():
    assert ALL_SUBSET == "all"  # the name the messages below quote


@pytest.mark.parametrize("task", ["2afc_csv", "jnd_csv"])
def test_subset_named_like_the_pooled_record_is_rejected(tmp_path, clean_env, task):
    subsets = ["x", ALL_SUBSET, "x", ALL_SUBSET]
    csv = afc_table(tmp_path, subsets) if task == "2afc_csv" else jnd_table(tmp_path, [1, 0, 1, 0], subsets)
    with pytest.raises(DataError) as info:
        prepare(task, csv)
    message = str(info.value)
    assert str(csv) in message and "column 'subset'" in message
    assert "'all'" in message and "line 3, line 5" in message and "reserved" in message


# ------------------------------------------------------------------------------------- empty subset cells


@pytest.mark.parametrize("task", ["2afc_csv", "jnd_csv"])
def test_empty_subset_cells_are_rejected_naming_the_lines(tmp_path, clean_env, task):
    subsets = ["x", "", "y", "   ", "x"]  # CSV: an empty cell reads as NaN, a blank one as spaces
    csv = afc_table(tmp_path, subsets) if task == "2afc_csv" else jnd_table(tmp_path, [1, 0, 1, 0, 1], subsets)
    with pytest.raises(DataError) as info:
        prepare(task, csv)
    message = str(info.value)
    assert str(csv) in message and "column 'subset'" in message
    assert "2 empty cell(s)" in message and "line 3, line 5" in message


@pytest.mark.parametrize(("subsets", "expected"), [
    (["x", "all", "y"], ["column 'subset'", "'all'"]),
    (["x", "", "y"], ["column 'subset' has 1 empty cell(s) (line 3)"]),
], ids=["reserved-all", "empty-cell"])
def test_bad_subsets_through_the_cli_exit_2(capsys, tmp_path, clean_env, toy, subsets, expected):
    csv = afc_table(tmp_path, subsets)
    code = main(["run", "-m", toy, "-t", "2afc_csv", "--task-args", f"2afc_csv:path={csv}",
                 "-o", str(tmp_path / "run"), *FAST])
    _, err = capsys.readouterr()
    assert code == 2, err
    assert str(csv) in err and "Traceback" not in err
    for text in expected:
        assert text in err


def test_valid_subsets_keep_every_item(tmp_path, clean_env):
    task = prepare("2afc_csv", afc_table(tmp_path, ["x", "y", "x"]))
    assert task.items["subset"].tolist() == ["x", "y", "x"]


def test_parquet_table_with_missing_subset_is_rejected(tmp_path, clean_env):
    afc_table(tmp_path, ["x"])  # writes the images
    frame = pd.DataFrame({"ref": ["img/r.png"] * 2, "left": ["img/a.png"] * 2, "right": ["img/b.png"] * 2,
                          "p": [0.0, 1.0], "subset": ["x", None]})
    path = tmp_path / "mine" / "triplets.parquet"
    frame.to_parquet(path)
    with pytest.raises(DataError, match=r"column 'subset' has 1 empty cell\(s\)"):
        prepare("2afc_csv", path)


# --------------------------------------------------------------------------- JND: AP needs a "same" pair


def test_jnd_csv_without_any_same_pair_is_rejected(tmp_path, clean_env):
    csv = jnd_table(tmp_path, [0, 0, 0])
    with pytest.raises(DataError) as info:
        prepare("jnd_csv", csv)
    message = str(info.value)
    assert str(csv) in message and "average precision is undefined" in message
    assert "at least one pair judged 'same' > 0" in message


def test_jnd_csv_subset_without_same_pair_is_rejected_naming_it(tmp_path, clean_env):
    csv = jnd_table(tmp_path, [1, 0.5, 0, 0], ["a", "a", "b", "b"])
    with pytest.raises(DataError) as info:
        prepare("jnd_csv", csv)
    message = str(info.value)
    assert str(csv) in message and "subset 'b'" in message and "subset 'a'" not in message


def test_jnd_csv_without_same_pair_through_the_cli_exits_2(capsys, tmp_path, clean_env, toy):
    csv = jnd_table(tmp_path, [0, 0])
    code = main(["run", "-m", toy, "-t", "jnd_csv", "--task-args", f"jnd_csv:path={csv}",
                 "-o", str(tmp_path / "run"), *FAST])
    _, err = capsys.readouterr()
    assert code == 2, err
    assert str(csv) in err and "at least one pair judged 'same' > 0" in err and "IndexError" not in err


def test_bapps_jnd_subset_without_same_pair_is_rejected(tmp_path, clean_env):
    dataset = make_bapps_jnd(tmp_path / "dataset", {
        "traditional": [JNDPair("000000", 100, 110, 1.0), JNDPair("000001", 100, 130, 0.0)],
        "cnn": [JNDPair("000000", 50, 52, 0.0), JNDPair("000001", 50, 90, 0.0)],
    }, size=16, label_dtype=np.float64)
    task = create_task("bapps_jnd", root=str(dataset))
    with pytest.raises(DataError) as info:
        task.prepare(progress=False)
    message = str(info.value)
    assert str(dataset) in message and "subset 'cnn'" in message and "subset 'traditional'" not in message


def test_jnd_score_refuses_a_set_without_same_pair(tmp_path, clean_env):
    task = prepare("jnd_csv", jnd_table(tmp_path, [1, 0]))
    samples = task.items.assign(d=[0.1, 0.2], same=[0.0, 0.0])
    with pytest.raises(DataError, match="at least one pair judged 'same' > 0"):
        task.score(samples, n_boot=10)
