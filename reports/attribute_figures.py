"""Figures of the attribute analyses: edit curves, sensitivity profile, attribute contests, foreground reliance.

Pure functions of a run's records (no torch, no model code, no samples). The analyses (REFERENCE §7) write
long-format records; the figures are chosen by **measure names**, never by task names, so that a renamed or
plugin task writing the same records gets the same figures:

- ``nd@<s>`` (subset = attribute, e.g. ``hue``; ``s`` a strength such as ``0.125`` or ``1``): the mean over
  images of the normalised distance d(x, edit_s(x)), **in % of the metric's median distance between
  unrelated images** (:data:`UNRELATED` = 100 is an unrelated pair, 0 the distance of an image to itself;
  :mod:`percepbench.tasks.attributes`), with a 95% CI (``ci_low``/``ci_high``, bootstrap over images) ->
  ``attributes_<task>`` (:func:`curves_figure`): one panel per attribute (at most :data:`MAX_COLUMNS` a
  row), x = s, y = normalised distance, one line per metric in the report's palette starting at (0, 0)
  (nd(0) = 0 by definition, unless an ``nd@0`` record says otherwise), the CI as a shaded band, and a
  dashed line at :data:`UNRELATED`: the median unrelated pair.
- ``auc`` beside ``nd@<s>`` records (or in a task of kind ``analysis``): the mean over images of the area
  under the normalised curve divided by the largest strength (the curve's mean height, same unit) ->
  ``sensitivity_<task>`` (:func:`sensitivity_figure`): an annotated heatmap, rows metrics, columns
  attributes: the metrics' sensitivity profiles.
- ``p_first_closer`` (subset ``X~Y``, in %): how often the metric judged the X-edited image closer to the
  original than the Y-edited one, the two edits matched in pixel RMS -> ``contests_<task>``
  (:func:`contests_figure`): one heatmap per metric, row X, column Y, cell = the record of ``X~Y``, or
  100 − the record of ``Y~X`` when only that orientation is recorded (:func:`contest_matrices`); the
  diagonal and unrecorded pairs stay empty; a diverging colour map centred on 50 (above 50: the metric is
  less sensitive to the row's attribute than to the column's).
- ``foreground_reliance`` (subset = replacement mode ``grey``, ``blur``, ``swap``; in [-100, 100]):
  100 × (2P − 1), P = how often replacing the background changed the image less, for the metric, than
  replacing the foreground -> ``reliance_<task>`` (:func:`reliance_figure`): horizontal bars per metric
  with CI whiskers, one panel per mode, a vertical line at 0.

``median_distance`` (subsets ``unrelated`` and ``identical``, raw, no CI) has no figure: its values are the
anchors of the curves' unit and are shown in the report's tables. The measures these figures handle (:func:`handled_measures`) get no generic
per-measure bar chart, whatever the task's kind; a task of kind ``analysis`` gets none at all. Data lines, bands and bars carry gids
(``attr-line:<attribute>:<metric>``, ``attr-band:<attribute>:<metric>``, ``reliance-bar:<mode>:<metric>``,
``attr-unrelated``) so that tests and tools can find them without guessing from the drawing.

Attributes and modes are shown in the protocol's order (:data:`ATTRIBUTES`, :data:`MODES`), unknown ones
after them in record order; metrics in the order given (default: sorted names), the reliance bars best
first. :func:`attribute_figures` builds every figure a task's records support and notes what it skipped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from percepbench.reports import figures as F
from percepbench.results import ALL

#: the edit-curve attributes of the protocol, in panel order (others follow in record order)
ATTRIBUTES = ("hue", "saturation", "brightness", "contrast", "blur", "noise", "jpeg", "translation", "rotation",
              "scale", "flip", "crop", "fg_colour", "bg_colour")
#: replacement modes of the reliance analysis, in panel order, with what replaces the other region
MODES = {"grey": "replaced by grey", "blur": "replaced by a blurred copy", "swap": "replaced by another image's"}
AUC, P_FIRST, RELIANCE, MEDIAN = "auc", "p_first_closer", "foreground_reliance", "median_distance"
CONTEST_SEP = "~"
MAX_COLUMNS = 4
#: the level of the median unrelated pair in ``nd@<s>`` and ``auc`` records (they are in %)
UNRELATED = 100.0
_ND_RE = re.compile(r"nd@((?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)")
_GREY = (0.5, 0.5, 0.5)


def parse_strength(measure: Any) -> float | None:
    """The edit strength of an ``nd@<s>`` measure, None for any other measure.

    >>> parse_strength("nd@0.125"), parse_strength("nd@1"), parse_strength("auc"), parse_strength("nd@x")
    (0.125, 1.0, None, None)
    """
    m = _ND_RE.fullmatch(str(measure))
    return float(m.group(1)) if m else None


def handled_measures(measures: Iterable[str], kind: str | None = None) -> set[str]:
    """The measures of a task (of kind ``kind``) that the attribute figures draw (or, ``median_distance``,
    explain), and so get no generic bar chart: ``nd@<s>``, ``p_first_closer`` and ``foreground_reliance`` always;
    ``auc`` and ``median_distance`` beside ``nd@<s>`` records or in a task of kind ``analysis``.

    >>> sorted(handled_measures(["nd@0.5", "auc", "median_distance", "srocc"]))
    ['auc', 'median_distance', 'nd@0.5']
    >>> sorted(handled_measures(["auc", "foreground_reliance"])), sorted(handled_measures(["auc"], "analysis"))
    (['foreground_reliance'], ['auc'])
    """
    measures = {str(m) for m in measures}
    curves = kind == "analysis" or any(parse_strength(m) is not None for m in measures)
    return {m for m in measures if parse_strength(m) is not None or m in (P_FIRST, RELIANCE)
            or (curves and m in (AUC, MEDIAN))}


def parse_contest(subset: Any) -> tuple[str, str] | None:
    """``"hue~blur"`` -> ``("hue", "blur")``; None when the subset is not two different attribute names.

    >>> parse_contest("hue~blur"), parse_contest("hue"), parse_contest("hue~hue"), parse_contest("a~b~c")
    (('hue', 'blur'), None, None, None)
    """
    parts = str(subset).split(CONTEST_SEP)
    if len(parts) != 2 or not all(p.strip() for p in parts) or parts[0].strip() == parts[1].strip():
        return None
    return parts[0].strip(), parts[1].strip()


def _ordered(names: Iterable[str], known: Iterable[str]) -> list[str]:
    """``names`` (deduplicated) in the order of ``known``, unknown ones after, first seen first."""
    names = list(dict.fromkeys(str(n) for n in names))
    known = list(known)
    return [k for k in known if k in names] + [n for n in names if n not in known]


def _metric_order(present: Iterable[str], metrics: Sequence[str] | None) -> list[str]:
    present = list(dict.fromkeys(str(m) for m in present))
    names = [m for m in (metrics or sorted(present)) if m in present]
    return names + sorted(set(present) - set(names))


# --------------------------------------------------------------------------------------------- curves

def curve_table(records: pd.DataFrame, task: str) -> pd.DataFrame:
    """The task's ``nd@<s>`` records with a ``strength`` column, sorted by subset, metric and strength
    (empty when there are none)."""
    df = records[records["task"] == task]
    strength = df["measure"].map(parse_strength)
    df = df[strength.notna()].assign(strength=strength[strength.notna()].astype(float))
    return df.sort_values(["subset", "metric", "strength"], kind="stable")


def curve_points(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, ci_low, ci_high) of one metric's curve on one attribute: the records sorted by strength,
    with the point (0, 0), CI (0, 0), in front unless a strength-0 record exists."""
    rows = rows.sort_values("strength", kind="stable")
    x = rows["strength"].to_numpy(float)
    y, lo, hi = (rows[c].to_numpy(float) for c in ("value", "ci_low", "ci_high"))
    if not (x == 0).any():
        x, y, lo, hi = (np.concatenate([[0.0], a]) for a in (x, y, lo, hi))
    return x, y, lo, hi


