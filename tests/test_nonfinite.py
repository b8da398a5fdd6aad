"""A non-finite distance is never scored (issue 12, item 5).

The runner checks every distance column of a (task, metric) pair before scoring: a NaN or infinite value
fails that pair (``meta.failed`` names the items and the likely cause), and no record or sample is written
for it. The scoring functions refuse non-finite distances themselves as well. Classical metrics (spec
``precisions=("fp32",)``) compute in fp32 inside a bf16/fp16 run, where piq's indices otherwise give NaN.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from test_embed_cache import write_2afc_csv

from percepbench import create_metric
from percepbench.cli import main
from percepbench.registry import METRICS
from percepbench.results import load_results
from percepbench.runner import NonFiniteDistances, check_finite_distances
from percepbench.specs import InputConvention, MetricSpec
from percepbench.stats import jnd_average_precision
from percepbench.tasks.base import score_2afc
from percepbench.tasks.things import score_odd_one_out

FAST = ["--n-boot", "20", "-q", "--num-workers", "0", "--device", "cpu", "--no-report", "--no-embed-cache"]
THRESHOLD = 0.48  # write_2afc_csv: three of its six triplets have a pair farther apart than this


@pytest.fixture
def nan_metric(register_temp):
    register_temp(MetricSpec(name="toy-mean", target="helpers_metrics:MeanAbs", description="t"))
    register_temp(MetricSpec(name="toy-nan", target="helpers_metrics:NaNAbove", description="t"))


def run_toys(capsys, tmp_path, *extra):
    csv = write_2afc_csv(tmp_path)
    out = tmp_path / "run"
    code = main(["run", "-m", "toy-mean,toy-nan", "-t", "2afc_csv", "--task-args", f"2afc_csv:path={csv}",
                 "--metric-args", f"toy-nan:threshold={THRESHOLD}", *extra, "-o", str(out), *FAST])
    return code, capsys.readouterr().err, load_results(out)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_nonfinite_distances_fail_the_pair_and_write_no_record(capsys, tmp_path, clean_env, nan_metric, value):
    code, err, res = run_toys(capsys, tmp_path, "--metric-args", f"toy-nan:value={value}")
    assert code == 1, err
    # the oracle: toy-mean gives the same distances where they are finite (toy-nan = toy-mean below the threshold)
    mean = res.samples[res.samples["metric"] == "toy-mean"]
    bad = mean.loc[(mean["d0"] > THRESHOLD) | (mean["d1"] > THRESHOLD), "item"].tolist()
    assert 0 < len(bad) < len(mean)
    (failure,) = res.meta["failed"]
    assert (failure["task"], failure["metric"], failure["kind"]) == ("2afc_csv", "toy-nan", "failure")
    message = failure["error"]
    assert message.startswith("NonFiniteDistances: ")
    assert f"{len(bad)} of {len(mean)} items have a non-finite distance" in message
    assert "items " + ", ".join(bad) in message
    word = "NaN" if value == "nan" else "infinite"
    assert f"d0: 1 {word}" in message and f"d1: 2 {word}" in message  # by hand from write_2afc_csv
    assert "not scored" in message and "precision fp32" in message and "input images" in message
    # nothing of toy-nan is scored; toy-mean is complete
    assert set(res.records["metric"]) == {"toy-mean"} and set(res.samples["metric"]) == {"toy-mean"}
    assert [p["metric"] for p in res.meta["protocol"]] == ["toy-mean"]
    assert res.complete
    assert "FAILED toy-nan on 2afc_csv: NonFiniteDistances: toy-nan: " in err and bad[0] in err


def test_nonfinite_under_autocast_names_the_precision(capsys, tmp_path, clean_env, nan_metric):
    code, _, res = run_toys(capsys, tmp_path, "--precision", "bf16")
    assert code == 1
    (failure,) = res.meta["failed"]
    assert "under --precision bf16 (torch.autocast)" in failure["error"]
    assert "--precision fp32" in failure["error"]


def test_check_finite_distances_names_the_first_items_and_counts():
    items = pd.DataFrame({"item": [f"i{k:03d}" for k in range(100)]})
    d0 = np.zeros(100)
    d0[[3, 10, 20, 30, 40, 50, 60, 70]] = np.nan
    d1 = np.ones(100)
    d1[[10, 99]] = np.inf
    check_finite_distances({"d0": np.zeros(100)}, items, metric="m", precision="fp32", computed_in="fp32")
    with pytest.raises(NonFiniteDistances) as exc:
        check_finite_distances({"d0": d0, "d1": d1}, items, metric="m", precision="bf16", computed_in="bf16")
    message = str(exc.value)
    assert isinstance(exc.value, ValueError)
    assert message.startswith("m: 9 of 100 items have a non-finite distance (d0: 8 NaN; d1: 2 infinite)")
    assert "items i003, i010, i020, i030, i040, ... (9 in all)" in message
    assert "i050" not in message


def test_scoring_functions_refuse_nonfinite_distances():
    for bad in (np.nan, np.inf):
        with pytest.raises(ValueError, match=r"2AFC distances .*non-finite.*item 1"):
            score_2afc(np.array([0.1, bad]), np.array([0.2, 0.3]), np.array([0.0, 1.0]))
        with pytest.raises(ValueError, match=r"2AFC distances .*non-finite"):
            score_2afc(np.array([0.1, 0.2]), np.array([bad, 0.3]), np.array([0.0, 1.0]))
        with pytest.raises(ValueError, match=r"odd-one-out distances .*non-finite"):
            score_odd_one_out(np.array([0.1]), np.array([0.2]), np.array([bad]))
        with pytest.raises(ValueError, match=r"JND distances .*non-finite"):
            jnd_average_precision(np.array([0.1, bad]), np.array([1.0, 0.0]))


# ----------------------------------------------------------------------------- classical metrics in fp32


CLASSICAL = ["psnr", "ssim", "ms_ssim"] + [f"piq.{i}" for i in
                                           ("psnr", "ssim", "ms_ssim", "iw_ssim", "vif", "fsim", "srsim", "gmsd",
                                            "ms_gmsd", "vsi", "dss", "haarpsi", "mdsi")]


def test_classical_specs_declare_fp32_only():
    for name in CLASSICAL:
        assert METRICS.get(name).precisions == ("fp32",), name
    assert METRICS.get("lpips.alex").precisions == ("fp32", "bf16", "fp16")
    with pytest.raises(ValueError, match="precisions must include 'fp32'"):
        MetricSpec(name="x", target="a:b", description="t", precisions=("bf16",))
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        MetricSpec(name="x", target="a:b", description="t", precisions=("fp32", "fp8"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_piq_metric_under_user_autocast_computes_in_fp32(dtype):
    """Through the Python API inside the caller's own autocast region: the same values as without it."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 64, 64, generator=g)
    y = (x + 0.2 * torch.rand(4, 3, 64, 64, generator=g)).clamp(0, 1)
    metric = create_metric("piq.iw_ssim", reduction="none")
    ref = metric(x, y)
    metric.reset()
    with torch.autocast("cpu", dtype=dtype):
        assert metric.computes_in("bf16" if dtype == torch.bfloat16 else "fp16") == "fp32"
        got = metric(x, y)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    torch.testing.assert_close(got, ref)


