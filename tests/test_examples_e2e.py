"""The upstream example triplets (../shared/fixtures) end to end through `percepbench run` and `2afc_csv`."""

from __future__ import annotations

import numpy as np
import pytest

from percepbench.cli import main
from percepbench.results import load_results

from conftest import SHARED_FIXTURES


def write_csv(path, ref, left, right, p):
    path.write_text(f"ref,left,right,p\n{ref},{left},{right},{p}\n")
    return path


@pytest.mark.parametrize(("metric", "folder", "names"), [
    ("lpips.alex", "lpips", ("ex_ref.png", "ex_p0.png", "ex_p1.png")),
    ("dreamsim.dino_vitb16", "dreamsim/images", ("ref_1.png", "img_a_1.png", "img_b_1.png")),
])
def test_example_triplet_through_the_cli(metric, folder, names, capsys, tmp_path, clean_env):
    """Random weights (no pretrained files here): checks the file pipeline, not the published values."""
    root = SHARED_FIXTURES / folder
    csv = write_csv(tmp_path / "triplet.csv", *(root / n for n in names), 1.0)
    out = tmp_path / "run"
    code = main(["run", "-m", metric, "--metric-args", f"{metric}:pretrained=false", "-t", "2afc_csv",
                 "--task-args", f"2afc_csv:path={csv}", "--n-boot", "10", "-q", "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    res = load_results(out)
    (rec,) = res.records.to_dict("records")
    assert rec["metric"] == metric and rec["n"] == 1 and rec["value"] in (0.0, 50.0, 100.0)
    assert np.isfinite(res.samples[["d0", "d1"]].to_numpy()).all()
    (proto,) = res.meta["protocol"]
    expected = "224x224 bicubic" if metric.startswith("dreamsim") else "native size"
    assert proto["resize"] == expected
