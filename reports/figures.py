"""Figures of a run: pure functions of its records and per-item samples (matplotlib Agg + seaborn).

Every ``*_figure`` function returns a :class:`matplotlib.figure.Figure` built on the Agg canvas without
pyplot (nothing global to close, no display needed), or ``None`` when the data has nothing to show;
:func:`make_figures` builds every figure a run supports and :func:`save_figure` writes PNG/SVG files
deterministically (fixed ``svg.hashsalt``, no date in the SVG metadata, text kept as SVG text).

Figures and their file stems (``<task>`` is the task name with characters outside ``[A-Za-z0-9._-]``
replaced by ``_``):

- ``scores_<task>``: the task's measure per metric as horizontal bars with the records' 95% CI
  (``ci_low``/``ci_high``) as whiskers, best first, one panel per subset (pooled ``all`` first). Known
  reference values (:data:`REFERENCES`) are drawn on the pooled panel: human ceilings as a dashed line,
  published per-metric values as a black marker on that metric's bar, one shape per source (quality-score
  sets: piq's table as a diamond, pyiqa's as a triangle). A task with several measures gets
  ``scores_<task>_<measure>``.
- ``agreement_<task>``: fraction of items on which two metrics make the same choice (2AFC: the sign of
  ``d1 - d0``, an exact tie being its own choice; odd-one-out: the odd image, i.e. the one left out of
  the closest pair among ``d12, d13, d23``, a tied minimum being its own choice). Needs samples and at
  least two metrics; tasks of other kinds are skipped.
- ``margins_<task>``: per metric, the decision margin (2AFC: ``|d1 - d0|``; odd-one-out: the gap between
  the smallest and the second-smallest of ``d12, d13, d23``) of items the metric gets right
  (``score > 0.5``) and wrong (``score < 0.5``); items with ``score == 0.5`` (ties, or soft labels of
  exactly one half) are excluded and counted in the panel title. Needs samples.

Retrieval tasks (kind ``retrieval``; :mod:`percepbench.reports.retrieval_figures`) get no bars for their
``recall@k``/``precision@k``/``map@k`` records but:

- ``retrieval_<task>``: the three measure families against k on the pooled subset, one line per metric
  with the records' 95% CI as whiskers;
- ``neighbours_<task>``: a nearest-neighbour grid of a few queries, one row per (query, metric), with the
  neighbours framed green (relevant) or red (not); a raster figure (:attr:`ReportFigure.raster`), written
  as PNG. Needs samples; images that cannot be opened are grey "missing" tiles, listed in the notes.

Attribute analyses (:mod:`percepbench.reports.attribute_figures`, chosen by measure name: ``nd@<s>``,
``auc``, ``p_first_closer``, ``foreground_reliance``) get ``attributes_<task>`` (edit curves),
``sensitivity_<task>`` (auc heatmap), ``contests_<task>`` (one heatmap per metric) and ``reliance_<task>``
(bars per replacement mode) instead of bars for those measures. A task of kind ``analysis`` gets no generic
bar chart at all (its measures without a figure are noted) and no agreement or margin figures.

A figure exists for each kind of record the built-in tasks produce (2AFC, odd-one-out, JND, retrieval,
attribute analyses) and no other: a task kind that adds a new kind of record adds its figures with it.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
import textwrap
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from percepbench.results import ALL

SCORE_KINDS = ("2afc", "odd_one_out")
TIE = "tie"
RIGHT, WRONG = "right", "wrong"
FORMATS = ("png", "svg", "pdf")
_RC = {
    "svg.hashsalt": "percepbench",  # stable clip-path ids
    "svg.fonttype": "none",  # text stays text: smaller, searchable, no glyph ids to clash when inlined
    "figure.dpi": 100,
    "savefig.dpi": 110,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "figure.titlesize": 11,
}


@dataclass(frozen=True)
class Reference:
    """A known value to draw next to a task's scores.

    ``metric=None`` marks a human ceiling (drawn as a line); otherwise a published score of that metric
    (drawn as a marker on its bar). ``status`` is ``"published"`` or ``"unverified"``. ``when`` lists task
    options (from the run's ``config.task_args``) the value depends on: option -> required value, where an
    absent option counts as satisfied (the task default) and a required ``None`` means "must be absent".
    """

    task: str
    value: float
    label: str
    source: str
    status: str
    metric: str | None = None
    measure: str = "2afc_accuracy"
    when: Mapping[str, Any] = field(default_factory=dict)
    #: matplotlib marker of a per-metric value; one per source, so two sources' values on one bar stay apart
    marker: str = "D"

    def applies(self, meta: Mapping[str, Any]) -> bool:
        args = ((meta.get("config") or {}).get("task_args") or {}).get(self.task) or {}
        for key, required in self.when.items():
            if key in args and (required is None or str(args[key]) != str(required)):
                return False
        return True


_DREAMSIM_README = "DreamSim README (github.com/ssundaram21/dreamsim), NIGHTS test 2AFC accuracy"
_NIGHTS_TEST = {"subset": "test", "split": "test"}
REFERENCES: tuple[Reference, ...] = (
    Reference("nights", 96.2, "published", _DREAMSIM_README, "published", "dreamsim.ensemble", when=_NIGHTS_TEST),
    *(Reference("nights", v, "published", _DREAMSIM_README, "published", f"dreamsim.{name}", when=_NIGHTS_TEST)
      for name, v in (("dino_vitb16", 94.8), ("open_clip_vitb32", 95.3), ("clip_vitb32", 93.6),
                      ("dinov2_vitb14", 95.0), ("synclr_vitb16", 95.9))),
    Reference("bapps_2afc", 73.9, "≈ human (unverified)",
              "human agreement on BAPPS 2AFC val as quoted for the LPIPS paper; not checked here",
              "unverified", when={"split": "val", "subsets": None}),
    Reference("things", 67.5, "≈ noise ceiling (unverified)",
              "THINGS odd-one-out noise ceiling as commonly quoted; not checked here", "unverified",
              measure="odd_one_out_accuracy"),
)

# Quality-score anchors (REFERENCE.md sections 6 and 9): published SRCC of the same metric on the same set,
# pooled over the whole set. Numbers depend on the implementation (the two tables disagree for DISTS on
# TID2013: .708 vs .81), so each is drawn with its source and only beside the metric that implements the same
# definition (piq's PSNR/SSIM/MS-SSIM numbers beside piq.*; pyiqa's beside percepbench's psnr/ssim).
_PIQ_TABLE = "piq README benchmark table (piq 0.8), SRCC"
_PYIQA_TABLE = "pyiqa tests/FR_benchmark_results.csv (pyiqa 0.1.x), SRCC"
_WHOLE_SET = {"types": None}  # a type filter changes the pooled set: the published values no longer apply
_PIQ_SRCC = {  # metric -> (TID2013, KADID-10k, PIPAL)
    "piq.psnr": (0.69, 0.68, 0.41), "piq.ssim": (0.72, 0.72, 0.50), "piq.ms_ssim": (0.80, 0.80, 0.55),
    "lpips.vgg": (0.67, 0.72, 0.57), "dists": (0.81, 0.88, 0.62), "pieapp": (0.84, 0.87, 0.70),
}
_PYIQA_TID2013_SRCC = {"lpips.alex": 0.745, "lpips.vgg": 0.670, "dists": 0.708, "ssim": 0.627, "psnr": 0.687,
                       "pieapp": 0.844}
MOS_REFERENCES: tuple[Reference, ...] = (
    *(Reference(task, values[i], "piq", _PIQ_TABLE, "published", metric, measure="srcc",
                when={**_WHOLE_SET}, marker="D")
      for metric, values in _PIQ_SRCC.items() for i, task in enumerate(("tid2013", "kadid10k", "pipal"))),
    *(Reference("tid2013", value, "pyiqa", _PYIQA_TABLE, "published", metric, measure="srcc",
                when={**_WHOLE_SET}, marker="^")
      for metric, value in _PYIQA_TID2013_SRCC.items()),
)
REFERENCES = REFERENCES + MOS_REFERENCES
#: aliases under which a run may name a metric of the table
_METRIC_ALIASES = {"dreamsim": "dreamsim.ensemble"}


@dataclass
class ReportFigure:
    """One figure of a report: file stem, the task it belongs to, a title and the matplotlib Figure.

    ``raster``: the figure is mostly pixels (thumbnails), so it is written as PNG only (plus PDF when
    asked) whatever the report's formats, and the HTML report inlines it as an image instead of an SVG.
    """

    name: str
    task: str
    title: str
    figure: Figure
    raster: bool = False


def slug(name: str) -> str:
    """A file-name-safe form of a task or measure name.

    >>> slug("bapps_2afc"), slug("my task/v2"), slug("")
    ('bapps_2afc', 'my_task_v2', '_')
    """
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)) or "_"


def wrap_label(name: str, width: int = 22) -> str:
    """Break a long metric name after ``.``, ``_``, ``-``, ``/`` or spaces so that lines stay short.

    >>> wrap_label("dreamsim.open_clip_vitb32", 12)
    'dreamsim.\\nopen_clip_\\nvitb32'
    >>> wrap_label("psnr")
    'psnr'
    """
    parts = re.split(r"(?<=[._/\- ])", str(name))
    lines, current = [], ""
    for part in parts:
        while len(part) > width:  # a part longer than a line: hard break
            if current:
                lines.append(current)
                current = ""
            lines.append(part[:width])
            part = part[width:]
        if current and len(current) + len(part) > width:
            lines.append(current)
            current = ""
        current += part
    if current:
        lines.append(current)
    return "\n".join(line.strip() for line in lines)


def metric_palette(metrics: Iterable[str]) -> dict[str, tuple[float, float, float]]:
    """One colour per metric, from the sorted names: seaborn's colorblind set up to 10, else husl.

    The same run always gets the same mapping, and every figure of a report uses it.

    >>> pal = metric_palette(["ssim", "psnr", "ssim"])
    >>> list(pal), len(set(pal.values()))
    (['psnr', 'ssim'], 2)
    >>> len(set(metric_palette(f"m{i}" for i in range(25)).values()))
    25
    """
    names = sorted({str(m) for m in metrics})
    colours = sns.color_palette("colorblind" if len(names) <= 10 else "husl", len(names))
    return {name: tuple(float(c) for c in colour) for name, colour in zip(names, colours, strict=True)}


@contextlib.contextmanager
def _style() -> Iterator[None]:
    with sns.axes_style("whitegrid"), mpl.rc_context(_RC):
        yield


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, out_dir: str | Path, name: str, formats: Iterable[str] = ("png", "svg"), *,
                svg: str | None = None) -> list[Path]:
    """Write ``<out_dir>/<name>.<fmt>`` for each format; deterministic for the same figure content.

    ``svg``: the figure's :func:`svg_text` when the caller has it already (saves drawing it twice).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        if fmt not in FORMATS:
            raise ValueError(f"unsupported figure format {fmt!r}; choose from {', '.join(FORMATS)}")
        path = out / f"{name}.{fmt}"
        if fmt == "svg" and svg is not None:
            path.write_text(svg, encoding="utf-8")
        else:
            with mpl.rc_context(_RC):
                fig.savefig(path, format=fmt, metadata=_metadata(fmt))
        paths.append(path)
    return paths


def svg_text(fig: Figure) -> str:
    """The figure as an SVG document string (what the HTML report inlines)."""
    buf = io.StringIO()
    with mpl.rc_context(_RC):
        fig.savefig(buf, format="svg", metadata=_metadata("svg"))
    return buf.getvalue()


def _metadata(fmt: str) -> dict[str, Any]:
    if fmt == "svg":
        return {"Date": None}
    if fmt == "pdf":
        return {"CreationDate": None, "ModDate": None}
    return {}


def _pooled_first(subsets: Iterable[str]) -> list[str]:
    subsets = list(dict.fromkeys(str(s) for s in subsets))
    return ([ALL] if ALL in subsets else []) + [s for s in subsets if s != ALL]


def _pooled_subset(subsets: Iterable[str]) -> str | None:
    subsets = _pooled_first(subsets)
    if ALL in subsets or len(subsets) == 1:
        return subsets[0]
    return None


def is_percent(measure: str) -> bool:
    """Whether a measure is a percentage (the accuracies; retrieval's recall@k, precision@k and map@k; the
    attribute contests' p_first_closer) rather than a value in its own units.

    >>> [is_percent(m) for m in ("2afc_accuracy", "recall@5", "precision@10", "map@1", "recall", "srocc")]
    [True, True, True, True, False, False]
    >>> is_percent("p_first_closer"), is_percent("foreground_reliance")
    (True, False)
    """
    text = str(measure)
    return (text.endswith("accuracy") or text == "p_first_closer"
            or re.fullmatch(r"(recall|precision|map)@\d+", text) is not None)


def _n_text(n: pd.Series) -> str:
    vals = sorted({int(v) for v in n.dropna()})
    if not vals:
        return "n=?"
    return f"n={vals[0]}" if len(vals) == 1 else f"n={vals[0]}–{vals[-1]}"


def _wrap(text: str, fig: Figure) -> str:
    """Wrap a figure title to the figure's width (about 12 characters per inch at the title size)."""
    return textwrap.fill(text, max(30, int(fig.get_figwidth() * 12)))


def _grid(n_panels: int, max_cols: int) -> tuple[int, int]:
    ncols = max(1, min(n_panels, max_cols))
    return math.ceil(n_panels / ncols), ncols


def references_for(task: str, measure: str, meta: Mapping[str, Any] | None,
                   references: Iterable[Reference] = REFERENCES) -> list[Reference]:
    """The entries of ``references`` that apply to ``task``/``measure`` under the run's task options."""
    meta = meta or {}
    return [r for r in references if r.task == task and r.measure == measure and r.applies(meta)]


def score_figure(records: pd.DataFrame, task: str, *, palette: Mapping[str, Any], measure: str | None = None,
                 meta: Mapping[str, Any] | None = None, references: Iterable[Reference] = REFERENCES
                 ) -> Figure | None:
    """Bars of ``measure`` per metric with 95% CI whiskers, best first, one panel per subset.

    Each bar carries the gid ``score-bar:<panel index>:<metric index>`` (an ``id`` in the SVG) so tests and
    tools can count bars without guessing from the drawing.
    """
    df = records[records["task"] == task]
    if measure is None:
        measure = str(df["measure"].iloc[0]) if len(df) else ""
    df = df[df["measure"] == measure]
    if df.empty:
        return None
    subsets = _pooled_first(df["subset"])
    pooled = _pooled_subset(subsets)
    refs = references_for(task, measure, meta, references)
    n_metrics = df["metric"].nunique()
    nrows, ncols = _grid(len(subsets), 3)
    label_width = 22
    with _style():
        fig = _new_figure(4.6 * ncols, nrows * max(1.9, 0.34 * n_metrics + 1.1))
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        lo_all = np.concatenate([df[c].to_numpy(float) for c in ("value", "ci_low")] +
                                [np.array([r.value for r in refs], dtype=float)])
        hi_all = np.concatenate([df[c].to_numpy(float) for c in ("value", "ci_high")] +
                                [np.array([r.value for r in refs], dtype=float)])
        lo, hi = np.nanmin(lo_all), np.nanmax(hi_all)
        span = max(hi - lo, 1e-9)
        x0 = 0.0 if lo >= 0 and lo < 0.5 * hi else lo - 0.08 * span
        if is_percent(measure) and lo >= 0:
            x0 = max(0.0, math.floor((lo - 0.08 * span) / 5) * 5)
        x1 = hi + 0.18 * span
        for p, subset in enumerate(subsets):
            ax = axes[p]
            sub = df[df["subset"] == subset].sort_values(["value", "metric"], ascending=[False, True],
                                                         na_position="last")
            names = sub["metric"].astype(str).tolist()
            values = sub["value"].to_numpy(float)
            ypos = np.arange(len(names))
            bars = ax.barh(ypos, values - x0, left=x0, height=0.72,
                           color=[palette.get(m, (0.5, 0.5, 0.5)) for m in names], edgecolor="none")
            for i, bar in enumerate(bars):
                bar.set_gid(f"score-bar:{p}:{i}")
            lo_err = np.clip(values - sub["ci_low"].to_numpy(float), 0, None)
            hi_err = np.clip(sub["ci_high"].to_numpy(float) - values, 0, None)
            ok = np.isfinite(lo_err) & np.isfinite(hi_err)
            if ok.any():
                ax.errorbar(values[ok], ypos[ok], xerr=np.vstack([lo_err[ok], hi_err[ok]]), fmt="none",
                            ecolor="0.15", elinewidth=1, capsize=2.5, label="95% CI")
            marks: dict[str, float] = {}
            for r in refs:
                if r.metric is not None and subset == pooled:
                    key = _METRIC_ALIASES.get(r.metric, r.metric)
                    marks[key] = max(marks.get(key, -np.inf), r.value)
            for name, y, v, h in zip(names, ypos, values, sub["ci_high"].to_numpy(float), strict=True):
                if np.isfinite(v):
                    right = np.nanmax([v, h, marks.get(_METRIC_ALIASES.get(name, name), np.nan)])
                    ax.text(right + 0.015 * span, y, f"{v:.1f}" if is_percent(measure) else f"{v:.3f}",
                            va="center", fontsize=7)
            ax.set_yticks(ypos, [wrap_label(n, label_width) for n in names])
            ax.set_ylim(len(names) - 0.4, -0.6)  # best on top
            ax.set_xlim(x0, x1)
            ax.set_title(f"{subset} ({_n_text(sub['n'])})")
            ax.set_xlabel(f"{measure} (%)" if is_percent(measure) else measure)
            ax.grid(axis="y", visible=False)
            if subset == pooled and refs:
                _draw_references(ax, refs, names, ypos)
                handles, labels = ax.get_legend_handles_labels()
                fig.legend(handles, labels, loc="outside lower center", ncols=min(3, len(labels)))
        for ax in axes[len(subsets):]:
            ax.set_visible(False)
        note = "" if x0 <= 0 else f"; axis starts at {x0:g}"
        fig.suptitle(_wrap(f"{task}: {measure} per metric, best first (whiskers: 95% CI{note})", fig))
    return fig


def _draw_references(ax, refs: list[Reference], names: list[str], ypos: np.ndarray) -> None:
    resolved = {_METRIC_ALIASES.get(n, n): y for n, y in zip(names, ypos, strict=True)}
    labelled: set[str] = set()
    for ref in refs:
        if ref.metric is None:
            ax.axvline(ref.value, color="0.1", linestyle="--", linewidth=1.2,
                       label=f"{ref.label}: {ref.value:g}")
        elif ref.metric in resolved:
            label = f"{ref.label} ({ref.source.split(' (')[0]})"
            ax.plot([ref.value], [resolved[ref.metric]], marker=ref.marker, markersize=5, color="black",
                    linestyle="none", label=None if label in labelled else label, zorder=5)
            labelled.add(label)


# ---------------------------------------------------------------------------------------------- samples

def task_kind(task: str, meta: Mapping[str, Any] | None, samples: pd.DataFrame | None = None) -> str | None:
    """The task's kind from ``meta["tasks"]``, else guessed from its sample columns (2AFC, odd-one-out,
    retrieval)."""
    spec = ((meta or {}).get("tasks") or {}).get(task) or {}
    if spec.get("kind"):
        return str(spec["kind"])
    if samples is not None:
        cols = set(samples.columns)
        if "topk_ids" in cols and samples["topk_ids"].notna().any():
            return "retrieval"
        if {"d12", "d13", "d23"} <= cols and samples[["d12", "d13", "d23"]].notna().any().all():
            return "odd_one_out"
        if {"d0", "d1"} <= cols:
            return "2afc"
    return None


def choices(samples: pd.DataFrame, kind: str) -> np.ndarray:
    """Each item's choice: 2AFC the sign of ``d1 - d0`` (+1: left closer, -1: right closer, 0: tie);
    odd-one-out the odd image (1, 2 or 3; 0 when the smallest distance is tied).

    >>> choices(pd.DataFrame({"d0": [0.1, 0.5, 0.3], "d1": [0.2, 0.4, 0.3]}), "2afc").tolist()
    [1, -1, 0]
    >>> choices(pd.DataFrame({"d12": [0.1, 0.5, 0.2], "d13": [0.2, 0.4, 0.2], "d23": [0.3, 0.9, 0.5]}),
    ...         "odd_one_out").tolist()
    [3, 2, 0]
    """
    if kind == "2afc":
        return np.sign(samples["d1"].to_numpy(float) - samples["d0"].to_numpy(float)).astype(int)
    if kind == "odd_one_out":
        d = samples[["d12", "d13", "d23"]].to_numpy(float)
        odd = np.array([3, 2, 1])[np.argmin(d, axis=1)]  # the image outside the closest pair
        tied = (d == d.min(axis=1, keepdims=True)).sum(axis=1) > 1
        return np.where(tied, 0, odd)
    raise ValueError(f"no choices for task kind {kind!r}")


def agreement_matrix(samples: pd.DataFrame, task: str, kind: str, metrics: list[str] | None = None
                     ) -> tuple[pd.DataFrame, int]:
    """Fraction of shared items on which each two metrics make the same choice, and the item count.

    Items are matched on (subset, item); a pair of metrics is compared on the items both scored.
    """
    df = samples[samples["task"] == task].copy()
    df["choice"] = choices(df, kind)
    wide = df.pivot_table(index=["subset", "item"], columns="metric", values="choice", aggfunc="first")
    names = metrics or sorted(wide.columns.astype(str))
    wide = wide.reindex(columns=names)
    mat = pd.DataFrame(np.nan, index=names, columns=names)
    for a in names:
        for b in names:
            both = wide[a].notna() & wide[b].notna()
            if both.any():
                mat.loc[a, b] = float((wide.loc[both, a] == wide.loc[both, b]).mean())
    return mat, int(wide.notna().any(axis=1).sum())


def agreement_figure(samples: pd.DataFrame, task: str, kind: str, metrics: list[str] | None = None
                     ) -> tuple[Figure, pd.DataFrame] | None:
    """Annotated heatmap of :func:`agreement_matrix` (None with fewer than two metrics)."""
    if kind not in SCORE_KINDS:
        return None
    mat, n_items = agreement_matrix(samples, task, kind, metrics)
    if len(mat) < 2:
        return None
    n = len(mat)
    what = "sign of d1 − d0" if kind == "2afc" else "odd image (argmin of d12, d13, d23)"
    with _style():
        size = max(4.2, 0.5 * n + 2.6)
        fig = _new_figure(size + 0.8, size)
        ax = fig.subplots()
        labels = [wrap_label(m, 20) for m in mat.index]
        sns.heatmap(mat.to_numpy(float), ax=ax, vmin=min(0.5, float(np.nanmin(mat.to_numpy()))), vmax=1.0,
                    cmap="rocket_r", annot=True, fmt=".2f", square=True, linewidths=0.5,
                    annot_kws={"fontsize": max(6.5, 9.5 - 0.12 * n)}, xticklabels=labels, yticklabels=labels,
                    cbar_kws={"label": "fraction of items with the same choice", "shrink": 0.7})
        ax.tick_params(axis="x", labelrotation=60)
        for lab in ax.get_xticklabels():
            lab.set_horizontalalignment("right")
        ax.tick_params(axis="y", labelrotation=0)
        fig.suptitle(_wrap(f"{task}: metric agreement on the choice ({what}; ties are their own choice), "
                           f"n={n_items} items", fig))
    return fig, mat


def margin_frame(samples: pd.DataFrame, task: str, kind: str) -> pd.DataFrame:
    """Per item and metric: decision margin and outcome (``right`` if score > 0.5, ``wrong`` if < 0.5,
    ``tie`` if exactly 0.5).

    >>> s = pd.DataFrame({"task": "t", "metric": "m", "subset": "a", "item": ["1", "2", "3"],
    ...                   "d0": [0.1, 0.5, 0.3], "d1": [0.2, 0.4, 0.3], "score": [1.0, 0.0, 0.5]})
    >>> margin_frame(s, "t", "2afc")[["margin", "outcome"]].round(3).values.tolist()
    [[0.1, 'right'], [0.1, 'wrong'], [0.0, 'tie']]
    """
    df = samples[samples["task"] == task]
    if kind == "2afc":
        margin = (df["d1"].to_numpy(float) - df["d0"].to_numpy(float)).__abs__()
    elif kind == "odd_one_out":
        d = np.sort(df[["d12", "d13", "d23"]].to_numpy(float), axis=1)
        margin = d[:, 1] - d[:, 0]
    else:
        raise ValueError(f"no margins for task kind {kind!r}")
    score = df["score"].to_numpy(float)
    outcome = np.where(score > 0.5, RIGHT, np.where(score < 0.5, WRONG, TIE))
    return pd.DataFrame({"metric": df["metric"].astype(str).to_numpy(), "subset": df["subset"].to_numpy(),
                         "item": df["item"].to_numpy(), "margin": margin, "outcome": outcome})


def margin_counts(frame: pd.DataFrame) -> pd.DataFrame:
    """Items per metric and outcome (columns ``right``, ``wrong``, ``tie``)."""
    counts = frame.groupby(["metric", "outcome"]).size().unstack(fill_value=0)
    return counts.reindex(columns=[RIGHT, WRONG, TIE], fill_value=0)


def margin_figure(samples: pd.DataFrame, task: str, kind: str, *, palette: Mapping[str, Any],
                  metrics: list[str] | None = None) -> Figure | None:
    """One panel per metric: distribution of the decision margin for right vs wrong items."""
    if kind not in SCORE_KINDS:
        return None
    frame = margin_frame(samples, task, kind)
    if frame.empty:
        return None
    counts = margin_counts(frame)
    names = [m for m in (metrics or sorted(counts.index)) if m in counts.index]
    nrows, ncols = _grid(len(names), 4)
    what = "|d1 − d0|" if kind == "2afc" else "second-smallest − smallest of d12, d13, d23"
    with _style():
        fig = _new_figure(3.3 * ncols, 2.6 * nrows + 0.7)
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, metric in zip(axes, names, strict=False):
            sub = frame[(frame["metric"] == metric) & (frame["outcome"] != TIE)]
            c = counts.loc[metric]
            colour = palette.get(metric, (0.3, 0.3, 0.6))
            if len(sub) and np.isfinite(sub["margin"]).any():
                sns.histplot(data=sub, x="margin", hue="outcome", hue_order=[RIGHT, WRONG],
                             palette={RIGHT: colour, WRONG: (0.35, 0.35, 0.35)}, element="step",
                             stat="density", common_norm=False, bins=min(30, max(5, len(sub) // 4)), ax=ax,
                             legend=ax is axes[0])
            else:
                ax.text(0.5, 0.5, "no decisive items", ha="center", va="center", transform=ax.transAxes)
            ties = f", ties {c[TIE]} excl." if c[TIE] else ""
            ax.set_title(f"{wrap_label(metric, 34)}\nright {c[RIGHT]}, wrong {c[WRONG]}{ties}", fontsize=8)
            ax.set_xlabel("margin (metric's own units)", fontsize=7)
            ax.set_ylabel("density", fontsize=7)
        for ax in axes[len(names):]:
            ax.set_visible(False)
        fig.suptitle(_wrap(f"{task}: decision margin {what} per metric — coloured: right (score > 0.5), "
                     f"grey: wrong (score < 0.5); ties (score = 0.5) excluded, n={int(counts.to_numpy().sum())}"
                     " item-metric rows", fig))
    return fig


# ------------------------------------------------------------------------------------------------ all

def run_metrics(meta: Mapping[str, Any], records: pd.DataFrame, samples: pd.DataFrame | None) -> list[str]:
    """Every metric name a run mentions (spec table, records, samples), sorted."""
    names = set((meta.get("metrics") or {}).keys()) | set(records["metric"].astype(str))
    if samples is not None and "metric" in samples.columns:
        names |= set(samples["metric"].astype(str))
    return sorted(names)


def run_tasks(meta: Mapping[str, Any], records: pd.DataFrame) -> list[str]:
    """Task names in run order (``meta["tasks"]`` first, then any only seen in records)."""
    return list(dict.fromkeys([*(meta.get("tasks") or {}).keys(), *records["task"].astype(str)]))


def make_figures(meta: Mapping[str, Any], records: pd.DataFrame, samples: pd.DataFrame | None
                 ) -> tuple[list[ReportFigure], list[str]]:
    """Every figure the run supports, plus notes on figures that were skipped and why."""
    from percepbench.reports import attribute_figures as A

    palette = metric_palette(run_metrics(meta, records, samples))
    figs: list[ReportFigure] = []
    notes: list[str] = []
    for task in run_tasks(meta, records):
        recs = records[records["task"] == task]
        kind = task_kind(task, meta, samples[samples["task"] == task] if samples is not None else None)
        if recs.empty:
            notes.append(f"{task}: no records (every metric failed or the run stopped before it)")
            continue
        if kind == "retrieval":
            _retrieval_figures(task, meta, records, samples, palette, figs, notes)
            continue
        measures = list(dict.fromkeys(recs["measure"].astype(str)))
        handled = A.handled_measures(measures, kind)
        if kind == "analysis" or handled:
            attr_figs, attr_notes = A.attribute_figures(task, records, kind=kind, palette=palette)
            figs += attr_figs
            notes += attr_notes
        if kind == "analysis":  # its own figures only: no bars, no agreement or margins
            continue
        for measure in (m for m in measures if m not in handled):
            fig = score_figure(records, task, palette=palette, measure=measure, meta=meta)
            if fig is not None:
                stem = f"scores_{slug(task)}" + (f"_{slug(measure)}" if len(measures) > 1 else "")
                figs.append(ReportFigure(stem, task, f"{task}: {measure} per metric", fig))
        if kind not in SCORE_KINDS:
            notes.append(f"{task}: agreement and margin figures apply to 2AFC and odd-one-out tasks only "
                         f"(kind {kind!r})")
            continue
        task_samples = samples[samples["task"] == task] if samples is not None else None
        if task_samples is None or task_samples.empty:
            notes.append(f"{task}: no per-item samples in this run, so the agreement and margin figures "
                         "were skipped")
            continue
        order = (recs[recs["subset"] == _pooled_subset(recs["subset"])]
                 .sort_values(["value", "metric"], ascending=[False, True])["metric"].astype(str).tolist())
        order += sorted(set(task_samples["metric"].astype(str)) - set(order))
        order = [m for m in order if m in set(task_samples["metric"].astype(str))]
        res = agreement_figure(task_samples, task, kind, order)
        if res is not None:
            figs.append(ReportFigure(f"agreement_{slug(task)}", task, f"{task}: agreement between metrics",
                                     res[0]))
        else:
            notes.append(f"{task}: agreement needs per-item samples of at least two metrics")
        fig = margin_figure(task_samples, task, kind, palette=palette, metrics=order)
        if fig is not None:
            figs.append(ReportFigure(f"margins_{slug(task)}", task,
                                     f"{task}: decision margins of right and wrong items", fig))
    return figs, notes


def _retrieval_figures(task: str, meta: Mapping[str, Any], records: pd.DataFrame, samples: pd.DataFrame | None,
                       palette: Mapping[str, Any], figs: list[ReportFigure], notes: list[str]) -> None:
    """A retrieval task's curve figure and nearest-neighbour grid (:mod:`.retrieval_figures`), its
    notes, and bar charts for any of its measures that are not ``recall/precision/map@k``."""
    from percepbench.reports import retrieval_figures as R

    recs = records[records["task"] == task]
    headline = next((m for m in dict.fromkeys(recs["measure"].astype(str)) if R.parse_measure(m)), None)
    pooled = R.pooled_subset(recs["subset"])
    order = (recs[(recs["subset"] == pooled) & (recs["measure"] == headline)]
             .sort_values(["value", "metric"], ascending=[False, True])["metric"].astype(str).tolist())
    order += sorted(set(recs["metric"].astype(str)) - set(order))
    fig = R.retrieval_figure(records, task, palette=palette, metrics=order)
    if fig is not None:
        figs.append(ReportFigure(f"retrieval_{slug(task)}", task,
                                 f"{task}: recall@k, precision@k and mAP@k per metric", fig))
    elif headline is not None:
        notes.append(f"{task}: no pooled subset (all, or a single subset) to draw the retrieval curves from")
    others = [m for m in dict.fromkeys(recs["measure"].astype(str)) if not R.parse_measure(m)]
    for measure in others:
        bars = score_figure(records, task, palette=palette, measure=measure, meta=meta)
        if bars is not None:
            figs.append(ReportFigure(f"scores_{slug(task)}_{slug(measure)}", task, f"{task}: {measure} per metric",
                                     bars))
    notes.append(f"{task}: agreement and margin figures apply to 2AFC and odd-one-out tasks only "
                 "(kind 'retrieval')")
    task_samples = samples[samples["task"] == task] if samples is not None else None
    grid = None
    if task_samples is not None and not task_samples.empty:
        grid = R.neighbour_grid(task_samples, task, metrics=order, palette=palette)
    if grid is None:
        notes.append(f"{task}: no per-item samples with rankings (topk_ids) in this run, so the "
                     "nearest-neighbour grid was skipped")
        return
    shown, ranked = len(grid.metrics), task_samples["metric"].nunique()
    if shown < ranked:
        notes.append(f"{task}: the nearest-neighbour grid shows the first {shown} of {ranked} metrics "
                     f"(at most {R.MAX_ROWS} rows)")
    figs.append(ReportFigure(f"neighbours_{slug(task)}", task,
                             f"{task}: nearest neighbours of {len(grid.queries)} queries per metric", grid.figure,
                             raster=True))
    if grid.missing:
        notes.append(f"{task}: {len(grid.missing)} image(s) of the nearest-neighbour grid could not be opened "
                     f"and are drawn as grey 'missing' tiles: {', '.join(grid.missing[:10])}"
                     + (f" and {len(grid.missing) - 10} more" if len(grid.missing) > 10 else ""))
