"""Quality-score (MOS) correlation: the task kind, and ``mos_csv`` for your own scores (REFERENCE §9).

An item is a (reference, distorted) pair of image files with a human score. The metric gives
``d = d(reference, distorted)``; the measures are the correlations of :mod:`percepbench.correlation`
between the predicted quality ``-d`` and the human quality (the score for a MOS set, minus the score for
a DMOS set), so that a perfect metric scores +1 either way: ``srcc``, ``krcc``, ``plcc`` and ``plcc_fit``
(after the 4-parameter logistic; left out, with a warning, when the fit does not converge). Values are
correlations in [-1, 1], not percentages: with ``compare``, give ``--max-drop`` in those units (0.01).

Records per distortion type (the ``type`` column; subsets) and pooled (``all``). CIs bootstrap over
**reference images** (all distorted versions of a reference stay together); paired comparisons between
metrics resample the same references for both. A correlation is a property of the set, so the per-item
``score`` of ``samples.parquet`` is NaN (as for JND).

``mos_csv`` — ``--task-args mos_csv:path=scores.csv``: columns ``ref``, ``dist`` (image paths, relative to
the table's folder, or images), ``mos`` (a number); optional ``type`` (the distortion type) and ``item``;
option ``scores=mos`` (default: higher = better) or ``scores=dmos`` (higher = worse). CSV, TSV, Parquet,
JSON Lines, Arrow, ``datasets`` folders and Hub datasets are read as for ``2afc_csv``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from percepbench.correlation import MEASURES, correlations, grouped_bootstrap_ci, paired_grouped_comparison
from percepbench.errors import DataError
from percepbench.registry import register_task
from percepbench.results import ALL
from percepbench.specs import TaskSpec
from percepbench.tasks.base import Task
from percepbench.tasks.csv_tasks import subset_column
from percepbench.tasks.files import FileTask, numeric_column
from percepbench.user_tables import HUB_PREFIX, check_columns, image_column_paths, load_table

log = logging.getLogger("percepbench")

SCORE_KINDS = ("mos", "dmos")


class CorrelationTask(Task):
    """Items (ref, dist) with a human score ``mos`` and a ``reference`` group; set-level correlations."""

    slots: ClassVar[tuple[str, ...]] = ("ref", "dist")
    comparisons: ClassVar[tuple[tuple[str, str, str], ...]] = (("d", "ref", "dist"),)
    measure: ClassVar[str] = "srcc"
    #: ``"mos"`` (higher = better) or ``"dmos"`` (higher = worse)
    score_kind: str = "mos"

    @property
    def measures(self) -> list[str]:
        return list(MEASURES)

    def item_scores(self, samples: pd.DataFrame) -> np.ndarray:
        return np.full(len(samples), np.nan)  # a correlation is a property of the set

    def _quality(self, samples: pd.DataFrame) -> np.ndarray:
        mos = samples["mos"].to_numpy(np.float64)
        return mos if self.score_kind == "mos" else -mos

    def _stat(self, samples: pd.DataFrame, measure: str):
        d = samples["d"].to_numpy(np.float64)
        quality = self._quality(samples)

        def statistic(idx: np.ndarray) -> float | None:
            return correlations(-d[idx], quality[idx])[0][measure]

        return statistic

    def _groups(self, samples: pd.DataFrame) -> list[tuple[str, np.ndarray]]:
        subsets = samples["subset"].astype(str).to_numpy()
        groups = [(s, subsets == s) for s in pd.unique(subsets)]
        if len(groups) > 1:
            groups.append((ALL, np.ones(len(samples), dtype=bool)))
        return groups

    def score(self, samples: pd.DataFrame, *, seed: int = 0, n_boot: int = 1000) -> list[dict[str, Any]]:
        records = []
        metric = samples["metric"].iloc[0] if "metric" in samples.columns and len(samples) else "?"
        for subset, mask in self._groups(samples):
            part = samples[mask].reset_index(drop=True)
            values, why = correlations(-part["d"].to_numpy(np.float64), self._quality(part))
            refs = part["reference"].to_numpy()
            for measure in MEASURES:
                if values[measure] is None:
                    log.warning("%s on %s, subset %s: no %s (%s)", metric, getattr(self.spec, "name", "?"),
                                subset, measure, why or "undefined")
                    continue
                lo, hi = grouped_bootstrap_ci(self._stat(part, measure), refs, seed=seed, n_boot=n_boot)
                records.append({"subset": str(subset), "measure": measure, "value": values[measure],
                                "ci_low": lo, "ci_high": hi, "n": len(part)})
        return records

    def compare(self, a: pd.DataFrame, b: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0,
                measure: str | None = None) -> dict[str, float] | None:
        a, b = a.reset_index(drop=True), b.reset_index(drop=True)
        measure = measure or self.measure
        r = paired_grouped_comparison(self._stat(a, measure), self._stat(b, measure), a["reference"].to_numpy(),
                                      n_boot=n_boot, seed=seed)
        return None if np.isnan(r["diff"]) else r


class MOSCSV(FileTask, CorrelationTask):
    """Your own quality scores: a table of ref, dist, mos (optional type, item); option scores=mos|dmos."""

    def __init__(self, path: str | None = None, scores: str = "mos", split: str | None = None) -> None:
        super().__init__()
        if path in (None, ""):
            raise ValueError("mos_csv needs path=<table> (columns ref, dist, mos; optional type, item)")
        if scores not in SCORE_KINDS:
            raise ValueError(f"scores must be mos (higher = better) or dmos (higher = worse), got {scores!r}")
        self.path, self.score_kind = str(path), scores
        self.split = None if split in (None, "") else str(split)

    def prepare(self, *, data_root: str | None = None, num_workers: int = 0, progress: bool = True,
                seed: int = 0) -> None:
        from percepbench.data import data_root as default_data_root

        frame, base, kind = load_table(self.path, split=self.split)
        what = self.path if self.path.startswith(HUB_PREFIX) else str(Path(self.path).expanduser())
        check_columns(frame, ("ref", "dist", "mos"), what)
        frame = frame.reset_index(drop=True)
        mos = numeric_column(frame, "mos", Path(what))
        images_root = default_data_root(data_root) / "user_images"
        refs = image_column_paths(frame, "ref", base=base, images_root=images_root, what=what)
        dists = image_column_paths(frame, "dist", base=base, images_root=images_root, what=what)
        items = pd.DataFrame({
            "item": (frame["item"].astype(str) if "item" in frame.columns
                     else pd.Series([f"line{i + 2}" for i in frame.index])).to_numpy(),
            "subset": (subset_column(frame.rename(columns={"type": "subset"}), what).to_numpy()
                       if "type" in frame.columns else [ALL] * len(frame)),
            "reference": refs, "mos": mos.to_numpy(),
        })
        if items["item"].duplicated().any():
            dup = items["item"][items["item"].duplicated()].unique().tolist()
            raise DataError(f"{what}: item ids must be unique; repeated: {dup[:5]}")
        if len(items) < 3:
            raise DataError(f"{what}: a correlation needs at least 3 scored images, found {len(items)}")
        self._finish(items, list(zip(refs, dists, strict=True)), what=f"mos_csv ({what})", num_workers=num_workers)
        self._protocol = {"dataset": kind, "source": what, "scores": f"{self.score_kind} ("
                          + ("higher = better" if self.score_kind == "mos" else "higher = worse") + ")",
                          "comparison": "d = d(ref, dist); predicted quality = -d",
                          "measures": "srcc, krcc, plcc, plcc_fit (4-parameter logistic); CIs over references"}


register_task(TaskSpec(
    name="mos_csv",
    target="percepbench.tasks.mos:MOSCSV",
    description="correlation with your own quality scores: path=<table> with columns ref, dist, mos (optional "
                "type, item); scores=mos|dmos; SRCC, KRCC, PLCC, PLCC after a logistic fit, CIs over references",
    kind="correlation", measure="srcc", needs_data=True,
))
