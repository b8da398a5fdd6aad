"""The run directory: one run at a time (a lock), nothing written before the run is known to start, and
``--resume`` / ``--overwrite`` for a directory that already holds results."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from percepbench import runner
from percepbench.cli import main
from percepbench.results import RESULTS_FILE, SAMPLES_FILE, load_results
from percepbench.specs import MetricSpec

from conftest import PYTHON, TEST_DEVICE

FAST = ["--task-args", "severity2afc:per_family=3,size=48", "--n-boot", "50", "-q", "--device", TEST_DEVICE]

#: Toy metrics for runs in this file, written beside each test as ``run_dir_metrics.py``: ``counted`` (mean
#: absolute difference; appends its name to $COUNT_FILE on every batch) and ``blocker`` (the same distance,
#: after touching $BLOCK_STARTED and waiting until $BLOCK_GO exists). Run as a script, it registers both and
#: runs the percepbench command line with its arguments: a second, real percepbench process.
METRICS_MODULE = '''
import os
import sys
import time
from pathlib import Path

from percepbench.metrics_registry.base import DistanceMetric


def _count(name):
    if os.environ.get("COUNT_FILE"):
        with open(os.environ["COUNT_FILE"], "a") as fh:
            fh.write(name + "\\n")


class Counted(DistanceMetric):
    def distance(self, preds, target):
        _count("counted")
        return (preds - target).abs().flatten(1).mean(1)


class Blocker(DistanceMetric):
    def distance(self, preds, target):
        _count("blocker")
        if os.environ.get("BLOCK_STARTED"):
            Path(os.environ["BLOCK_STARTED"]).touch()
        while os.environ.get("BLOCK_GO") and not Path(os.environ["BLOCK_GO"]).exists():
            time.sleep(0.05)
        return (preds - target).abs().flatten(1).mean(1) * 2


def register():
    from percepbench.registry import METRICS
    from percepbench.specs import MetricSpec

    for name, cls in (("counted", "Counted"), ("blocker", "Blocker")):
        METRICS.register(MetricSpec(name=name, target=f"run_dir_metrics:{cls}", description="x"), source="test")


if __name__ == "__main__":
    register()
    from percepbench.cli import main

    sys.exit(main(sys.argv[1:]))
'''


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def toy_metrics(tmp_path, monkeypatch, register_temp, clean_env):
    """``counted`` and ``blocker`` registered in this process; returns the script that runs them elsewhere."""
    folder = tmp_path / "toy"
    folder.mkdir()
    script = folder / "run_dir_metrics.py"
    script.write_text(METRICS_MODULE)
    monkeypatch.syspath_prepend(str(folder))
    for name, cls in (("counted", "Counted"), ("blocker", "Blocker")):
        register_temp(MetricSpec(name=name, target=f"run_dir_metrics:{cls}", description="x"))
    monkeypatch.setenv("COUNT_FILE", str(tmp_path / "count.txt"))
    for var in ("BLOCK_STARTED", "BLOCK_GO"):
        monkeypatch.delenv(var, raising=False)
    return script


def counted(tmp_path) -> list[str]:
    path = tmp_path / "count.txt"
    return path.read_text().split() if path.exists() else []


def assert_same_results(a, b):
    """Records, samples and comparisons of two runs are equal (every column, row order included)."""
    pd.testing.assert_frame_equal(a.records.reset_index(drop=True), b.records.reset_index(drop=True))
    pd.testing.assert_frame_equal(a.samples.reset_index(drop=True), b.samples.reset_index(drop=True))
    pd.testing.assert_frame_equal(a.comparisons.reset_index(drop=True), b.comparisons.reset_index(drop=True))
    assert [(p["task"], p["metric"]) for p in a.meta["protocol"]] == \
        [(p["task"], p["metric"]) for p in b.meta["protocol"]]


# --- nothing is written when the run cannot start ------------------------------------------------------


def test_task_that_fails_to_load_leaves_no_directory(capsys, tmp_path, clean_env):
    """A bad CSV (its images do not exist) is found before the run directory is created: exit 2, no stub."""
    csv = tmp_path / "triplets.csv"
    csv.write_text("ref,left,right,p\na.png,b.png,c.png,0.5\n")
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "run", "-m", "psnr", "-t", "2afc_csv", "--task-args", f"2afc_csv:path={csv}",
                           "-o", out, "-q", "--no-report")
    assert code == 2 and "do not exist" in err and str(csv) in err
    assert "cannot prepare" not in err  # the task's own DataError, as it is
    assert not out.exists()


def test_bad_seed_is_a_usage_error_and_leaves_no_directory(capsys, tmp_path, clean_env):
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "run", "-m", "psnr", "--seed", "-1", "-o", out, *FAST)
    assert code == 2 and "seed" in err and "-1" in err
    assert not out.exists()


@pytest.mark.parametrize(("error", "message"), [
    (ValueError("planted: cannot build the items"), "task 'severity2afc': cannot prepare its items: planted"),
    (PermissionError(13, "Permission denied", "/planted/labels.csv"),
     "task 'severity2afc': /planted/labels.csv: cannot read its data (Permission denied)"),
])
def test_task_prepare_error_is_exit_2_naming_the_task(capsys, tmp_path, clean_env, monkeypatch, error, message):
    """A ValueError or OSError while a task prepares its items (here: planted) is exit 2 naming the task (and
    the file), and nothing is written."""
    from percepbench.tasks.severity import Severity2AFC

    def bad_prepare(self, **kwargs):
        raise error

    monkeypatch.setattr(Severity2AFC, "prepare", bad_prepare)
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "run", "-m", "psnr", "-o", out, *FAST)
    assert code == 2 and message in err
    assert not out.exists()


def test_default_run_directories_are_claimed_by_creating_them(tmp_path, monkeypatch):
    """Without --out, a run takes the next runs/<timestamp> name when another run created the first since."""
    taken, free = tmp_path / "runs" / "20260101-000000", tmp_path / "runs" / "20260101-000000-2"
    taken.mkdir(parents=True)
    names = iter([taken, free])
    monkeypatch.setattr(runner, "default_out_dir", lambda: next(names))
    assert runner._make_out_dir(None) == free and free.is_dir()
    assert list(taken.iterdir()) == []


# --- one run at a time ---------------------------------------------------------------------------------


def test_run_into_a_locked_directory_is_refused_at_once(capsys, tmp_path, clean_env):
    """A lock held by another open file (as another process holds it) refuses the run, exit 2, with the pid
    written in the lock file; the directory is left as it was."""
    out = tmp_path / "run"
    out.mkdir()
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, b"4242\n")
        t0 = time.monotonic()
        code, _, err = run_cli(capsys, "run", "-m", "psnr", "-o", out, *FAST)
        assert code == 2 and f"{out} is in use by another percepbench run (pid 4242)" in err
        assert time.monotonic() - t0 < 30
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
    finally:
        os.close(fd)


def test_the_report_is_built_while_the_directory_is_locked(capsys, tmp_path, clean_env, monkeypatch):
    import percepbench.reports

    seen = []

    def fake_report(run_dir):
        fd = os.open(Path(run_dir) / ".lock", os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            seen.append("locked")
        finally:
            os.close(fd)
        return {"html": Path(run_dir) / "report" / "report.html"}

    monkeypatch.setattr(percepbench.reports, "build_report", fake_report)
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "run", "-m", "psnr", "-o", out, *FAST)
    assert code == 0, err
    assert seen == ["locked"] and "report.html" in stdout
    assert not (out / ".lock").exists()


@pytest.mark.slow
def test_two_processes_one_directory_then_kill_9_then_resume(capsys, tmp_path, toy_metrics):
    """Run A (real process) holds the directory; run B (real process) into it exits 2 at once naming A's pid.
    After ``kill -9`` of A the lock is gone with it: the directory is refused only because it holds A's
    partial results, and ``--resume`` finishes them, equal to a run that was never interrupted, without
    recomputing the (task, metric) pair A finished."""
    out = tmp_path / "run"
    env = {**os.environ, "BLOCK_STARTED": str(tmp_path / "started"), "BLOCK_GO": str(tmp_path / "go")}
    args = ["run", "-m", "counted,blocker", "-o", str(out), *FAST, "--no-report"]
    a = subprocess.Popen([PYTHON, str(toy_metrics), *args], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not (tmp_path / "started").exists():
            assert a.poll() is None, f"run A ended early: {a.communicate()}"
            assert time.monotonic() < deadline, "run A never reached its second metric"
            time.sleep(0.1)
        b = subprocess.run([PYTHON, str(toy_metrics), "run", "-m", "counted", "-o", str(out), *FAST],
                           env=env, capture_output=True, text=True, timeout=300)
        assert b.returncode == 2, b.stderr
        assert f"{out} is in use by another percepbench run (pid {a.pid})" in b.stderr
        assert a.poll() is None  # B did not wait for A
    finally:
        a.send_signal(signal.SIGKILL)
        a.communicate()
    assert a.returncode == -signal.SIGKILL
    partial = load_results(out)
    assert not partial.complete and set(partial.records["metric"]) == {"counted"}
    before = counted(tmp_path)
    assert set(before) == {"counted", "blocker"}

    # not locked any more, but not overwritten either: the message says how to continue
    code, _, err = run_cli(capsys, "run", "-m", "counted,blocker", "-o", out, *FAST, "--no-report")
    assert code == 2 and "already holds" in err and "--resume" in err and "--overwrite" in err
    assert "in use" not in err

    code, _, err = run_cli(capsys, "run", "-m", "counted,blocker", "-o", out, *FAST, "--no-report", "--resume")
    assert code == 0, err
    after = counted(tmp_path)
    assert after.count("counted") == before.count("counted")  # the finished pair was not run again
    assert after.count("blocker") > before.count("blocker")
    assert not (out / ".lock").exists()

    one_shot = tmp_path / "one_shot"
    assert run_cli(capsys, "run", "-m", "counted,blocker", "-o", one_shot, *FAST, "--no-report")[0] == 0
    resumed, expected = load_results(out), load_results(one_shot)
    assert resumed.complete and resumed.meta["failed"] == [] and resumed.meta["finished"]
    assert_same_results(resumed, expected)
    assert resumed.meta["started"] == partial.meta["started"]


# --- --resume -------------------------------------------------------------------------------------------


def truncate_to(out: Path, metric: str) -> None:
    """Make ``out`` look like a run interrupted after ``metric``: only its records, samples and protocol
    entry, ``complete`` false, no comparisons, no finish time."""
    path = out / RESULTS_FILE
    payload = json.loads(path.read_text())
    payload["complete"] = False
    payload["meta"]["finished"] = None
    payload["records"] = [r for r in payload["records"] if r["metric"] == metric]
    payload["meta"]["protocol"] = [p for p in payload["meta"]["protocol"] if p["metric"] == metric]
    payload["comparisons"] = []
    path.write_text(json.dumps(payload))
    samples = pd.read_parquet(out / SAMPLES_FILE)
    samples[samples["metric"] == metric].to_parquet(out / SAMPLES_FILE, index=False)


@pytest.mark.parametrize("kept", ["psnr", "ssim"])
def test_resume_after_truncation_equals_one_shot(capsys, tmp_path, clean_env, monkeypatch, kept):
    """Kept: the first metric (an interrupted run), or the second (the first failed and runs again): either
    way the resumed results equal the one-shot run's, row for row."""
    one_shot, out = tmp_path / "one_shot", tmp_path / "run"
    args = ["run", "-m", "psnr,ssim", *FAST, "--no-report"]
    assert run_cli(capsys, *args, "-o", one_shot)[0] == 0
    shutil.copytree(one_shot, out)
    truncate_to(out, kept)
    assert set(load_results(out).records["metric"]) == {kept}

    computed = []
    real = runner.compute_distances

    def spy(metric, task, spec, *rest, **kw):
        computed.append(spec.name)
        return real(metric, task, spec, *rest, **kw)

    monkeypatch.setattr(runner, "compute_distances", spy)
    code, _, err = run_cli(capsys, *args, "-o", out, "--resume")
    assert code == 0, err
    assert computed == [{"psnr": "ssim", "ssim": "psnr"}[kept]]
    resumed, expected = load_results(out), load_results(one_shot)
    assert resumed.complete and len(resumed.comparisons) == 9
    assert_same_results(resumed, expected)
    assert resumed.meta["config"]["resume"] is True


