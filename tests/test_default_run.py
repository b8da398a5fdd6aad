"""`percepbench run` with no arguments: every offline metric on the built-in benchmark."""

from __future__ import annotations

import os
import subprocess

import pytest

from percepbench.registry import METRICS
from percepbench.results import load_results
from percepbench.weights import usable_offline

from conftest import PYTHON


@pytest.mark.slow
def test_default_run_end_to_end(tmp_path):
    env = dict(os.environ, PERCEPBENCH_CACHE=str(tmp_path / "cache"))
    res = subprocess.run([PYTHON, "-m", "percepbench.cli", "run", "--quiet"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert f"results: {run_dir.relative_to(tmp_path)}" in res.stdout
    results = load_results(run_dir)
    assert results.complete and not results.meta["failed"]
    expected = {s.name for s in METRICS.specs() if usable_offline(s)}
    assert set(results.records["metric"]) == expected
    pooled = results.records[results.records["subset"] == "all"].set_index("metric")["value"]
    # the proxy labels are easy for pixel metrics: PSNR and SSIM agree with them most of the time
    assert pooled["psnr"] > 85 and pooled["ssim"] > 85
    assert (pooled > 60).all(), pooled
    assert results.records["n"].max() == 256
