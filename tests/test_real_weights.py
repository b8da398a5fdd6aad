"""Published numbers that need the real pretrained weights (marker ``weights``).

Skipped unless ``PERCEPBENCH_REAL_WEIGHTS`` names a weights cache that holds them: percepbench's own cache
(``percepbench weights download dreamsim``) or the ``./models`` folder the official ``dreamsim`` package
fills. Nothing is downloaded here (offline mode); a missing file fails with the list of files to place::

    PERCEPBENCH_REAL_WEIGHTS=~/.cache/torch/hub/percepbench pytest -m weights

No session of percepbench's development could reach the weights, so these have not passed yet.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from percepbench.cli import main
from percepbench.results import load_results

from conftest import SHARED_FIXTURES

REAL = os.environ.get("PERCEPBENCH_REAL_WEIGHTS")
pytestmark = [
    pytest.mark.weights,
    pytest.mark.skipif(not REAL, reason="PERCEPBENCH_REAL_WEIGHTS is not set (a cache dir with the real weights)"),
]
IMAGES = SHARED_FIXTURES / "dreamsim" / "images"
#: the official demo, v0.2 ensemble: ref_1 vs img_a_1 and vs img_b_1 (printed to 4 decimals upstream)
DEMO = {"img_a_1": 0.4453, "img_b_1": 0.2756}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("PERCEPBENCH_OFFLINE", "1")


def test_official_demo_distances_with_the_drop_in_api():
    from percepbench import dreamsim

    model, preprocess = dreamsim(pretrained=True, cache_dir=Path(REAL).expanduser(), device="cpu")
    ref = preprocess(Image.open(IMAGES / "ref_1.png"))
    with torch.no_grad():
        got = {name: model(ref, preprocess(Image.open(IMAGES / f"{name}.png"))).item() for name in DEMO}
    assert got == pytest.approx(DEMO, abs=1e-3)


def test_official_demo_distances_through_percepbench_run(capsys, tmp_path, monkeypatch):
    """The same triplet as a 2AFC CSV through `percepbench run -m dreamsim` (file path: PIL bicubic)."""
    csv = tmp_path / "demo.csv"
    csv.write_text("ref,left,right,p\n"
                   f"{IMAGES / 'ref_1.png'},{IMAGES / 'img_a_1.png'},{IMAGES / 'img_b_1.png'},1.0\n")
    monkeypatch.setenv("PERCEPBENCH_CACHE", str(Path(REAL).expanduser()))
    code = main(["run", "-m", "dreamsim", "-t", "2afc_csv", "--task-args", f"2afc_csv:path={csv}", "-q",
                 "--no-report", "--no-embed-cache", "--n-boot", "10", "-o", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err
    row = load_results(tmp_path / "run").samples.iloc[0]
    assert (row["d0"], row["d1"]) == pytest.approx((DEMO["img_a_1"], DEMO["img_b_1"]), abs=1e-3)