def curves_figure(records: pd.DataFrame, task: str, *, palette: Mapping[str, Any],
                  metrics: Sequence[str] | None = None) -> Figure | None:
    """Normalised distance against edit strength, one panel per attribute (module doc); None without
    ``nd@<s>`` records."""
    df = curve_table(records, task)
    if df.empty:
        return None
    attributes = _ordered(df["subset"], ATTRIBUTES)
    names = _metric_order(df["metric"], metrics)
    xmax = max(1.0, float(df["strength"].max()))
    ends = np.concatenate([[0.0, UNRELATED], df["value"].to_numpy(float), df["ci_low"].to_numpy(float),
                           df["ci_high"].to_numpy(float)])
    ends = ends[np.isfinite(ends)]
    bottom, top = min(0.0, float(ends.min())), float(ends.max())
    pad = 0.06 * (top - bottom)
    nrows, ncols = F._grid(len(attributes), MAX_COLUMNS)
    with F._style():
        fig = F._new_figure(3.1 * ncols + 0.3, 2.45 * nrows + 1.5)
        axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True).ravel()
        legend: dict[str, Any] = {}  # label -> the first artist drawn for it
        for p, (ax, attribute) in enumerate(zip(axes, attributes, strict=False)):
            sub = df[df["subset"] == attribute]
            ref = ax.axhline(UNRELATED, color="0.25", linestyle="--", linewidth=1.1, zorder=1, gid="attr-unrelated")
            for metric in names:
                rows = sub[sub["metric"].astype(str) == metric]
                if rows.empty:
                    continue
                x, y, lo, hi = curve_points(rows)
                colour = palette.get(metric, _GREY)
                (line,) = ax.plot(x, y, marker="o", markersize=3.2, linewidth=1.5, color=colour, zorder=3,
                                  gid=f"attr-line:{attribute}:{metric}")
                legend.setdefault(metric, line)
                ok = np.isfinite(lo) & np.isfinite(hi)
                if ok.sum() >= 2:
                    band = ax.fill_between(x[ok], lo[ok], hi[ok], color=colour, alpha=0.18, linewidth=0,
                                           zorder=2)
                    band.set_gid(f"attr-band:{attribute}:{metric}")
            ax.set_xlim(0, xmax)
            ax.set_ylim(bottom - (pad if bottom < 0 else 0.0), top + pad)
            ax.set_title(f"{attribute} ({F._n_text(sub['n'])})")
            if p % ncols == 0:
                ax.set_ylabel("% of median unrelated d")
            if p >= len(attributes) - ncols:
                ax.set_xlabel("edit strength s")
        for ax in axes[len(attributes):]:
            ax.set_visible(False)
        labels = [*legend, "median unrelated pair"]
        fig.legend([*legend.values(), ref], [F.wrap_label(lb, 28) for lb in labels], loc="outside lower center",
                   ncols=min(4, len(labels)))
        fig.suptitle(F._wrap(f"{task}: distance between an image and its edited copy against edit strength, "
                             "normalised per metric: 0 = an image and itself, 100 = the median distance between "
                             "unrelated images (dashed line); one line per metric, from (0, 0). Shaded bands: "
                             "the records' 95% CI (ci_low to ci_high, bootstrap over images)", fig))
    return fig


