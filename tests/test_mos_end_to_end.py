"""Issue 16's "done when": the quality-score command of the README, end to end, on generated data in the
official TID2013, KADID-10k and PIPAL layouts.

``percepbench run -m psnr,ssim,lpips,dists,dreamsim,nlpd,flip -t tid2013,kadid10k,pipal``: the weighted metrics
run with random weights (``pretrained=false``: no pretrained file can be downloaded here) and are labelled so;
every (task, metric) pair gives the four correlations, pooled and per type; the PSNR records equal scipy's
Spearman/Kendall/Pearson on a numpy PSNR of the same files; the report draws the published anchors.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy.stats import kendalltau, pearsonr, spearmanr

from percepbench import create_task
from percepbench.cli import main
from percepbench.results import load_results

from layouts import make_kadid10k, make_pipal, make_tid2013, random_mos_images

pytestmark = pytest.mark.slow

METRICS = ("psnr", "ssim", "lpips", "dists", "dreamsim", "nlpd", "flip")
RANDOM = ("lpips", "dists", "dreamsim")


def _psnr(ref: str, dist: str) -> float:
    a = np.asarray(Image.open(ref).convert("RGB"), dtype=np.float64) / 255
    b = np.asarray(Image.open(dist).convert("RGB"), dtype=np.float64) / 255
    return float(10 * np.log10(1.0 / max(np.mean((a - b) ** 2), 1e-10)))


def test_the_readme_quality_score_command_runs_end_to_end(tmp_path, clean_env, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    base = tmp_path / "data"
    sets = {  # 2 references x 2 types x 2-3 levels: small, for DreamSim's three ViT-B on the CPU
        "tid2013": (make_tid2013, random_mos_images((1, 2), (1, 8), (1, 2, 3), seed=1, lo=0.5, hi=7.0)),
        "kadid10k": (make_kadid10k, random_mos_images((1, 2), (2, 10), (1, 2, 3), seed=2, lo=1.0, hi=5.0)),
        "pipal": (make_pipal, random_mos_images((1, 2), (0, 3), (1, 2), seed=3, lo=900.0, hi=1800.0)),
    }
    for name, (make, images) in sets.items():
        make(base / name, images, size=40)  # LPIPS-AlexNet needs >= 31 px
    out = tmp_path / "run"
    metric_args = [a for m in RANDOM for a in ("--metric-args", f"{m}:pretrained=false")]
    code = main(["run", "-m", ",".join(METRICS), "-t", "tid2013,kadid10k,pipal", "--data-root", str(base),
                 "-o", str(out), "--device", "cpu", "-q", "--n-boot", "4", "--batch-size", "8", *metric_args])
    _, err = capsys.readouterr()
    assert code == 0, err
    res = load_results(out)
    assert res.meta["failed"] == []
    full = {"lpips": "lpips.alex", "dreamsim": "dreamsim.ensemble"}
    assert sorted(res.meta["random_weights"]) == sorted(full.get(m, m) for m in RANDOM)
    records = res.records
    for task in sets:
        for metric in METRICS:
            rows = records[(records["task"] == task) & (records["metric"] == full.get(metric, metric))
                           & (records["subset"] == "all")]
            assert {"srcc", "krcc", "plcc"} <= set(rows["measure"]), (task, metric)
            assert np.isfinite(rows["value"]).all() and (rows["value"].abs() <= 1).all()

    # the oracle: scipy's statistics on a numpy PSNR of the same files (predicted quality = PSNR = -d)
    recs = records.set_index(["task", "metric", "subset", "measure"])["value"]
    for name in sets:
        task = create_task(name, root=str(base / name))
        task.prepare(progress=False)
        psnr = np.array([_psnr(r, d) for r, d in task.image_paths()])
        quality = task.items["mos"].to_numpy(np.float64)
        assert np.diff(np.sort(psnr)).min() > 1e-3  # no near-ties that float32 could reorder
        assert recs[(name, "psnr", "all", "srcc")] == pytest.approx(spearmanr(psnr, quality).statistic, abs=1e-9)
        assert recs[(name, "psnr", "all", "krcc")] == pytest.approx(kendalltau(psnr, quality).statistic, abs=1e-9)
        assert recs[(name, "psnr", "all", "plcc")] == pytest.approx(pearsonr(psnr, quality).statistic, abs=1e-6)

    # the report: one figure per measure, the published SRCC anchors on TID2013's
    report = out / "report"
    assert (report / "scores_tid2013_srcc.svg").exists() and (report / "scores_kadid10k_plcc.svg").exists()
    assert "pyiqa" in (report / "scores_tid2013_srcc.svg").read_text()
    html = (report / "report.html").read_text()
    assert "random weights" in html
