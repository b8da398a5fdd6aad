"""results.json + samples.parquet: round trip, atomic writes, the typed meta, clear errors on bad files,
and a results directory written by schema version 1 (tests/data/v1_run) that must stay readable."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import percepbench.results as results_module
from percepbench.errors import DataError
from percepbench.results import (
    ALL,
    RECORD_COLUMNS,
    RESULTS_FILE,
    SAMPLE_KEY_COLUMNS,
    SAMPLES_FILE,
    SCHEMA_VERSION,
    RunResults,
    load_results,
    write_results,
)
from percepbench.results_schema import META_KEYS, Failure, ProtocolEntry, read_meta

V1_RUN = Path(__file__).parent / "data" / "v1_run"
README = Path(__file__).parents[1] / "README.md"


def full_meta() -> dict:
    """A meta with every documented key, as the runner writes it."""
    return {
        "percepbench_version": "0.1.0", "git_sha": None, "torch_version": "2.4.0", "python": "3.11.7",
        "platform": "Linux-x", "device": "cpu", "device_name": "Some CPU", "cpu_model": "Some CPU",
        "cpu_flags": ["avx2", "avx512f"], "world_size": 1,
        "started": "2026-01-01T00:00:00+00:00", "finished": "2026-01-01T00:01:00+00:00",
        "precision": "bf16", "seed": 3, "config": {"metrics": ["psnr"]},
        "metrics": {"psnr": {"name": "psnr"}}, "tasks": {"t": {"name": "t", "kind": "2afc"}},
        "weights": {"lpips.alex": [{"filename": "a.pth", "path": "/c/a.pth", "url": "https://x/a.pth",
                                    "sha256": None}]},
        "random_weights": [],
        "task_protocols": {"t": {"source": "synthetic"}},
        "protocol": [{"task": "t", "metric": "psnr", "inputs": {"size": None}, "resize": "native size",
                      "scales_used": None, "embedding": None, "seconds": 0.5},
                     {"task": "t", "metric": "dreamsim", "inputs": {"size": 224}, "resize": "224x224 bicubic",
                      "scales_used": None, "seconds": 2,
                      "embedding": {"unique_images": 4, "image_references": 18, "from_cache": 0, "embedded": 4,
                                    "cache": None}}],  # no corrupt_entries_replaced with the cache off
        "failed": [{"task": "t", "metric": "ssim", "kind": "failure", "error": "RuntimeError: boom"}],
    }


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
    return RunResults(meta=full_meta(), records=records, samples=samples)


def test_round_trip(tmp_path):
    res = example()
    res.comparisons = pd.DataFrame([{"task": "t", "subset": "a", "measure": "2afc_accuracy", "metric_a": "psnr",
                                     "metric_b": "ssim", "diff": 12.5, "ci_low": 2.0, "ci_high": 20.0,
                                     "p_value": 0.01, "n": 4}])
    write_results(tmp_path, res)
    back = load_results(tmp_path)
    pd.testing.assert_frame_equal(back.comparisons, res.comparisons, check_dtype=False)
    assert back.meta == full_meta() and back.complete
    pd.testing.assert_frame_equal(back.records, res.records, check_dtype=False)
    pd.testing.assert_frame_equal(back.samples, res.samples)
    assert list(back.records.columns[:8]) == RECORD_COLUMNS
    payload = json.loads((tmp_path / RESULTS_FILE).read_text())
    assert payload["schema_version"] == SCHEMA_VERSION and payload["samples"] == SAMPLES_FILE
    assert list(payload["meta"]) == list(META_KEYS)
    assert load_results(tmp_path / RESULTS_FILE).records.shape == (2, 8)


def test_records_recomputable_from_samples(tmp_path):
    res = example()
    write_results(tmp_path, res)
    back = load_results(tmp_path)
    assert back.samples["score"].mean() * 100 == pytest.approx(back.records["value"].iloc[0])


def test_failed_write_keeps_previous_file(tmp_path):
    write_results(tmp_path, example())
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    bad = example()
    bad.meta = {"unserialisable": object()}
    bad.samples = bad.samples.assign(score=0.0)
    with pytest.raises(TypeError):
        write_results(tmp_path, bad)
    # neither file changed: the JSON is serialised before anything is written
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert sorted(before) == [RESULTS_FILE, SAMPLES_FILE]  # no temp files left


def test_files_are_written_with_the_fileio_helper():
    source = Path(results_module.__file__).read_text()
    assert "atomic_write(" in source and "tempfile" not in source and "os.replace" not in source


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not a readable results file"),
        ('{"schema": "other"}', "not a percepbench results file"),
        ('[1, 2]', "not a percepbench results file"),
        ('{"schema": "percepbench-results", "schema_version": 99}', "schema version 99 is not supported"),
        ('{"schema": "percepbench-results", "schema_version": 1, "records": [{"task": "t"}]}', "records lack columns"),
        ('{"schema": "percepbench-results", "schema_version": 1, "meta": [1]}', "meta must be a JSON object"),
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


def test_samples_without_their_key_columns_are_rejected(tmp_path):
    res = example()
    res.samples = res.samples.drop(columns=["item", "score"])
    write_results(tmp_path, res)
    with pytest.raises(DataError, match=r"samples\.parquet: per-item samples lack columns \['item', 'score'\]"):
        load_results(tmp_path)


# ------------------------------------------------------------------------------------------ typed meta


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.update(seed="3"), r"meta\.seed must be an integer or null, got '3'"),
        (lambda m: m.update(precision="fp8"), r"meta\.precision must be 'fp32' or 'bf16' or 'fp16'"),
        (lambda m: m.update(failed={}), r"meta\.failed must be a list"),
        (lambda m: m["failed"][0].update(kind="skipped"),
         r"meta\.failed\[0\]\.kind must be 'data' or 'weights' or 'failure', got 'skipped'"),
        (lambda m: m["failed"][0].pop("error"), r"meta\.failed\[0\] lacks 'error'"),
        (lambda m: m["protocol"][0].update(seconds="fast"), r"meta\.protocol\[0\]\.seconds must be a number"),
        (lambda m: m["protocol"][1]["embedding"].update(corrupt_entries_replaced="2"),
         r"meta\.protocol\[1\]\.embedding\.corrupt_entries_replaced must be an integer, got '2'"),
        (lambda m: m["protocol"][1]["embedding"].pop("embedded"), r"meta\.protocol\[1\]\.embedding lacks 'embedded'"),
        (lambda m: m["weights"]["lpips.alex"][0].update(sha256=5),
         r"meta\.weights\['lpips\.alex'\]\[0\]\.sha256 must be a string or null, got 5"),
        (lambda m: m.update(git_sha=True), r"meta\.git_sha must be a string or null"),
    ],
)
def test_wrong_meta_types_name_the_file_and_the_key(tmp_path, change, message):
    meta = full_meta()
    change(meta)
    write_results(tmp_path, RunResults(meta=meta, records=example().records))
    with pytest.raises(DataError, match=message) as exc:
        load_results(tmp_path)
    assert str(tmp_path / RESULTS_FILE) in str(exc.value)


def test_absent_keys_read_as_empty_and_unknown_keys_are_kept():
    meta = read_meta({"seed": 1, "a_newer_key": {"x": 1},
                      "protocol": [{"task": "t", "metric": "m", "inputs": {}, "resize": "native size",
                                    "seconds": 1}]}, "f.json")
    assert set(META_KEYS) <= set(meta) and meta["a_newer_key"] == {"x": 1}
    assert meta["precision"] == "fp32" and meta["failed"] == [] and meta["weights"] == {}
    assert meta["started"] is None and meta["cpu_model"] is None and meta["config"] == {}
    # absent optional keys of a protocol entry read as null
    assert meta["protocol"][0]["embedding"] is None and meta["protocol"][0]["scales_used"] is None
    assert read_meta(None, "f.json")["protocol"] == []
    assert read_meta(meta, "f.json") == meta  # reading what was read changes nothing


def test_documented_keys_are_the_typed_keys():
    """The results module docstring, the README table and RunMeta list the same meta keys, in one order."""
    doc = results_module.__doc__
    block = doc[doc.index('"meta": {'):doc.index("},", doc.index('"meta": {'))]
    in_docstring = re.findall(r'"(\w+)"', block.split("{", 1)[1])
    readme = README.read_text(encoding="utf-8")
    table = readme[readme.index("Its keys, in the order the runner writes them"):]
    table = table[:table.index("\n\n", table.index("| key |"))]
    in_readme = re.findall(r"^\| `(\w+)` \|", table, flags=re.M)
    assert in_docstring == list(META_KEYS) == in_readme


@pytest.mark.slow
def test_a_real_run_writes_exactly_the_documented_keys(tmp_path, register_temp, clean_env):
    from percepbench.config import RunConfig
    from percepbench.runner import run
    from percepbench.specs import MetricSpec

    register_temp(MetricSpec(name="broken_for_test", target="helpers_metrics:Broken", description="x"))
    config = RunConfig(metrics=["psnr", "broken_for_test"], tasks=["severity2afc"], n_boot=20, progress=False,
                       task_args={"severity2afc": {"per_family": 1}}, out=str(tmp_path / "run"), device="cpu")
    run(config)
    raw = json.loads((tmp_path / "run" / RESULTS_FILE).read_text())["meta"]
    assert list(raw) == list(META_KEYS)
    (entry,) = raw["protocol"]
    # every documented key, in order; "search" only for set-level (retrieval) tasks
    assert list(entry) == [k for k in ProtocolEntry.__annotations__ if k != "search"]
    (failure,) = raw["failed"]
    assert list(failure) == list(Failure.__annotations__)
    assert failure["kind"] == "failure" and "broken on purpose" in failure["error"]
    assert raw["device"] == "cpu" and raw["precision"] == "fp32" and raw["finished"] is not None
    assert raw["python"] == f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():  # the CPU model as Linux reports it
        names = re.findall(r"^model name\s*:\s*(.+?)\s*$", cpuinfo.read_text(), flags=re.M)
        if names:
            assert raw["cpu_model"] == names[0] == raw["device_name"]
    assert load_results(tmp_path / "run").meta == raw  # a file the runner wrote reads back unchanged


# ------------------------------------------------------------------------------------ schema version 1


def test_the_committed_v1_run_reads_back():
    res = load_results(V1_RUN)
    raw = json.loads((V1_RUN / RESULTS_FILE).read_text())
    assert res.complete and raw["schema_version"] == 1
    # every key the v1 runner wrote comes back as written; cpu_model did not exist yet and reads as None
    assert {k: res.meta[k] for k in raw["meta"]} == raw["meta"] and res.meta["cpu_model"] is None
    assert [(p["task"], p["metric"]) for p in res.meta["protocol"]] == [
        ("severity2afc", "psnr"), ("severity2afc", "ssim"), ("severity2afc", "lpips.alex")]
    assert res.meta["failed"] == [] and res.meta["precision"] == "fp32"
    assert len(res.records) == 3 * 9 and len(res.comparisons) == 3 * 9
    assert set(SAMPLE_KEY_COLUMNS) <= set(res.samples.columns) and len(res.samples) == 3 * 16
    # every record is the mean item score x 100 of its samples (pooled: all items)
    for rec in res.records.itertuples():
        s = res.samples[(res.samples["metric"] == rec.metric)]
        if rec.subset != ALL:
            s = s[s["subset"] == rec.subset]
        assert rec.n == len(s) and rec.value == pytest.approx(s["score"].mean() * 100), rec
