"""Attribute analyses: pools, normalisation by hand, monotone curves, matched contests, reliance, the CLI."""

from __future__ import annotations

import numpy as np
import pytest

from percepbench.cli import main
from percepbench.config import RunConfig
from percepbench.results import load_results
from percepbench.runner import run
from percepbench.specs import MetricSpec
from percepbench.tasks.attributes import (
    AttributeContests,
    AttributeCurves,
    ForegroundReliance,
    _unrelated_partners,
    load_pool,
)

from layouts import DAMAGED, write_png

SMALL = {"images": 4, "size": 32}


@pytest.fixture
def toy(register_temp):
    register_temp(MetricSpec(name="toy-meanabs", target="helpers_metrics:MeanAbs", description="|a - b| / 255"))
    return "toy-meanabs"


def slot_images(task):
    """The uint8 item images the task serves, as float [0, 1] arrays (N, slots, H, W, 3)."""
    return task._images.permute(0, 1, 3, 4, 2).numpy().astype(np.float64) / 255.0


def run_task(tmp_path, name, metric, **options):
    res = run(RunConfig(metrics=[metric], tasks=[name], out=str(tmp_path / name), n_boot=50, progress=False,
                        num_workers=0, task_args={name: {**SMALL, **options}}))
    assert not res.meta["failed"], res.meta["failed"]
    return res


def test_pools_are_seeded_and_composites_have_masks():
    a = load_pool("bundled", images=3, size=32, seed=0, path=None)
    b = load_pool("bundled", images=3, size=32, seed=0, path=None)
    c = load_pool("bundled", images=3, size=32, seed=1, path=None)
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x.image, y.image) for x, y in zip(a, c, strict=True))
    comp = load_pool("composites", images=3, size=32, seed=0, path=None)
    for p in comp:
        assert p.mask is not None and p.mask.shape == (32, 32) and 0.2 < p.mask.mean() < 0.7
    partners = _unrelated_partners(7, 0)
    assert sorted(partners) == list(range(7)) and all(i != j for i, j in enumerate(partners))


def test_curves_normalised_by_the_unrelated_median_by_hand(tmp_path, clean_env, toy):
    """MeanAbs distances recomputed with numpy from the images the task served: nd = d / median(unrelated)
    (the identical pairs are at 0), auc = trapezoids from (0, 0) over the strengths."""
    res = run_task(tmp_path, "attr_curves", toy, attributes="noise+blur", strengths="0.5+1")
    task = AttributeCurves(attributes="noise+blur", strengths="0.5+1", **SMALL)
    task.prepare(progress=False, seed=0)
    imgs = slot_images(task)
    d = np.abs(imgs[:, 0] - imgs[:, 1]).mean(axis=(1, 2, 3))
    items = task.items
    median = np.median(d[(items["subset"] == "unrelated").to_numpy()])
    assert d[(items["subset"] == "identical").to_numpy()].max() == 0
    recs = res.records.set_index(["subset", "measure"])["value"]
    for a in ("noise", "blur"):
        nd = {s: d[((items["attribute"] == a) & (items["strength"] == s)).to_numpy()] / median for s in (0.5, 1.0)}
        assert recs[(a, "nd@0.5")] == pytest.approx(100 * nd[0.5].mean(), rel=1e-5)
        assert recs[(a, "nd@1")] == pytest.approx(100 * nd[1.0].mean(), rel=1e-5)
        auc = (0.5 * (0 + nd[0.5]) / 2 + 0.5 * (nd[0.5] + nd[1.0]) / 2) / 1.0
        assert recs[(a, "auc")] == pytest.approx(100 * auc.mean(), rel=1e-5)
    assert recs[("unrelated", "median_distance")] == pytest.approx(median, rel=1e-5)


def test_psnr_and_ssim_curves_are_monotone(tmp_path, clean_env):
    res = run(RunConfig(metrics=["psnr", "ssim"], tasks=["attr_curves"], out=str(tmp_path / "run"), n_boot=20,
                        progress=False, num_workers=0,
                        task_args={"attr_curves": {**SMALL, "strengths": "0.25+0.5+0.75+1"}}))
    assert not res.meta["failed"]
    recs = res.records
    checked = 0
    # PSNR is a function of the pixel MSE, which grows with strength for every non-geometric edit (the
    # geometric ones level off and can dip: tasks/edits.py); SSIM on noise, blur and contrast
    monotone_rms = ("hue", "saturation", "brightness", "contrast", "blur", "noise", "jpeg", "flip")
    for metric, attributes in (("psnr", monotone_rms), ("ssim", ("noise", "blur", "contrast"))):
        r = recs[(recs["metric"] == metric) & recs["measure"].str.startswith("nd@")]
        for attribute, g in r.groupby("subset"):
            if attributes and attribute not in attributes:
                continue
            values = g.sort_values("measure", key=lambda m: m.str[3:].astype(float))["value"].to_numpy()
            assert np.all(np.diff(values) >= -1e-9), (metric, attribute, values)
            checked += 1
    assert checked == 8 + 3


