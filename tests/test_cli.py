"""The command line: exit codes, flags vs config files, the results directory, interruption."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch

from percepbench.cli import main
from percepbench.metrics_registry.base import DistanceMetric
from percepbench.results import RESULTS_FILE, load_results
from percepbench.specs import MetricSpec

from conftest import PYTHON, TEST_DEVICE

FAST = ["--task-args", "severity2afc:per_family=3,size=48", "--n-boot", "50", "-q", "--device", TEST_DEVICE]


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
    assert meta["device"] == str(torch.device(TEST_DEVICE)) and meta["metrics"]["ssim"]["distance"] == "1 - SSIM"
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
        (["--task-args", "severity2afc:colour=1"], "task 'severity2afc': unknown option 'colour'; its options: "),
        (["--task-args", "severity2afc:per_family=0"], "per_family must be >= 1"),
        (["--metric-args", "psnr:bogus=1"], "metric 'psnr': unknown option 'bogus'; its options: validate_args"),
        (["-m", "ms_ssim", "--metric-args", "ms_ssim:scales=9"], "scales must be 'auto' or an integer 1..5"),
        (["--config", "/no/such/file.yaml"], "cannot read config file"),
        (["--device", "gpu-please"], "invalid device"),
        (["--task-args", "severity2afc:families=blur;noise"], "unknown distortion families ['blur;noise']"),
        (["--task-args", "severity2afc:families=blur,noise"], "expects NAME:KEY=VALUE"),
    ],
)
def test_bad_input_exit_2(args, message, capsys, tmp_path):
    code, _, err = run_cli(capsys, "run", "-m", "psnr", "-o", str(tmp_path / "r"), *FAST, *args)
    assert code == 2 and message in err, err
    assert not (tmp_path / "r").exists(), "a usage error must not leave a run directory"


def test_cuda_requested_without_cuda_is_usage_error(capsys, tmp_path, monkeypatch):
    """On any machine: where CUDA is not available, ``--device cuda:0`` is a usage error naming it."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run_cli(capsys, "run", "-m", "psnr", "-o", str(tmp_path / "r"), *FAST, "--device", "cuda:0")
    assert code == 2 and "CUDA is not available" in err, err
    assert not (tmp_path / "r").exists()


def test_config_file_and_flags_override(capsys, tmp_path, clean_env):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("metrics: [psnr, ssim]\nseed: 3\nbatch_size: 4\ntask_args:\n  severity2afc: {per_family: 2, size: 48}\n")
    out = tmp_path / "r1"
    # --device cpu: the automatic num_workers checked below is the CPU's
    assert run_cli(capsys, "run", "-c", str(cfg), "-o", str(out), "-q", "--n-boot", "20", "--device", "cpu")[0] == 0
    meta = load_results(out).meta
    assert meta["config"]["metrics"] == ["psnr", "ssim"] and meta["seed"] == 3
    assert meta["config"]["batch_size"] == 4
    assert meta["config"]["num_workers"] == 0  # automatic on the CPU: 0, and the record says so

    toml = tmp_path / "run.toml"
    toml.write_text('metrics = ["ssim"]\nseed = 3\n[task_args.severity2afc]\nper_family = 2\nsize = 48\n')
    out2 = tmp_path / "r2"
    code = run_cli(capsys, "run", "-c", str(toml), "-o", str(out2), "-q", "--n-boot", "20", "--metrics", "psnr",
                   "--seed", "9", "--task-args", "severity2afc:per_family=1", "--device", TEST_DEVICE)[0]
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
        ("unknown.yaml", "metricz: [psnr]\n", "unknown settings metricz (did you mean metrics?)"),
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


# -- list options: one separator ('+') for every task and metric, from flags and from config files ---------

class ChannelWeightedL1(DistanceMetric):
    """Mean over pixels and channels of ``w_c * |x - y|``: a toy metric with a list option (one weight, or
    one per channel). Registered by the tests below as ``test_cli:ChannelWeightedL1``."""

    def __init__(self, weights: tuple[float, ...] = (1.0, 1.0, 1.0), **kwargs) -> None:
        super().__init__(**kwargs)
        if not isinstance(weights, (list, tuple)) or len(weights) not in (1, 3):
            raise ValueError(f"weights must be 1 or 3 numbers, got {weights!r}")
        self.weights = tuple(float(w) for w in weights)

    def distance(self, preds, target):
        w = torch.tensor(self.weights, dtype=preds.dtype, device=preds.device).view(1, -1, 1, 1)
        return (w * (preds - target).abs()).flatten(1).mean(1)


def severity_subsets(run_dir) -> set[str]:
    return set(load_results(run_dir).records["subset"]) - {"all"}


