"""``bapps_2afc``: a BAPPS tree generated in the official layout, soft labels scored by hand."""

from __future__ import annotations

import re

import numpy as np
import pytest

from percepbench.cli import main
from percepbench.errors import DataError
from percepbench.results import load_results
from percepbench.specs import MetricSpec

from layouts import BappsTriplet, make_bapps_2afc, write_png

REF = 120
FAST = ["--n-boot", "20", "-q", "--num-workers", "0"]

# subset: [(BAPPS triplet, expected score)]; flat grey patches, ref 120, p0/p1 120 + offset,
# judge p = fraction preferring p1
T = BappsTriplet
SCORED = {
    "cnn": [
        (T("000000", REF + 40, REF + 10, 0.8), 0.8),   # d1 < d0 -> p
        (T("000001", REF + 10, REF + 40, 0.8), 0.2),   # d0 < d1 -> 1 - p
    ],
    "traditional": [
        (T("000000", REF + 5, REF + 30, 0.0), 1.0),
        (T("000007", REF + 30, REF + 5, 0.6), 0.6),
        (T("000010", REF + 15, REF + 15, 0.2), 0.5),   # tie -> 0.5
    ],
}
TRIPLETS = {subset: [t for t, _ in rows] for subset, rows in SCORED.items()}


def make_bapps(dataset, split="val", triplets=TRIPLETS):
    """``dataset/2afc/<split>/<subset>/{ref,p0,p1,judge}``; returns ``dataset``."""
    return make_bapps_2afc(dataset, triplets, split=split, size=16)


@pytest.fixture
def toy(register_temp):
    register_temp(MetricSpec(name="toy-meanabs", target="helpers_metrics:MeanAbs", description="test"))
    return "toy-meanabs"


def run(capsys, *args):
    code = main(["run", *args, *FAST])
    out, err = capsys.readouterr()
    return code, out, err


def expected(subsets):
    scores = {s: [score for _, score in SCORED[s]] for s in subsets}
    out = {s: (100 * float(np.mean(v)), len(v)) for s, v in scores.items()}
    if len(subsets) > 1:
        pooled = [x for v in scores.values() for x in v]
        out["all"] = (100 * float(np.mean(pooled)), len(pooled))
    return out


def records(out):
    res = load_results(out)
    return res, {r.subset: (r.value, r.n) for r in res.records.itertuples()}


def test_scores_by_hand_from_data_root(capsys, tmp_path, clean_env, toy):
    make_bapps(tmp_path / "data" / "bapps" / "dataset")
    # val subsets that are not on disk are an error, so select the two present ones
    code, _, err = run(capsys, "-m", toy, "-t", "bapps_2afc", "--data-root", str(tmp_path / "data"),
                       "--task-args", "bapps_2afc:subsets=cnn+traditional", "-o", str(tmp_path / "run"))
    assert code == 0, err
    res, recs = records(tmp_path / "run")
    want = expected(["cnn", "traditional"])
    assert want["cnn"] == pytest.approx((50.0, 2)) and want["traditional"] == pytest.approx((70.0, 3))
    assert want["all"] == pytest.approx((62.0, 5))
    assert recs.keys() == want.keys()
    for subset, (value, n) in want.items():
        assert recs[subset][0] == pytest.approx(value) and recs[subset][1] == n
    samples = res.samples.set_index("item")
    assert list(samples.index) == ["cnn/000000", "cnn/000001", "traditional/000000", "traditional/000007",
                                   "traditional/000010"]
    assert samples.loc["cnn/000000", "p"] == pytest.approx(0.8)
    assert samples.loc["cnn/000000", "d0"] == pytest.approx(40 / 255)  # d0 = d(ref, p0)
    assert samples.loc["cnn/000000", "d1"] == pytest.approx(10 / 255)  # d1 = d(ref, p1)
    assert samples["score"].to_numpy() == pytest.approx([score for rows in SCORED.values() for _, score in rows])
    proto = res.meta["task_protocols"]["bapps_2afc"]
    assert proto["items"] == 5 and proto["image_sizes"] == "16x16: 15 file(s)" and "stem" in proto["filters"]


