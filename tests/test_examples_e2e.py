"""The upstream example triplets (../shared/fixtures) end to end through `percepbench run` and `2afc_csv`."""

from __future__ import annotations

import numpy as np
import pytest

from percepbench.cli import main
from percepbench.results import load_results

from conftest import SHARED_FIXTURES
from layouts import make_csv_table


@pytest.mark.parametrize(("metric", "folder", "names"), [
    ("lpips.alex", "lpips", ("ex_ref.png", "ex_p0.png", "ex_p1.png")),
    ("dreamsim.dino_vitb16", "dreamsim/images", ("ref_1.png", "img_a_1.png", "img_b_1.png")),
])
def test_example_triplet_through_the_cli(metric, folder, names, capsys, tmp_path, clean_env):
    """Random weights (no pretrained files here): checks the file pipeline, not the published values."""
    root = SHARED_FIXTURES / folder
    ref, left, right = (str(root / n) for n in names)
    csv = make_csv_table(tmp_path / "triplet.csv", [{"ref": ref, "left": left, "right": right, "p": 1.0}])
    out = tmp_path / "run"
    code = main(["run", "-m", metric, "--metric-args", f"{metric}:pretrained=false", "-t", "2afc_csv",
                 "--task-args", f"2afc_csv:path={csv}", "--n-boot", "10", "-q", "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    res = load_results(out)
    (rec,) = res.records.to_dict("records")
    assert rec["metric"] == metric and rec["n"] == 1
    (sample,) = res.samples.to_dict("records")
    d0, d1 = sample["d0"], sample["d1"]
    assert np.isfinite([d0, d1]).all() and d0 >= 0 and d1 >= 0
    # the 2AFC rule by hand with p = 1 (the right image judged closer): 100 if d1 < d0, 0 if d0 < d1, 50 on a tie
    expected = 100.0 if d1 < d0 else 0.0 if d0 < d1 else 50.0
    assert rec["value"] == expected and sample["score"] == expected / 100
    (proto,) = res.meta["protocol"]
    expected = "224x224 bicubic" if metric.startswith("dreamsim") else "native size"
    assert proto["resize"] == expected