def test_contest_edits_are_matched_in_rms_and_scored_by_hand(tmp_path, clean_env, toy):
    res = run_task(tmp_path, "attr_contests", toy, attributes="noise+blur+hue")
    task = AttributeContests(attributes="noise+blur+hue", **SMALL)
    task.prepare(progress=False, seed=0)
    items = task.items
    assert (np.abs(items["rms_a"] - items["rms_b"]) <= 1.5e-3).all()
    imgs = slot_images(task)
    d_a = np.abs(imgs[:, 0] - imgs[:, 1]).mean(axis=(1, 2, 3))
    d_b = np.abs(imgs[:, 0] - imgs[:, 2]).mean(axis=(1, 2, 3))
    score = np.where(d_a < d_b, 1.0, np.where(d_b < d_a, 0.0, 0.5))
    recs = res.records.set_index("subset")["value"]
    for subset, mask in items.groupby("subset").groups.items():
        assert recs[subset] == pytest.approx(100 * score[list(mask)].mean())
    assert set(items["subset"]) == {"noise~blur", "noise~hue", "blur~hue"}


def test_reliance_by_hand(tmp_path, clean_env, toy):
    res = run_task(tmp_path, "attr_reliance", toy, modes="grey+swap")
    task = ForegroundReliance(modes="grey+swap", **SMALL)
    task.prepare(progress=False, seed=0)
    imgs = slot_images(task)
    d_bg = np.abs(imgs[:, 0] - imgs[:, 1]).mean(axis=(1, 2, 3))
    d_fg = np.abs(imgs[:, 0] - imgs[:, 2]).mean(axis=(1, 2, 3))
    score = np.where(d_bg < d_fg, 1.0, np.where(d_fg < d_bg, 0.0, 0.5))
    recs = res.records.set_index("subset")["value"]
    for mode in ("grey", "swap"):
        m = (task.items["subset"] == mode).to_numpy()
        assert recs[mode] == pytest.approx(100 * (2 * score[m].mean() - 1))
        rms = np.where(task.items["rms_bg"] < task.items["rms_fg"], 1.0, 0.0)[m]
        assert task.protocol()["pixel_rms_index"][mode] == pytest.approx(100 * (2 * rms.mean() - 1))


def test_folder_pool_with_masks(tmp_path, clean_env, toy):
    folder = tmp_path / "pool"
    for i, grey in enumerate((40, 120, 200)):
        write_png(folder / f"im{i}.png", (grey, 255 - grey, 90), 24, noise=30, seed=i)
        mask = np.zeros((24, 24), dtype=np.uint8)
        mask[6:18, 6:18] = 255
        from PIL import Image

        (folder / "masks").mkdir(exist_ok=True)
        Image.fromarray(mask).save(folder / "masks" / f"im{i}.png")
    res = run_task(tmp_path, "attr_reliance", toy, pool="folder", path=str(folder), images=3, size=24)
    assert set(res.records["subset"]) == {"grey", "blur", "swap"}
    pool = load_pool("folder", images=3, size=24, seed=0, path=str(folder))
    assert pool[0].mask.sum() == 144


