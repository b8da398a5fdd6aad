"""The everyday path (issue 15): partial runs, every missing prerequisite in one message, options with
"did you mean", numbers typed as people write them, robust input dtypes, the whole-run progress bar."""

from __future__ import annotations

import json

import pytest
import torch

from percepbench.cli import main
from percepbench.results import RESULTS_FILE, load_results
from percepbench.specs import MetricSpec

SMALL = ["--task-args", "severity2afc:per_family=2,size=32,families=blur+noise", "--n-boot", "20",
         "--num-workers", "0"]


@pytest.fixture
def needs(register_temp, monkeypatch):
    monkeypatch.setenv("PERCEPBENCH_OFFLINE", "1")  # nothing is fetched: the weights stay missing
    for name in ("toy-needs", "toy-needs2"):
        register_temp(MetricSpec(name=name, target="helpers_metrics:NeedsWeights", description="needs weights"))
    return ["toy-needs", "toy-needs2"]


def cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_missing_metric_does_not_sink_the_run(tmp_path, clean_env, needs, capsys, caplog):
    out = tmp_path / "run"
    code, stdout, err = cli(capsys, "run", "-m", "psnr,toy-needs,ssim", "-o", str(out), "-q", *SMALL)
    err += caplog.text  # the warning is logged (stderr on the command line; pytest captures the log)
    assert code == 1, err
    res = load_results(out)
    assert set(res.records["metric"]) == {"psnr", "ssim"} and res.complete
    (failure,) = res.meta["failed"]
    assert failure["metric"] == "toy-needs" and failure["kind"] == "weights" and failure["task"] == "severity2afc"
    assert "prerequisites missing" in err and "percepbench weights download toy-needs" in err
    assert "toy_needs_weights.pth" in err and "example.invalid" in err
    assert "FAILED toy-needs on severity2afc" in err and "psnr" in stdout


def test_strict_stops_before_anything_is_written(tmp_path, clean_env, needs, capsys):
    out = tmp_path / "run"
    code, _, err = cli(capsys, "run", "-m", "psnr,toy-needs", "-o", str(out), "-q", "--strict", *SMALL)
    assert code == 1 and "--strict: nothing was run" in err and "toy-needs" in err
    assert not out.exists()


def test_everything_missing_in_one_message(tmp_path, clean_env, needs, capsys):
    """Two metrics without weights and a task without data: one message names all three, nothing runs."""
    out = tmp_path / "run"
    code, _, err = cli(capsys, "run", "-m", ",".join(needs), "-t", "nights", "--data-root", str(tmp_path / "none"),
                       "-o", str(out), "-q")
    assert code == 1
    message = err.split("prerequisites missing", 1)[1]
    assert "2 metrics (or a task's matching metric) whose weight files are missing" in message
    assert "toy-needs:" in message and "toy-needs2:" in message
    assert "1 tasks whose data is missing or unreadable" in message and "nights:" in message
    assert "percepbench data download nights" in message
    assert "percepbench weights download toy-needs toy-needs2" in message
    # the toy specs declare no weight files (their class fetches one itself), so no size can be given
    assert "size unknown" in message
    assert not out.exists()


def test_missing_data_skips_that_task_only(tmp_path, clean_env, capsys):
    out = tmp_path / "run"
    code, _, err = cli(capsys, "run", "-m", "psnr", "-t", "nights,severity2afc", "--data-root",
                       str(tmp_path / "none"), "-o", str(out), "-q", *SMALL)
    assert code == 2, err  # bad or missing data: exit 2, the other results kept
    res = load_results(out)
    assert set(res.records["task"]) == {"severity2afc"}
    (failure,) = res.meta["failed"]
    assert failure["task"] == "nights" and failure["kind"] == "data" and "data.csv" in failure["error"]


@pytest.mark.parametrize(("args", "message"), [
    (["-t", "severity2afc", "--task-args", "severity2afc:per_famly=4"],
     "task 'severity2afc': unknown option 'per_famly' (did you mean 'per_family'?); its options: per_family, size"),
    (["-m", "ssim", "--metric-args", "ssim:sigmaa=2"],
     "metric 'ssim': unknown option 'sigmaa' (did you mean 'sigma'?); its options: sigma"),
    (["-t", "retrieval_folder", "--task-args", "retrieval_folder:path=x,kss=1"],
     "unknown option 'kss' (did you mean 'ks'?)"),
])
def test_misspelt_options_exit_2_with_did_you_mean(tmp_path, clean_env, capsys, args, message):
    code, _, err = cli(capsys, "run", *args, "-o", str(tmp_path / "run"), "-q")
    assert code == 2 and message in err, err
    assert not (tmp_path / "run").exists()


