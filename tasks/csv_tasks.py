"""``2afc_csv`` and ``jnd_csv``: benchmarks on your own human judgments, listed in a CSV.

``2afc_csv`` — 2AFC on your own triplets.

``--task-args 2afc_csv:path=my.csv``. Columns: ``ref``, ``left``, ``right`` (image paths, relative to the
CSV's folder or absolute) and ``p`` (fraction of judges who found the **right** image closer to the
reference, in [0, 1]; 0/1 for hard labels); optional ``subset`` (scored separately, plus the pooled
``all``; when the column is there every row needs a subset, and ``all`` itself is reserved for the pooled
record, so either is a :class:`~percepbench.errors.DataError` naming the lines) and ``item`` (an id; the CSV
line otherwise). ``d0 = d(ref, left)``, ``d1 = d(ref, right)``,
scored like every 2AFC task.

``jnd_csv`` — just-noticeable-difference pairs: ``--task-args jnd_csv:path=pairs.csv``. Columns ``p0``,
``p1`` (image paths, relative to the CSV's folder or absolute) and ``same`` (fraction of judges who found
the two images the same, in [0, 1]); optional ``subset`` and ``item`` (as for ``2afc_csv``). ``d = d(p0, p1)``,
scored by the VOC-style average precision of :mod:`percepbench.tasks.jnd`, which needs at least one pair
judged ``same`` > 0 in every subset (else the table is refused: the AP is undefined without one).

Both also read Parquet, JSON Lines, Arrow and ``datasets.save_to_disk`` folders, and Hub datasets
(``path=hf://datasets/<owner>/<name>``, option ``split=``), through Hugging Face ``datasets``; image columns
may then hold images instead of paths (see :mod:`percepbench.user_tables`).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pandas as pd

from percepbench.errors import DataError
from percepbench.registry import register_task
from percepbench.specs import TaskSpec
from percepbench.tasks.base import ALL_SUBSET, TwoAFCTask
from percepbench.tasks.files import FileTask, listed, numeric_column
from percepbench.tasks.jnd import JNDTask, require_same_pairs
from percepbench.user_tables import HUB_PREFIX, check_columns, image_column_paths, load_table


class CSVItems(FileTask):
    """Items read from a user CSV: image columns, one label column in [0, 1], optional subset and item."""

    task_name: ClassVar[str] = ""
    image_columns: ClassVar[tuple[str, ...]] = ()
    label: ClassVar[str] = ""
    label_text: ClassVar[str] = ""
    comparisons_text: ClassVar[str] = ""

    def __init__(self, path: str | None = None, split: str | None = None) -> None:
        super().__init__()
        if path in (None, ""):
            raise ValueError(f"{self.task_name} needs path=<CSV file> (columns "
                             f"{','.join((*self.image_columns, self.label))}; optional subset, item)")
        self.path = str(path)
        self.split = None if split in (None, "") else str(split)

    def prepare(self, *, data_root: str | None = None, num_workers: int = 0, progress: bool = True,
                seed: int = 0) -> None:
        from percepbench.data import data_root as default_data_root

        frame, base, kind = load_table(self.path, split=self.split)
        what = self.path if self.path.startswith(HUB_PREFIX) else str(Path(self.path).expanduser())
        items, paths = items_from_table(frame, self.image_columns, self.label, base=base, what=what,
                                        images_root=default_data_root(data_root) / "user_images")
        self.check_labels(items, what)
        self._finish(items, paths, what=f"{self.task_name} ({what})", num_workers=num_workers)
        self._protocol = {
            "dataset": kind,
            "source": what,
            "split": self.split,
            "root": str(base) if base is not None else None,
            "filters": "none",
            "label": self.label_text,
            "comparisons": self.comparisons_text,
        }

    def check_labels(self, items: pd.DataFrame, what: str) -> None:
        """Task-kind checks of the labels beyond the [0, 1] range (none for 2AFC)."""


class CSV2AFC(CSVItems, TwoAFCTask):
    """User triplets from a CSV (columns ref, left, right, p; optional subset, item)."""

    task_name, image_columns, label = "2afc_csv", ("ref", "left", "right"), "p"
    label_text = "p = column p (fraction judging the right image closer)"
    comparisons_text = "d0 = d(ref, left), d1 = d(ref, right)"


class CSVJND(CSVItems, JNDTask):
    """User JND pairs from a CSV (columns p0, p1, same; optional subset, item)."""

    task_name, image_columns, label = "jnd_csv", ("p0", "p1"), "same"
    label_text = "same = column same (fraction judging the pair the same)"
    comparisons_text = "d = d(p0, p1)"

    def check_labels(self, items: pd.DataFrame, what: str) -> None:
        """Every subset needs a pair judged "same" > 0 (:func:`~percepbench.tasks.jnd.require_same_pairs`)."""
        require_same_pairs(items, what)


def items_from_table(frame: pd.DataFrame, image_columns: tuple[str, ...], label: str, *, base: Path | None,
                     what: str, images_root: Path) -> tuple[pd.DataFrame, list[tuple[str, ...]]]:
    """Items and absolute image paths of a user table; :class:`DataError` naming the file and rows on bad input."""
    check_columns(frame, (*image_columns, label), what)
    values = numeric_column(frame.reset_index(drop=True), label, Path(what), lo=0.0, hi=1.0)
    frame = frame.reset_index(drop=True)
    files = {col: image_column_paths(frame, col, base=base, images_root=images_root, what=what)
             for col in image_columns}
    items = pd.DataFrame({
        "item": (frame["item"].astype(str) if "item" in frame.columns
                 else pd.Series([f"line{i + 2}" for i in frame.index])).to_numpy(),
        "subset": (subset_column(frame, what) if "subset" in frame.columns
                   else pd.Series([ALL_SUBSET] * len(frame))).to_numpy(),
        label: values.to_numpy(),
        **{col: [_shown(v, f) for v, f in zip(frame[col].tolist(), files[col], strict=True)] for col in image_columns},
    })
    paths = list(zip(*(files[col] for col in image_columns), strict=True))
    return items, paths


def subset_column(frame: pd.DataFrame, what: str) -> pd.Series:
    """The ``subset`` column as text; :class:`DataError` naming the file and lines for empty or reserved cells.

    Every row must name its subset (an empty cell would become a subset of its own, or drop the item from
    every per-subset record), and no subset may be called ``all``: that name is the pooled record scored
    over every item.
    """
    values = frame["subset"]
    empty = values.isna().to_numpy() | values.astype(str).str.strip().eq("").to_numpy()
    if empty.any():
        lines = [f"line {i + 2}" for i in frame.index[empty]]
        raise DataError(f"{what}: column 'subset' has {len(lines)} empty cell(s) ({listed(lines)}); give every "
                        "row a subset name, or drop the column to score all items as one set")
    text = values.astype(str)
    reserved = text.eq(ALL_SUBSET).to_numpy()
    if reserved.any():
        lines = [f"line {i + 2}" for i in frame.index[reserved]]
        raise DataError(f"{what}: column 'subset' uses the reserved name {ALL_SUBSET!r} ({listed(lines)}); "
                        f"{ALL_SUBSET!r} is the pooled record percepbench scores over every item, so rename "
                        "that subset")
    return text


def _shown(value: object, file: str) -> str:
    """What the items table shows for an image: the path as written, or the stored file for embedded images."""
    return file if isinstance(value, dict) else str(value).strip()


register_task(TaskSpec(
    name="2afc_csv",
    target="percepbench.tasks.csv_tasks:CSV2AFC",
    description="2AFC on your own triplets: path=<CSV> with columns ref,left,right,p (paths relative to the "
                "CSV), optional subset, item",
    kind="2afc", measure="2afc_accuracy", needs_data=True,
))

register_task(TaskSpec(
    name="jnd_csv",
    target="percepbench.tasks.csv_tasks:CSVJND",
    description="JND on your own pairs: path=<CSV> with columns p0,p1,same (paths relative to the CSV), "
                "optional subset, item; VOC average precision",
    kind="jnd", measure="jnd_map", needs_data=True,
))
