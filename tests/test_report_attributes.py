"""Reports of the attribute analyses: edit curves, sensitivity heatmap, contest heatmaps, reliance bars.

The run directory is synthetic: three analysis tasks (kind ``analysis``) whose records are written here by
hand with :func:`percepbench.results.write_results` — edit curves (``nd@<s>`` per attribute, ``auc``,
``median_distance``), attribute contests (``p_first_closer`` per ``X~Y``, some pairs in one orientation
only, one in both) and foreground reliance (``foreground_reliance`` per mode). The oracles are the
hand-written tables below (and 100 − value for a mirrored contest cell), never values from the code under
test; the figures are checked through their matplotlib artists (line data, band polygons, heatmap arrays,
bar widths, whisker segments).
"""

from __future__ import annotations

import doctest
import html as htmllib
import math
import re

import numpy as np
import pytest

from percepbench.reports import attribute_figures as A
from percepbench.reports import build_report, metric_palette
from percepbench.reports import figures as F
from percepbench.results import RunResults, load_results, records_frame, write_results

from report_data import metric_spec, task_spec

METRICS = ("alpha", "beta.v1", "gamma")
CURVES, CONTESTS, RELIANCE = "attr_curves", "attr_contests", "attr_reliance"
STRENGTHS = (0.125, 0.25, 0.5, 0.75, 1.0)
# recorded in this order; "vignette" is not a protocol attribute, so its panel comes last
ATTRS = ("vignette", "blur", "hue", "jpeg", "rotation", "fg_colour")
PANEL_ORDER = ["hue", "blur", "jpeg", "rotation", "fg_colour", "vignette"]
SLOPE = {"alpha": 1.3, "beta.v1": 0.6, "gamma": 0.25}
BEND = {"vignette": 0.2, "blur": 0.5, "hue": 1.0, "jpeg": 0.3, "rotation": 0.8, "fg_colour": 1.1}
MISSING_CURVE = ("gamma", "rotation")  # no records: no line, no auc cell
N_IMAGES = 40


def nd(metric: str, attribute: str, s: float) -> float:
    """A hand-made curve value in % of the unrelated-pair median (rounded so that the records hold exactly
    these numbers)."""
    return round(100 * SLOPE[metric] * BEND[attribute] * s ** 0.7, 6)


def ci(value: float, s: float) -> tuple[float, float]:
    half = round(4 + 10 * s, 6)
    return round(value - half, 6), round(value + half, 6)


AUC = {(m, a): round(5 + 10 * i + 1.3 * j, 4) for i, m in enumerate(METRICS) for j, a in enumerate(ATTRS)
       if (m, a) != MISSING_CURVE}
MEDIAN = {"alpha": 0.41, "beta.v1": 2.5, "gamma": 17.0}  # raw unrelated-pair medians
IDENTICAL = {"alpha": 0.0, "beta.v1": 0.0, "gamma": -100.0}  # raw identical-pair medians (PSNR-like gamma)
# (metric, "X~Y") -> % of images where the X-edited image was judged closer
CONTEST = {
    ("alpha", "hue~blur"): 70.0, ("alpha", "blur~noise"): 22.5, ("alpha", "hue~noise"): 62.0,
    ("alpha", "noise~hue"): 35.0,  # both orientations: each cell keeps its own record
    ("beta.v1", "hue~blur"): 40.0, ("beta.v1", "noise~blur"): 90.0,
    ("gamma", "rotation~hue"): 12.5,
}
BAD_CONTEST = "hue"  # a p_first_closer subset that is not X~Y: noted, not drawn
RELY = {("alpha", "swap"): -20.0, ("alpha", "grey"): 15.0, ("alpha", "blur"): 5.0,
        ("beta.v1", "swap"): 35.0, ("beta.v1", "grey"): 60.0, ("beta.v1", "blur"): 41.0,
        ("gamma", "swap"): 70.0, ("gamma", "grey"): -5.0}  # gamma has no blur record


def rec(task, subset, metric, measure, value, lo, hi, n=N_IMAGES):
    return {"task": task, "subset": subset, "metric": metric, "measure": measure, "value": value,
            "ci_low": lo, "ci_high": hi, "n": n}