def test_numbers_as_people_write_them(tmp_path, clean_env, capsys):
    """``sigma=1e-3`` is YAML 1.1 text; percepbench reads it as the number it is."""
    from percepbench.config import parse_name_args

    assert parse_name_args(["ssim:sigma=1e-3,k=5E+2,name=dino"], "--metric-args") == {
        "ssim": {"sigma": 0.001, "k": 500.0, "name": "dino"}}
    out = tmp_path / "run"
    code, _, err = cli(capsys, "run", "-m", "ssim", "--metric-args", "ssim:sigma=15e-1", "-o", str(out), "-q",
                       *SMALL)
    assert code == 0, err
    assert json.loads((out / RESULTS_FILE).read_text())["meta"]["config"]["metric_args"] == {"ssim": {"sigma": 1.5}}


def test_float64_and_half_inputs_reach_a_float32_network():
    from percepbench.metrics_registry.lpips_metric import LPIPSMetric

    metric = LPIPSMetric(net="alex", pretrained=False, reduction="none")
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 3, 32, 32, generator=gen), torch.rand(2, 3, 32, 32, generator=gen)
    ref = metric.pairwise(x, y)
    assert torch.allclose(metric.pairwise(x.double(), y.double()), ref, atol=1e-6)
    assert torch.allclose(metric.pairwise(x.half(), y.half()), ref, atol=5e-3)  # half rounding of the inputs


def test_one_bar_for_the_whole_run(tmp_path, clean_env, capsys):
    code, _, err = cli(capsys, "run", "-m", "psnr,ssim", "-o", str(tmp_path / "run"), *SMALL)
    assert code == 0
    assert "run: 100%" in err and "2/2" in err
    code, _, err = cli(capsys, "run", "-m", "psnr", "-o", str(tmp_path / "quiet"), "-q", *SMALL)
    assert code == 0 and "%|" not in err


def test_weights_path_answers_without_importing_torch(tmp_path):
    import subprocess
    import sys

    code = ("import sys; from percepbench.cli import main; rc = main(['weights', 'path']); "
            "assert 'torch' not in sys.modules, 'torch imported'; raise SystemExit(rc)")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TORCH_HOME": str(tmp_path / "th")}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert res.returncode == 0, res.stderr
    # the oracle: torch's own answer under the same environment
    oracle = subprocess.run([sys.executable, "-c", "import torch.hub; print(torch.hub.get_dir())"],
                            capture_output=True, text=True, env=env, check=True).stdout.strip()
    assert res.stdout.strip() == f"{oracle}/percepbench"


@pytest.mark.parametrize("argv, code, expected", [
    (["list"], 0, "lpips.alex"),
    (["list", "metrics"], 0, "dreamsim.ensemble"),
    (["list", "tasks"], 0, "nights"),
    (["run", "-m", "psnrr", "-t", "nights"], 2, "did you mean 'psnr'"),
    (["run", "-m", "psnr", "-t", "nigths"], 2, "did you mean 'nights'"),
    (["run", "-m", "psnr", "--metric-args", "ssimm:sigma=2"], 2, "did you mean 'ssim'"),
])
def test_list_and_name_errors_do_not_import_torch(tmp_path, argv, code, expected):
    """Every spec is readable without torch: `list` and misspelt names answer without loading it (or
    torchmetrics, piq or any network)."""
    import subprocess
    import sys

    script = ("import sys; from percepbench.cli import main; rc = main(sys.argv[1:]); "
              "heavy = [m for m in ('torch', 'torchmetrics', 'torchvision', 'piq', 'timm', 'lpips') if m in sys.modules]; "
              "assert not heavy, f'imported {heavy}'; raise SystemExit(rc)")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PERCEPBENCH_DATA": str(tmp_path / "data")}
    res = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, env=env,
                         check=False, timeout=120)
    assert res.returncode == code, res.stderr
    assert expected in res.stdout + res.stderr


def test_threads_option(tmp_path, clean_env, capsys):
    before = torch.get_num_threads()
    try:
        code, _, err = cli(capsys, "run", "-m", "psnr", "--threads", "1", "-o", str(tmp_path / "run"), "-q", *SMALL)
        assert code == 0, err
        assert torch.get_num_threads() == 1
        assert load_results(tmp_path / "run").meta["config"]["threads"] == 1
        code, _, err = cli(capsys, "run", "-m", "psnr", "--threads", "0", "-o", str(tmp_path / "r0"), "-q")
        assert code == 2 and "threads must be a positive integer" in err
    finally:
        torch.set_num_threads(before)


