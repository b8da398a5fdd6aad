"""Figures of retrieval tasks: measure-versus-k curves and a nearest-neighbour grid (no torch, no model code).

A retrieval task (``meta["tasks"][task]["kind"] == "retrieval"``, see :mod:`percepbench.tasks.retrieval`)
records ``recall@k``, ``precision@k`` and ``map@k`` in percent for every k of its ``ks``, and writes one
sample row per (metric, query) with the query's ranked neighbours (``topk_ids``, ``topk_paths``,
``topk_distances``, ``topk_hits``: lists of length max(ks), best first). Two figures come from them:

- ``retrieval_<task>`` (:func:`retrieval_figure`): one panel per measure family (recall, precision, mAP),
  x = k on a log axis with a tick at each k present, y = value in %, one line per metric in the report's
  palette, whiskers from the records' ``ci_low`` to ``ci_high``. Only the pooled subset is drawn: ``all``
  when present, else the only subset that is not a per-class ``class:<label>`` subset; the task has no
  curve figure when neither exists. Markers of different metrics are spread slightly along x (a factor of
  at most about 1.1) so that their whiskers do not hide each other; the data line of each metric carries
  the gid ``retrieval-line:<family>:<metric>``.
- ``neighbours_<task>`` (:func:`neighbour_grid`): for up to :data:`MAX_QUERIES` queries, one row per
  (query, metric): the query's thumbnail (dark frame), then its top :data:`SHOW_K` neighbours (fewer when
  the ranking is shorter), each framed **green** when relevant (``topk_hits``) and **red** when not, its
  distance written under it, the metric's name at the row's left. The queries are chosen by
  :func:`pick_queries`: the queries on which the metrics disagree most about their top-1 neighbour, ties
  (and a run where they never disagree) broken by item id. At most :data:`MAX_ROWS` rows: with many
  metrics fewer queries are shown, and with more than :data:`MAX_ROWS` metrics only the first ones.

The grid is drawn as one raster mosaic (the thumbnails fitted into squares of :data:`THUMB` pixels, read
from the sample paths with PIL) with the text on top, one figure pixel per mosaic pixel at the report's
``savefig.dpi``. An image that cannot be opened becomes a grey tile labelled "missing"; the returned
:class:`NeighbourGrid` lists those paths so that the report notes them once. Thumbnails make an SVG as
big as the PNG and no sharper, so the report writes this figure as PNG only (PDF too when asked) and its
HTML page inlines it (:func:`raster_svg`: as a JPEG copy when smaller).
"""

from __future__ import annotations

import base64
import io
import math
import re
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator
from PIL import Image, ImageOps

from percepbench.reports import figures as F
from percepbench.results import ALL

#: measure families in panel order, with their axis names
FAMILIES = {"recall": "recall@k", "precision": "precision@k", "map": "mAP@k"}
CLASS_PREFIX = "class:"
MAX_QUERIES = 4
SHOW_K = 5
MAX_ROWS = 24
#: JPEG quality of the copy of a raster figure that report.html inlines (the PNG file stays lossless)
JPEG_QUALITY = 88
#: thumbnail square side, frame width, gaps and text bands of the grid, in pixels
THUMB, FRAME, GAP, LABEL_W, TEXT_H, GROUP_GAP = 96, 5, 8, 170, 20, 14
GREEN = (26, 150, 65)
RED = (215, 48, 39)
QUERY_FRAME = (55, 55, 55)
MISSING_GREY = (185, 185, 185)
_MEASURE_RE = re.compile(r"(recall|precision|map)@(\d+)")


def parse_measure(measure: str) -> tuple[str, int] | None:
    """``"recall@5"`` -> ``("recall", 5)``; None for a measure that is not a retrieval measure.

    >>> parse_measure("map@10"), parse_measure("2afc_accuracy")
    (('map', 10), None)
    """
    m = _MEASURE_RE.fullmatch(str(measure))
    return (m.group(1), int(m.group(2))) if m else None