def make_records(*, auc: bool = True, reliance: bool = True, contests: bool = True) -> list[dict]:
    out = []
    for metric in METRICS:
        for attribute in ATTRS:
            if (metric, attribute) == MISSING_CURVE:
                continue
            for s in STRENGTHS:
                v = nd(metric, attribute, s)
                out.append(rec(CURVES, attribute, metric, f"nd@{s:g}", v, *ci(v, s)))
            if auc:
                a = AUC[metric, attribute]
                out.append(rec(CURVES, attribute, metric, "auc", a, a - 2, a + 3))
        out.append(rec(CURVES, "unrelated", metric, "median_distance", MEDIAN[metric], math.nan, math.nan, 200))
        out.append(rec(CURVES, "identical", metric, "median_distance", IDENTICAL[metric], math.nan, math.nan))
    if contests:
        for (metric, subset), v in CONTEST.items():
            out.append(rec(CONTESTS, subset, metric, "p_first_closer", v, v - 8, v + 9, 30))
        out.append(rec(CONTESTS, BAD_CONTEST, "alpha", "p_first_closer", 50.0, 40.0, 60.0, 30))
        for metric in METRICS:  # the pooled subset over all pairs: neither a cell nor an ignored subset
            out.append(rec(CONTESTS, "all", metric, "p_first_closer", 48.0, 44.0, 52.0, 300))
    if reliance:
        for (metric, mode), v in RELY.items():
            out.append(rec(RELIANCE, mode, metric, "foreground_reliance", v, v - 11, v + 7, 25))
    return out


def make_attr_run(path, *, tasks=(CURVES, CONTESTS, RELIANCE), **kw):
    meta = {"percepbench_version": "0.1.0", "seed": 0, "started": "2026-01-02T03:04:05+00:00",
            "config": {"metrics": list(METRICS), "tasks": list(tasks)},
            "metrics": {m: metric_spec(m) for m in METRICS},
            "tasks": {t: task_spec(t, "analysis", "auc") for t in tasks},
            "task_protocols": {t: {"kind": "analysis"} for t in tasks}, "protocol": [], "failed": []}
    write_results(path, RunResults(meta=meta, records=records_frame(make_records(**kw)), samples=None))
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    run = make_attr_run(tmp_path_factory.mktemp("attributes") / "run")
    return run, build_report(run)


@pytest.fixture(scope="module")
def records(built):
    return load_results(built[0]).records


PAL = metric_palette(METRICS)


def heatmap_values(ax) -> np.ndarray:
    """The cell values a seaborn heatmap drew (NaN where masked), as rows x columns."""
    mesh = ax.collections[0]
    arr = mesh.get_array()
    rows, cols = len(ax.get_yticks()), len(ax.get_xticks())
    return np.ma.filled(np.ma.asarray(arr, dtype=float), np.nan).reshape(rows, cols)


def tick_texts(labels) -> list[str]:
    return [t.get_text().replace("\n", "") for t in labels]


def vertical_whiskers(ax) -> set[tuple[float, float]]:
    """(low, high) of every horizontal error bar segment of an axes (reliance whiskers are along x)."""
    out = set()
    for coll in ax.collections:
        for seg in coll.get_segments():
            if len(seg) == 2 and seg[0][1] == seg[1][1]:
                out.add((round(float(min(seg[:, 0])), 9), round(float(max(seg[:, 0])), 9)))
    return out


# ------------------------------------------------------------------------------------------- units