def test_random_weights_are_labelled_everywhere(tmp_path, clean_env, capsys):
    out = tmp_path / "run"
    code, stdout, err = cli(capsys, "run", "-m", "lpips.alex,psnr", "--metric-args", "lpips.alex:pretrained=false",
                            "-o", str(out), "-q", *SMALL)
    assert code == 0, err
    assert "lpips.alex (random weights)" in stdout and "psnr (random weights)" not in stdout
    meta = load_results(out).meta
    assert meta["random_weights"] == ["lpips.alex"]
    assert "lpips.alex" not in meta["weights"]  # random trunk and heads: no file of its spec was used
    report = (out / "report" / "report.md").read_text()
    assert "lpips.alex (random weights)" in report and "not the published metrics: lpips.alex" in report
    code, stdout, _ = cli(capsys, "compare", str(out), str(out))
    assert code == 0 and "computed lpips.alex with random weights" in stdout


def test_compare_says_when_settings_differ(tmp_path, clean_env, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli(capsys, "run", "-m", "ssim", "-o", str(a), "-q", *SMALL)[0] == 0
    assert cli(capsys, "run", "-m", "ssim", "--metric-args", "ssim:sigma=2", "--seed", "1", "-o", str(b), "-q",
               *SMALL)[0] == 0
    code, stdout, _ = cli(capsys, "compare", str(a), str(b))
    assert code in (0, 1)  # comparable runs (the gate's verdict on the rows does not matter here)
    assert "different metric options (none -> {'ssim': {'sigma': 2}})" in stdout
    assert "different seeds (0 -> 1)" in stdout


def test_errors_in_loader_workers_read_as_without_workers(tmp_path, clean_env, capsys, register_temp):
    """A PNG cut short after its header passes the header check and fails when a worker decodes it: the
    user sees the one-line message, in the console and in results.json, not torch's wrapped traceback."""
    from layouts import make_csv_table, png_bytes

    register_temp(MetricSpec(name="toy-meanabs", target="helpers_metrics:MeanAbs", description="x"))
    csv = make_csv_table(tmp_path / "t.csv", [{"ref": "r.png", "left": "a.png", "right": "b.png", "p": 1.0}],
                         images={"r.png": 100, "a.png": 110, "b.png": 150})
    data = png_bytes((10, 200, 30), 8, noise=40)
    (tmp_path / "b.png").write_bytes(data[: len(data) // 2])
    out = tmp_path / "run"
    code, _, err = cli(capsys, "run", "-m", "toy-meanabs", "-t", "2afc_csv", "--task-args", f"2afc_csv:path={csv}",
                       "--num-workers", "1", "-o", str(out), "-q", "--n-boot", "10")
    assert code == 2, err
    (failure,) = load_results(out).meta["failed"]
    assert failure["error"].startswith(f"DataError: {tmp_path / 'b.png'}: ")
    assert "Original Traceback" not in failure["error"] and "\n" not in failure["error"]
    assert "Original Traceback" not in err and "DataLoader worker" not in err


def test_resize_lets_native_size_metrics_run_on_mixed_sizes(tmp_path, clean_env, capsys, register_temp):
    """Flat images of two sizes: refused at native size, scored with --resize (a flat image stays flat, so the
    hand-computed distances hold: |100 - 110| / 255 and |100 - 150| / 255)."""
    from layouts import make_csv_table, write_png

    register_temp(MetricSpec(name="toy-meanabs", target="helpers_metrics:MeanAbs", description="x"))
    csv = make_csv_table(tmp_path / "t.csv", [{"ref": "r.png", "left": "a.png", "right": "b.png", "p": 0.0}],
                         images={"r.png": 100, "a.png": 110})
    write_png(tmp_path / "b.png", 150, 24)  # the others are 8 x 8
    args = ["run", "-m", "toy-meanabs", "-t", "2afc_csv", "--task-args", f"2afc_csv:path={csv}", "-q",
            "--n-boot", "10"]
    code, _, err = cli(capsys, *args, "-o", str(tmp_path / "native"))
    assert code == 2 and "differ in size" in err
    code, _, err = cli(capsys, *args, "--resize", "32x32", "-o", str(tmp_path / "resized"))
    assert code == 0, err
    res = load_results(tmp_path / "resized")
    sample = res.samples.iloc[0]
    assert sample["d0"] == pytest.approx(10 / 255) and sample["d1"] == pytest.approx(50 / 255)
    assert res.meta["protocol"][0]["resize"] == "32x32 bicubic (--resize)"
    code, _, err = cli(capsys, *args, "--resize", "32x16", "-o", str(tmp_path / "bad"))
    assert code == 2 and "square size" in err


def test_resize_per_metric_and_per_task(tmp_path, clean_env, capsys, register_temp):
    """``--resize NAME=SIZE``: the metric's entry wins over the task's, which wins over the run-wide size; each
    pair's protocol says which setting sized it. Distances of flat images are size-independent, so the
    hand-computed values hold whatever the size."""
    from layouts import make_csv_table, write_png

    register_temp(MetricSpec(name="toy-meanabs", target="helpers_metrics:MeanAbs", description="x"))
    register_temp(MetricSpec(name="toy-flipped", target="helpers_metrics:Flipped", description="x"))
    csv = make_csv_table(tmp_path / "t.csv", [{"ref": "r.png", "left": "a.png", "right": "b.png", "p": 0.0}],
                         images={"r.png": 100, "a.png": 110})
    write_png(tmp_path / "b.png", 150, 24)
    args = ["run", "-m", "toy-meanabs,toy-flipped", "-t", "2afc_csv", "--task-args", f"2afc_csv:path={csv}",
            "-q", "--n-boot", "10"]
    code, _, err = cli(capsys, *args, "--resize", "16", "--resize", "toy-meanabs=32", "--resize",
                       "task:2afc_csv=24", "-o", str(tmp_path / "run"))
    assert code == 0, err
    res = load_results(tmp_path / "run")
    protocol = {p["metric"]: p["resize"] for p in res.meta["protocol"]}
    assert protocol == {"toy-meanabs": "32x32 bicubic (--resize metric:toy-meanabs)",
                        "toy-flipped": "24x24 bicubic (--resize task:2afc_csv)"}
    assert res.meta["config"]["resize"] == 16
    assert res.meta["config"]["resize_for"] == {"metric:toy-meanabs": 32, "task:2afc_csv": 24}
    meanabs = res.samples[res.samples["metric"] == "toy-meanabs"].iloc[0]
    assert meanabs["d0"] == pytest.approx(10 / 255) and meanabs["d1"] == pytest.approx(50 / 255)


@pytest.mark.parametrize("value, message", [
    ("toy-meanabz=32", "did you mean 'toy-meanabs'"),
    ("dreamsim=256", "fixed input size"),
    ("metric:dists=0", "at least 8"),
    ("model:psnr=64", "prefix must be metric: or task:"),
])
def test_resize_entries_are_checked_before_anything_runs(tmp_path, clean_env, capsys, register_temp, value, message):
    register_temp(MetricSpec(name="toy-meanabs", target="helpers_metrics:MeanAbs", description="x"))
    out = tmp_path / "run"
    code, _, err = cli(capsys, "run", "-m", "toy-meanabs", "--resize", value, "-o", str(out), "-q")
    assert code == 2 and message in err, err
    assert not out.exists()


@pytest.mark.parametrize("problem", ["fifo", "huge"])
def test_fifos_and_huge_images_are_refused_naming_the_file(tmp_path, clean_env, capsys, register_temp, monkeypatch,
                                                           problem):
    import os

    from layouts import make_csv_table

    register_temp(MetricSpec(name="toy-meanabs", target="helpers_metrics:MeanAbs", description="x"))
    csv = make_csv_table(tmp_path / "t.csv", [{"ref": "r.png", "left": "a.png", "right": "b.png", "p": 1.0}],
                         images={"r.png": 100, "a.png": 110, "b.png": 150})
    if problem == "fifo":
        (tmp_path / "b.png").unlink()
        os.mkfifo(tmp_path / "b.png")  # opening it to read would block for ever
        expected = "a FIFO, not a regular image file"
    else:
        monkeypatch.setenv("PERCEPBENCH_MAX_PIXELS", "50")  # the 8 x 8 test images have 64
        expected = "8x8 = 64 pixels is above percepbench's limit of 50 ($PERCEPBENCH_MAX_PIXELS raises it)"
    code, _, err = cli(capsys, "run", "-m", "toy-meanabs", "-t", "2afc_csv", "--task-args", f"2afc_csv:path={csv}",
                       "-o", str(tmp_path / "run"), "-q")
    assert code == 2 and expected in err and str(tmp_path / ("b.png" if problem == "fifo" else "r.png")) in err, err


@pytest.mark.parametrize(("text", "message"), [
    ("batch_size: many\n", "setting 'batch_size' must be an integer, got 'many' (str)"),
    ("resume: 1\n", "setting 'resume' must be true or false, got 1 (int)"),
    ("batchsize: 3\n", "unknown settings batchsize (did you mean batch_size?)"),
])
def test_config_files_with_wrong_types_name_the_file_and_key(tmp_path, clean_env, capsys, text, message):
    config = tmp_path / "run.yaml"
    config.write_text(text)
    code, _, err = cli(capsys, "run", "-c", str(config), "-o", str(tmp_path / "run"), "-q")
    assert code == 2 and f"{config}: {message}" in err, err
    assert not (tmp_path / "run").exists()


def test_list_shows_options_with_types_and_defaults(clean_env, capsys):
    code, out, _ = cli(capsys, "list", "tasks", "--options", "-p", "severity2afc")
    assert code == 0 and "options: per_family: int = 32, size: int = 128" in out
    code, out, _ = cli(capsys, "list", "metrics", "--options", "-p", "ssim")
    assert code == 0 and "options: sigma: float = 1.5, validate_args: bool = True" in out
    assert "dist_sync_on_step" not in out and "reduction" not in out  # torchmetrics' internals stay hidden


def test_option_values_a_metric_rejects_fail_before_anything_runs(tmp_path, clean_env, capsys):
    code, _, err = cli(capsys, "run", "-m", "ssim", "--metric-args", "ssim:sigma=0", "-o", str(tmp_path / "run"), "-q",
                       *SMALL)
    assert code == 2 and "metric 'ssim' with options {'sigma': 0} fails on a test pair" in err, err
    assert not (tmp_path / "run").exists()


def test_list_shows_each_task_data_status(tmp_path, clean_env, capsys, monkeypatch):
    from layouts import make_things

    monkeypatch.setenv("PERCEPBENCH_DATA", str(tmp_path / "data"))
    make_things(tmp_path / "data" / "things", {"a": 10, "b": 20, "c": 200}, ["a b c"])
    code, out, _ = cli(capsys, "list", "tasks")
    assert code == 0
    assert f"data present in {tmp_path / 'data'}" in out.split("things ", 1)[1].split("\n  ")[1]
    assert f"`percepbench data download nights --root {tmp_path / 'data'}`" in out


def test_nan_gradient_notes_are_true():
    """Every offline metric: its gradient on identical and on flat images is NaN exactly where its spec's
    ``nan_gradient`` says (torch's autograd is the oracle)."""
    from percepbench.config import RunConfig
    from percepbench.runner import select_metrics

    gen = torch.Generator().manual_seed(0)
    cases = {"identical images": torch.rand(1, 3, 64, 64, generator=gen), "flat images": torch.full((1, 3, 64, 64), 0.5)}
    checked = 0
    for spec in select_metrics(RunConfig()):
        if spec.name == "piq.iw_ssim":
            continue  # refuses flat images outright (a ValueError that says so)
        metric = spec.create(reduction="none")
        for case, image in cases.items():
            x = image.clone().requires_grad_(True)
            metric.pairwise(x, image.clone()).sum().backward()
            nan = x.grad is None or not torch.isfinite(x.grad).all()
            assert nan == (case in spec.nan_gradient), (spec.name, case, spec.nan_gradient)
            checked += 1
    assert checked >= 28


def test_fetch_gets_what_a_run_needs_or_says_what_failed(tmp_path, clean_env, capsys, monkeypatch):
    code, _, _ = cli(capsys, "fetch", "-m", "psnr", "-t", "severity2afc", "-q")
    assert code == 0  # nothing to fetch
    monkeypatch.setenv("PERCEPBENCH_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    code, _, err = cli(capsys, "fetch", "-m", "lpips.alex", "-t", "nights,severity2afc", "--data-root",
                         str(tmp_path / "data"), "-q")
    assert code == 1
    assert "FAILED weights lpips.alex: cannot download 1 weight file(s): offline mode is on" in err
    assert "alexnet-owt-7be5be79.pth" in err and "FAILED data nights: " in err and "nights.zip" in err


def test_the_missing_message_gives_the_fetch_command(tmp_path, clean_env, needs, capsys):
    code, _, err = cli(capsys, "run", "-m", "toy-needs", "-t", "nights", "--data-root", str(tmp_path / "d"), "-q",
                       "-o", str(tmp_path / "run"))
    assert code == 1
    assert f"Or fetch all of it at once: percepbench fetch -m toy-needs -t nights --data-root {tmp_path / 'd'}" in err
