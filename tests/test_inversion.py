"""Feature inversion (percepbench.inversion, reports/inversion_figures.py): losses, the cross-metric table,
metrics without gradients, the results files, the grid figure and bad input.

Oracles are independent of the code under test: PSNR and MSE recomputed with numpy from the saved PNGs,
SSIM with scikit-image, target crops from images whose centre square is known by construction.
"""

from __future__ import annotations

import doctest
import logging
import shutil
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from skimage.metrics import structural_similarity

import percepbench.inversion as I
from percepbench.errors import DataError, UsageError
from percepbench.metrics_registry.base import DistanceMetric
from percepbench.registry import METRICS
from percepbench.reports.inversion_figures import inversion_grid
from percepbench.results import RESULTS_FILE, load_results
from percepbench.specs import InputConvention, MetricSpec

from layouts import write_png


class Detached(DistanceMetric):
    """Mean absolute difference of a detached copy: a value, but no gradient at all."""

    def distance(self, preds, target):
        return (preds.detach() - target).abs().flatten(1).mean(1)


class Rounded(DistanceMetric):
    """Mean absolute difference after rounding to 4 levels: piecewise constant, gradient zero everywhere."""

    def distance(self, preds, target):
        return (torch.round(preds * 4) / 4 - target).abs().flatten(1).mean(1)


class Raises(DistanceMetric):
    def distance(self, preds, target):
        raise RuntimeError("broken on purpose")


class SmallConv(DistanceMetric):
    """Distance between the features of a fixed frozen convolution; records the input sizes it was given."""

    sizes: ClassVar[set] = set()

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        torch.manual_seed(0)
        self.net = self.freeze(torch.nn.Conv2d(3, 8, 3))

    def distance(self, preds, target):
        type(self).sizes.add(tuple(preds.shape[-2:]))
        return (self.net(preds) - self.net(target)).float().pow(2).flatten(1).mean(1)


TEST_METRICS = {"zz_inv_detached": "Detached", "zz_inv_rounded": "Rounded", "zz_inv_raises": "Raises"}
OPTIMISED = ["psnr", "ssim"]
EVALUATORS = ["psnr", "ssim", "zz_inv_detached", "zz_inv_rounded"]  # zz_inv_raises fails as an evaluator too


@pytest.fixture(scope="module")
def test_metrics():
    for name, cls in TEST_METRICS.items():
        METRICS.register(MetricSpec(name=name, target=f"test_inversion:{cls}", description="test"), source="test")
    yield list(TEST_METRICS)
    for name in TEST_METRICS:
        METRICS.unregister(name)


@pytest.fixture(scope="module")
def run(test_metrics, tmp_path_factory):
    """2 bundled targets of 32 px, 30 steps: psnr, ssim and the three test metrics."""
    out = tmp_path_factory.mktemp("inversion") / "run"
    config = I.InversionConfig(metrics=[*OPTIMISED, *test_metrics], targets=2, size=32, steps=30, lr=0.05,
                               seed=3, device="cpu", out=str(out), progress=False, n_boot=200)
    return I.run_inversion(config), out