def test_resume_redoes_a_pair_without_records(capsys, tmp_path, clean_env):
    """A pair with a protocol entry but no records (truncated file) is not "finished": it runs again."""
    one_shot, out = tmp_path / "one_shot", tmp_path / "run"
    args = ["run", "-m", "psnr,ssim", *FAST, "--no-report"]
    assert run_cli(capsys, *args, "-o", one_shot)[0] == 0
    shutil.copytree(one_shot, out)
    payload = json.loads((out / RESULTS_FILE).read_text())
    payload["records"] = [r for r in payload["records"] if r["metric"] != "ssim"]
    payload["complete"] = False
    (out / RESULTS_FILE).write_text(json.dumps(payload))
    assert run_cli(capsys, *args, "-o", out, "--resume")[0] == 0
    assert_same_results(load_results(out), load_results(one_shot))


def test_resume_with_other_settings_names_the_keys(capsys, tmp_path, clean_env):
    out = tmp_path / "run"
    assert run_cli(capsys, "run", "-m", "psnr", "-o", out, *FAST, "--no-report")[0] == 0
    before = (out / RESULTS_FILE).read_bytes()
    code, _, err = run_cli(capsys, "run", "-m", "psnr,ssim", "-o", out, *FAST, "--no-report", "--resume",
                           "--seed", "3", "--n-boot", "60", "--precision", "bf16", "--device", "cpu")
    assert code == 2
    for key in ("metrics", "seed", "n_boot", "precision"):
        assert key in err
    for key in ("tasks", "task_args", "metric_args"):
        assert f"{key} " not in err
    assert (out / RESULTS_FILE).read_bytes() == before
    code, _, err = run_cli(capsys, "run", "-m", "psnr", "-o", out, "--task-args", "severity2afc:per_family=2",
                           "--n-boot", "50", "-q", "--device", TEST_DEVICE, "--no-report", "--resume")
    assert code == 2 and "task_args" in err and "seed" not in err
    assert (out / RESULTS_FILE).read_bytes() == before


