"""``build_report``: figures, ``report.html`` and ``report.md`` of a run directory, as a pure function of it.

The run directory is read with :func:`percepbench.results.load_results` (a missing or malformed file
raises :class:`percepbench.errors.DataError` naming it); nothing here imports torch or model code.
:func:`collect` turns a run into :class:`ReportContent` (tables, metadata, failures, protocol, figures),
which :func:`percepbench.reports.html.render_html` and :func:`percepbench.reports.markdown.render_markdown`
render. Incomplete runs, failed (task, metric) pairs, runs without per-item samples and runs with one or
many metrics all produce a report; what could not be shown is listed in ``notes``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from percepbench.reports import figures as F
from percepbench.reports.attribute_figures import AUC, RELIANCE, parse_strength
from percepbench.results import ALL, RunResults, load_results
from percepbench.results_schema import RunMeta, read_meta

REPORT_DIR = "report"
HTML_FILE = "report.html"
MARKDOWN_FILE = "report.md"


@dataclass
class Table:
    """A table to render: raw cell values (str, int, float with NaN = missing, or a (low, high) pair).

    ``fmt`` formats floats; ``key`` is a stable id (used as the HTML element id).
    """

    key: str
    title: str
    columns: list[str]
    rows: list[list[Any]]
    fmt: str = ".1f"
    note: str = ""


@dataclass
class FigureEntry:
    """A written figure: file stem, task, title, the files written and its SVG text (for inlining)."""

    name: str
    task: str
    title: str
    files: list[Path]
    svg: str


@dataclass
class ReportContent:
    """Everything a report shows, independent of the output format."""

    run_dir: Path | None
    complete: bool
    meta: RunMeta
    tasks: list[str]
    headline: dict[str, list[Table]]  # task -> its headline tables
    n_subsets: dict[str, int]
    failures: Table
    protocol: Table
    task_protocols: dict[str, Any]
    comparisons: Table
    records: Table
    run_info: list[tuple[str, str]]
    notes: list[str] = field(default_factory=list)
    figures: list[FigureEntry] = field(default_factory=list)
    has_samples: bool = True


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _value_fmt(measure: str) -> str:
    return ".1f" if F.is_percent(measure) else ".3g"


def headline_tables(task: str, records: pd.DataFrame) -> list[Table]:
    """The task's summary tables, one per measure: pooled value, CI, n and per-subset values per metric,
    best first.

    The per-strength measures of the attribute edit curves (``nd@<s>``, see
    :mod:`percepbench.reports.attribute_figures`) get no table (one per strength would bury the others;
    they are drawn in the ``attributes_<task>`` figure and kept in results.json; :func:`collect` adds a
    note saying so). Beside them, ``auc`` is titled with its unit (% of the median unrelated-pair distance).
    """
    df = records[records["task"] == task]
    if df.empty:
        return []
    tables = []
    measures = list(dict.fromkeys(df["measure"].astype(str)))
    curves = any(parse_strength(m) is not None for m in measures)
    measures = [m for m in measures if parse_strength(m) is None]
    for measure in measures:
        mdf = df[df["measure"] == measure]
        subsets = F._pooled_first(mdf["subset"])
        pooled = F._pooled_subset(subsets) or subsets[0]
        others = [s for s in subsets if s != pooled]
        head = mdf[mdf["subset"] == pooled].sort_values(["value", "metric"], ascending=[False, True])
        wide = mdf.pivot_table(index="metric", columns="subset", values="value", aggfunc="first")
        rows = []
        for _, rec in head.iterrows():
            row = [str(rec["metric"]), _num(rec["value"]), (_num(rec["ci_low"]), _num(rec["ci_high"])),
                   int(rec["n"]) if pd.notna(rec["n"]) else math.nan]
            row += [_num(wide.loc[rec["metric"]].get(s)) for s in others]
            rows.append(row)
        unit, fmt = (" (%)" if F.is_percent(measure) else ""), _value_fmt(measure)
        if curves and measure == AUC:  # the edit curves' summary: in % of the unrelated-pair median
            unit, fmt = " (% of the median unrelated-pair distance)", ".1f"
        elif measure == RELIANCE:  # an index in [-100, 100]
            fmt = ".1f"
        key = f"head-{F.slug(task)}" + (f"-{F.slug(measure)}" if len(measures) > 1 else "")
        tables.append(Table(key, f"{task} — {measure}{unit}", ["metric", pooled, "95% CI", "n", *others], rows,
                            fmt=fmt))
    return tables


def per_strength_note(task: str, measures: list[str]) -> str:
    """What the report says about the ``nd@<s>`` measures it does not table."""
    shown = ", ".join(measures[:3]) + (f" … {measures[-1]}" if len(measures) > 3 else "")
    return (f"{task}: the {len(measures)} per-strength measures ({shown}: normalised distance at edit strength "
            "s) are drawn in the edit-curve figure, not tabled; their values and CIs are in results.json "
            "(and the All records table).")


def _failures(meta: RunMeta) -> Table:
    rows = [[f["task"], f["metric"], f["kind"], f["error"]] for f in meta["failed"]]
    return Table("failures-table", "Failures", ["task", "metric", "kind", "error"], rows)


def _protocol(meta: RunMeta) -> Table:
    rows = []
    for p in meta["protocol"]:
        inputs = p["inputs"]
        vr = inputs.get("value_range")
        rows.append([p["task"], p["metric"], p["resize"],
                     f"[{vr[0]:g}, {vr[1]:g}]" if isinstance(vr, list | tuple) and len(vr) == 2 else str(vr or ""),
                     str(inputs.get("grayscale", "")),
                     "" if p["scales_used"] is None else json.dumps(p["scales_used"]), _num(p["seconds"])])
    return Table("protocol-table", "Protocol per task and metric",
                 ["task", "metric", "resize", "value range", "grayscale", "scales used", "seconds"], rows,
                 fmt=".2f")


def _comparisons(comparisons: pd.DataFrame, pooled_by_task: Mapping[str, str]) -> Table:
    rows = []
    for _, c in comparisons.iterrows():
        if pooled_by_task.get(str(c["task"])) != str(c["subset"]):
            continue
        rows.append([str(c["task"]), str(c["measure"]), str(c["metric_a"]), str(c["metric_b"]), _num(c["diff"]),
                     (_num(c["ci_low"]), _num(c["ci_high"])), _num(c["p_value"]), int(c["n"])])
    return Table("comparisons-table", "Paired comparisons (pooled subset): score of A minus score of B",
                 ["task", "measure", "metric A", "metric B", "A − B", "95% CI", "p", "n"], rows, fmt=".3g")


def _records(records: pd.DataFrame) -> Table:
    extra = [c for c in records.columns if c not in ("task", "subset", "metric", "measure", "value", "ci_low",
                                                       "ci_high", "n")]
    rows = []
    for rec in records.itertuples(index=False):
        r = rec._asdict()
        rows.append([str(r["task"]), str(r["subset"]), str(r["metric"]), str(r["measure"]), _num(r["value"]),
                     (_num(r["ci_low"]), _num(r["ci_high"])), _num(r["n"]),
                     *[r[c] if isinstance(r[c], str) else _num(r[c]) for c in extra]])
    return Table("records-table", "All records", ["task", "subset", "metric", "measure", "value", "95% CI", "n", *extra],
                 rows, fmt=".4g")


def _run_info(meta: RunMeta, results: RunResults) -> list[tuple[str, str]]:
    device = str(meta["device"] or "")
    if meta["device_name"]:
        device += f" ({meta['device_name']})"

    def s(v: Any) -> str:
        return "—" if v is None or v == "" else str(v)

    return [
        ("percepbench", s(meta["percepbench_version"])),
        ("git sha", s(meta["git_sha"])),
        ("device", s(device)),
        ("cpu", s(meta["cpu_model"]) + (f" ({', '.join(meta['cpu_flags'])})" if meta.get("cpu_flags") else "")),
        ("precision", s(meta["precision"])),
        ("torch", s(meta["torch_version"])),
        ("python", s(meta["python"])),
        ("platform", s(meta["platform"])),
        ("started", s(meta["started"])),
        ("finished", s(meta["finished"])),
        ("complete", "yes" if results.complete else "no (interrupted or still running)"),
        ("seed", s(meta["seed"])),
        ("results", s(results.path)),
    ]


def collect(results: RunResults) -> ReportContent:
    """Tables, metadata and notes of a run (no figures; :func:`build_report` adds them).

    ``results.meta`` goes through :func:`~percepbench.results_schema.read_meta` (a no-op on a loaded run),
    so a run built in memory with only some meta keys is reported too.
    """
    meta = read_meta(results.meta, str(results.path or "<run in memory>"))
    records = results.records
    tasks = F.run_tasks(meta, records)
    headline, n_subsets, pooled_by_task = {}, {}, {}
    notes: list[str] = []
    for task in tasks:
        headline[task] = headline_tables(task, records)
        per_strength = [m for m in dict.fromkeys(records.loc[records["task"] == task, "measure"].astype(str))
                        if parse_strength(m) is not None]
        if per_strength:
            notes.append(per_strength_note(task, per_strength))
        subsets = records.loc[records["task"] == task, "subset"].astype(str)
        n_subsets[task] = len(set(subsets) - {ALL})
        pooled = F._pooled_subset(subsets)
        if pooled is not None:
            pooled_by_task[task] = pooled
    random = [m for m in meta.get("random_weights") or []]
    if random:
        from percepbench.reports.summary import RANDOM_LABEL

        notes.append(f"Computed with random weights (pretrained=false), not the published metrics: {', '.join(random)}; "
                     "their numbers check the pipeline, they are not the metrics' scores.")
        for tables in headline.values():
            for table in tables:
                for row in table.rows:
                    if row and row[0] in random:
                        row[0] = f"{row[0]}{RANDOM_LABEL}"
    if not results.complete:
        notes.append("This run is incomplete (complete = false): it was interrupted or is still running, so "
                     "the results cover only the (task, metric) pairs that finished.")
    if results.samples is None:
        notes.append("This run has no per-item samples (samples.parquet), so the sample-based figures "
                     "(metric agreement, decision margins, nearest-neighbour grids) are not shown.")
    return ReportContent(
        run_dir=results.path, complete=results.complete, meta=meta, tasks=tasks, headline=headline,
        n_subsets=n_subsets, failures=_failures(meta), protocol=_protocol(meta),
        task_protocols=dict(meta["task_protocols"]),
        comparisons=_comparisons(results.comparisons, pooled_by_task), records=_records(records),
        run_info=_run_info(meta, results), notes=notes, has_samples=results.samples is not None,
    )


def build_report(run_dir: str | Path, out_dir: str | Path | None = None, *,
                 formats: Iterable[str] = ("png", "svg")) -> dict[str, list[Path] | Path]:
    """Write the figures, ``report.html`` and ``report.md`` of a run; return the written paths.

    ``out_dir`` defaults to ``<run_dir>/report``. ``formats`` picks the figure files (``png``, ``svg``,
    ``pdf``); the HTML report inlines SVG whatever the formats, the Markdown report links the PNGs (or
    the first format written). Raster figures (a retrieval task's nearest-neighbour grid) are written as
    PNG whatever the formats (plus PDF when asked, never SVG: the thumbnails would make it as big as the
    PNG and no sharper) and inlined in the HTML as an image (a JPEG copy when smaller). Returns ``{"figures": [...], "html": path,
    "markdown": path, "out_dir": path}``. Raises :class:`percepbench.errors.DataError` naming the file when the run
    directory cannot be read, and ``ValueError`` on an unknown format.
    """
    from percepbench.reports.html import render_html
    from percepbench.reports.markdown import render_markdown
    from percepbench.reports.retrieval_figures import raster_svg

    formats = list(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in F.FORMATS]
    if unknown:
        raise ValueError(f"unsupported figure formats {unknown}; choose from {', '.join(F.FORMATS)}")
    results = load_results(run_dir)
    out = Path(out_dir) if out_dir is not None else (results.path or Path(run_dir)) / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    content = collect(results)
    figs, notes = F.make_figures(content.meta, results.records, results.samples)
    if results.samples is not None and "image" in results.samples.columns and results.path is not None:
        from percepbench.reports.inversion_figures import inversion_grid

        grid = inversion_grid(results.path, results.samples, content.meta)  # reads the run's saved images
        if grid is not None:
            figs.append(grid)
        elif (results.samples["task"].astype(str) == "inversion").any():
            notes.append("inversion: the grid was not drawn: an image under inversion/ is missing (see the log)")
    content.notes += notes
    written: list[Path] = []
    used: set[str] = set()
    for fig in figs:
        name, i = fig.name, 2
        while name in used:  # two task names with the same slug
            name, i = f"{fig.name}-{i}", i + 1
        used.add(name)
        if fig.raster:  # thumbnails: PNG always (SVG would be as big and no sharper), PDF when asked
            files = F.save_figure(fig.figure, out, name, ["png", *(f for f in formats if f == "pdf")])
            svg = raster_svg(files[0].read_bytes())
        else:
            svg = F.svg_text(fig.figure)
            files = F.save_figure(fig.figure, out, name, formats, svg=svg)
        content.figures.append(FigureEntry(name, fig.task, fig.title, files, svg))
        written += files
        fig.figure.clear()  # free the drawing; Figures made without pyplot need no plt.close
    html_path = out / HTML_FILE
    html_path.write_text(render_html(content), encoding="utf-8")
    md_path = out / MARKDOWN_FILE
    md_path.write_text(render_markdown(content, image_format="png" if "png" in formats else
                                       (formats[0] if formats else None)), encoding="utf-8")
    return {"figures": written, "html": html_path, "markdown": md_path, "out_dir": out}