def pooled_subset(subsets: Iterable[str]) -> str | None:
    """The subset a retrieval figure draws: ``all``, else the only subset that is not per-class.

    >>> pooled_subset(["x", "class:a", "class:b"]), pooled_subset(["x", "y", "all"]), pooled_subset(["x", "y"])
    ('x', 'all', None)
    """
    names = list(dict.fromkeys(str(s) for s in subsets))
    if ALL in names:
        return ALL
    plain = [s for s in names if not s.startswith(CLASS_PREFIX)]
    return plain[0] if len(plain) == 1 else None


def curve_table(records: pd.DataFrame, task: str) -> pd.DataFrame:
    """The task's retrieval records on its pooled subset with ``family`` and ``k`` columns, sorted by
    family, metric and k (empty when there is nothing to draw)."""
    df = records[records["task"] == task]
    parsed = df["measure"].astype(str).map(parse_measure)
    df = df[parsed.notna()].copy()
    if df.empty:
        return df
    df["family"] = [p[0] for p in parsed[parsed.notna()]]
    df["k"] = [p[1] for p in parsed[parsed.notna()]]
    pooled = pooled_subset(df["subset"])
    if pooled is None:
        return df.iloc[0:0]
    df = df[df["subset"].astype(str) == pooled]
    order = {f: i for i, f in enumerate(FAMILIES)}
    return df.sort_values(["family", "metric", "k"], key=lambda s: s.map(order) if s.name == "family" else s)


def retrieval_figure(records: pd.DataFrame, task: str, *, palette: Mapping[str, Any],
                     metrics: Sequence[str] | None = None) -> Figure | None:
    """recall@k, precision@k and mAP@k against k on the pooled subset, one line per metric (module doc).

    ``metrics`` gives the legend order (default: sorted); metrics without records are left out.
    """
    df = curve_table(records, task)
    if df.empty:
        return None
    present = set(df["metric"].astype(str))
    names = [m for m in (metrics or sorted(present)) if m in present]
    names += sorted(present - set(names))
    families = [f for f in FAMILIES if (df["family"] == f).any()]
    ks = sorted(set(df["k"].astype(int)))
    pooled = str(df["subset"].iloc[0])
    # multiplicative spread along the log x axis: metric i of n at k * spread**(i - (n - 1) / 2)
    spread = 1.0 if len(names) == 1 else 1.1 ** (1.0 / max(len(names) - 1, 1))
    with F._style():
        fig = F._new_figure(3.7 * len(families) + 0.4, 3.5)
        axes = fig.subplots(1, len(families), squeeze=False).ravel()
        for ax, family in zip(axes, families, strict=True):
            fam = df[df["family"] == family]
            top = 0.0
            for i, metric in enumerate(names):
                rows = fam[fam["metric"].astype(str) == metric].sort_values("k")
                if rows.empty:
                    continue
                x = rows["k"].to_numpy(float) * spread ** (i - (len(names) - 1) / 2)
                y = rows["value"].to_numpy(float)
                colour = palette.get(metric, (0.5, 0.5, 0.5))
                ax.plot(x, y, marker="o", markersize=4, linewidth=1.5, color=colour, label=metric,
                        gid=f"retrieval-line:{family}:{metric}")
                lo = np.clip(y - rows["ci_low"].to_numpy(float), 0, None)
                hi = np.clip(rows["ci_high"].to_numpy(float) - y, 0, None)
                ok = np.isfinite(lo) & np.isfinite(hi)
                if ok.any():
                    ax.errorbar(x[ok], y[ok], yerr=np.vstack([lo[ok], hi[ok]]), fmt="none", ecolor=colour,
                                elinewidth=1, capsize=2.5)
                top = max(top, float(np.nanmax(np.concatenate([y, rows["ci_high"].to_numpy(float)]))))
            ax.set_xscale("log")
            ax.set_xticks(ks, [str(k) for k in ks])
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xlim(ks[0] / 1.35, ks[-1] * 1.35)
            ax.set_ylim(0, min(105.0, max(top, 1.0) * 1.08 + 1.0) if math.isfinite(top) else 100)
            ax.set_xlabel("k")
            ax.set_ylabel(f"{FAMILIES[family]} (%)")
            ax.set_title(f"{FAMILIES[family]} ({F._n_text(fam['n'])})")
        handles, labels = axes[0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, [F.wrap_label(lb, 28) for lb in labels], loc="outside lower center",
                       ncols=min(4, len(handles)))
        fig.suptitle(F._wrap(f"{task}: retrieval measures against k on subset {pooled!r}, one line per metric "
                             "(whiskers: the records' 95% CI, ci_low to ci_high)", fig))
    return fig