def test_doctests():
    result = doctest.testmod(A, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_strength_and_contest_parsing():
    assert [A.parse_strength(m) for m in ("nd@0.125", "nd@.5", "nd@1", "nd@2e-1")] == [0.125, 0.5, 1.0, 0.2]
    assert [A.parse_strength(m) for m in ("nd@", "nd@-1", "auc", "xnd@1", "nd@1x")] == [None] * 5
    assert A.parse_contest("fg_colour~bg_colour") == ("fg_colour", "bg_colour")
    assert [A.parse_contest(s) for s in ("hue", "~hue", "hue~", "hue~hue", "a~b~c")] == [None] * 5
    assert F.is_percent("p_first_closer") and not F.is_percent("foreground_reliance")


def test_handled_measures_follow_names_not_tasks():
    # an auc beside nd@ curves (or in an analysis task) is the sensitivity summary; elsewhere it is generic
    assert A.handled_measures(["nd@1", "auc", "median_distance"]) == {"nd@1", "auc", "median_distance"}
    assert A.handled_measures(["auc", "2afc_accuracy"], "2afc") == set()
    assert A.handled_measures(["auc", "median_distance"], "analysis") == {"auc", "median_distance"}
    assert A.handled_measures(["p_first_closer", "foreground_reliance", "srocc"]) == {
        "p_first_closer", "foreground_reliance"}


# ------------------------------------------------------------------------------------------ curves

def test_curves_plot_the_records_from_the_origin(records):
    fig = A.curves_figure(records, CURVES, palette=PAL)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title().split(" (")[0] for ax in axes] == PANEL_ORDER
    for ax, attribute in zip(axes, PANEL_ORDER, strict=True):
        lines = {str(ln.get_gid()): ln for ln in ax.get_lines()}
        unrelated = lines.pop("attr-unrelated")
        assert list(unrelated.get_ydata()) == [100.0, 100.0] and unrelated.get_linestyle() == "--"
        want_metrics = [m for m in METRICS if (m, attribute) != MISSING_CURVE]
        assert set(lines) == {f"attr-line:{attribute}:{m}" for m in want_metrics}
        bands = {str(c.get_gid()): c for c in ax.collections if str(c.get_gid()).startswith("attr-band:")}
        assert set(bands) == {f"attr-band:{attribute}:{m}" for m in want_metrics}
        for metric in want_metrics:
            line = lines[f"attr-line:{attribute}:{metric}"]
            np.testing.assert_array_equal(line.get_xdata(), [0.0, *STRENGTHS])
            np.testing.assert_allclose(line.get_ydata(), [0.0] + [nd(metric, attribute, s) for s in STRENGTHS],
                                       rtol=0, atol=1e-12)
            assert np.allclose(line.get_color(), PAL[metric])
            verts = {(round(float(x), 9), round(float(y), 9))
                     for path in bands[f"attr-band:{attribute}:{metric}"].get_paths() for x, y in path.vertices}
            assert (0.0, 0.0) in verts  # the band starts at the origin too
            for s in STRENGTHS:
                lo, hi = ci(nd(metric, attribute, s), s)
                assert (s, round(lo, 9)) in verts and (s, round(hi, 9)) in verts
    legend = [t.get_text().replace("\n", "") for t in fig.legends[0].get_texts()]
    assert legend == [*METRICS, "median unrelated pair"]
    title = fig.get_suptitle().replace("\n", " ")
    assert "95% CI" in title and "100 = the median distance between unrelated images" in title


def test_curve_keeps_a_recorded_strength_zero():
    recs = records_frame([rec("t", "hue", "alpha", "nd@1", 90.0, 80.0, 100.0),
                          rec("t", "hue", "alpha", "nd@0", -3.0, -12.0, 1.0)])
    fig = A.curves_figure(recs, "t", palette=PAL)
    (line,) = [ln for ln in fig.axes[0].get_lines() if ln.get_gid() == "attr-line:hue:alpha"]
    assert list(line.get_xdata()) == [0.0, 1.0] and list(line.get_ydata()) == [-3.0, 90.0]
    bottom, top = fig.axes[0].get_ylim()
    assert bottom < -12.0 and top > 100.0  # the CI below 0 and the unrelated line both fit


def test_sensitivity_heatmap_holds_the_auc_records(records):
    fig = A.sensitivity_figure(records, CURVES)
    ax = fig.axes[0]
    assert tick_texts(ax.get_yticklabels()) == list(METRICS)
    assert tick_texts(ax.get_xticklabels()) == PANEL_ORDER
    want = np.array([[AUC.get((m, a), np.nan) for a in PANEL_ORDER] for m in METRICS])
    np.testing.assert_allclose(heatmap_values(ax), want, rtol=0, atol=1e-12)  # NaN where no record
    annotations = [t.get_text() for t in ax.texts]
    assert annotations == [f"{v:.1f}" for v in want.ravel() if np.isfinite(v)]


# ---------------------------------------------------------------------------------------- contests

