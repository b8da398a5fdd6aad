"""Reports: figures carry the right content, report.html is self-contained and escaped, report.md fits CI."""

from __future__ import annotations

import doctest
import importlib
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from percepbench.errors import DataError
from percepbench.reports import build_report, metric_palette
from percepbench.reports import figures as F
from percepbench.reports.build import collect
from percepbench.results import RunResults, load_results, records_frame, write_results

from report_data import SUBSETS, make_run

EVIL = "<script>alert(1)</script>"
METRICS = ("alpha", "beta.v1", EVIL, "pipe|metric")
TASK_FIGURES = {
    "toy2afc": ["scores", "agreement", "margins"],
    "toyodd": ["scores", "agreement", "margins"],
}
V1_RUN = Path(__file__).parent / "data" / "v1_run"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("synthetic") / "run", metrics=METRICS)
    return run, build_report(run)


def expected_stems() -> set[str]:
    return {f"{kind}_{task}" for task, kinds in TASK_FIGURES.items() for kind in kinds}


def png_stats(path: Path) -> tuple[float, float, int]:
    """(fraction of non-white pixels, pixel std, number of distinct colours) of an image."""
    img = np.asarray(Image.open(path).convert("RGB"))
    non_white = float((img.min(axis=2) < 245).mean())
    colours = len(np.unique(img.reshape(-1, 3), axis=0))
    return non_white, float(img.std()), colours


# ------------------------------------------------------------------------------------- whole report

def test_build_report_writes_every_figure_html_and_md(built):
    run, out = built
    assert out["out_dir"] == run / "report"
    assert out["html"] == run / "report" / "report.html" and out["html"].is_file()
    assert out["markdown"] == run / "report" / "report.md" and out["markdown"].is_file()
    names = {p.name for p in out["figures"]}
    assert names == {f"{s}.{ext}" for s in expected_stems() for ext in ("png", "svg")}
    assert all(p.parent == run / "report" and p.stat().st_size > 0 for p in out["figures"])


def test_pngs_are_not_blank(built):
    _, out = built
    for path in out["figures"]:
        if path.suffix != ".png":
            continue
        assert path.stat().st_size > 8_000, path.name
        non_white, std, colours = png_stats(path)
        w, h = Image.open(path).size
        assert w >= 300 and h >= 200, path.name
        assert non_white > 0.03, f"{path.name}: {non_white:.3f} non-white"
        assert std > 10 and colours > 30, path.name


def test_svgs_are_deterministic_and_carry_no_date(built, tmp_path):
    run, out = built
    again = build_report(run, tmp_path / "again")
    for path in out["figures"]:
        twin = tmp_path / "again" / path.name
        assert path.read_bytes() == twin.read_bytes(), path.name
        if path.suffix == ".svg":
            text = path.read_text()
            assert "<dc:date>" not in text and text.lstrip().startswith("<?xml")
    assert again["html"].read_text() == out["html"].read_text()
    assert again["markdown"].read_text() == out["markdown"].read_text()


def test_formats_and_errors(tmp_path):
    run = make_run(tmp_path / "run", kinds=("2afc",), metrics=("a", "b"), per_subset=6)
    out = build_report(run, tmp_path / "only_svg", formats=["svg"])
    assert {p.suffix for p in out["figures"]} == {".svg"}
    assert "](scores_toy2afc.svg)" in out["markdown"].read_text()
    with pytest.raises(ValueError, match="gif"):
        build_report(run, tmp_path / "x", formats=("gif",))


def test_unreadable_run_dirs_raise_data_error_naming_the_file(tmp_path):
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "nothing"))):
        build_report(tmp_path / "nothing")
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    with pytest.raises(DataError, match=re.escape(str(garbage / "results.json"))):
        build_report(garbage)
    (garbage / "results.json").write_text("{not json")
    with pytest.raises(DataError, match=re.escape(str(garbage / "results.json"))):
        build_report(garbage)
    (garbage / "results.json").write_text(json.dumps({"schema": "something-else"}))
    with pytest.raises(DataError, match="not a percepbench results file"):
        build_report(garbage)
    assert not (garbage / "report").exists()