def test_task_list_option_from_the_command_line(capsys, tmp_path, clean_env):
    """``families=blur+noise`` selects two families, ``families=jpeg`` one (a one-item list)."""
    fast = ["-m", "psnr", "-q", "--n-boot", "20", "--device", TEST_DEVICE]
    code, _, err = run_cli(capsys, "run", *fast, "-o", str(tmp_path / "two"),
                           "--task-args", "severity2afc:families=blur+noise,per_family=2,size=32")
    assert code == 0, err
    res = load_results(tmp_path / "two")
    assert severity_subsets(tmp_path / "two") == {"blur", "noise"} and len(res.samples) == 4
    assert res.meta["config"]["task_args"] == {"severity2afc": {"families": ["blur", "noise"], "per_family": 2,
                                                                "size": 32}}
    code, _, err = run_cli(capsys, "run", *fast, "-o", str(tmp_path / "one"),
                           "--task-args", "severity2afc:families=jpeg,per_family=2,size=32")
    assert code == 0, err
    assert severity_subsets(tmp_path / "one") == {"jpeg"}
    assert load_results(tmp_path / "one").meta["config"]["task_args"]["severity2afc"]["families"] == ["jpeg"]


@pytest.mark.parametrize(("name", "content"), [
    ("list.yaml", "task_args:\n  severity2afc: {families: [rotate, noise], per_family: 1, size: 32}\n"),
    ("plus.yaml", "task_args:\n  severity2afc: {families: rotate+noise, per_family: 1, size: 32}\n"),
    ("list.toml", '[task_args.severity2afc]\nfamilies = ["rotate", "noise"]\nper_family = 1\nsize = 32\n'),
], ids=["yaml-list", "yaml-plus", "toml-list"])
def test_task_list_option_from_config_files(name, content, capsys, tmp_path, clean_env):
    """A config file may give a real list or the same ``+``-joined string as the command line."""
    cfg = tmp_path / name
    cfg.write_text(content)
    out = tmp_path / "r"
    code, _, err = run_cli(capsys, "run", "-c", str(cfg), "-m", "psnr", "-o", str(out), "-q", "--n-boot", "20",
                           "--device", TEST_DEVICE)
    assert code == 0, err
    assert severity_subsets(out) == {"rotate", "noise"}
    assert load_results(out).meta["config"]["task_args"]["severity2afc"]["families"] == ["rotate", "noise"]


@pytest.fixture
def weighted_l1(register_temp, tmp_path):
    """The toy metric, and a 2AFC CSV in a folder whose name holds '+' (``path`` is not a list option):
    reference black, left pure red, right pure blue; ``p`` (right closer) = 1 and 0.75."""
    from PIL import Image

    register_temp(MetricSpec(name="toy-weighted-l1", target="test_cli:ChannelWeightedL1", description="t"))
    folder = tmp_path / "judgments+extra"
    folder.mkdir()
    for name, rgb in (("black", (0, 0, 0)), ("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        Image.new("RGB", (8, 8), rgb).save(folder / f"{name}.png")
    csv = folder / "triplets.csv"
    csv.write_text("ref,left,right,p\nblack.png,red.png,blue.png,1\nblack.png,red.png,blue.png,0.75\n")
    return csv


@pytest.mark.parametrize(("weights", "d0", "d1", "score"), [
    # d = mean over the 3 channels of w_c * |difference|; red differs from black in channel 0, blue in 2
    ("1+0+0", 1 / 3, 0.0, (1 + 0.75) / 2 * 100),  # right closer: scores p
    ("0+0+1", 0.0, 1 / 3, (0 + 0.25) / 2 * 100),  # left closer: scores 1 - p
    ("2", 2 / 3, 2 / 3, 50.0),  # one value: a one-item list, both sides weighted alike -> ties score 0.5
])
def test_metric_list_option_from_the_command_line(weights, d0, d1, score, capsys, tmp_path, clean_env,
                                                  weighted_l1):
    out = tmp_path / "r"
    code, _, err = run_cli(capsys, "run", "-m", "toy-weighted-l1", "-t", "2afc_csv", "-o", str(out), "-q",
                           "--n-boot", "20", "--no-report", "--device", TEST_DEVICE,
                           "--task-args", f"2afc_csv:path={weighted_l1}",
                           "--metric-args", f"toy-weighted-l1:weights={weights}")
    assert code == 0, err
    res = load_results(out)
    np.testing.assert_allclose(res.samples["d0"], [d0, d0], atol=1e-6)
    np.testing.assert_allclose(res.samples["d1"], [d1, d1], atol=1e-6)
    assert res.records["value"].tolist() == pytest.approx([score])
    assert res.meta["config"]["task_args"] == {"2afc_csv": {"path": str(weighted_l1)}}  # '+' kept in a path


def test_which_options_take_lists():
    """The rule, on annotations written as text (``from __future__ import annotations``, as in this file)
    and as objects."""
    import typing

    from percepbench.config import list_options

    def factory(a: str | list[str] | None = None, b: tuple[float, float] = (0, 1), c: str = "x",
                d: typing.Literal["list", "tuple"] = "list", e=(1, 2), f=None, g: int = 3, **kwargs):
        """A factory with annotations kept as source text."""

    assert list_options(factory) == {"a", "b", "e"}

    def typed(a, b, c, d, e=(1, 2), f=None, g=3, **kwargs):
        """The same options with annotation objects."""

    typed.__annotations__ = {"a": str | list[str] | None, "b": typing.Sequence[float], "c": str,
                             "d": typing.Literal["list", "tuple"], "g": int}
    assert list_options(typed) == {"a", "b", "e"}
    assert list_options(ChannelWeightedL1) == {"weights"}
    assert list_options(len) == set()  # a builtin without an introspectable signature: no list options
