"""``benchmarks/memory_scale.py`` at a tiny size: it runs as a user runs it, and what it writes is consistent
with what the test counts itself (rows of the tables it generated, the run directories' samples), and the
runner's distances it measured are the PSNR of the files (numpy oracle). No timed or memory assertions."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "memory_scale.py"


@pytest.mark.slow
def test_memory_benchmark_runs_and_reports_every_size(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    done = subprocess.run([sys.executable, str(SCRIPT), "--sizes", "40,90", "--pool", "25", "--n-boot", "20",
                           "--out", str(out), "--workdir", str(work), "--runs", "2"],
                          capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "memory_scale.json").read_text())
    assert [r["triplets"] for r in result["runs"]] == [40, 90]
    assert len(list((work / "images").glob("*.png"))) == 25
    for run in result["runs"]:
        n = run["triplets"]
        table = pd.read_csv(work / f"triplets_{n}.csv")
        assert len(table) == n and run["samples"] == n
        assert run["peak_rss_mb"] > 0 and run["seconds"] > 0
        assert len(run["runs"]) == 2 and [r["triplets"] for r in run["runs"]] == [n, n]
        assert run["seconds"] == pytest.approx(statistics.median(r["seconds"] for r in run["runs"]))
        assert run["ranges"]["peak_rss_mb"] == [min(r["peak_rss_mb"] for r in run["runs"]),
                                                max(r["peak_rss_mb"] for r in run["runs"])]
        samples = pd.read_parquet(work / f"run_{n}" / "samples.parquet")
        row = samples.iloc[0]
        ref, left = (np.asarray(Image.open(work / p), dtype=np.float64) / 255 for p in (row["ref"], row["left"]))
        psnr = 10 * np.log10(1 / np.mean((ref - left) ** 2))
        assert row["d0"] == pytest.approx(-psnr, rel=1e-5)  # the psnr metric's distance is -PSNR
    md = (out / "memory_scale.md").read_text()
    assert "| 40 |" in md and "| 90 |" in md and "Median of 2 runs per size" in md
    assert result["environment"]["cpu_model"] in md  # the CPU is recorded with the numbers