def test_incomplete_run_without_samples(tmp_path):
    run = make_run(tmp_path / "run", samples=False, complete=False)
    out = build_report(run)
    stems = {p.stem for p in out["figures"]}
    assert not any(s.startswith(("agreement_", "margins_")) for s in stems)
    assert stems == {"scores_toy2afc", "scores_toyodd"}
    html, md = out["html"].read_text(), out["markdown"].read_text()
    for text in (html, md):
        assert "no per-item samples" in text
        assert "incomplete" in text
    assert "**incomplete**" in md


def test_the_committed_v1_run_reports(tmp_path):
    """A run directory written by schema version 1 (tests/data/v1_run) still gives the full report."""
    out = build_report(V1_RUN, tmp_path / "report")
    stems = {p.stem for p in out["figures"]}
    assert stems == {"scores_severity2afc", "agreement_severity2afc", "margins_severity2afc"}
    md = out["markdown"].read_text()
    # pooled 2AFC accuracy of the v1 records, best first (a tie ordered by name), as written in the file:
    # lpips.alex 93.75 [81.25, 100], ssim 93.75 [76.40625, 100], psnr 87.5 [75, 100], 16 items each
    rows = re.findall(r"^\| (\S+) \| ([\d.]+) \| \[([\d.]+), ([\d.]+)\] \| (\d+) \|$", md, flags=re.M)
    assert rows == [("lpips.alex", "93.8", "81.2", "100.0", "16"), ("ssim", "93.8", "76.4", "100.0", "16"),
                    ("psnr", "87.5", "75.0", "100.0", "16")]
    assert "8 per-subset columns in report.html" in md and "## Failures\n\nNone." in md
    html = out["html"].read_text()
    assert "bundled photographs" in html and "Run complete." in html
    assert sorted(p.name for p in V1_RUN.iterdir()) == ["results.json", "samples.parquet"]  # nothing written there


def test_run_that_has_not_scored_anything_yet(tmp_path):
    meta = {"tasks": {"nights": {"kind": "2afc", "measure": "2afc_accuracy"}}, "metrics": {"psnr": {}},
            "failed": [{"task": "nights", "metric": "psnr", "kind": "data", "error": "DataError: no data"}]}
    write_results(tmp_path / "run", RunResults(meta=meta, records=records_frame([]), complete=False))
    out = build_report(tmp_path / "run")
    assert out["figures"] == []
    html, md = out["html"].read_text(), out["markdown"].read_text()
    assert "No records for this task." in html and "No records for this task." in md
    assert "DataError: no data" in html and "DataError: no data" in md


def test_single_metric_run(tmp_path):
    run = make_run(tmp_path / "run", metrics=("solo",), kinds=("2afc", "odd_one_out"), per_subset=8)
    out = build_report(run)
    stems = {p.stem for p in out["figures"]}
    assert "scores_toy2afc" in stems and "margins_toy2afc" in stems
    assert "agreement_toy2afc" not in stems
    assert "agreement needs per-item samples of at least two metrics" in out["html"].read_text()
    res = load_results(run)
    fig = F.score_figure(res.records, "toy2afc", palette=metric_palette(["solo"]))
    for ax in fig.axes:
        if ax.get_visible():
            assert len(score_bars(ax)) == 1