def sensitivity_matrix(records: pd.DataFrame, task: str, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """The ``auc`` records of a task as a (metric x attribute) frame, NaN where none is recorded."""
    df = records[(records["task"] == task) & (records["measure"].astype(str) == AUC)]
    if df.empty:
        return pd.DataFrame()
    wide = df.pivot_table(index="metric", columns="subset", values="value", aggfunc="first", dropna=False)
    wide.index = wide.index.astype(str)
    wide.columns = wide.columns.astype(str)
    return wide.reindex(index=_metric_order(wide.index, metrics), columns=_ordered(df["subset"], ATTRIBUTES))


def _heatmap_labels(ax, rows: Sequence[str], cols: Sequence[str]) -> None:
    ax.grid(False)  # the style's grid would show through the empty cells
    ax.set_xticks(np.arange(len(cols)) + 0.5, [F.wrap_label(c, 16) for c in cols], rotation=50, ha="right")
    ax.set_yticks(np.arange(len(rows)) + 0.5, [F.wrap_label(r, 22) for r in rows], rotation=0)


def sensitivity_figure(records: pd.DataFrame, task: str, *, metrics: Sequence[str] | None = None
                       ) -> Figure | None:
    """Annotated heatmap of :func:`sensitivity_matrix` (None without ``auc`` records)."""
    mat = sensitivity_matrix(records, task, metrics)
    if mat.empty:
        return None
    values = mat.to_numpy(float)
    n_rows, n_cols = values.shape
    finite = values[np.isfinite(values)]
    vmin = min(0.0, float(finite.min())) if finite.size else 0.0
    vmax = max(UNRELATED, float(finite.max())) if finite.size else UNRELATED
    n = records[(records["task"] == task) & (records["measure"].astype(str) == AUC)]["n"]
    with F._style():
        fig = F._new_figure(max(5.0, 0.62 * n_cols + 2.6), max(2.6, 0.42 * n_rows + 2.0))
        ax = fig.subplots()
        sns.heatmap(values, ax=ax, vmin=vmin, vmax=vmax, cmap="rocket_r", annot=True, fmt=".1f",
                    mask=~np.isfinite(values), linewidths=0.5, annot_kws={"fontsize": 7.5},
                    cbar_kws={"label": "auc (% of an unrelated pair)", "shrink": 0.8})
        _heatmap_labels(ax, list(mat.index), list(mat.columns))
        ax.set_xlabel("attribute")
        ax.set_ylabel("metric")
        fig.suptitle(F._wrap(f"{task}: sensitivity profile, the area under the normalised edit curve divided by "
                             "the largest strength, per metric and attribute (0: blind to the edit; 100: as far "
                             "as an unrelated image at every strength); means over images "
                             f"({F._n_text(n)}), their 95% CIs in the tables; blank: no record", fig))
    return fig


# ------------------------------------------------------------------------------------------- contests

def _contest_records(records: pd.DataFrame, task: str) -> pd.DataFrame:
    """The task's ``p_first_closer`` records without the pooled subset ``all``."""
    df = records[(records["task"] == task) & (records["measure"].astype(str) == P_FIRST)]
    return df[df["subset"].astype(str) != ALL]


def contest_matrices(records: pd.DataFrame, task: str, metrics: Sequence[str] | None = None
                     ) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Per metric, the (X x Y) matrix of ``p_first_closer`` (module doc), and the subsets that were
    ignored because they are not ``X~Y`` with two different attributes (the pooled subset ``all``, over
    every pair, is neither drawn nor listed).

    A recorded ``X~Y`` fills its cell; its mirror ``Y~X`` gets 100 − value only when ``Y~X`` itself is not
    recorded. The diagonal and unrecorded pairs are NaN. Rows and columns: every attribute named by the
    task's contests (all metrics together), in :data:`ATTRIBUTES` order.
    """
    df = _contest_records(records, task)
    parsed = {s: parse_contest(s) for s in dict.fromkeys(df["subset"].astype(str))}
    ignored = [s for s, p in parsed.items() if p is None]
    names = _ordered((a for p in parsed.values() if p for a in p), ATTRIBUTES)
    out: dict[str, pd.DataFrame] = {}
    for metric in _metric_order(df["metric"], metrics):
        mat = pd.DataFrame(np.nan, index=names, columns=names)
        rows = df[(df["metric"].astype(str) == metric) & df["subset"].astype(str).map(lambda s: parsed[s] is not None)]
        recorded = {parsed[str(s)]: float(v) for s, v in zip(rows["subset"], rows["value"], strict=True)}
        if not recorded:
            continue
        for (x, y), v in recorded.items():
            mat.loc[x, y] = v
        for (x, y), v in recorded.items():
            if (y, x) not in recorded:
                mat.loc[y, x] = 100.0 - v
        out[metric] = mat
    return out, ignored


def contests_figure(records: pd.DataFrame, task: str, *, metrics: Sequence[str] | None = None) -> Figure | None:
    """One annotated heatmap of :func:`contest_matrices` per metric (None without contest records)."""
    mats, _ = contest_matrices(records, task, metrics)
    if not mats:
        return None
    n_attr = len(next(iter(mats.values())))
    nrows, ncols = F._grid(len(mats), 3)
    side = max(2.8, 0.42 * n_attr + 1.5)
    n = _contest_records(records, task)["n"]
    with F._style():
        fig = F._new_figure(side * ncols + 1.2, side * nrows + 1.3)
        axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
        for ax, (metric, mat) in zip(axes, mats.items(), strict=False):
            values = mat.to_numpy(float)
            sns.heatmap(values, ax=ax, vmin=0.0, vmax=100.0, center=50.0, cmap="vlag", annot=True, fmt=".0f",
                        mask=~np.isfinite(values), linewidths=0.5, cbar=False, square=True,
                        annot_kws={"fontsize": max(5.5, 8.5 - 0.2 * n_attr)})
            _heatmap_labels(ax, list(mat.index), list(mat.columns))
            ax.set_title(F.wrap_label(metric, 40))
            ax.set_xlabel("Y (second edit)")
            ax.set_ylabel("X (first edit)")
        for ax in axes[len(mats):]:
            ax.set_visible(False)
        fig.colorbar(axes[0].collections[0], ax=list(axes[:len(mats)]), shrink=0.7,
                     label="% of images where the X edit is closer")
        fig.suptitle(F._wrap(f"{task}: attribute contests, % of images ({F._n_text(n)}) on which the metric "
                             "judged the image edited in X (row) closer to the original than the one edited in "
                             "Y (column), the two edits matched in pixel RMS; above 50: less sensitive to X "
                             "than to Y. Cells of pairs recorded only as Y~X: 100 − that value; 95% CIs in "
                             "the tables", fig))
    return fig


# ------------------------------------------------------------------------------------------- reliance

def reliance_table(records: pd.DataFrame, task: str) -> pd.DataFrame:
    """The task's ``foreground_reliance`` records (empty when there are none)."""
    return records[(records["task"] == task) & (records["measure"].astype(str) == RELIANCE)]


def reliance_figure(records: pd.DataFrame, task: str, *, palette: Mapping[str, Any]) -> Figure | None:
    """Bars of foreground reliance per metric with CI whiskers, one panel per mode (module doc)."""
    df = reliance_table(records, task)
    if df.empty:
        return None
    modes = _ordered(df["subset"], MODES)
    first = df[df["subset"].astype(str) == modes[0]].sort_values(["value", "metric"], ascending=[False, True])
    names = _metric_order(df["metric"], list(first["metric"].astype(str)))
    ends = np.concatenate([df[c].to_numpy(float) for c in ("value", "ci_low", "ci_high")])
    reach = float(np.nanmax(np.abs(ends))) if np.isfinite(ends).any() else 100.0
    lim = min(125.0, max(10.0, reach * 1.18))  # room for the value labels
    ypos = np.arange(len(names))
    with F._style():
        fig = F._new_figure(3.9 * len(modes) + 0.6, max(2.4, 0.34 * len(names) + 1.6))
        axes = fig.subplots(1, len(modes), squeeze=False, sharey=True).ravel()
        for ax, mode in zip(axes, modes, strict=True):
            sub = df[df["subset"].astype(str) == mode]
            sub = sub.set_index(sub["metric"].astype(str))
            sub = sub[~sub.index.duplicated()]  # a repeated record: the first one counts
            for i, metric in enumerate(names):
                if metric not in sub.index:
                    continue
                rec = sub.loc[metric]
                v, lo, hi = float(rec["value"]), float(rec["ci_low"]), float(rec["ci_high"])
                bar = ax.barh(i, v, height=0.7, color=palette.get(metric, _GREY), edgecolor="none")[0]
                bar.set_gid(f"reliance-bar:{mode}:{metric}")
                if math.isfinite(lo) and math.isfinite(hi):
                    ax.errorbar([v], [i], xerr=[[max(v - lo, 0.0)], [max(hi - v, 0.0)]], fmt="none",
                                ecolor="0.15", elinewidth=1, capsize=2.5)
                if math.isfinite(v):
                    edge = hi if math.isfinite(hi) and v >= 0 else (lo if math.isfinite(lo) else v)
                    ax.text(edge + (0.02 if v >= 0 else -0.02) * lim, i, f"{v:.1f}", va="center",
                            ha="left" if v >= 0 else "right", fontsize=7)
            ax.axvline(0.0, color="0.1", linewidth=1.1)
            ax.set_xlim(-lim, lim)
            ax.set_yticks(ypos, [F.wrap_label(m, 22) for m in names])
            ax.set_ylim(len(names) - 0.4, -0.6)  # first metric on top
            ax.grid(axis="y", visible=False)
            what = MODES.get(mode)
            ax.set_title(f"{mode}" + (f": region {what}" if what else "") + f" ({F._n_text(sub['n'])})",
                         fontsize=9)
            ax.set_xlabel("foreground reliance (−100 … 100)")
        fig.suptitle(F._wrap(f"{task}: foreground reliance = 100 × (2P − 1), P = share of images on which "
                             "replacing the background changed the image less, for the metric, than replacing "
                             "the foreground; right of 0: relies on the foreground. Whiskers: the records' 95% "
                             "CI (ci_low to ci_high)", fig))
    return fig


# ------------------------------------------------------------------------------------------------ all

def attribute_figures(task: str, records: pd.DataFrame, *, kind: str | None, palette: Mapping[str, Any],
                      metrics: Sequence[str] | None = None) -> tuple[list[F.ReportFigure], list[str]]:
    """Every attribute figure the task's records support, and notes on what was skipped and why.

    ``auc`` gets its heatmap only beside ``nd@<s>`` records or in a task of kind ``analysis`` (elsewhere an
    ``auc`` is some other area under a curve).
    """
    recs = records[records["task"] == task]
    measures = set(recs["measure"].astype(str))
    has_curves = any(parse_strength(m) is not None for m in measures)
    figs: list[F.ReportFigure] = []
    notes: list[str] = []
    stem = F.slug(task)
    if has_curves:
        fig = curves_figure(records, task, palette=palette, metrics=metrics)
        figs.append(F.ReportFigure(f"attributes_{stem}", task,
                                   f"{task}: normalised distance against edit strength per attribute", fig))
    if AUC in measures and (has_curves or kind == "analysis"):
        fig = sensitivity_figure(records, task, metrics=metrics)
        figs.append(F.ReportFigure(f"sensitivity_{stem}", task,
                                   f"{task}: sensitivity profile (area under the normalised edit curve)", fig))
        if not has_curves:
            notes.append(f"{task}: no nd@<s> records, so the edit curves were not drawn (only the auc heatmap)")
    elif has_curves:
        notes.append(f"{task}: no auc records, so the sensitivity heatmap was not drawn")
    if P_FIRST in measures:
        fig = contests_figure(records, task, metrics=metrics)
        _, ignored = contest_matrices(records, task, metrics)
        if ignored:
            notes.append(f"{task}: p_first_closer records of {len(ignored)} subset(s) that are not 'X~Y' with two "
                         f"different attributes are not in the contest heatmaps: {', '.join(ignored[:10])}"
                         + (f" and {len(ignored) - 10} more" if len(ignored) > 10 else ""))
        if fig is not None:
            figs.append(F.ReportFigure(f"contests_{stem}", task,
                                       f"{task}: attribute contests (% X-edited image judged closer)", fig))
    if RELIANCE in measures:
        fig = reliance_figure(records, task, palette=palette)
        figs.append(F.ReportFigure(f"reliance_{stem}", task, f"{task}: foreground reliance per metric", fig))
    if kind == "analysis":
        rest = sorted(measures - handled_measures(measures, kind))
        if rest:
            notes.append(f"{task}: no figure for measure(s) {', '.join(rest)} (an analysis task gets no generic "
                         "bar charts); their values are in the tables")
    return figs, notes
