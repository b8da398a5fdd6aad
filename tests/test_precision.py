"""`percepbench run --precision bf16|fp16`: metrics run under torch.autocast, the precision is recorded,
keys the embedding cache, and shows up in reports and comparisons. The runs use ``PERCEPBENCH_TEST_DEVICE``
(default cpu: CPU autocast; ``cuda``: CUDA autocast); ``precision_context`` is checked on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_embed_cache import write_2afc_csv

from percepbench.cli import main
from percepbench.config import RunConfig
from percepbench.errors import UsageError
from percepbench.reports.compare import compare_runs
from percepbench.results import load_results
from percepbench.runner import precision_context
from percepbench.specs import InputConvention, MetricSpec

from conftest import TEST_DEVICE
from helpers_metrics import LinearEmbed

FAST = ["--n-boot", "20", "-q", "--num-workers", "0", "--device", TEST_DEVICE]


@pytest.fixture
def linear(register_temp):
    conv = InputConvention(size=16, interpolation="bilinear")
    register_temp(MetricSpec(name="toy-linear", target="helpers_metrics:LinearEmbed", description="t", inputs=conv))
    register_temp(MetricSpec(name="toy-linear-pairwise", target="helpers_metrics:LinearEmbedPairwise",
                             description="t", inputs=conv))
    LinearEmbed.seen_dtypes = set()


def run(capsys, *args):
    code = main(["run", *args, *FAST])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def distances(run_dir, metric):
    s = load_results(run_dir).samples
    return s[s["metric"] == metric][["d0", "d1"]].to_numpy()


@pytest.mark.parametrize("metric", ["toy-linear", "toy-linear-pairwise"])  # embedding path and pairwise path
def test_bf16_runs_under_autocast_and_is_recorded(capsys, tmp_path, clean_env, linear, metric):
    csv = write_2afc_csv(tmp_path)
    common = ["-m", metric, "-t", "2afc_csv", "--task-args", f"2afc_csv:path={csv}", "--no-embed-cache"]
    run(capsys, *common, "-o", str(tmp_path / "fp32"))
    assert LinearEmbed.seen_dtypes == {torch.float32}
    LinearEmbed.seen_dtypes = set()
    run(capsys, *common, "--precision", "bf16", "-o", str(tmp_path / "bf16"))
    assert LinearEmbed.seen_dtypes == {torch.bfloat16}

    fp32, bf16 = load_results(tmp_path / "fp32"), load_results(tmp_path / "bf16")
    assert fp32.meta["precision"] == "fp32" and bf16.meta["precision"] == "bf16"
    assert bf16.meta["config"]["precision"] == "bf16"
    a, b = distances(tmp_path / "fp32", metric), distances(tmp_path / "bf16", metric)
    assert np.isfinite(b).all()
    np.testing.assert_allclose(b, a, atol=0.05)

    # the comparison and the report say which precision each run used
    comparison = compare_runs(tmp_path / "fp32", tmp_path / "bf16")
    assert ("precision", "fp32", "bf16") in comparison.header()
    assert any("different precision (fp32 -> bf16)" in note for note in comparison.notes)
    assert not compare_runs(tmp_path / "fp32", tmp_path / "fp32").notes
    md = (tmp_path / "bf16" / "report" / "report.md").read_text()
    assert "precision bf16" in md
    assert "precision" not in (tmp_path / "fp32" / "report" / "report.md").read_text().split("\n")[2]
    assert "<dt>precision</dt><dd>bf16</dd>" in (tmp_path / "bf16" / "report" / "report.html").read_text()


def test_fp16_autocast_on_cpu(capsys, tmp_path, clean_env, linear):
    csv = write_2afc_csv(tmp_path)
    run(capsys, "-m", "toy-linear", "-t", "2afc_csv", "--task-args", f"2afc_csv:path={csv}", "--no-embed-cache",
        "--precision", "fp16", "--no-report", "-o", str(tmp_path / "r"))
    assert LinearEmbed.seen_dtypes == {torch.float16}
    assert load_results(tmp_path / "r").meta["precision"] == "fp16"


def test_embedding_cache_is_keyed_on_precision(capsys, tmp_path, clean_env, linear):
    csv = write_2afc_csv(tmp_path)
    common = ["-m", "toy-linear", "-t", "2afc_csv", "--task-args", f"2afc_csv:path={csv}", "--no-report",
              "--embed-cache", str(tmp_path / "cache")]

    def embedding_stats(out):
        return next(p for p in load_results(out).meta["protocol"])["embedding"]

    run(capsys, *common, "-o", str(tmp_path / "a"))
    run(capsys, *common, "--precision", "bf16", "-o", str(tmp_path / "b"))
    run(capsys, *common, "--precision", "bf16", "-o", str(tmp_path / "c"))
    run(capsys, *common, "-o", str(tmp_path / "d"))
    a, b, c, d = (embedding_stats(tmp_path / k) for k in "abcd")
    assert (a["embedded"], b["embedded"], c["embedded"], d["embedded"]) == (4, 4, 0, 0)  # fp32 never serves bf16
    assert a["cache"] == d["cache"] and b["cache"] == c["cache"] and a["cache"] != b["cache"]
    np.testing.assert_array_equal(distances(tmp_path / "b", "toy-linear"), distances(tmp_path / "c", "toy-linear"))


def test_dreamsim_bf16_run_stays_close_to_fp32(capsys, tmp_path, clean_env):
    """The real DreamSim patch-free DINO branch (random weights) on the embedding path, fp32 vs bf16."""
    csv = write_2afc_csv(tmp_path)
    common = ["-m", "dreamsim.dino_vitb16", "-t", "2afc_csv", "--task-args", f"2afc_csv:path={csv}",
              "--metric-args", "dreamsim.dino_vitb16:pretrained=false", "--no-embed-cache", "--no-report"]
    torch.manual_seed(0)
    run(capsys, *common, "-o", str(tmp_path / "fp32"))
    run(capsys, *common, "--precision", "bf16", "-o", str(tmp_path / "bf16"))
    a = distances(tmp_path / "fp32", "dreamsim.dino_vitb16")
    b = distances(tmp_path / "bf16", "dreamsim.dino_vitb16")
    assert np.isfinite(b).all() and not np.array_equal(a, b)  # bf16 really ran, and stays close
    np.testing.assert_allclose(b, a, atol=0.03)


def test_bad_precision_is_a_usage_error(capsys, tmp_path, clean_env):
    with pytest.raises(SystemExit) as exc:
        main(["run", "--precision", "int4"])
    assert exc.value.code == 2 and "invalid choice: 'int4'" in capsys.readouterr().err
    config = tmp_path / "run.yaml"
    config.write_text("precision: int4\n")
    assert main(["run", "-c", str(config), "-o", str(tmp_path / "out")]) == 2
    assert "precision must be one of fp32, bf16, fp16, int8, got 'int4'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert RunConfig(precision=" BF16 ").precision == "bf16"


def test_precision_context():
    assert precision_context(torch.device("cpu"), "fp32").__class__.__name__ == "nullcontext"
    with precision_context(torch.device("cpu"), "bf16"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    with pytest.raises(UsageError, match="no autocast for device 'meta'"):
        precision_context(torch.device("meta"), "bf16")


def test_classical_metrics_compute_in_fp32_inside_a_bf16_run(capsys, tmp_path, clean_env, linear):
    """piq's IW-SSIM gives NaN for most items under CPU bf16 autocast, VIF and FSIM under fp16: the classical
    metrics' specs declare fp32 only, so the runner computes them in fp32 inside the autocast run (finite, and
    the fp32 run's values), and the protocol records the precision each metric computed in."""
    metrics = "piq.iw_ssim,piq.vif,piq.fsim,ms_ssim,toy-linear-pairwise"
    common = ["-m", metrics, "-t", "severity2afc", "--task-args", "severity2afc:per_family=3,size=64",
              "--no-report", "--no-embed-cache", "--device", "cpu"]
    run(capsys, *common, "-o", str(tmp_path / "fp32"))
    for precision in ("bf16", "fp16"):
        run(capsys, *common, "--precision", precision, "-o", str(tmp_path / precision))
        res = load_results(tmp_path / precision)
        assert not res.meta["failed"]
        computed = {p["metric"]: p["precision"] for p in res.meta["protocol"]}
        assert computed == {"piq.iw_ssim": "fp32", "piq.vif": "fp32", "piq.fsim": "fp32", "ms_ssim": "fp32",
                            "toy-linear-pairwise": precision}
        for metric in ("piq.iw_ssim", "piq.vif", "piq.fsim", "ms_ssim"):
            a, b = distances(tmp_path / "fp32", metric), distances(tmp_path / precision, metric)
            assert np.isfinite(b).all(), metric
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=metric)
    assert {p["precision"] for p in load_results(tmp_path / "fp32").meta["protocol"]} == {"fp32"}
