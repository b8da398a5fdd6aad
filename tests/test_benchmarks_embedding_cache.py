"""``benchmarks/embedding_cache.py`` at a tiny size (2 triplets, 2 rounds): it runs as a user runs it, every
path embeds what the test counts itself (4 images per triplet pairwise, 3 unique files per triplet on the
embedding path, none with a warm cache), each row's median and spread are those of its rounds, and the CPU
it records is the one ``/proc/cpuinfo`` names. No timed assertions."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "embedding_cache.py"
TRIPLETS, RUNS = 2, 2


def _cpuinfo_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


@pytest.mark.slow
def test_embedding_cache_benchmark_counts_rounds_and_cpu(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--triplets", str(TRIPLETS), "--runs", str(RUNS),
                           "--out", str(tmp_path)], capture_output=True, text=True, check=False, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "embedding_cache.json").read_text())
    rows = {r["path"]: r for r in result["rows"]}
    n = TRIPLETS
    expected = {"pairwise": (4 * n, 0), "embed, no cache": (3 * n, 0), "embed, cold cache": (3 * n, 0),
                "embed, warm cache": (0, 3 * n), "embed, no cache, --precision bf16": (3 * n, 0),
                "embed, no cache, --precision int8": (3 * n, 0)}
    assert list(rows) == list(expected)
    for name, (embedded, cached) in expected.items():
        row = rows[name]
        assert (row["images_embedded"], row["from_cache"]) == (embedded, cached), name
        assert len(row["round_seconds"]) == RUNS and all(s > 0 for s in row["round_seconds"])
        assert row["seconds"] == pytest.approx(statistics.median(row["round_seconds"]))
        assert row["min_s"] == min(row["round_seconds"]) and row["max_s"] == max(row["round_seconds"])
        assert row["speedup_vs_pairwise"] > 0
    assert rows["pairwise"]["speedup_vs_pairwise"] == pytest.approx(1.0)
    for name in ("embed, no cache", "embed, cold cache", "embed, warm cache"):
        assert rows[name]["max_abs_distance_change"] <= 1e-5  # fp32 paths: the pairwise distances
    for name in ("embed, no cache, --precision bf16", "embed, no cache, --precision int8"):
        assert 0 < rows[name]["max_abs_distance_change"] < 0.05  # reduced precision: changed, but close
    model = _cpuinfo_model()
    if model:
        assert result["cpu"]["model"] == model
    text = (tmp_path / "embedding_cache.md").read_text()
    assert f"Median of {RUNS} rounds" in text
    for name in expected:
        assert f"| {name} |" in text