def test_resume_into_a_new_directory_starts_a_run(capsys, tmp_path, clean_env):
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "run", "-m", "psnr", "-o", out, *FAST, "--no-report", "--resume")
    assert code == 0, err
    assert load_results(out).complete


def test_resume_of_an_unreadable_results_file_says_so(capsys, tmp_path, clean_env):
    out = tmp_path / "run"
    out.mkdir()
    (out / RESULTS_FILE).write_text("{not json")
    code, _, err = run_cli(capsys, "run", "-m", "psnr", "-o", out, *FAST, "--no-report", "--resume")
    assert code == 2 and str(out / RESULTS_FILE) in err and "--overwrite" in err
    assert (out / RESULTS_FILE).read_text() == "{not json"


# --- --overwrite ----------------------------------------------------------------------------------------


def test_overwrite_replaces_own_files_only(capsys, tmp_path, clean_env):
    out = tmp_path / "run"
    assert run_cli(capsys, "run", "-m", "psnr,ssim", "-o", out, *FAST)[0] == 0  # with its report
    report = out / "report"
    figures = sorted(p.name for p in report.iterdir() if p.suffix in (".png", ".svg"))
    assert figures and (report / "report.html").is_file()
    (out / "notes.txt").write_text("mine")
    (report / "my_figure.png").write_bytes(b"mine")
    (out / ".results.json.abc123.tmp").write_text("left by a killed write")
    code, _, err = run_cli(capsys, "run", "-m", "psnr", "-o", out, *FAST, "--no-report", "--overwrite")
    assert code == 0, err
    res = load_results(out)
    assert res.complete and set(res.records["metric"]) == {"psnr"} and len(res.comparisons) == 0
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "report", RESULTS_FILE, SAMPLES_FILE]
    assert sorted(p.name for p in report.iterdir()) == ["my_figure.png"]
    assert (out / "notes.txt").read_text() == "mine"


