"""``benchmarks/nights_end_to_end.py`` at a tiny size: the official procedure and ``percepbench run`` (fp32,
int8) on the same generated NIGHTS-layout files and random official-format weights. Checked against what the
test computes itself: the 2AFC score from the official process's distances and the labels of ``data.csv``
(numpy), the layout against the columns of ``tests/layouts.py``. No timed assertions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from layouts import NIGHTS_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "nights_end_to_end.py"


@pytest.mark.slow
def test_end_to_end_benchmark_runs_both_procedures_on_the_same_files(tmp_path):
    pytest.importorskip("dreamsim")
    out, work = tmp_path / "out", tmp_path / "work"
    done = subprocess.run([sys.executable, str(SCRIPT), "--triplets", "4", "--rounds", "1", "--settings",
                           "fp32,int8", "--size", "48", "--out", str(out), "--work", str(work)],
                          capture_output=True, text=True, check=False, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    table = pd.read_csv(work / "data" / "nights" / "data.csv")
    assert list(table.columns) == list(NIGHTS_COLUMNS) and len(table) == 4
    for rel in table[["ref_path", "left_path", "right_path"]].to_numpy().ravel():
        with Image.open(work / "data" / "nights" / rel) as img:
            assert img.size == (48, 48) and img.mode == "RGB"

    official = json.loads((work / "official_0.json").read_text())
    p = table.set_index("id").loc[official["id"], "right_vote"].to_numpy()
    d0, d1 = np.asarray(official["d0"]), np.asarray(official["d1"])
    by_hand = np.mean(np.where(d0 < d1, 1 - p, np.where(d1 < d0, p, 0.5)))

    result = json.loads((out / "nights_end_to_end.json").read_text())
    rows = {r["setting"]: r for r in result["rows"]}
    assert list(rows) == ["official", "fp32", "int8"]
    assert rows["official"]["score"] == [pytest.approx(by_hand)]
    assert rows["official"]["images_embedded"] == 16 and rows["fp32"]["images_embedded"] == 12
    fp32 = rows["fp32"]
    assert fp32["score"] == [pytest.approx(by_hand)] and fp32["identical_score"]
    assert fp32["decision_agreement"] == 1.0 and fp32["max_abs_distance_diff"] < 1e-4
    int8 = rows["int8"]
    assert 0 < int8["max_abs_distance_diff"] < 0.05  # quantised: close, not equal
    for name in ("fp32", "int8"):
        assert rows[name]["ratios"][0] == pytest.approx(rows["official"]["wall_s"][0] / rows[name]["wall_s"][0])
    assert all(r["peak_rss_mb"] > 100 for r in rows.values())  # each process's own peak (VmHWM), torch loaded
    assert len({r["peak_rss_mb"] for r in rows.values()}) == 3  # not the parent's peak carried into each child
    run = json.loads((work / "run_int8_0" / "results.json").read_text())
    assert run["meta"]["precision"] == "int8" and run["meta"]["protocol"][0]["precision"] == "int8"

    cpu = result["meta"]["cpu"]
    assert set(cpu) >= {"model", "flags", "accelerators", "native_bf16", "int8_dot_product"}
    md = (out / "nights_end_to_end.md").read_text()
    assert "| official | 16 |" in md and "| int8 | 12 |" in md and str(cpu["model"]) in md