def test_root_arg_one_subset_and_train_split(capsys, tmp_path, clean_env, toy):
    dataset = make_bapps(tmp_path / "somewhere", split="train",
                         triplets={"mix": TRIPLETS["traditional"], "cnn": TRIPLETS["cnn"]})
    code, _, err = run(capsys, "-m", toy, "-t", "bapps_2afc", "--task-args",
                       f"bapps_2afc:root={dataset},split=train,subsets=mix", "-o", str(tmp_path / "run"))
    assert code == 0, err
    _, recs = records(tmp_path / "run")
    assert recs == {"mix": pytest.approx((70.0, 3))}


def test_default_subsets_are_all_six_val_categories(tmp_path):
    from percepbench import create_task

    task = create_task("bapps_2afc")
    assert task.subsets == ["traditional", "cnn", "superres", "deblur", "color", "frameinterp"]
    make_bapps(tmp_path)
    task = create_task("bapps_2afc", root=str(tmp_path))
    missing = tmp_path / "2afc" / "val" / "superres"
    with pytest.raises(DataError, match=re.escape(f"{missing}: BAPPS subset folder not found")):
        task.prepare(progress=False)


def test_mismatched_stems_name_the_folder_and_stems(capsys, tmp_path, clean_env, toy):
    dataset = make_bapps(tmp_path / "data" / "bapps" / "dataset")
    folder = dataset / "2afc" / "val" / "traditional"
    (folder / "judge" / "000007.npy").unlink()
    write_png(folder / "p1" / "000099.png", REF, 16)
    code, _, err = run(capsys, "-m", toy, "-t", "bapps_2afc", "--data-root", str(tmp_path / "data"),
                       "--task-args", "bapps_2afc:subsets=cnn+traditional", "-o", str(tmp_path / "run"))
    assert code == 2
    assert str(folder) in err and "do not pair by stem" in err
    assert "judge/ lacks 2 stem(s) (000007, 000099)" in err and "ref/ lacks 1 stem(s) (000099)" in err


@pytest.mark.parametrize(("content", "message"), [
    (np.array([1.2], dtype=np.float32), "outside [0, 1]"),
    (np.array([np.nan]), "outside [0, 1]"),
    (np.array([0.2, 0.4]), "must hold one number"),
    (b"garbage", "cannot read judge file"),
])
def test_bad_judge_file_names_it(capsys, tmp_path, clean_env, toy, content, message):
    dataset = make_bapps(tmp_path / "data" / "bapps" / "dataset")
    judge = dataset / "2afc" / "val" / "cnn" / "judge" / "000001.npy"
    if isinstance(content, bytes):
        judge.write_bytes(content)
    else:
        np.save(judge, content)
    code, _, err = run(capsys, "-m", toy, "-t", "bapps_2afc", "--data-root", str(tmp_path / "data"),
                       "--task-args", "bapps_2afc:subsets=cnn", "-o", str(tmp_path / "run"))
    assert code == 2
    assert str(judge) in err and message in err


def test_missing_data_and_unreadable_patch(capsys, tmp_path, clean_env, toy):
    code, _, err = run(capsys, "-m", toy, "-t", "bapps_2afc", "--data-root", str(tmp_path / "empty"),
                       "-o", str(tmp_path / "r1"))
    assert code == 2
    assert str(tmp_path / "empty" / "bapps" / "dataset" / "2afc" / "val") in err and "twoafc_val" in err
    code, _, err = run(capsys, "-m", toy, "-t", "bapps_2afc", "-o", str(tmp_path / "r2"))
    assert code == 2 and "no data root given" in err
    dataset = make_bapps(tmp_path / "data" / "bapps" / "dataset")
    bad = dataset / "2afc" / "val" / "cnn" / "p0" / "000001.png"
    bad.write_bytes(b"\x00" * 10)
    code, _, err = run(capsys, "-m", toy, "-t", "bapps_2afc", "--data-root", str(tmp_path / "data"),
                       "--task-args", "bapps_2afc:subsets=cnn", "-o", str(tmp_path / "r3"))
    assert code == 2 and str(bad) in err and "cannot be read" in err


def test_unknown_subset_is_a_usage_error(capsys, tmp_path, clean_env, toy):
    code, _, err = run(capsys, "-m", toy, "-t", "bapps_2afc", "--task-args", "bapps_2afc:subsets=mix",
                       "-o", str(tmp_path / "run"))
    assert code == 2 and "unknown BAPPS val subsets ['mix']" in err
