"""``benchmarks/int8_accuracy.py`` at a tiny size, on two generated images: it writes its JSON and table with
every model, counts the views and pairs right, reports no error for fp32 against itself, and its
batch-dependence column shows what the int8 layers promise (none beyond fp32 rounding for percepbench's
int8). The int8 layers' arithmetic is checked against numpy in ``test_cpu_speed_modes.py``. No timed
assertions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "int8_accuracy.py"


@pytest.mark.slow
def test_int8_accuracy_benchmark_reports_what_it_measured(tmp_path):
    pytest.importorskip("dreamsim")
    images = tmp_path / "images"
    images.mkdir()
    for k, colour in enumerate([(200, 30, 30), (20, 90, 220)]):
        im = Image.new("RGB", (64, 48), colour)
        im.paste((250, 250, 250), (5 + 10 * k, 5, 30 + 10 * k, 20))  # an off-centre patch: views differ
        im.save(images / f"im{k}.png")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(SCRIPT), "--batch", "4", "--repeats", "1", "--images", str(images),
                           "--out", str(out)], capture_output=True, text=True, check=False, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "int8_accuracy.json").read_text())
    rows = {r["model"]: r for r in result["rows"]}
    assert set(rows) == {"fp32", "percepbench int8", "torch quantize_dynamic"}
    assert result["meta"]["images"] == 8 and result["meta"]["pairs"] == 28  # 2 images x 4 views, 8 choose 2
    assert rows["fp32"]["max_abs_distance_error"] == 0 and rows["fp32"]["batch_dependence"] < 1e-5
    ours = rows["percepbench int8"]
    assert 0 < ours["max_abs_embedding_diff"] < 0.05 and ours["batch_dependence"] < 1e-5
    assert ours["median_abs_distance_error"] <= ours["max_abs_distance_error"]
    assert all(r["img_s"] > 0 and len(r["seconds"]) == 1 for r in rows.values())
    table = (out / "int8_accuracy.md").read_text()
    assert "| percepbench int8 |" in table and "int8_accuracy.py --variant dino_vitb16 --batch 4" in table