@pytest.mark.parametrize(("args", "message"), [
    (["--pool", "folder"], "pool=folder needs path="),
    (["--attributes", "hue+sparkle"], "sparkle"),
    (["--analyses", "curves,colours"], "--analyses takes curves, contests, reliance"),
    (["--analyses", "contests", "--match-by", "nosuchmetric"], "unknown metric 'nosuchmetric'"),
])
def test_bad_options_exit_2(tmp_path, clean_env, toy, capsys, args, message):
    code = main(["analyze", "attributes", "-m", toy, "--images", "3", "--size", "32", "-o", str(tmp_path / "run"),
                 "-q", "--n-boot", "10", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert not (tmp_path / "run").exists()


def test_bad_pools_exit_2_naming_the_file(tmp_path, clean_env, toy, capsys):
    folder = tmp_path / "pool"
    write_png(folder / "a.png", 10, 24)
    write_png(folder / "b.png", 200, 24)
    # no masks: reliance is refused naming where the masks should be
    code = main(["analyze", "attributes", "-m", toy, "--analyses", "reliance", "--pool", "folder", "--path",
                 str(folder), "--size", "24", "-o", str(tmp_path / "r1"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "needs a foreground mask" in err and f"{folder}/masks/<stem>.png" in err, err
    (folder / "b.png").write_bytes(DAMAGED)
    code = main(["analyze", "attributes", "-m", toy, "--analyses", "curves", "--pool", "folder", "--path",
                 str(folder), "--size", "24", "-o", str(tmp_path / "r2"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and str(folder / "b.png") in err, err


def test_analyze_attributes_end_to_end(tmp_path, clean_env, toy, capsys):
    out = tmp_path / "run"
    code = main(["analyze", "attributes", "-m", f"{toy},psnr", "--images", "3", "--size", "32",
                 "--attributes", "hue+noise+blur", "-o", str(out), "-q", "--n-boot", "20"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    res = load_results(out)
    assert set(res.records["task"]) == {"attr_curves", "attr_contests", "attr_reliance"}
    assert res.meta["tasks"]["attr_curves"]["kind"] == "analysis"
    assert set(res.records.loc[res.records["task"] == "attr_curves", "subset"]) == {
        "hue", "noise", "blur", "unrelated", "identical"}
    assert "attr_curves — auc" in captured.out
    assert (out / "report" / "report.html").is_file()
    # paired comparisons between the two metrics, per measure, on shared images
    comp = res.comparisons
    assert {"auc", "nd@1", "p_first_closer", "foreground_reliance"} <= set(comp["measure"])
    assert main(["compare", str(out), str(out)]) == 0


def test_compare_flags_a_change_of_sensitivity_either_way(tmp_path, clean_env, toy):
    import json
    import shutil

    from percepbench.reports.compare import compare_runs

    run_task(tmp_path, "attr_curves", toy, attributes="noise+blur", strengths="0.5+1")
    base = tmp_path / "attr_curves"
    for sign, name in ((+1, "up"), (-1, "down")):
        new = tmp_path / name
        shutil.copytree(base, new)
        data = json.loads((new / "results.json").read_text())
        for rec in data["records"]:
            if rec["subset"] == "noise" and rec["measure"] == "auc":
                rec["value"] += sign * 30
                rec["ci_low"] += sign * 30
                rec["ci_high"] += sign * 30
        (new / "results.json").write_text(json.dumps(data))
        rows = compare_runs(base, new).rows.set_index(["subset", "measure"])
        assert rows.loc[("noise", "auc"), "status"] == "changed"
        assert rows.loc[("blur", "auc"), "status"] == "ok"


def test_coco_pool_masks_from_polygons(tmp_path, clean_env, toy):
    """Generated COCO layout (tests/layouts.py): each annotation's polygon is the triangle (0,0), (s,0), (s,s)
    with s = sqrt(area); images of 32 px, instances covering 25% (kept) and 80% (too large: left out)."""
    from layouts import CocoImage, make_coco

    images = [CocoImage(i, (40 * i, 100, 200 - 30 * i), ((1, 256.0),)) for i in range(1, 4)]
    images.append(CocoImage(4, 90, ((17, 0.8 * 32 * 32),)))
    make_coco(tmp_path / "data" / "coco", images, size=32)
    pool = load_pool("coco", images=10, size=32, seed=0, path=None, data_root=str(tmp_path / "data"))
    assert [p.id for p in pool] == [f"val2017/{i:012d}.jpg" for i in (1, 2, 3)]
    # the triangle below the diagonal of the 16 x 16 top-left square: about half of 256 pixels
    for p in pool:
        assert 100 <= p.mask.sum() <= 160 and not p.mask[20:, :].any() and p.mask[1, 14]
    res = run(RunConfig(metrics=[toy], tasks=["attr_reliance"], out=str(tmp_path / "run"), n_boot=20,
                        progress=False, num_workers=0, data_root=str(tmp_path / "data"),
                        task_args={"attr_reliance": {"pool": "coco", "size": 32, "modes": "grey"}}))
    assert not res.meta["failed"] and res.records["n"].tolist() == [3]


def test_contests_matched_by_a_metric(tmp_path, clean_env, toy):
    """match_by=<metric>: the two edits are matched in that metric's distance (here MeanAbs, |a - b| / 255
    after uint8 rounding), not in pixel RMS; the runner builds the matching metric."""
    res = run(RunConfig(metrics=["psnr"], tasks=["attr_contests"], out=str(tmp_path / "run"), n_boot=20,
                        progress=False, num_workers=0,
                        task_args={"attr_contests": {**SMALL, "attributes": "noise+blur", "match_by": toy}}))
    assert not res.meta["failed"]
    s = res.samples
    assert (np.abs(s["match_a"] - s["match_b"]) <= 2e-3 * s[["match_a", "match_b"]].abs().max(axis=1) + 1e-9).all()
    # and independently: the mean absolute pixel difference of the served images agrees within uint8 rounding
    task = AttributeContests(attributes="noise+blur", match_by=toy, **SMALL)
    from percepbench.registry import TASKS
    from percepbench.runner import attach_matcher

    attach_matcher(TASKS.get("attr_contests"), task, RunConfig(), __import__("torch").device("cpu"))
    task.prepare(progress=False, seed=0)
    imgs = slot_images(task)
    d_a = np.abs(imgs[:, 0] - imgs[:, 1]).mean(axis=(1, 2, 3))
    d_b = np.abs(imgs[:, 0] - imgs[:, 2]).mean(axis=(1, 2, 3))
    assert np.allclose(d_a, d_b, atol=3e-3)
    assert "equal toy-meanabs distance" in res.meta["task_protocols"]["attr_contests"]["matching"]