def test_contest_matrices_mirror_one_sided_pairs(records):
    mats, ignored = A.contest_matrices(records, CONTESTS)
    assert ignored == [BAD_CONTEST]
    assert list(mats) == list(METRICS)
    attrs = ["hue", "blur", "noise", "rotation"]  # protocol order; noise is not a protocol attribute
    for mat in mats.values():
        assert list(mat.index) == list(mat.columns) == attrs
        assert np.isnan(np.diag(mat.to_numpy(float))).all()
    a, b, g = mats["alpha"], mats["beta.v1"], mats["gamma"]
    assert a.loc["hue", "blur"] == 70.0 and a.loc["blur", "hue"] == 30.0  # mirrored
    assert a.loc["blur", "noise"] == 22.5 and a.loc["noise", "blur"] == 77.5
    assert a.loc["hue", "noise"] == 62.0 and a.loc["noise", "hue"] == 35.0  # both recorded: no mirroring
    assert np.isnan(a.loc["hue", "rotation"]) and np.isnan(a.loc["rotation", "hue"])
    assert b.loc["hue", "blur"] == 40.0 and b.loc["blur", "hue"] == 60.0
    assert b.loc["noise", "blur"] == 90.0 and b.loc["blur", "noise"] == 10.0
    assert g.loc["rotation", "hue"] == 12.5 and g.loc["hue", "rotation"] == 87.5
    assert int(np.isfinite(g.to_numpy(float)).sum()) == 2


def test_contest_figure_draws_the_matrices(records):
    fig = A.contests_figure(records, CONTESTS)
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert [ax.get_title() for ax in panels] == list(METRICS)
    attrs = ["hue", "blur", "noise", "rotation"]
    oracle = {m: np.full((4, 4), np.nan) for m in METRICS}
    for (metric, subset), v in CONTEST.items():
        x, y = subset.split("~")
        oracle[metric][attrs.index(x), attrs.index(y)] = v
    for metric, mat in oracle.items():  # mirror by hand where only one orientation is recorded
        for i in range(4):
            for j in range(4):
                if np.isnan(mat[i, j]) and not np.isnan(mat[j, i]) and (metric, f"{attrs[i]}~{attrs[j]}") not in CONTEST:
                    mat[i, j] = 100 - mat[j, i]
    for ax in panels:
        assert tick_texts(ax.get_yticklabels()) == tick_texts(ax.get_xticklabels()) == attrs
        np.testing.assert_allclose(heatmap_values(ax), oracle[ax.get_title()], rtol=0, atol=1e-12)
        mesh = ax.collections[0]
        assert mesh.norm.vmin == 0 and mesh.norm.vmax == 100
        # centred on 50: the colour of 50 is the middle of the map
        assert np.allclose(mesh.cmap(mesh.norm(50.0)), mesh.cmap(0.5), atol=0.02)
    assert oracle["alpha"][1, 0] == 30.0 and oracle["gamma"][0, 3] == 87.5  # the oracle's own mirror
    title = fig.get_suptitle().replace("\n", " ")
    assert "100 − that value" in title and "(n=30)" in title  # the pooled subset's n=300 is not a cell's


# ---------------------------------------------------------------------------------------- reliance

def test_reliance_bars_and_whiskers(records):
    fig = A.reliance_figure(records, RELIANCE, palette=PAL)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title().split(":")[0] for ax in axes] == ["grey", "blur", "swap"]
    # one metric order in every panel: best first on the first mode (grey)
    assert tick_texts(axes[0].get_yticklabels()) == ["beta.v1", "alpha", "gamma"]
    for ax in axes:
        mode = ax.get_title().split(":")[0]
        bars = {p.get_gid(): p for p in ax.patches if str(p.get_gid()).startswith("reliance-bar:")}
        want = {m: v for (m, md), v in RELY.items() if md == mode}
        assert set(bars) == {f"reliance-bar:{mode}:{m}" for m in want}
        for metric, v in want.items():
            bar = bars[f"reliance-bar:{mode}:{metric}"]
            assert bar.get_x() == 0.0 and bar.get_width() == pytest.approx(v, abs=1e-12)
            assert np.allclose(bar.get_facecolor()[:3], PAL[metric])
        assert vertical_whiskers(ax) == {(v - 11, v + 7) for v in want.values()}
        zero = [ln for ln in ax.get_lines() if list(ln.get_xdata()) == [0.0, 0.0]]
        assert zero, "a vertical line at 0"
        lo, hi = ax.get_xlim()
        assert lo == -hi and hi >= 77
    assert "Whiskers: the records' 95% CI" in fig.get_suptitle().replace("\n", " ")


