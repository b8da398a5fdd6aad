"""The command line: exit codes, flags vs config files, the results directory, interruption."""

from __future__ import annotations

import json
import subprocess

import pandas as pd
import pytest

from percepbench.cli import main
from percepbench.results import RESULTS_FILE, load_results
from percepbench.specs import MetricSpec

from conftest import PYTHON

FAST = ["--task-args", "severity2afc:per_family=3,size=48", "--n-boot", "50", "-q"]


def run_cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_run_ok_writes_results_and_summary(capsys, tmp_path, clean_env):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(capsys, "run", "--metrics", "psnr,ssim", "--out", str(out), *FAST)
    assert code == 0
    assert "severity2afc" in stdout and "psnr" in stdout and str(out) in stdout
    res = load_results(out)
    assert res.complete
    assert set(res.records["metric"]) == {"psnr", "ssim"}
    assert set(res.records["subset"]) >= {"all", "blur", "jpeg"}
    assert len(res.samples) == 2 * 3 * 8
    meta = res.meta
    for key in ("percepbench_version", "git_sha", "torch_version", "device", "seed", "started", "finished",
                "config", "metrics", "tasks", "protocol"):
        assert key in meta
    assert meta["device"] == "cpu" and meta["metrics"]["ssim"]["distance"] == "1 - SSIM"
    assert {p["metric"] for p in meta["protocol"]} == {"psnr", "ssim"}
    # paired comparison of the two metrics on the same items, per subset and pooled
    comp = res.comparisons
    assert len(comp) == 9 and set(comp["metric_a"]) == {"psnr"} and set(comp["metric_b"]) == {"ssim"}
    pooled = comp[comp["subset"] == "all"].iloc[0]
    by_metric = res.records[res.records["subset"] == "all"].set_index("metric")["value"]
    assert pooled["diff"] == pytest.approx(by_metric["psnr"] - by_metric["ssim"])
    assert 0 < pooled["p_value"] <= 1 and pooled["n"] == 24
    # every record can be recomputed from the per-item samples
    for _, rec in res.records.iterrows():
        s = res.samples[(res.samples["metric"] == rec["metric"])]
        if rec["subset"] != "all":
            s = s[s["subset"] == rec["subset"]]
        assert s["score"].mean() * 100 == pytest.approx(rec["value"])
        assert len(s) == rec["n"]


def test_same_seed_same_records(capsys, tmp_path, clean_env):
    frames = []
    for name in ("a", "b"):
        assert run_cli(capsys, "run", "-m", "psnr,piq.gmsd", "-o", str(tmp_path / name), "--seed", "5", *FAST)[0] == 0
        frames.append(load_results(tmp_path / name).records)
    pd.testing.assert_frame_equal(frames[0], frames[1])
    assert run_cli(capsys, "run", "-m", "psnr,piq.gmsd", "-o", str(tmp_path / "c"), "--seed", "6", *FAST)[0] == 0
    assert not frames[0]["value"].equals(load_results(tmp_path / "c").records["value"])


def test_unknown_metric_is_usage_error_with_suggestion(capsys, tmp_path):
    code, _, err = run_cli(capsys, "run", "--metrics", "ssmi", "--out", str(tmp_path / "x"), *FAST)
    assert code == 2 and "did you mean 'ssim'" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--batch-size", "many"],
        ["run", "--no-such-flag"],
        ["frobnicate"],
        [],
    ],
)
def test_argparse_errors_exit_2(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tasks", "nope"], "unknown task 'nope'"),
        (["--metrics", "nothing.*"], "matches nothing"),
        (["--batch-size", "0"], "batch_size must be >= 1"),
        (["--metric-args", "psnr"], "expects NAME:KEY=VALUE"),
        (["--metric-args", "psnrr:x=1"], "did you mean 'psnr'"),
        (["--task-args", "severity2afc:colour=1"], "bad --task-args"),
        (["--task-args", "severity2afc:per_family=0"], "per_family must be >= 1"),
        (["--metric-args", "psnr:bogus=1"], "cannot build it with options {'bogus': 1}"),
        (["-m", "ms_ssim", "--metric-args", "ms_ssim:scales=9"], "scales must be 'auto' or an integer 1..5"),
        (["--config", "/no/such/file.yaml"], "cannot read config file"),
        (["--device", "cuda:0"], "CUDA is not available"),
        (["--device", "gpu-please"], "invalid device"),
    ],
)
def test_bad_input_exit_2(args, message, capsys, tmp_path):
    code, _, err = run_cli(capsys, "run", "-m", "psnr", "-o", str(tmp_path / "r"), *FAST, *args)
    assert code == 2 and message in err, err
    assert not (tmp_path / "r").exists(), "a usage error must not leave a run directory"


