"""``nights``: a NIGHTS tree generated in the official layout, scored by hand with a toy metric."""

from __future__ import annotations

import pandas as pd
import pytest
from PIL import Image

from percepbench.cli import main
from percepbench.results import load_results
from percepbench.specs import InputConvention, MetricSpec

import layouts
from layouts import NightsTriplet, write_png

REF = 100  # every reference image is flat grey 100; left/right are flat grey 100 + offset
SIZE = 32
FAST = ["--n-boot", "20", "-q", "--num-workers", "0"]

T = NightsTriplet
ROWS = [  # flat grey images: ref 100, left/right 100 + offset
    T(0, REF + 50, REF + 10, split="test", is_imagenet=True, right_vote=1.0),       # d1 < d0, p = 1  -> 1
    T(1, REF + 10, REF + 50, split="test", is_imagenet=True, right_vote=0.0),       # d0 < d1, p = 0  -> 1
    T(2, REF + 10, REF + 50, split="test", is_imagenet=False, votes=7),             # d0 < d1, p = 1  -> 0
    T(3, REF + 20, REF + 20, split="test", is_imagenet=False, right_vote=0.0),      # tie             -> 0.5
    T(4, REF + 10, REF + 50, split="test", is_imagenet=False, votes=5,
      missing=("right",)),                                      # votes < 6: dropped (its right image is missing too)
    T(5, REF + 30, REF + 5, split="val", is_imagenet=False),                        # d1 < d0, p = 1  -> 1
    T(6, REF + 5, REF + 30, split="train", is_imagenet=True, right_vote=0.0),       # d0 < d1, p = 0  -> 1
    T(7, REF + 30, REF + 5, split="val", is_imagenet=True, votes=4, right_vote=0.0),  # votes < 6: dropped
    T(8, REF + 40, REF + 0, split="test", is_imagenet=True, left_suffix="1",
      right_suffix="0"),                                        # right_path is _0.png: used as given; d1 < d0 -> 1
    T(9, REF + 30, REF + 5, split="val", is_imagenet=True, right_vote=0.0),         # d1 < d0, p = 0  -> 0
]
EXPECTED = {  # subset: (value, n) for the default subset=test
    "test_imagenet": (100.0, 3),
    "test_no_imagenet": (25.0, 2),
    "all": (70.0, 5),
}


def make_nights(base, rows=ROWS):
    """``base/nights`` with data.csv and the images of ``rows``; returns the nights folder."""
    return layouts.make_nights(base, rows, size=SIZE)


@pytest.fixture
def toy(register_temp):
    register_temp(MetricSpec(name="toy-meanabs", target="helpers_metrics:MeanAbs", description="test"))
    register_temp(MetricSpec(name="toy-meanabs16", target="helpers_metrics:MeanAbs", description="test",
                             inputs=InputConvention(size=16, interpolation="bicubic")))
    return "toy-meanabs"


def run(capsys, *args):
    code = main(["run", *args, *FAST])
    out, err = capsys.readouterr()
    return code, out, err


def records_of(out):
    res = load_results(out)
    return res, {(r.metric, r.subset): (r.value, r.n) for r in res.records.itertuples()}


