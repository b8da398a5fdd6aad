"""``2afc_csv``: 2AFC on your own triplets, listed in a CSV.

``--task-args 2afc_csv:path=my.csv``. Columns: ``ref``, ``left``, ``right`` (image paths, relative to the
CSV's folder or absolute) and ``p`` (fraction of judges who found the **right** image closer to the
reference, in [0, 1]; 0/1 for hard labels); optional ``subset`` (scored separately, plus the pooled
``all``) and ``item`` (an id; the CSV line otherwise). ``d0 = d(ref, left)``, ``d1 = d(ref, right)``,
scored like every 2AFC task.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from percepbench.errors import DataError
from percepbench.registry import register_task
from percepbench.specs import TaskSpec
from percepbench.tasks.files import FileTwoAFCTask, numeric_column, read_csv

COLUMNS = ("ref", "left", "right", "p")


class CSV2AFC(FileTwoAFCTask):
    """User triplets from a CSV (columns ref, left, right, p; optional subset, item)."""

    def __init__(self, path: str | None = None) -> None:
        super().__init__()
        if path in (None, ""):
            raise ValueError("2afc_csv needs path=<CSV file> (columns ref,left,right,p; optional subset, item)")
        self.path = str(path)

    def prepare(self, *, data_root: str | None = None, num_workers: int = 0, progress: bool = True,
                seed: int = 0) -> None:
        csv = Path(self.path).expanduser()
        frame = read_csv(csv, COLUMNS)
        p = numeric_column(frame, "p", csv, lo=0.0, hi=1.0)
        for col in ("ref", "left", "right"):
            empty = frame[col].isna() | (frame[col].astype(str).str.strip() == "")
            if empty.any():
                raise DataError(f"{csv}: column {col!r} is empty on line(s) "
                                + ", ".join(str(i + 2) for i in list(frame.index[empty.to_numpy()])[:5]))
        base = csv.resolve().parent
        items = pd.DataFrame({
            "item": (frame["item"].astype(str) if "item" in frame.columns
                     else pd.Series([f"line{i + 2}" for i in frame.index])).to_numpy(),
            "subset": (frame["subset"].astype(str) if "subset" in frame.columns
                       else pd.Series(["all"] * len(frame))).to_numpy(),
            "p": p.to_numpy(),
            "ref": frame["ref"].astype(str).str.strip().to_numpy(),
            "left": frame["left"].astype(str).str.strip().to_numpy(),
            "right": frame["right"].astype(str).str.strip().to_numpy(),
        })
        paths = [tuple(os.path.join(base, f) for f in row)
                 for row in zip(items["ref"], items["left"], items["right"], strict=True)]
        self._finish(items, paths, what=f"2afc_csv ({csv})", num_workers=num_workers)
        self._protocol = {
            "dataset": "user CSV",
            "csv": str(csv),
            "root": str(base),
            "filters": "none",
            "label": "p = column p (fraction judging the right image closer)",
            "comparisons": "d0 = d(ref, left), d1 = d(ref, right)",
        }


register_task(TaskSpec(
    name="2afc_csv",
    target="percepbench.tasks.csv_tasks:CSV2AFC",
    description="2AFC on your own triplets: path=<CSV> with columns ref,left,right,p (paths relative to the "
                "CSV), optional subset, item",
    kind="2afc", measure="2afc_accuracy", needs_data=True, offline=True,
))