# ----------------------------------------------------------------------------------------- the grid


@dataclass(frozen=True)
class Tile:
    """One tile of the grid: the query or a neighbour (``rank`` 1 = nearest, 0 = the query)."""

    rank: int
    id: str
    path: str
    hit: bool | None  # None for the query tile
    distance: float | None
    missing: bool
    frame: tuple[int, int, int]
    box: tuple[int, int, int, int]  # (x0, y0, x1, y1) in mosaic pixels, frame included


@dataclass(frozen=True)
class GridRow:
    """One row of the grid: a query ranked by one metric."""

    item: str
    metric: str
    tiles: list[Tile]


@dataclass
class NeighbourGrid:
    """What :func:`neighbour_grid` drew: the figure, its rows, the mosaic and the unreadable files."""

    figure: Figure
    rows: list[GridRow]
    mosaic: np.ndarray  # (H, W, 3) uint8, what the figure shows pixel for pixel
    missing: list[str] = field(default_factory=list)  # paths that could not be opened, first seen first
    queries: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)


def _as_list(value: Any) -> list:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    return list(value)


def pick_queries(samples: pd.DataFrame, metrics: Sequence[str], n: int = MAX_QUERIES) -> list[str]:
    """The ``n`` queries to show: most disagreement between ``metrics`` on the top-1 neighbour first.

    Sort key, per query (over the metrics that ranked it): (1) whether the metrics disagree on whether
    their top-1 neighbour is relevant (some hit, some miss), (2) the number of distinct top-1 neighbours,
    both descending, then (3) the item id ascending, so that a run whose metrics always agree shows its
    first queries by item id.

    >>> s = pd.DataFrame({"metric": ["a", "b", "a", "b", "a", "b"], "item": ["q1", "q1", "q2", "q2", "q3", "q3"],
    ...                   "topk_ids": [["x"], ["x"], ["x"], ["y"], ["x"], ["y"]],
    ...                   "topk_hits": [[True], [True], [True], [True], [True], [False]]})
    >>> pick_queries(s, ["a", "b"], 2)
    ['q3', 'q2']
    """
    df = samples[samples["metric"].astype(str).isin(list(metrics))]
    if df.empty:
        return []
    ids = [_as_list(v) for v in df["topk_ids"]]
    hits = [_as_list(v) for v in df["topk_hits"]] if "topk_hits" in df.columns else [[] for _ in ids]
    top = pd.DataFrame({"item": df["item"].astype(str).to_numpy(),
                        "id": [str(v[0]) if v else None for v in ids],
                        "hit": [bool(v[0]) if v else None for v in hits]})
    per = top.groupby("item", sort=True).agg(ids=("id", "nunique"), hits=("hit", "nunique")).reset_index()
    per["split"] = per["hits"] > 1
    per = per.sort_values(["split", "ids", "item"], ascending=[False, False, True], kind="stable")
    return per["item"].head(n).tolist()


