"""results.json + samples.parquet: round trip, atomic writes, clear errors on bad files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from percepbench.errors import DataError
from percepbench.results import (
    RECORD_COLUMNS,
    RESULTS_FILE,
    SAMPLES_FILE,
    SCHEMA_VERSION,
    RunResults,
    load_results,
    write_results,
)


def example() -> RunResults:
    records = pd.DataFrame([
        {"task": "t", "subset": "a", "metric": "psnr", "measure": "2afc_accuracy", "value": 75.0,
         "ci_low": 60.0, "ci_high": 90.0, "n": 4},
        {"task": "t", "subset": "all", "metric": "psnr", "measure": "2afc_accuracy", "value": float("nan"),
         "ci_low": float("nan"), "ci_high": float("nan"), "n": 0},
    ])
    samples = pd.DataFrame({"task": ["t"] * 4, "subset": ["a"] * 4, "item": list("wxyz"),
                            "metric": ["psnr"] * 4, "d0": np.arange(4.0), "d1": np.ones(4), "p": [0, 1, 0, 1.0],
                            "score": [1, 0, 1, 1.0]})
    return RunResults(meta={"seed": 3, "config": {"metrics": ["psnr"]}}, records=records, samples=samples)


def test_round_trip(tmp_path):
    res = example()
    res.comparisons = pd.DataFrame([{"task": "t", "subset": "a", "measure": "2afc_accuracy", "metric_a": "psnr",
                                     "metric_b": "ssim", "diff": 12.5, "ci_low": 2.0, "ci_high": 20.0,
                                     "p_value": 0.01, "n": 4}])
    write_results(tmp_path, res)
    back = load_results(tmp_path)
    pd.testing.assert_frame_equal(back.comparisons, res.comparisons, check_dtype=False)
    assert back.meta == res.meta and back.complete
    pd.testing.assert_frame_equal(back.records, res.records, check_dtype=False)
    pd.testing.assert_frame_equal(back.samples, res.samples)
    assert list(back.records.columns[:8]) == RECORD_COLUMNS
    payload = json.loads((tmp_path / RESULTS_FILE).read_text())
    assert payload["schema_version"] == SCHEMA_VERSION and payload["samples"] == SAMPLES_FILE
    assert load_results(tmp_path / RESULTS_FILE).records.shape == (2, 8)


def test_records_recomputable_from_samples(tmp_path):
    res = example()
    write_results(tmp_path, res)
    back = load_results(tmp_path)
    assert back.samples["score"].mean() * 100 == pytest.approx(back.records["value"].iloc[0])


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    write_results(tmp_path, example())
    before = (tmp_path / RESULTS_FILE).read_bytes()
    bad = example()
    bad.meta = {"unserialisable": object()}
    with pytest.raises(TypeError):
        write_results(tmp_path, bad)
    assert (tmp_path / RESULTS_FILE).read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not a readable results file"),
        ('{"schema": "other"}', "not a percepbench results file"),
        ('[1, 2]', "not a percepbench results file"),
        ('{"schema": "percepbench-results", "schema_version": 99}', "schema version 99 is not supported"),
        ('{"schema": "percepbench-results", "schema_version": 1, "records": [{"task": "t"}]}', "records lack columns"),
    ],
)
def test_bad_files_name_the_file(tmp_path, content, message):
    path = tmp_path / RESULTS_FILE
    path.write_text(content)
    with pytest.raises(DataError, match=message) as exc:
        load_results(tmp_path)
    assert str(path) in str(exc.value)


def test_missing_and_corrupt_samples(tmp_path):
    with pytest.raises(DataError, match="no such results file"):
        load_results(tmp_path / "nothing")
    write_results(tmp_path, example())
    (tmp_path / SAMPLES_FILE).write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot read per-item samples") as exc:
        load_results(tmp_path)
    assert SAMPLES_FILE in str(exc.value)
    assert load_results(tmp_path, samples=False).samples is None