# ------------------------------------------------------------------------------------------ report

def test_report_has_the_attribute_figures_and_no_bars(built):
    _, out = built
    stems = {p.stem for p in out["figures"]}
    assert stems == {f"attributes_{CURVES}", f"sensitivity_{CURVES}", f"contests_{CONTESTS}", f"reliance_{RELIANCE}"}
    assert {p.suffix for p in out["figures"]} == {".png", ".svg"}
    html, md = out["html"].read_text(), out["markdown"].read_text()
    for stem in stems:
        assert f'id="fig-{stem}"' in html and f"]({stem}.png)" in md
    assert "scores_" not in html and "agreement_" not in html and "margins_" not in html
    # tables: auc and median_distance, never one per strength
    assert sorted(re.findall(r'<table id="(head-attr_curves[^"]*)"', html)) == [
        "head-attr_curves-auc", "head-attr_curves-median_distance"]
    medians = html.split('<table id="head-attr_curves-median_distance"', 1)[1].split("</table>", 1)[0]
    assert re.findall(r"<th[^>]*>([^<]*)</th>", medians) == ["metric", "unrelated", "95% CI", "n", "identical"]
    assert '<table id="head-attr_contests"' in html and '<table id="head-attr_reliance"' in html
    assert "nd@0.125 (" not in html and "— nd@" not in md
    assert "attr_contests — p_first_closer (%)" in html
    assert "attr_curves — auc (% of the median unrelated-pair distance)" in html
    for text in (htmllib.unescape(html), md.replace("\\", "")):
        assert "5 per-strength measures (nd@0.125, nd@0.25, nd@0.5 … nd@1" in text
        assert "results.json" in text
        assert "not 'X~Y' with two different attributes" in text and ": hue" in text


def test_report_without_some_records_still_builds_with_notes(tmp_path):
    # no auc, no contest and no reliance records: the reliance task is in the run but every metric failed
    run = make_attr_run(tmp_path / "run", auc=False, contests=False, reliance=False,
                        tasks=(CURVES, RELIANCE))
    out = build_report(run, formats=["svg"])
    assert {p.name for p in out["figures"]} == {f"attributes_{CURVES}.svg"}
    html = out["html"].read_text()
    assert "no auc records, so the sensitivity heatmap was not drawn" in html
    assert f"{RELIANCE}: no records" in html
    assert sorted(re.findall(r'<table id="(head-attr_curves[^"]*)"', html)) == ["head-attr_curves"]


def test_figures_follow_measures_in_a_renamed_task_of_another_kind(tmp_path):
    """A task the meta does not describe (kind unknown) or of another kind gets the attribute figures
    for the attribute measures and the usual bars for the rest."""
    recs = [dict(r, task="my_reliance") for r in make_records() if r["task"] == RELIANCE]
    recs += [rec("my_reliance", "val", m, "2afc_accuracy", 80.0 + i, 75.0, 85.0) for i, m in enumerate(METRICS)]
    recs += [dict(r, task="plugin_contests") for r in make_records() if r["task"] == CONTESTS]
    meta = {"metrics": {m: metric_spec(m) for m in METRICS},
            "tasks": {"my_reliance": task_spec("my_reliance", "2afc", "2afc_accuracy")}}
    figs, notes = F.make_figures(meta, records_frame(recs), None)
    names = {f.name for f in figs}
    assert names == {"reliance_my_reliance", "scores_my_reliance_2afc_accuracy", "contests_plugin_contests"}
    assert any(n.startswith("plugin_contests: p_first_closer records of 1 subset(s)") for n in notes)
    contests = next(f for f in figs if f.name == "contests_plugin_contests").figure
    assert [ax.get_title() for ax in contests.axes if ax.get_visible() and ax.get_title()] == list(METRICS)