def test_overwrite_and_resume_together_are_refused(capsys, tmp_path, clean_env):
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "run", "-m", "psnr", "-o", out, *FAST, "--resume", "--overwrite")
    assert code == 2 and "--resume" in err and "--overwrite" in err
    assert not out.exists()


@pytest.mark.parametrize("flag", ["resume", "overwrite"])
def test_resume_and_overwrite_need_an_out_directory(capsys, tmp_path, clean_env, flag, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "run", "-m", "psnr", *FAST, f"--{flag}")
    assert code == 2 and f"--{flag}" in err and "--out" in err
    assert not (tmp_path / "runs").exists()


def test_resume_from_a_config_file(capsys, tmp_path, clean_env):
    out = tmp_path / "run"
    assert run_cli(capsys, "run", "-m", "psnr", "-o", out, *FAST, "--no-report")[0] == 0
    truncate_to(out, "none")  # no finished pair at all: a stub results.json
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"resume: true\nout: {out}\n")
    code, _, err = run_cli(capsys, "run", "-c", cfg, "-m", "psnr", *FAST, "--no-report")
    assert code == 0, err
    assert load_results(out).complete


# --- a failure after the directory exists is recorded ----------------------------------------------------


def test_failure_after_start_is_recorded_in_meta_failed(capsys, tmp_path, clean_env, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("planted comparison failure")

    monkeypatch.setattr(runner, "compare_metrics", broken)
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "run", "-m", "psnr,ssim", "-o", out, *FAST, "--no-report")
    assert code == 1 and "planted comparison failure" in err
    res = load_results(out)
    assert not res.complete and set(res.records["metric"]) == {"psnr", "ssim"}
    assert res.meta["failed"] == [{"task": "severity2afc", "metric": "(paired comparisons)", "kind": "failure",
                                   "error": "RuntimeError: planted comparison failure"}]
    assert not (out / ".lock").exists()