def thumbnail(path: Any, size: int = THUMB) -> np.ndarray | None:
    """The image at ``path`` fitted into a ``size`` x ``size`` white square (uint8 RGB), or None when it
    cannot be opened or decoded."""
    if path is None or (isinstance(path, float) and math.isnan(path)) or not str(path):
        return None
    try:
        with Image.open(str(path)) as img:
            img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale
            fitted = ImageOps.contain(img.convert("RGB"), (size, size))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    square = np.full((size, size, 3), 255, dtype=np.uint8)
    x0, y0 = (size - fitted.width) // 2, (size - fitted.height) // 2
    square[y0:y0 + fitted.height, x0:x0 + fitted.width] = np.asarray(fitted, dtype=np.uint8)
    return square


def _short(text: str, width: int) -> str:
    text = str(text)
    return text if len(text) <= width else "…" + text[-(width - 1):]


def neighbour_grid(samples: pd.DataFrame, task: str, *, metrics: Sequence[str] | None = None,
                   palette: Mapping[str, Any] | None = None, n_queries: int = MAX_QUERIES,
                   show_k: int = SHOW_K, max_rows: int = MAX_ROWS, dpi: float | None = None
                   ) -> NeighbourGrid | None:
    """The nearest-neighbour grid of a retrieval task's samples (module doc); None without samples.

    ``samples`` may hold other tasks' rows (they are ignored). ``metrics`` orders the rows within a query
    (default: sorted names; metrics absent from the samples are skipped). ``dpi``: the pixels per inch
    the figure is saved at (default: the report's ``savefig.dpi``), so that one mosaic pixel is one image
    pixel.
    """
    df = samples[samples["task"].astype(str) == task] if "task" in samples.columns else samples
    if df.empty or "topk_ids" not in df.columns:
        return None
    present = set(df["metric"].astype(str))
    names = [m for m in (metrics or sorted(present)) if m in present] + sorted(present - set(metrics or []))
    names = list(dict.fromkeys(names))[:max_rows]
    queries = pick_queries(df, names, max(1, min(n_queries, max_rows // len(names))))
    width_k = max((len(_as_list(v)) for v in df["topk_ids"]), default=0)
    if width_k == 0:  # no rankings to show
        return None
    n_cols = 1 + max(0, min(show_k, width_k))
    chosen = df[df["item"].astype(str).isin(queries)]
    by_key = {(str(r.item), str(r.metric)): r for r in chosen.itertuples(index=False)}

    cache: dict[str, np.ndarray | None] = {}
    missing: list[str] = []

    def load(path: Any) -> np.ndarray | None:
        key = str(path)
        if key not in cache:
            cache[key] = thumbnail(path, THUMB - 2 * FRAME)
            if cache[key] is None and key not in missing:
                missing.append(key)
        return cache[key]

    title = (f"{task}: top {n_cols - 1} neighbours per metric. Frame green: relevant, red: not; distance "
             "under each tile; the query first (dark frame). Queries: those on which the metrics disagree "
             "most about the top-1 neighbour, then by item id.")
    cell_w, cell_h = THUMB + GAP, THUMB + TEXT_H
    width = LABEL_W + n_cols * cell_w + GAP
    title_lines = textwrap.wrap(title, max(30, int((width - 20) / 7.6)))  # ~7.6 px a character at 9 pt
    top = 16 + 18 * len(title_lines)  # 9 pt at 110 dpi with line spacing 1.25: about 17 px a line
    plan: list[tuple[str, str, int]] = []  # (item, metric, y0)
    y = top
    for qi, item in enumerate(queries):
        if qi:
            y += GROUP_GAP
        for metric in names:
            if (item, metric) in by_key:
                plan.append((item, metric, y))
                y += cell_h
    height = y + GAP
    mosaic = np.full((height, width, 3), 255, dtype=np.uint8)
    rows: list[GridRow] = []
    texts: list[tuple[float, float, str, dict[str, Any]]] = []
    for item, metric, y0 in plan:
        rec = by_key[(item, metric)]
        ids = [str(v) for v in _as_list(getattr(rec, "topk_ids", None))]
        paths = _as_list(getattr(rec, "topk_paths", None))
        dists = [float(v) for v in _as_list(getattr(rec, "topk_distances", None))]
        hits = [bool(v) for v in _as_list(getattr(rec, "topk_hits", None))]
        tiles = []
        for col in range(n_cols):
            x0 = LABEL_W + col * cell_w
            if col == 0:
                path, tid, hit, dist, frame = getattr(rec, "path", None), item, None, None, QUERY_FRAME
            elif col - 1 < len(ids):
                j = col - 1
                path = paths[j] if j < len(paths) else None
                tid = ids[j]
                hit = hits[j] if j < len(hits) else None
                dist = dists[j] if j < len(dists) else None
                frame = GREEN if hit else RED if hit is not None else MISSING_GREY
            else:
                continue
            img = load(path)
            box = (x0, y0, x0 + THUMB, y0 + THUMB)
            mosaic[y0:y0 + THUMB, x0:x0 + THUMB] = frame
            inner = img if img is not None else np.full((THUMB - 2 * FRAME,) * 2 + (3,), MISSING_GREY, np.uint8)
            mosaic[y0 + FRAME:y0 + THUMB - FRAME, x0 + FRAME:x0 + THUMB - FRAME] = inner
            if img is None:
                texts.append((x0 + THUMB / 2, y0 + THUMB / 2, "missing",
                              {"ha": "center", "va": "center", "fontsize": 8, "color": "0.15"}))
            under = (_short(f"query {item}", 18) if col == 0 else
                     f"{dist:.4g}" if dist is not None and math.isfinite(dist) else "—")
            texts.append((x0 + THUMB / 2, y0 + THUMB + 3, under,
                          {"ha": "center", "va": "top", "fontsize": 7,
                           "color": "0.1" if col else "0.35"}))
            tiles.append(Tile(col, tid, "" if path is None else str(path), hit, dist, img is None, frame, box))
        colour = (palette or {}).get(metric, (0.1, 0.1, 0.1))
        texts.append((LABEL_W - 10, y0 + THUMB / 2, F.wrap_label(metric, 22),
                      {"ha": "right", "va": "center", "fontsize": 8, "color": colour, "fontweight": "bold"}))
        rows.append(GridRow(item, metric, tiles))

    dpi = float(dpi or F._RC["savefig.dpi"])
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    with mpl.rc_context(F._RC):
        ax = fig.add_axes((0, 0, 1, 1))
        ax.imshow(mosaic, interpolation="nearest", extent=(0, width, height, 0))
        ax.set_xlim(0, width)
        ax.set_ylim(height, 0)
        ax.axis("off")
        for x, y_, text, kw in texts:
            ax.text(x, y_, text, **kw)
        ax.text(10, 8, "\n".join(title_lines), ha="left", va="top", fontsize=9, linespacing=1.25)
    return NeighbourGrid(fig, rows, mosaic, missing, queries, names)


def raster_svg(png: bytes, *, jpeg_quality: int | None = JPEG_QUALITY) -> str:
    """A minimal SVG document that shows a PNG at its pixel size, as a ``data:`` URI: how the HTML report
    inlines a raster figure. With ``jpeg_quality`` the image is re-encoded as JPEG when that is smaller
    (thumbnails of photographs: several times smaller, so the page stays light); the PNG file is untouched.

    >>> buf = io.BytesIO(); Image.new("RGB", (3, 2)).save(buf, format="PNG")
    >>> raster_svg(buf.getvalue()).split("<image")[0]
    '<svg xmlns="http://www.w3.org/2000/svg" width="3" height="2" viewBox="0 0 3 2" role="img">'
    """
    with Image.open(io.BytesIO(png)) as img:
        w, h = img.size
        data, mime = png, "image/png"
        if jpeg_quality is not None:
            buf = io.BytesIO()
            img.convert("RGB").save(buf, format="JPEG", quality=jpeg_quality, optimize=True)
            if buf.tell() < len(png):
                data, mime = buf.getvalue(), "image/jpeg"
    text = base64.b64encode(data).decode("ascii")
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
            f'role="img"><image width="{w}" height="{h}" href="data:{mime};base64,{text}"/></svg>')