def png(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0


def psnr_distance(a: np.ndarray, b: np.ndarray) -> float:
    """percepbench's PSNR distance, -PSNR = 10 log10(MSE) for a peak of 1, by numpy."""
    return float(10 * np.log10(np.mean((a - b) ** 2)))


def test_doctests():
    result = doctest.testmod(I, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_loss_goes_down_for_each_metric(run):
    results, _ = run
    s = results.samples
    for metric in OPTIMISED:
        rows = s[s["metric"] == metric]
        assert len(rows) == 2
        assert (rows["end_loss"] < rows["start_loss"]).all(), metric
        assert rows["start_gradient"].all()
        for curve, start, end in zip(rows["loss_curve"], rows["start_loss"], rows["end_loss"], strict=True):
            assert len(curve) == 31 and curve[0] == start and curve[-1] == end
        recs = results.records[results.records["metric"] == metric].set_index("measure")
        assert recs.loc["loss_end", "value"] < recs.loc["loss_start", "value"]


def test_start_loss_is_the_noise_start_and_table_is_from_the_saved_images(run):
    results, out = run
    s = results.samples
    for row in s[s["metric"] == "psnr"].itertuples():
        target, init = png(out / row.target_image), png(out / row.init_image)
        inverted = png(out / row.image)
        # the float noise start is saved rounded to 8 bits: its PSNR distance moves by far less than 0.05 dB
        assert row.start_loss == pytest.approx(psnr_distance(init, target), abs=0.05)
        assert s.loc[row.Index, "distance:psnr"] == pytest.approx(psnr_distance(inverted, target), abs=1e-3)


def test_cross_metric_table_has_every_pair(run):
    results, _ = run
    recs = results.records
    assert set(recs["task"]) == {"inversion"} and set(recs["subset"]) == {"all"}
    for m in OPTIMISED:
        measures = set(recs.loc[recs["metric"] == m, "measure"])
        assert measures == {f"distance:{e}" for e in EVALUATORS} | {"loss_start", "loss_end"}
    assert set(recs["metric"]) == set(OPTIMISED)  # metrics that cannot be a loss have no row
    assert (recs["n"] == 2).all()
    assert (recs["ci_low"] <= recs["value"] + 1e-12).all() and (recs["value"] <= recs["ci_high"] + 1e-12).all()
    # value = mean over targets of the per-target distances in the samples
    s = results.samples
    for m in OPTIMISED:
        for e in EVALUATORS:
            value = recs[(recs["metric"] == m) & (recs["measure"] == f"distance:{e}")]["value"].item()
            assert value == pytest.approx(s.loc[s["metric"] == m, f"distance:{e}"].mean())
    table = I.cross_metric_table(results)
    assert list(table.index) == OPTIMISED and list(table.columns) == EVALUATORS
    assert not table.isna().any().any()
    # the metric that raises also fails as an evaluator: its column is NaN, it has no records
    assert s["distance:zz_inv_raises"].isna().all()


def test_inversion_is_closer_than_the_noise_start(run):
    results, out = run
    s = results.samples
    for row in s[s["metric"] == "psnr"].itertuples():
        target, init, inverted = (png(out / p) for p in (row.target_image, row.init_image, row.image))
        assert np.mean((inverted - target) ** 2) < np.mean((init - target) ** 2)
    for row in s[s["metric"] == "ssim"].itertuples():
        target, init, inverted = (png(out / p) for p in (row.target_image, row.init_image, row.image))
        ssim_inv = structural_similarity(inverted, target, channel_axis=2, data_range=1.0)
        ssim_init = structural_similarity(init, target, channel_axis=2, data_range=1.0)
        assert ssim_inv > ssim_init + 0.1
    # the same noise start for every metric of a target
    starts = s.groupby("item")["init_image"].nunique()
    assert (starts == 1).all()


def test_metrics_without_gradient_are_reported_and_others_run(run):
    results, _ = run
    failed = {(f["metric"], f["error"].split(":")[0]): f for f in results.meta["failed"]}
    for name in ("zz_inv_detached", "zz_inv_rounded"):
        f = failed[(name, "no gradient")]
        assert f["task"] == "inversion" and f["kind"] == "failure" and name in f["error"]
    assert "does not depend on its input" in failed[("zz_inv_detached", "no gradient")]["error"]
    assert "zero everywhere" in failed[("zz_inv_rounded", "no gradient")]["error"]
    raised = [f for f in results.meta["failed"] if f["metric"] == "zz_inv_raises"]
    assert sorted(f["error"] for f in raised) == ["RuntimeError: broken on purpose",
                                                  "as an evaluator of inversions: RuntimeError: broken on purpose"]
    assert len(results.meta["failed"]) == 4
    assert [p["metric"] for p in results.meta["protocol"]] == OPTIMISED
    assert set(results.samples["metric"]) == set(OPTIMISED)


def test_results_load_and_meta(run):
    results, out = run
    loaded = load_results(out)
    assert loaded.complete
    pd.testing.assert_frame_equal(loaded.records, results.records, check_dtype=False)
    meta = loaded.meta
    task = meta["tasks"]["inversion"]
    assert task["kind"] == "analysis"
    assert (task["steps"], task["lr"], task["size"], task["seed"]) == (30, 0.05, 32, 3)
    assert task["targets"] == ["astronaut", "chelsea"]
    assert "inversion" in meta["task_protocols"]
    assert meta["device"] == "cpu" and meta["precision"] == "fp32" and meta["finished"]
    assert set(meta["metrics"]) == {*OPTIMISED, *TEST_METRICS}
    s = loaded.samples
    assert len(s) == 4 and s["score"].isna().all()
    for row in s.itertuples():
        assert row.image == f"inversion/{row.item}/{row.metric}.png"
        img = png(out / row.image)
        assert img.shape == (32, 32, 3)
    assert (out / "inversion" / "astronaut" / "target.png").is_file()


def test_grid_figure(run, tmp_path, caplog):
    results, out = run
    grid = inversion_grid(out, results.samples, results.meta)
    assert grid is not None and grid.raster and grid.task == "inversion"
    axes = grid.figure.axes
    assert len(axes) == 2 * 3  # 2 targets x (target, psnr, ssim)
    assert [ax.get_title() for ax in axes[:3]] == ["target", "psnr", "ssim"]
    below = axes[1].get_xlabel()  # astronaut, psnr: its distance by psnr
    s = results.samples
    value = s[(s["item"] == "astronaut") & (s["metric"] == "psnr")]["distance:psnr"].item()
    assert float(below) == pytest.approx(value, rel=1e-3)
    grid.figure.savefig(tmp_path / "grid.png")
    assert (tmp_path / "grid.png").stat().st_size > 0
    # a missing image: no figure, and the file is named in the log
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "inversion" / "chelsea" / "ssim.png").unlink()
    with caplog.at_level(logging.WARNING, logger="percepbench"):
        assert inversion_grid(copy, results.samples, results.meta) is None
    assert "chelsea/ssim.png" in caplog.text


def test_metric_input_size_and_half_precision(tmp_path, clean_env, register_temp):
    """A metric whose spec has its own input size sees the images resized to it (differentiably), and under
    --precision bf16 a metric that lists bf16 computes in it (CPU autocast) and still optimises."""
    register_temp(MetricSpec(name="zz_inv_conv16", target="test_inversion:SmallConv", description="test",
                             inputs=InputConvention(size=16, interpolation="bilinear")))
    SmallConv.sizes.clear()
    out = tmp_path / "run"
    results = I.run_inversion(I.InversionConfig(metrics=["zz_inv_conv16", "psnr"], targets=1, size=32, steps=20,
                                                precision="bf16", device="cpu", out=str(out), progress=False,
                                                n_boot=10))
    assert SmallConv.sizes == {(16, 16)}
    assert results.meta["failed"] == [] and results.meta["precision"] == "bf16"
    protocol = {p["metric"]: p for p in results.meta["protocol"]}
    assert protocol["zz_inv_conv16"]["precision"] == "bf16" and protocol["psnr"]["precision"] == "fp32"
    assert protocol["zz_inv_conv16"]["resize"].startswith("16x16 bilinear")
    row = results.samples[results.samples["metric"] == "zz_inv_conv16"].iloc[0]
    assert row["end_loss"] < row["start_loss"]
    assert png(out / row["image"]).shape == (32, 32, 3)  # the inversion itself keeps the targets' size


def test_user_images_are_centre_cropped(tmp_path, clean_env):
    images = tmp_path / "images"
    images.mkdir()
    # 40 x 20: the centre 20 x 20 square is exactly the middle half (green); the sides are red and blue
    wide = np.zeros((20, 40, 3), dtype=np.uint8)
    wide[:, :10] = (255, 0, 0)
    wide[:, 10:30] = (0, 200, 0)
    wide[:, 30:] = (0, 0, 255)
    Image.fromarray(wide).save(images / "wide.png")
    write_png(images / "grey.png", 90, size=20)
    (images / "notes.txt").write_text("not an image")
    out = tmp_path / "run"
    config = I.InversionConfig(metrics=["psnr"], images=str(images), size=20, steps=3, device="cpu",
                               out=str(out), progress=False, n_boot=10)
    results = I.run_inversion(config)
    assert results.meta["tasks"]["inversion"]["targets"] == ["grey", "wide"]
    assert (png(out / "inversion" / "wide" / "target.png") == np.array([0, 200, 0]) / 255).all()
    assert (png(out / "inversion" / "grey" / "target.png") == 90 / 255).all()
    # a second run into the same directory is refused without --overwrite, and replaces it with it
    with pytest.raises(UsageError, match=r"already holds a results\.json"):
        I.run_inversion(config)
    again = I.run_inversion(I.InversionConfig(**{**config.to_dict(), "overwrite": True, "targets": 1}))
    assert again.meta["tasks"]["inversion"]["targets"] == ["grey"]
    assert not (out / "inversion" / "wide").exists()


def test_bad_input(tmp_path, clean_env):
    out = tmp_path / "run"
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=str(missing)):
        I.run_inversion(I.InversionConfig(metrics=["psnr"], images=str(missing), out=str(out), device="cpu"))
    folder = tmp_path / "images"
    folder.mkdir()
    write_png(folder / "a.png", 10, size=16)
    (folder / "b.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=str(folder / "b.png")):
        I.run_inversion(I.InversionConfig(metrics=["psnr"], images=str(folder), size=16, out=str(out),
                                          device="cpu"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no image files"):
        I.run_inversion(I.InversionConfig(metrics=["psnr"], images=str(empty), out=str(out), device="cpu"))
    assert not (out / RESULTS_FILE).exists()


@pytest.mark.parametrize(("change", "message"), [
    ({"steps": 0}, "--steps"), ({"lr": -1.0}, "--lr"), ({"lr": float("nan")}, "--lr"), ({"size": 0}, "--size"),
    ({"targets": 0}, "--targets"), ({"targets": 11}, "only 10 bundled"), ({"seed": -1}, "--seed"),
    ({"metrics": ["ssim"], "size": 8}, "ssim needs at least 11 px"), ({"metrics": ["nope_metric"]}, "nope_metric"),
])
def test_bad_options(tmp_path, clean_env, change, message):
    config = I.InversionConfig(**{"metrics": ["psnr"], "out": str(tmp_path / "run"), "device": "cpu", **change})
    with pytest.raises(UsageError, match=message):
        I.run_inversion(config)
    assert not (tmp_path / "run" / RESULTS_FILE).exists()


def test_command_line(tmp_path, clean_env, capsys, test_metrics):
    from percepbench.cli import main

    out = tmp_path / "run"
    assert main(["analyze", "inversion", "-m", "psnr", "--targets", "1", "--size", "16", "--steps", "5",
                 "--out", str(out), "-q"]) == 0
    text = capsys.readouterr().out
    assert "evaluated by" in text and str(out) in text
    assert (out / "inversion" / "grid.png").is_file()
    code = main(["analyze", "inversion", "-m", "psnr,zz_inv_detached", "--targets", "1", "--size", "16",
                 "--steps", "5", "--out", str(out), "--overwrite", "-q"])
    assert code == 1  # a metric without gradient: reported, exit 1 as for `percepbench run`
    assert "FAILED zz_inv_detached: no gradient" in capsys.readouterr().err