def test_test_split_scores_by_hand(capsys, tmp_path, clean_env, toy):
    make_nights(tmp_path / "data")
    out = tmp_path / "run"
    code, _, err = run(capsys, "-m", "toy-meanabs,toy-meanabs16", "-t", "nights", "--data-root",
                       str(tmp_path / "data"), "-o", str(out))
    assert code == 0, err
    res, recs = records_of(out)
    for metric in ("toy-meanabs", "toy-meanabs16"):  # flat images: the 16 px bicubic resize changes nothing
        for subset, (value, n) in EXPECTED.items():
            assert recs[(metric, subset)][0] == pytest.approx(value)
            assert recs[(metric, subset)][1] == n
    samples = res.samples[res.samples["metric"] == "toy-meanabs"].set_index("item")
    assert sorted(samples.index) == ["0", "1", "2", "3", "8"]
    assert samples.loc["8", "right_path"].endswith("_0.png")
    assert samples.loc["0", "d0"] == pytest.approx(50 / 255) and samples.loc["0", "d1"] == pytest.approx(10 / 255)
    assert samples["score"].to_dict() == {"0": 1.0, "1": 1.0, "2": 0.0, "3": 0.5, "8": 1.0}
    assert samples.loc["2", "subset"] == "test_no_imagenet" and samples.loc["2", "p"] == 1.0
    proto = res.meta["task_protocols"]["nights"]
    assert "votes >= 6" in proto["filters"] and proto["rows_in_csv"] == 10 and proto["rows_after_votes_filter"] == 8
    assert proto["items"] == 5 and proto["image_sizes"] == "32x32: 15 file(s)"
    resize = {p["metric"]: p["resize"] for p in res.meta["protocol"]}
    assert resize == {"toy-meanabs": "native size", "toy-meanabs16": "16x16 bicubic"}


@pytest.mark.parametrize(("subset", "expected"), [
    ("val", {"val": (50.0, 2)}),
    ("train", {"train": (100.0, 1)}),
    ("test_imagenet", {"test_imagenet": (100.0, 3)}),
    ("test_no_imagenet", {"test_no_imagenet": (25.0, 2)}),
])
def test_subset_selection_and_root_arg(capsys, tmp_path, clean_env, toy, subset, expected):
    root = make_nights(tmp_path / "elsewhere")
    out = tmp_path / "run"
    key = "split" if subset == "train" else "subset"
    code, _, err = run(capsys, "-m", toy, "-t", "nights", "--task-args", f"nights:root={root},{key}={subset}",
                       "-o", str(out))
    assert code == 0, err
    _, recs = records_of(out)
    assert {s: v for (_, s), v in recs.items()} == expected  # means of 0, 0.5 and 1: exact


def test_dataset_resizes_for_fixed_size_metrics(tmp_path):
    from percepbench import create_task

    task = create_task("nights", root=str(make_nights(tmp_path)))
    task.prepare(progress=False)
    native = task.dataset(InputConvention())[0]
    assert set(native) == {"ref", "left", "right"}
    assert native["ref"].shape == (3, SIZE, SIZE) and native["ref"].dtype.is_floating_point is False
    assert int(native["left"][0, 0, 0]) == REF + 50
    assert task.dataset(InputConvention(size=16, interpolation="bicubic"))[0]["right"].shape == (3, 16, 16)


def test_images_of_different_sizes_fail_for_native_size_metrics_only(capsys, tmp_path, clean_env, toy):
    root = make_nights(tmp_path / "data")
    write_png(root / "distort/000/001_1.png", REF + 50, size=24)
    code, _, err = run(capsys, "-m", "toy-meanabs,toy-meanabs16", "-t", "nights", "--data-root",
                       str(tmp_path / "data"), "-o", str(tmp_path / "run"))
    assert code == 2  # bad input data; the fixed-size metric's results are still written
    assert "differ in size" in err and "32x32: 14 file(s), 24x24: 1 file(s)" in err
    _, recs = records_of(tmp_path / "run")
    assert recs[("toy-meanabs16", "all")] == pytest.approx((70.0, 5))


def test_no_data_root_says_how_to_get_the_data(capsys, tmp_path, clean_env, toy):
    code, _, err = run(capsys, "-m", toy, "-t", "nights", "-o", str(tmp_path / "run"))
    assert code == 2
    assert "https://data.csail.mit.edu/nights/nights.zip" in err and "nights/data.csv" in err