def test_a_metric_that_supports_autocast_still_uses_it():
    m = MetricSpec(name="x", target="helpers_metrics:MeanAbs", description="t").create(reduction="none")
    assert m.computes_in("bf16") == "bf16" and m.computes_in("fp16") == "fp16" and m.computes_in("fp32") == "fp32"
    assert m.computes_in("int8") == "fp32"  # int8 is opt-in per class (DistanceMetric.quantizable)
    with pytest.raises(ValueError, match="int4"):
        m.computes_in("int4")


def test_nan_embeddings_fail_the_pair_and_are_never_cached(capsys, tmp_path, clean_env, register_temp):
    register_temp(MetricSpec(name="toy-nan-embed", target="helpers_metrics:NaNEmbed", description="t",
                             inputs=InputConvention(size=16, interpolation="bilinear")))
    csv = write_2afc_csv(tmp_path)
    cache = tmp_path / "cache"
    args = ["run", "-m", "toy-nan-embed", "-t", "2afc_csv", "--task-args", f"2afc_csv:path={csv}",
            "--embed-cache", str(cache), "--n-boot", "20", "-q", "--num-workers", "0", "--device", "cpu",
            "--no-report"]
    assert main([*args, "-o", str(tmp_path / "run")]) == 1
    res = load_results(tmp_path / "run")
    (failure,) = res.meta["failed"]
    assert "toy-nan-embed: 6 of 6 items have a non-finite distance (d0: 6 NaN; d1: 6 NaN)" in failure["error"]
    assert res.records.empty and res.samples is None
    assert not list(cache.rglob("*.npy"))  # the next run embeds again instead of reading NaN back
    capsys.readouterr()
