"""Reports of retrieval tasks: the recall/precision/mAP-against-k figure and the nearest-neighbour grid.

The run directory is synthetic: 8 gallery images (4 ``cat``, 4 ``dog``, tiny one-colour PNGs written here,
one of them never written so that it is missing), 4 queries, 2 metrics whose rankings are set by hand,
ks 1 and 5. The hits, measures and records are computed here from the labels by plain Python (the oracle),
not by :mod:`percepbench.tasks.retrieval`.
"""

from __future__ import annotations

import base64
import doctest
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from percepbench.reports import build_report, metric_palette
from percepbench.reports import figures as F
from percepbench.reports import retrieval_figures as R
from percepbench.results import ALL, RunResults, load_results, records_frame, write_results

from layouts import write_png
from report_data import metric_spec, task_spec

TASK = "toy retrieval"  # a space: file stems use the slug
STEM = "toy_retrieval"
METRICS = ("alpha", "beta.v1")
KS = (1, 5)
LABELS = {f"img{i}": ("cat" if i < 4 else "dog") for i in range(8)}
COLOURS = {f"img{i}": (30 * i, 200 - 20 * i, 90 + 15 * i) for i in range(8)}
MISSING = "img7"  # its file is never written
QUERIES = {"img0": "photo", "img1": "sketch", "img4": "photo", "img5": "sketch"}
# hand-made rankings (top 5, best first, never the query itself)
RANKINGS = {
    "alpha": {"img0": ["img1", "img2", "img4", "img3", "img5"],
              "img1": ["img0", "img2", "img3", "img4", "img5"],
              "img4": ["img5", "img6", "img0", "img7", "img1"],
              "img5": ["img7", "img4", "img6", "img2", "img3"]},
    "beta.v1": {"img0": ["img1", "img4", "img2", "img5", "img3"],
                "img1": ["img5", "img0", "img6", "img2", "img3"],
                "img4": ["img6", "img1", "img5", "img2", "img7"],
                "img5": ["img7", "img0", "img1", "img4", "img6"]},
}
R_RELEVANT = 3  # every query has 3 other images of its class in the gallery


def distances(metric: str, query: str) -> list[float]:
    base = 0.1 if metric == "alpha" else 2.0
    return [round(base * (j + 1) + 0.01 * int(query[3:]), 6) for j in range(5)]


def oracle(hits: list[bool], k: int) -> dict[str, float]:
    """Per-query measures as fractions, by the textbook definitions."""
    top = hits[:k]
    ap = sum(sum(hits[:i + 1]) / (i + 1) for i in range(k) if hits[i]) / min(k, R_RELEVANT)
    return {f"recall@{k}": float(any(top)), f"precision@{k}": sum(top) / k, f"map@{k}": ap}


def make_samples(image_dir: Path) -> pd.DataFrame:
    rows = []
    for metric in METRICS:
        for query, subset in QUERIES.items():
            ids = RANKINGS[metric][query]
            hits = [LABELS[i] == LABELS[query] for i in ids]
            row = {"task": TASK, "metric": metric, "item": query, "subset": subset, "label": LABELS[query],
                   "path": str(image_dir / f"{query}.png"), "relevant": R_RELEVANT, "topk_ids": ids,
                   "topk_paths": [str(image_dir / f"{i}.png") for i in ids],
                   "topk_distances": distances(metric, query), "topk_hits": hits}
            for k in KS:
                row.update(oracle(hits, k))
            row["score"] = row["recall@1"]
            rows.append(row)
    return pd.DataFrame(rows)