@pytest.mark.slow
def test_many_metrics_and_subsets(tmp_path):
    metrics = [f"family_{i % 5}.a_rather_long_variant_name_{i:02d}" for i in range(24)]
    subsets = [f"subset_{i}" for i in range(8)]
    run = make_run(tmp_path / "run", metrics=metrics, subsets=subsets, per_subset=6, kinds=("2afc",))
    out = build_report(run, formats=("png",))
    md = out["markdown"].read_text()
    assert len(md.encode()) < 1_000_000
    assert "8 per-subset columns in report.html" in md  # too many subsets for the Markdown table
    for m in metrics:
        assert f"| {m} |" in md
    pal = metric_palette(metrics)
    assert len(set(pal.values())) == 24
    res = load_results(run)
    fig = F.score_figure(res.records, "toy2afc", palette=pal)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title().split(" (")[0] for ax in visible] == ["all", *subsets]
    assert all(len(score_bars(ax)) == 24 for ax in visible)


@pytest.mark.slow
def test_real_run_through_the_runner(tmp_path):
    from percepbench.config import RunConfig
    from percepbench.runner import run

    config = RunConfig(metrics=["psnr", "ssim"], tasks=["severity2afc"],
                       task_args={"severity2afc": {"per_family": 2}}, progress=False, n_boot=200,
                       out=str(tmp_path / "run"))
    run(config)
    out = build_report(tmp_path / "run")
    stems = {p.stem for p in out["figures"]}
    assert stems == {"scores_severity2afc", "agreement_severity2afc", "margins_severity2afc"}
    html = out["html"].read_text()
    assert "psnr" in html and "ssim" in html and "bundled photographs" in html
    md = out["markdown"].read_text()
    assert re.search(r"^\| psnr \| \d+\.\d \| \[", md, flags=re.M)


def test_reports_do_not_import_torch():
    code = ("import sys, percepbench.reports, percepbench.reports.build, percepbench.reports.html, "
            "percepbench.reports.markdown; "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]; "
            "assert not bad, bad[:5]")
    subprocess.run([sys.executable, "-c", code], check=True)
    # summary_table (printed by every run) does not pay for matplotlib
    light = ("import sys; from percepbench.reports import summary_table; "
             "assert 'matplotlib' not in sys.modules and 'seaborn' not in sys.modules")
    subprocess.run([sys.executable, "-c", light], check=True)


@pytest.mark.parametrize("name", ["percepbench.reports.figures", "percepbench.reports.html",
                                  "percepbench.reports.markdown"])