def test_missing_csv_names_it(capsys, tmp_path, clean_env, toy):
    (tmp_path / "data" / "nights").mkdir(parents=True)
    code, _, err = run(capsys, "-m", toy, "-t", "nights", "--data-root", str(tmp_path / "data"),
                       "-o", str(tmp_path / "run"))
    assert code == 2
    assert str(tmp_path / "data" / "nights" / "data.csv") in err and "nights.zip" in err
    code, _, err = run(capsys, "-m", toy, "-t", "nights", "--data-root", str(tmp_path / "nowhere"),
                       "-o", str(tmp_path / "run2"))
    assert code == 2 and str(tmp_path / "nowhere" / "nights") in err


def _edit_csv(root, fn):
    frame = pd.read_csv(root / "data.csv")
    frame = fn(frame)
    frame.to_csv(root / "data.csv", index=False)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda f: f.drop(columns=["votes"]), "missing column(s) votes"),
    (lambda f: f.assign(votes=f["votes"].astype(object).where(f["id"] != 3, "six")), "'votes' has 1 value(s) not a number"),
    (lambda f: f.assign(right_vote=f["right_vote"].where(f["id"] != 2, 1.5)), "'right_vote' has 1 value(s) outside [0.0, 1.0]"),
    (lambda f: f.assign(is_imagenet=f["is_imagenet"].astype(object).where(f["id"] != 0, "maybe")), "'is_imagenet' must be True/False"),
])
def test_malformed_csv_fails_naming_it(capsys, tmp_path, clean_env, toy, edit, message):
    root = make_nights(tmp_path / "data")
    _edit_csv(root, edit)
    code, _, err = run(capsys, "-m", toy, "-t", "nights", "--data-root", str(tmp_path / "data"),
                       "-o", str(tmp_path / "run"))
    assert code == 2
    assert str(root / "data.csv") in err and message in err


def test_missing_and_unreadable_images_fail_in_prepare(capsys, tmp_path, clean_env, toy):
    root = make_nights(tmp_path / "data")
    (root / "ref/000/001.png").unlink()
    (root / "distort/001/008_1.png").unlink()
    code, _, err = run(capsys, "-m", toy, "-t", "nights", "--data-root", str(tmp_path / "data"),
                       "-o", str(tmp_path / "run"))
    assert code == 2
    assert "2 of 15 referenced image file(s) do not exist" in err
    assert str(root / "ref/000/001.png") in err and str(root / "distort/001/008_1.png") in err
    assert not (tmp_path / "run" / "samples.parquet").exists()

    root = make_nights(tmp_path / "data2")
    (root / "distort/000/002_1.png").write_bytes(b"not a png at all")
    code, _, err = run(capsys, "-m", toy, "-t", "nights", "--data-root", str(tmp_path / "data2"),
                       "-o", str(tmp_path / "run2"))
    assert code == 2 and "cannot be read" in err and str(root / "distort/000/002_1.png") in err


def test_image_damaged_past_its_header_fails_when_loaded(capsys, tmp_path, clean_env, toy):
    root = make_nights(tmp_path / "data")
    bad = root / "distort/000/003_0.png"
    Image.effect_noise((SIZE, SIZE), 64).convert("RGB").save(bad)
    bad.write_bytes(bad.read_bytes()[:120])  # header intact, pixel data cut
    code, _, err = run(capsys, "-m", toy, "-t", "nights", "--data-root", str(tmp_path / "data"),
                       "-o", str(tmp_path / "run"))
    assert code == 2  # bad input data, found while loading: recorded, results so far kept
    assert str(bad) in err and "cannot read image" in err
    res = load_results(tmp_path / "run")
    assert res.meta["failed"][0]["task"] == "nights" and str(bad) in res.meta["failed"][0]["error"]
    assert res.meta["failed"][0]["kind"] == "data"


def test_bad_task_args_are_usage_errors(capsys, tmp_path, clean_env, toy):
    code, _, err = run(capsys, "-m", toy, "-t", "nights", "--task-args", "nights:subset=holdout",
                       "-o", str(tmp_path / "run"))
    assert code == 2 and "unknown NIGHTS subset 'holdout'" in err