def make_records(samples: pd.DataFrame) -> pd.DataFrame:
    """Mean x 100 per (metric, group, measure), with a made-up CI of +-(3 + group size) around it."""
    measures = [f"{fam}@{k}" for fam in ("recall", "precision", "map") for k in KS]
    groups = {"photo": ["img0", "img4"], "sketch": ["img1", "img5"], ALL: list(QUERIES),
              "class:cat": ["img0", "img1"], "class:dog": ["img4", "img5"]}
    records = []
    for metric in METRICS:
        for subset, items in groups.items():
            sel = samples[(samples["metric"] == metric) & samples["item"].isin(items)]
            for measure in measures:
                value = float(sel[measure].mean() * 100)
                half = 3.0 + len(items)
                records.append({"task": TASK, "subset": subset, "metric": metric, "measure": measure,
                                "value": value, "ci_low": max(0.0, value - half), "ci_high": min(100.0, value + half),
                                "n": len(items)})
    return records_frame(records)


def make_retrieval_run(path: Path, *, samples: bool = True) -> Path:
    images = path / "images"
    for name, colour in COLOURS.items():
        if name != MISSING:
            write_png(images / f"{name}.png", colour, (12, 9))
    frame = make_samples(images)
    spec = task_spec(TASK, "retrieval", "recall@1")
    meta = {"percepbench_version": "0.1.0", "seed": 0, "started": "2026-01-02T03:04:05+00:00",
            "config": {"metrics": list(METRICS), "tasks": [TASK], "task_args": {TASK: {"ks": "1+5"}}},
            "metrics": {m: metric_spec(m) for m in METRICS}, "tasks": {TASK: spec},
            "task_protocols": {TASK: {"kind": "retrieval", "ks": list(KS)}}, "protocol": [], "failed": []}
    run = path / "run"
    write_results(run, RunResults(meta=meta, records=make_records(frame), samples=frame if samples else None))
    return run


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    run = make_retrieval_run(tmp_path_factory.mktemp("retrieval"))
    return run, build_report(run)


@pytest.fixture(scope="module")
def loaded(built):
    return load_results(built[0])


def hits_of(metric: str, query: str) -> list[bool]:
    return [LABELS[i] == LABELS[query] for i in RANKINGS[metric][query]]


# --------------------------------------------------------------------------------------------- units

def test_is_percent_covers_retrieval_measures():
    assert all(F.is_percent(m) for m in ("recall@1", "precision@5", "map@10", "2afc_accuracy"))
    assert not any(F.is_percent(m) for m in ("recall", "map@", "srocc", "recall@k"))


def test_kind_is_guessed_from_rankings_when_meta_lacks_it(loaded):
    samples = loaded.samples
    assert F.task_kind(TASK, {}, samples) == "retrieval"
    assert F.task_kind(TASK, {}, samples.drop(columns=["topk_ids"])) is None


def test_doctests():
    result = doctest.testmod(R, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_pick_queries_prefers_top1_disagreement_then_item_id(loaded):
    samples = loaded.samples
    # img1: the metrics' top-1 differ and one hits, one misses; img4: top-1 differ, both hit;
    # img0 and img5: the same top-1 -> by item id
    assert R.pick_queries(samples, list(METRICS), 4) == ["img1", "img4", "img0", "img5"]
    assert R.pick_queries(samples, list(METRICS), 2) == ["img1", "img4"]
    # one metric cannot disagree with itself: the first queries by id
    assert R.pick_queries(samples, ["alpha"], 3) == ["img0", "img1", "img4"]


# ------------------------------------------------------------------------------------ curve figure

def test_curve_figure_plots_the_pooled_records(loaded):
    records = loaded.records
    fig = R.retrieval_figure(records, TASK, palette=metric_palette(METRICS), metrics=list(METRICS))
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_ylabel() for ax in axes] == ["recall@k (%)", "precision@k (%)", "mAP@k (%)"]
    pal = metric_palette(METRICS)
    for ax, family in zip(axes, ("recall", "precision", "map"), strict=True):
        lines = {str(ln.get_gid()): ln for ln in ax.get_lines() if str(ln.get_gid()).startswith("retrieval-line:")}
        assert set(lines) == {f"retrieval-line:{family}:{m}" for m in METRICS}
        whiskers = set()
        for coll in ax.collections:
            for seg in coll.get_segments():
                if len(seg) == 2 and seg[0][0] == seg[1][0]:  # vertical: an error bar
                    whiskers.add((round(float(min(seg[:, 1])), 9), round(float(max(seg[:, 1])), 9)))
        for metric in METRICS:
            want = (records[(records["subset"] == ALL) & (records["metric"] == metric)]
                    .set_index("measure").loc[[f"{family}@{k}" for k in KS]])
            line = lines[f"retrieval-line:{family}:{metric}"]
            np.testing.assert_allclose(line.get_ydata(), want["value"].to_numpy(float), rtol=0, atol=1e-9)
            x = np.asarray(line.get_xdata(), float)
            np.testing.assert_allclose(x, KS, rtol=0.11)  # spread along x by at most a factor of ~1.1
            assert np.allclose(line.get_color(), pal[metric][:3]) or line.get_color() == pal[metric]
            for lo, hi in zip(want["ci_low"], want["ci_high"], strict=True):
                assert (round(lo, 9), round(hi, 9)) in whiskers
        assert [t.get_text() for t in ax.get_xticklabels()] == [str(k) for k in KS]
    title = fig.get_suptitle()
    assert "95% CI" in title and "'all'" in title


