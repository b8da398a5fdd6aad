"""The figure of a feature-inversion run (:mod:`percepbench.inversion`): a grid of the inverted images.

``inversion_grid`` (file stem ``inversion_grid``): one row per target (the first :data:`MAX_TARGETS` in the
run's order, ``meta.tasks.inversion.targets``), columns = the target, then one inversion per optimised-with
metric (the order of ``meta.metrics``; metrics that failed have no samples and no column). Each column is
titled with the metric's name (in the report's :func:`~percepbench.reports.figures.metric_palette` colour);
under each inversion is its final distance to the target under the metric it was optimised with
(``distance:<metric>`` of the samples: measured from the saved 8-bit image). A pure function of the run
directory's files; no torch. The images are pixels, so the figure is a raster figure (PNG).

When any image the grid needs is missing or unreadable the function returns ``None`` and logs a warning
naming the files (a grid with holes would misreport what a metric recovered).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from percepbench.reports import figures as F

log = logging.getLogger("percepbench")

TASK = "inversion"
NAME = "inversion_grid"
#: at most this many targets (rows)
MAX_TARGETS = 4
#: inches per tile
TILE_IN = 1.3


def _read(path: Path) -> np.ndarray | None:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError):
        return None


def inversion_grid(run_dir: Path, samples: pd.DataFrame, meta: Mapping[str, Any] | None) -> F.ReportFigure | None:
    """The inversion grid of the run in ``run_dir`` (module docstring), or None when the run has no inversion
    samples or an image is missing (logged with the files)."""
    run_dir = Path(run_dir)
    if samples is None or samples.empty or "image" not in samples.columns:
        return None
    df = samples[samples["task"].astype(str) == TASK] if "task" in samples.columns else samples
    if df.empty:
        return None
    settings = ((meta or {}).get("tasks") or {}).get(TASK) or {}
    present_items = list(dict.fromkeys(df["item"].astype(str)))
    order = [str(t) for t in settings.get("targets") or [] if str(t) in present_items]
    items = (order + [i for i in present_items if i not in order])[:MAX_TARGETS]
    present_metrics = list(dict.fromkeys(df["metric"].astype(str)))
    metrics = [m for m in (meta or {}).get("metrics") or {} if m in present_metrics]
    metrics += [m for m in present_metrics if m not in metrics]
    by_key = {(str(r["item"]), str(r["metric"])): r for r in df.to_dict("records")}

    tiles: dict[tuple[str, str], np.ndarray] = {}
    missing: list[str] = []
    for item in items:
        first = next(by_key[(item, m)] for m in metrics if (item, m) in by_key)
        wanted = [("target", first.get("target_image") or f"inversion/{item}/target.png")]
        wanted += [(m, by_key[(item, m)]["image"]) for m in metrics if (item, m) in by_key]
        for column, rel in wanted:
            path = run_dir / str(rel)
            img = _read(path)
            if img is None:
                missing.append(str(path))
            else:
                tiles[(item, column)] = img
    if missing:
        log.warning("inversion grid not drawn: %d image(s) missing or unreadable: %s", len(missing),
                    ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
        return None

    palette = F.metric_palette(metrics)
    columns = ["target", *metrics]
    n_rows, n_cols = len(items), len(columns)
    fig = F._new_figure(TILE_IN * n_cols + 0.4, TILE_IN * 1.25 * n_rows + 0.6)
    with F._style():
        axes = fig.subplots(n_rows, n_cols, squeeze=False)
        for r, item in enumerate(items):
            for c, column in enumerate(columns):
                ax = axes[r][c]
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_visible(False)
                if (item, column) not in tiles:  # this metric has no inversion of this target
                    ax.set_facecolor("0.9")
                    ax.set_xlabel("—", fontsize=8)
                    continue
                ax.imshow(tiles[(item, column)], interpolation="nearest")
                if r == 0:
                    ax.set_title(F.wrap_label(column, 14), fontsize=8,
                                 color=palette.get(column, "0.1"), fontweight="bold" if c else "normal")
                if c == 0:
                    ax.set_ylabel(F.wrap_label(item, 14), fontsize=8)
                else:
                    value = by_key[(item, column)].get(f"distance:{column}")
                    text = (f"{float(value):.4g}" if value is not None and math.isfinite(float(value))
                            else "—")
                    ax.set_xlabel(text, fontsize=8)
        steps, lr = settings.get("steps"), settings.get("lr")
        fig.suptitle(F._wrap(f"Feature inversion from noise ({steps} Adam steps, lr {lr}, no prior): each "
                             "metric's image; below it, its distance to the target by that metric", fig),
                     fontsize=9)
    return F.ReportFigure(NAME, TASK, "Feature inversion", fig, raster=True)