def test_doctests(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# ------------------------------------------------------------------------------------------ scores

def score_bars(ax) -> list:
    return [p for p in ax.patches if str(p.get_gid() or "").startswith("score-bar:")]


def test_score_figure_one_bar_per_metric_best_first(built):
    run, _ = built
    res = load_results(run)
    pal = metric_palette(METRICS)
    fig = F.score_figure(res.records, "toy2afc", palette=pal)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["all (n=72)", *(f"{s} (n=24)" for s in SUBSETS)]
    recs = res.records[res.records["task"] == "toy2afc"]
    for ax in visible:
        subset = ax.get_title().split(" (")[0]
        bars = score_bars(ax)
        assert len(bars) == len(METRICS)
        expected = recs[recs["subset"] == subset].sort_values(["value", "metric"], ascending=[False, True])
        lefts = {b.get_x() for b in bars}
        assert len(lefts) == 1
        values = [b.get_x() + b.get_width() for b in bars]
        np.testing.assert_allclose(values, expected["value"].to_numpy())
        labels = [t.get_text().replace("\n", "") for t in ax.get_yticklabels()]
        assert labels == expected["metric"].tolist()
        for bar, metric in zip(bars, labels, strict=True):  # the run's palette, on every panel
            assert tuple(bar.get_facecolor()[:3]) == pytest.approx(pal[metric])
    # the saved SVG carries one id per bar of the pooled panel
    svg = (run / "report" / "scores_toy2afc.svg").read_text()
    assert len(re.findall(r'id="score-bar:0:\d+"', svg)) == len(METRICS)
    assert len(re.findall(r'id="score-bar:\d+:\d+"', svg)) == len(METRICS) * (len(SUBSETS) + 1)
    assert EVIL not in svg and "&lt;script&gt;" in svg


def test_failed_pair_leaves_its_metric_out(built):
    run, _ = built
    res = load_results(run)
    fig = F.score_figure(res.records, "toyodd", palette=metric_palette(METRICS))
    (ax,) = [a for a in fig.axes if a.get_visible()]
    assert len(score_bars(ax)) == len(METRICS) - 1
    assert METRICS[-1] not in [t.get_text() for t in ax.get_yticklabels()]


def test_reference_values_are_drawn(tmp_path):
    metrics = ("dreamsim.ensemble", "dreamsim.synclr_vitb16", "psnr")
    run = make_run(tmp_path / "nights", twoafc_task="nights", subsets=("test_imagenet", "test_no_imagenet"),
                   metrics=metrics, kinds=("2afc",), per_subset=8)
    res = load_results(run)
    fig = F.score_figure(res.records, "nights", palette=metric_palette(metrics), meta=res.meta)
    pooled = fig.axes[0]
    assert pooled.get_title().startswith("all")
    marks = [line for line in pooled.lines if line.get_marker() == "D"]
    assert sorted(float(m.get_xdata()[0]) for m in marks) == [95.9, 96.2]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("published" in t and "DreamSim README" in t for t in labels)
    assert not any(line.get_marker() == "D" for ax in fig.axes[1:] for line in ax.lines)
    # on another split the published test numbers do not apply
    other = dict(res.meta, config={"task_args": {"nights": {"subset": "val"}}})
    assert F.references_for("nights", "2afc_accuracy", other) == []

    run = make_run(tmp_path / "bapps", twoafc_task="bapps_2afc", metrics=("lpips.alex", "psnr"),
                   kinds=("2afc",), per_subset=8)
    res = load_results(run)
    fig = F.score_figure(res.records, "bapps_2afc", palette=metric_palette(["lpips.alex", "psnr"]),
                         meta=res.meta)
    human = [line for line in fig.axes[0].lines if line.get_linestyle() == "--"]
    assert len(human) == 1 and float(human[0].get_xdata()[0]) == 73.9
    assert "≈ human (unverified): 73.9" in [t.get_text() for t in fig.legends[0].get_texts()]
    table = {(r.task, r.metric): r for r in F.REFERENCES}
    assert table[("things", None)].value == 67.5 and table[("things", None)].status == "unverified"
    assert table[("nights", "dreamsim.ensemble")].status == "published"


def test_quality_score_anchors_are_drawn_with_their_source(tmp_path):
    """Published SRCC (REFERENCE.md: piq's README table and pyiqa's benchmark CSV) beside percepbench's srcc
    bars: one marker shape per source, only on the pooled panel, and not when a type filter changed the set."""
    rows = []
    for metric, value in (("lpips.vgg", 0.7), ("psnr", 0.6), ("toy", 0.5)):
        for subset in ("all", "01_additive_gaussian_noise"):
            rows.append({"task": "tid2013", "subset": subset, "metric": metric, "measure": "srcc", "value": value,
                         "ci_low": value - 0.05, "ci_high": value + 0.05, "n": 30})
    records = pd.DataFrame(rows)
    meta = {"config": {"task_args": {}}}
    fig = F.score_figure(records, "tid2013", palette=metric_palette(["lpips.vgg", "psnr", "toy"]), measure="srcc",
                         meta=meta)
    pooled = fig.axes[0]
    assert pooled.get_title().startswith("all")
    marks = sorted((line.get_marker(), float(line.get_xdata()[0])) for line in pooled.lines
                   if line.get_marker() in ("D", "^"))
    # lpips.vgg: piq .67 and pyiqa .670; psnr: pyiqa .687 (piq's PSNR value belongs to piq.psnr, not run here)
    assert marks == [("D", 0.67), ("^", 0.67), ("^", 0.687)]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any(t.startswith("piq (piq README") for t in labels) and any(t.startswith("pyiqa (pyiqa") for t in labels)
    assert not any(line.get_marker() in ("D", "^") for ax in fig.axes[1:] for line in ax.lines)
    assert "0.700" in [t.get_text() for t in pooled.texts]  # correlations are written with three decimals
    filtered = {"config": {"task_args": {"tid2013": {"types": "1+2"}}}}
    assert F.references_for("tid2013", "srcc", filtered) == []
    assert {r.metric for r in F.references_for("kadid10k", "srcc", meta)} == {
        "piq.psnr", "piq.ssim", "piq.ms_ssim", "lpips.vgg", "dists", "pieapp"}
    assert F.references_for("tid2013", "krcc", meta) == []


# --------------------------------------------------------------------------------------- agreement

def tiny_2afc() -> pd.DataFrame:
    rows = {
        "A": [(1, 2), (2, 1), (1, 1), (1, 3), (1, 2)],  # choices +1, -1, 0, +1, +1
        "B": [(0.1, 0.3), (0.2, 0.1), (0.5, 0.4), (0.3, 0.2), (1, 2)],  # +1, -1, -1, -1, +1
        "C": [(5, 5), (3, 1), (2, 2), (0, 1)],  # 0, -1, 0, +1 (no fifth item)
    }
    out = []
    for metric, pairs in rows.items():
        for i, (d0, d1) in enumerate(pairs):
            out.append({"task": "t", "metric": metric, "subset": "s", "item": f"i{i}", "d0": float(d0),
                        "d1": float(d1), "p": 0.0, "score": 1.0 if d0 < d1 else 0.0 if d1 < d0 else 0.5})
    return pd.DataFrame(out)


def test_agreement_matrix_by_hand():
    mat, n = F.agreement_matrix(tiny_2afc(), "t", "2afc")
    assert n == 5
    expected = pd.DataFrame([[1.0, 3 / 5, 3 / 4], [3 / 5, 1.0, 1 / 4], [3 / 4, 1 / 4, 1.0]],
                            index=list("ABC"), columns=list("ABC"))
    pd.testing.assert_frame_equal(mat, expected)
    fig, _ = F.agreement_figure(tiny_2afc(), "t", "2afc", ["C", "A", "B"])
    ax = fig.axes[0]
    mesh = ax.collections[0]
    assert mesh.get_array().size == 9
    assert [t.get_text() for t in ax.texts] == ["1.00", "0.75", "0.25", "0.75", "1.00", "0.60", "0.25", "0.60",
                                                "1.00"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["C", "A", "B"]
    assert "n=5 items" in fig.get_suptitle()


def test_agreement_odd_one_out_by_hand():
    d = {"X": [(0.1, 0.5, 0.6), (0.5, 0.1, 0.6), (0.6, 0.5, 0.1), (0.2, 0.2, 0.9)],  # 3, 2, 1, tie
         "Y": [(0.1, 0.2, 0.3), (0.4, 0.3, 0.9), (0.2, 0.5, 0.6), (0.3, 0.2, 0.2)]}  # 3, 2, 3, tie
    rows = [{"task": "o", "metric": m, "subset": "val", "item": f"l{i}", "d12": a, "d13": b, "d23": c, "score": 0.0}
            for m, triples in d.items() for i, (a, b, c) in enumerate(triples)]
    samples = pd.DataFrame(rows)
    assert F.choices(samples[samples["metric"] == "X"], "odd_one_out").tolist() == [3, 2, 1, 0]
    mat, n = F.agreement_matrix(samples, "o", "odd_one_out")
    assert n == 4 and mat.loc["X", "Y"] == 0.75 == mat.loc["Y", "X"]
    assert F.agreement_figure(samples, "o", "jnd") is None


def test_agreement_in_the_report_matches_the_samples(built):
    run, _ = built
    res = load_results(run)
    mat, _ = F.agreement_matrix(res.samples, "toyodd", "odd_one_out")
    assert list(mat.index) == sorted(METRICS[:-1])  # the failed metric has no samples
    s = res.samples[res.samples["task"] == "toyodd"]
    a = s[s["metric"] == "alpha"].set_index("item")
    b = s[s["metric"] == "beta.v1"].set_index("item").loc[a.index]
    by_hand = np.mean(F.choices(a, "odd_one_out") == F.choices(b, "odd_one_out"))
    assert mat.loc["alpha", "beta.v1"] == pytest.approx(by_hand)


# ----------------------------------------------------------------------------------------- margins

def test_margin_split_counts():
    rows = [("m", 0.1, 0.4, 0.0), ("m", 0.5, 0.2, 0.0), ("m", 0.3, 0.3, 1.0), ("m", 0.2, 0.25, 0.5),
            ("m", 0.6, 0.1, 1.0), ("n", 1.0, 3.0, 0.0), ("n", 2.0, 7.0, 0.0)]
    df = pd.DataFrame(rows, columns=["metric", "d0", "d1", "p"]).assign(task="t", subset="s")
    df["item"] = [f"i{i}" for i in range(len(df))]
    df["score"] = np.where(df["d0"] < df["d1"], 1 - df["p"], np.where(df["d1"] < df["d0"], df["p"], 0.5))
    frame = F.margin_frame(df, "t", "2afc")
    np.testing.assert_allclose(frame["margin"], [0.3, 0.3, 0.0, 0.05, 0.5, 2.0, 5.0])
    counts = F.margin_counts(frame)
    assert counts.loc["m"].tolist() == [2, 1, 2] and counts.loc["n"].tolist() == [2, 0, 0]
    fig = F.margin_figure(df, "t", "2afc", palette=metric_palette(["m", "n"]))
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["m\nright 2, wrong 1, ties 2 excl.", "n\nright 2, wrong 0"]
    assert "ties (score = 0.5) excluded" in fig.get_suptitle() and "|d1 − d0|" in fig.get_suptitle()


def test_margin_odd_one_out_gap():
    df = pd.DataFrame({"task": "o", "metric": "m", "subset": "val", "item": ["a", "b"],
                       "d12": [0.1, 0.5], "d13": [0.4, 0.2], "d23": [0.3, 0.9], "score": [1.0, 0.0]})
    frame = F.margin_frame(df, "o", "odd_one_out")
    np.testing.assert_allclose(frame["margin"], [0.2, 0.3])
    assert frame["outcome"].tolist() == ["right", "wrong"]


def test_margin_counts_in_report_match_samples(built):
    run, _ = built
    res = load_results(run)
    s = res.samples[(res.samples["task"] == "toy2afc") & (res.samples["metric"] == "alpha")]
    counts = F.margin_counts(F.margin_frame(res.samples, "toy2afc", "2afc")).loc["alpha"]
    assert counts["right"] == (s["score"] > 0.5).sum() and counts["wrong"] == (s["score"] < 0.5).sum()
    assert counts["tie"] == (s["score"] == 0.5).sum() == 2 * len(SUBSETS)  # one tie, one p = 0.5 each


def test_palette_is_deterministic_and_distinct():
    names = [f"m{i}" for i in range(30)]
    assert metric_palette(names) == metric_palette(reversed(names))
    assert len(set(metric_palette(names).values())) == 30
    small = metric_palette(["b", "a"])
    assert list(small) == ["a", "b"] and small["a"] != small["b"]


# -------------------------------------------------------------------------------------------- html

class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_html_is_self_contained_and_escaped(built):
    _, out = built
    html = out["html"].read_text()
    assert EVIL not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<b>boom</b>" not in html and "&lt;b&gt;boom&lt;/b&gt; &amp; more" in html
    parser = _Collector()
    parser.feed(html)
    tags = parser.tags
    for tag, attrs in tags:
        for key in ("src", "href", "xlink:href", "action", "data"):
            value = (attrs.get(key) or "").strip()
            assert not re.match(r"(?i)(https?:)?//", value), (tag, key, value)
            if tag != "a" and key in ("src", "href") and value and not value.startswith("#"):
                assert value.startswith("data:"), (tag, key, value)
    assert not re.search(r"(?i)(src|href)\s*=\s*[\"']?\s*https?:", html)
    assert [t for t, _ in tags].count("script") == 1 and [t for t, _ in tags].count("svg") == len(
        expected_stems())
    assert not any(t == "img" or (t == "link" and a.get("rel") == "stylesheet") for t, a in tags)
    ids = [a["id"] for _, a in tags if "id" in a]
    assert len(ids) == len(set(ids)), "ids must be unique across the inlined figures"
    assert "@import" not in html and "url(http" not in html


def test_html_holds_tables_metadata_protocol_and_failures(built):
    run, out = built
    html = out["html"].read_text()
    res = load_results(run)
    assert '<table id="head-toy2afc" class="sortable">' in html
    for key in ("percepbench_version", "git_sha", "torch_version", "started", "finished", "seed", "cpu_model"):
        assert str(res.meta[key]) in html, key
    assert "224x224 bicubic" in html and "synthetic &lt;toyodd&gt;" in html  # protocol and task protocol
    assert "Run complete." in html
    assert "pipe|metric" in html
    # numeric sort keys on value cells
    assert re.search(r'<td class="num" data-sort="[0-9.]+">[0-9.]+</td>', html)
    assert "&quot;task_args&quot;" in html  # the config, JSON-escaped
    # failures table lists the failed pair with its error
    failures = html.split('<section id="failures">')[1].split("</section>")[0]
    assert "toyodd" in failures and "pipe|metric" in failures and "out of memory" in failures


# ------------------------------------------------------------------------------------------ markdown

def test_markdown_tables_images_and_escaping(built):
    run, out = built
    md = out["markdown"].read_text()
    assert len(md.encode()) < 1_000_000
    res = load_results(run)
    pooled = res.records[(res.records["task"] == "toy2afc") & (res.records["subset"] == "all")]
    for _, r in pooled.iterrows():
        name = r["metric"].replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
        row = f"| {name} | {r['value']:.1f} | [{r['ci_low']:.1f}, {r['ci_high']:.1f}] | {r['n']} |"
        assert row in md, row
    assert "| metric | all | 95% CI | n | blur | noise | jpeg |" in md
    assert EVIL not in md and "pipe\\|metric" in md
    for stem in expected_stems():
        assert f"]({stem}.png)" in md
        assert (run / "report" / f"{stem}.png").is_file()
    assert "## Failures" in md and "out of memory \\| &lt;b&gt;boom&lt;/b&gt;" in md
    assert "## Protocol" in md and "224x224 bicubic" in md
    # every table row has the same number of unescaped cell separators as its header
    for block in re.findall(r"((?:^\|.*\|\n)+)", md, flags=re.M):
        counts = {len(re.findall(r"(?<!\\)\|", line)) for line in block.splitlines()}
        assert len(counts) == 1, block


def test_collect_without_figures(built):
    run, _ = built
    content = collect(load_results(run))
    assert content.tasks == ["toy2afc", "toyodd"]
    head = content.headline["toy2afc"][0]
    assert head.columns == ["metric", "all", "95% CI", "n", *SUBSETS]
    values = [r[1] for r in head.rows]
    assert values == sorted(values, reverse=True)
    odd = content.headline["toyodd"][0]
    assert odd.columns == ["metric", "val", "95% CI", "n"] and len(odd.rows) == len(METRICS) - 1
    assert content.failures.rows == [["toyodd", METRICS[-1], "failure",
                                      "RuntimeError: out of memory | <b>boom</b> & more"]]