def test_curve_hand_values():
    """The oracle itself, checked by hand: alpha on img4 ranks dog, dog, cat, dog, cat."""
    m = oracle(hits_of("alpha", "img4"), 5)
    assert m == {"recall@5": 1.0, "precision@5": 0.6, "map@5": pytest.approx((1 + 1 + 3 / 4) / 3)}


def test_pooled_subset_without_all_uses_the_only_plain_subset(loaded):
    recs = loaded.records
    only = recs[recs["subset"].isin(["photo", "class:cat"])]
    table = R.curve_table(only, TASK)
    assert set(table["subset"]) == {"photo"} and len(table) == len(METRICS) * 3 * len(KS)
    assert R.curve_table(recs[recs["subset"].isin(["photo", "sketch"])], TASK).empty


# ------------------------------------------------------------------------------------------- grid

def test_grid_layout_colours_and_missing_tiles(loaded):
    grid = R.neighbour_grid(loaded.samples, TASK, metrics=list(METRICS), palette=metric_palette(METRICS))
    assert grid.queries == ["img1", "img4", "img0", "img5"]
    assert [(r.item, r.metric) for r in grid.rows] == [(q, m) for q in grid.queries for m in METRICS]
    missing_path = None
    for row in grid.rows:
        assert len(row.tiles) == 1 + 5
        query, *neighbours = row.tiles
        assert query.rank == 0 and query.id == row.item and query.hit is None
        assert [t.id for t in neighbours] == RANKINGS[row.metric][row.item]
        want_hits = hits_of(row.metric, row.item)
        assert [t.hit for t in neighbours] == want_hits
        assert [t.frame for t in neighbours] == [R.GREEN if h else R.RED for h in want_hits]
        np.testing.assert_allclose([t.distance for t in neighbours], distances(row.metric, row.item))
        for tile in row.tiles:
            x0, y0, x1, y1 = tile.box
            assert x1 - x0 == y1 - y0 == R.THUMB
            assert tuple(grid.mosaic[y0 + 1, x0 + 1]) == tile.frame  # the frame
            centre = tuple(int(v) for v in grid.mosaic[(y0 + y1) // 2, (x0 + x1) // 2])
            assert tile.missing == (tile.id == MISSING)
            if tile.missing:
                assert centre == R.MISSING_GREY
                missing_path = tile.path
            else:
                assert centre == COLOURS[tile.id]  # the image's own colour, fitted into the square
    assert missing_path is not None and grid.missing == [missing_path]  # once, though drawn in 4 tiles
    texts = [t.get_text() for t in grid.figure.axes[0].texts]
    assert texts.count("missing") == sum(t.missing for r in grid.rows for t in r.tiles) == 4
    for metric in METRICS:
        assert f"{distances(metric, 'img0')[0]:.4g}" in texts
        assert metric in texts


def test_grid_caps_rows_and_queries(loaded):
    grid = R.neighbour_grid(loaded.samples, TASK, metrics=list(METRICS), n_queries=2, show_k=3, max_rows=3)
    # 3 rows for 2 metrics: one query only
    assert grid.queries == ["img1"] and len(grid.rows) == 2
    assert all(len(r.tiles) == 4 for r in grid.rows)
    assert R.neighbour_grid(loaded.samples.iloc[0:0], TASK) is None


def test_raster_svg_keeps_size_and_picks_the_smaller_encoding():
    rng = np.random.default_rng(0)
    photo = np.clip(rng.normal(128, 40, (40, 60, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, format="PNG")
    png = buf.getvalue()
    svg = R.raster_svg(png)
    assert 'width="60" height="40" viewBox="0 0 60 40"' in svg and "data:image/jpeg;base64," in svg
    lossless = R.raster_svg(png, jpeg_quality=None)
    data = re.search(r"data:image/png;base64,([^\"]+)", lossless).group(1)
    assert base64.b64decode(data) == png


# ----------------------------------------------------------------------------------------- report

def test_report_writes_both_figures_and_no_bar_charts(built):
    run, out = built
    names = {p.name for p in out["figures"]}
    assert names == {f"retrieval_{STEM}.png", f"retrieval_{STEM}.svg", f"neighbours_{STEM}.png"}
    report = run / "report"
    assert all((report / n).stat().st_size > 0 for n in names)
    grid = load_results(run)
    expect = R.neighbour_grid(grid.samples, TASK, metrics=["alpha", "beta.v1"])
    with Image.open(report / f"neighbours_{STEM}.png") as img:
        png = np.asarray(img.convert("RGB")).astype(int)
    assert png.shape == expect.mosaic.shape  # one image pixel per mosaic pixel
    for row in expect.rows:
        for tile in row.tiles:
            x0, y0, _, _ = tile.box
            assert np.abs(png[y0 + 2, x0 + 2] - np.array(tile.frame)).max() <= 2


def test_report_html_and_markdown_reference_the_figures(built):
    run, out = built
    html, md = out["html"].read_text(), out["markdown"].read_text()
    assert f'id="fig-retrieval_{STEM}"' in html and f'id="fig-neighbours_{STEM}"' in html
    grid_html = html.split(f'id="fig-neighbours_{STEM}"', 1)[1].split("</figure>", 1)[0]
    m = re.search(r'<image [^>]*href="data:image/(?:png|jpeg);base64,([A-Za-z0-9+/=]{500,})"', grid_html)
    assert m is not None
    with Image.open(io.BytesIO(base64.b64decode(m.group(1)))) as img:
        inlined = np.asarray(img.convert("RGB")).astype(int)
    with Image.open(run / "report" / f"neighbours_{STEM}.png") as img:
        png = np.asarray(img.convert("RGB")).astype(int)
    assert inlined.shape == png.shape and np.abs(inlined - png).mean() < 3  # the same picture
    assert f"](retrieval_{STEM}.png)" in md and f"](neighbours_{STEM}.png)" in md
    missing = str(run.parent / "images" / f"{MISSING}.png")
    for text in (html, md.replace("\\", "")):
        assert text.count("could not be opened") == 1
        assert text.count(missing) == 1
    assert "agreement and margin figures apply to 2AFC and odd-one-out tasks only" in html
    # the nine headline tables stay
    assert len(re.findall(r'<table id="head-toy_retrieval-', html)) == 3 * len(KS)
    assert '<table id="head-toy_retrieval-recall_1" class="sortable">' in html


def test_report_without_samples_notes_the_skipped_grid(tmp_path):
    run = make_retrieval_run(tmp_path, samples=False)
    out = build_report(run, formats=["svg"])
    assert {p.name for p in out["figures"]} == {f"retrieval_{STEM}.svg"}
    html = out["html"].read_text()
    assert "nearest-neighbour grid was skipped" in html and f'id="fig-retrieval_{STEM}"' in html
    assert f"neighbours_{STEM}" not in html