def test_config_file_and_flags_override(capsys, tmp_path, clean_env):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("metrics: [psnr, ssim]\nseed: 3\nbatch_size: 4\ntask_args:\n  severity2afc: {per_family: 2, size: 48}\n")
    out = tmp_path / "r1"
    assert run_cli(capsys, "run", "-c", str(cfg), "-o", str(out), "-q", "--n-boot", "20")[0] == 0
    meta = load_results(out).meta
    assert meta["config"]["metrics"] == ["psnr", "ssim"] and meta["seed"] == 3
    assert meta["config"]["batch_size"] == 4
    assert meta["config"]["num_workers"] == 0  # automatic on the CPU: 0, and the record says so

    toml = tmp_path / "run.toml"
    toml.write_text('metrics = ["ssim"]\nseed = 3\n[task_args.severity2afc]\nper_family = 2\nsize = 48\n')
    out2 = tmp_path / "r2"
    code = run_cli(capsys, "run", "-c", str(toml), "-o", str(out2), "-q", "--n-boot", "20", "--metrics", "psnr",
                   "--seed", "9", "--task-args", "severity2afc:per_family=1")[0]
    assert code == 0
    res = load_results(out2)
    assert set(res.records["metric"]) == {"psnr"} and res.meta["seed"] == 9
    assert res.meta["config"]["task_args"] == {"severity2afc": {"per_family": 1, "size": 48}}
    assert len(res.samples) == 8


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bad.yaml", "metrics: [psnr\n", "not valid YAML"),
        ("bad.toml", "metrics = [", "not valid TOML"),
        ("unknown.yaml", "metricz: [psnr]\n", "unknown settings ['metricz']"),
        ("list.yaml", "- psnr\n", "expected a mapping"),
    ],
)
def test_bad_config_files(name, content, message, capsys, tmp_path):
    cfg = tmp_path / name
    cfg.write_text(content)
    code, _, err = run_cli(capsys, "run", "-c", str(cfg), "-o", str(tmp_path / "r"))
    assert code == 2 and message in err and str(cfg) in err


def test_existing_results_are_never_overwritten(capsys, tmp_path, clean_env):
    out = tmp_path / "r"
    assert run_cli(capsys, "run", "-m", "psnr", "-o", str(out), *FAST)[0] == 0
    before = (out / RESULTS_FILE).read_bytes()
    code, _, err = run_cli(capsys, "run", "-m", "ssim", "-o", str(out), *FAST)
    assert code == 2 and "already holds" in err
    assert (out / RESULTS_FILE).read_bytes() == before


def test_failing_metric_exits_1_and_keeps_others(capsys, tmp_path, register_temp, clean_env):
    register_temp(MetricSpec(name="broken_for_test", target="helpers_metrics:Broken", description="x"))
    out = tmp_path / "r"
    code, _, err = run_cli(capsys, "run", "-m", "psnr,broken_for_test", "-o", str(out), *FAST)
    assert code == 1 and "broken_for_test" in err and "broken on purpose" in err
    res = load_results(out)
    assert res.complete and set(res.records["metric"]) == {"psnr"}
    assert res.meta["failed"][0]["metric"] == "broken_for_test"


def test_interrupted_run_leaves_readable_partial_results(capsys, tmp_path, register_temp, clean_env):
    register_temp(MetricSpec(name="zz_interrupt", target="helpers_metrics:Interrupt", description="x"))
    out = tmp_path / "r"
    code, _, err = run_cli(capsys, "run", "-m", "psnr,zz_interrupt", "-o", str(out), *FAST)
    assert code == 130 and "interrupted" in err
    res = load_results(out)
    assert not res.complete
    assert set(res.records["metric"]) == {"psnr"} and set(res.samples["metric"]) == {"psnr"}
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "samples.parquet"]  # no temp files


def test_list(capsys, clean_env):
    code, out, _ = run_cli(capsys, "list")
    assert code == 0
    assert "psnr" in out and "piq.fsim" in out and "severity2afc" in out and "no weights needed" in out
    code, out, _ = run_cli(capsys, "list", "metrics", "--pattern", "piq.*")
    assert code == 0 and "piq.vif" in out and "severity2afc" not in out and "\n  psnr" not in out
    code, _, err = run_cli(capsys, "list", "metrics", "--pattern", "nope*")
    assert code == 2 and "matches nothing" in err


def test_list_marks_missing_weights(capsys, tmp_path, register_temp, clean_env):
    from percepbench.specs import WeightFile

    register_temp(MetricSpec(name="needs_weights", target="helpers_metrics:MeanAbs", description="x",
                             weights=(WeightFile("w.pth", "https://example.invalid/w.pth"),)))
    code, out, _ = run_cli(capsys, "list", "metrics", "-p", "needs_weights")
    assert code == 0 and "weights MISSING: w.pth" in out


def test_console_script_version_and_help():
    res = subprocess.run([PYTHON, "-m", "percepbench.cli", "--version"], capture_output=True, text=True, check=False)
    assert res.returncode == 0 and res.stdout.startswith("percepbench ")
    res = subprocess.run([PYTHON, "-m", "percepbench.cli", "run", "--help"], capture_output=True, text=True,
                         check=False)
    assert res.returncode == 0 and "--metric-args" in res.stdout


def test_results_json_is_plain_json(capsys, tmp_path, clean_env):
    out = tmp_path / "r"
    assert run_cli(capsys, "run", "-m", "psnr", "-o", str(out), *FAST)[0] == 0
    payload = json.loads((out / RESULTS_FILE).read_text())
    assert payload["schema"] == "percepbench-results"
    assert payload["records"][0].keys() >= {"task", "subset", "metric", "measure", "value", "ci_low", "ci_high", "n"}


def test_automatic_num_workers(monkeypatch):
    import torch

    from percepbench.runner import resolve_num_workers

    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert resolve_num_workers(None, torch.device("cpu")) == 0
    assert resolve_num_workers(None, torch.device("cuda")) == 8
    assert resolve_num_workers(3, torch.device("cuda")) == 3 and resolve_num_workers(2, torch.device("cpu")) == 2
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    assert resolve_num_workers(None, torch.device("cuda")) == 3
    monkeypatch.setattr("os.cpu_count", lambda: None)
    assert resolve_num_workers(None, torch.device("cuda")) == 0
