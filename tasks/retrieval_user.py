"""``retrieval_folder`` and ``retrieval_csv``: retrieval on your own image collections.

``retrieval_folder`` — ``--task-args retrieval_folder:path=<folder>``: one subfolder per class (the
ImageNet-R layout), ``<folder>/<class>/<image>``; images deeper inside a class folder belong to that
class. The class is the image's label; the image id is its path relative to ``<folder>``. Image files
are those with the suffixes in :data:`IMAGE_SUFFIXES` (any case); other files and hidden entries are
ignored. An image directly in ``<folder>`` (in no class), a folder without class subfolders, or an empty
class folder is a :class:`~percepbench.errors.DataError` naming the folder.

``retrieval_csv`` — ``--task-args retrieval_csv:path=<table>``: a CSV, TSV, Parquet, JSON Lines or Arrow
file, a ``datasets.save_to_disk`` folder, or ``hf://datasets/<owner>/<name>`` (read as for ``2afc_csv``:
:mod:`percepbench.user_tables`). Columns: ``path`` (image file, relative to the table's folder or
absolute; or an image, for Hugging Face image columns) and ``label`` (``a|b|c`` for several labels);
optional ``id`` (default: the path as written, or ``line<N>``), ``role`` (``query``, ``gallery`` or
``both``; default both) and ``subset`` (scored separately, plus the pooled ``all``). A row whose label
is empty must have ``role=gallery`` (a distractor); otherwise the table is refused, naming the lines.

Both take the options of every retrieval task (:class:`~percepbench.tasks.retrieval.RetrievalTask`):
``ks``, ``queries``, ``gallery``, ``match``, ``per_class``, ``max_pairs``, ``index``, ``nprobe``,
``ef_search``, ``size``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from percepbench.errors import DataError
from percepbench.registry import register_task
from percepbench.specs import TaskSpec
from percepbench.tasks.csv_tasks import subset_column
from percepbench.tasks.files import listed
from percepbench.tasks.retrieval import RetrievalTask, split_labels
from percepbench.user_tables import HUB_PREFIX, check_columns, image_column_paths, load_table

#: the files ``retrieval_folder`` reads as images
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm")


def folder_images(root: Path) -> pd.DataFrame:
    """One row per image under ``root/<class>/``: ``id`` (relative path), ``path``, ``labels`` = (class,)."""
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found (retrieval_folder needs path=<folder> holding one "
                        "subfolder per class)")
    visible = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    classes = [p for p in visible if p.is_dir()]
    loose = [p.name for p in visible if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if loose:
        raise DataError(f"{root}: {len(loose)} image(s) lie directly in the folder, in no class: {listed(loose)}; "
                        "put every image in a subfolder named after its class")
    if not classes:
        raise DataError(f"{root}: no class subfolders; retrieval_folder expects <folder>/<class>/<image> (one "
                        "subfolder per class, as in ImageNet-R)")
    rows, empty = [], []
    for folder in classes:
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(root).parts))
        if not files:
            empty.append(folder.name)
        rows += [{"id": p.relative_to(root).as_posix(), "path": str(p), "labels": (folder.name,)} for p in files]
    if empty:
        raise DataError(f"{root}: {len(empty)} class folder(s) hold no image ({', '.join(IMAGE_SUFFIXES)}): "
                        f"{listed(empty)}")
    return pd.DataFrame(rows)


class RetrievalFolder(RetrievalTask):
    """Retrieval over ``<path>/<class>/<image>``: one class per subfolder."""

    def __init__(self, path: str | None = None, **options: Any) -> None:
        super().__init__(**options)
        if path in (None, ""):
            raise ValueError("retrieval_folder needs path=<folder> (one subfolder per class)")
        self.path = str(path)

    def load_images(self, *, data_root: str | None, num_workers: int, progress: bool
                    ) -> tuple[pd.DataFrame, dict[str, Any], str]:
        root = Path(self.path).expanduser().resolve()
        table = folder_images(root)
        protocol = {"dataset": "image folder, one subfolder per class", "root": str(root),
                    "classes": int(table["labels"].map(lambda ls: ls[0]).nunique())}
        return table, protocol, f"retrieval_folder ({root})"


class RetrievalCSV(RetrievalTask):
    """Retrieval over a table of images and labels (``path``, ``label``; optional ``id``, ``role``, ``subset``)."""

    def __init__(self, path: str | None = None, split: str | None = None, **options: Any) -> None:
        super().__init__(**options)
        if path in (None, ""):
            raise ValueError("retrieval_csv needs path=<table> (columns path,label; optional id, role, subset)")
        self.path = str(path)
        self.split = None if split in (None, "") else str(split)

    def load_images(self, *, data_root: str | None, num_workers: int, progress: bool
                    ) -> tuple[pd.DataFrame, dict[str, Any], str]:
        from percepbench.data import data_root as default_data_root

        frame, base, kind = load_table(self.path, split=self.split)
        what = self.path if self.path.startswith(HUB_PREFIX) else str(Path(self.path).expanduser())
        check_columns(frame, ("path", "label"), what)
        frame = frame.reset_index(drop=True)
        paths = image_column_paths(frame, "path", base=base, images_root=default_data_root(data_root) / "user_images",
                                   what=what)
        labels = [split_labels(v) for v in frame["label"].tolist()]
        role = (frame["role"].astype(str).str.strip().str.lower() if "role" in frame.columns
                else pd.Series(["both"] * len(frame)))
        unlabelled = [f"line {i + 2}" for i, (ls, r) in enumerate(zip(labels, role, strict=True))
                      if not ls and r != "gallery"]
        if unlabelled:
            raise DataError(f"{what}: column 'label' is empty in {len(unlabelled)} row(s) that can be queries "
                            f"({listed(unlabelled)}); give each a label (several as a|b|c), or role=gallery to keep "
                            "it as an unlabelled distractor")
        if "id" in frame.columns:
            ids = frame["id"].astype(str).str.strip()
            empty = [f"line {i + 2}" for i in frame.index[ids.eq("") | frame["id"].isna()]]
            if empty:
                raise DataError(f"{what}: column 'id' is empty in {len(empty)} row(s) ({listed(empty)})")
        else:
            shown = [v if isinstance(v, str) else None for v in frame["path"].tolist()]
            ids = pd.Series([s.strip() if s and s.strip() else f"line{i + 2}" for i, s in enumerate(shown)])
        dup = ids[ids.duplicated()].unique().tolist()
        if dup:
            raise DataError(f"{what}: image ids must be unique (column {'id' if 'id' in frame.columns else 'path'}); "
                            f"repeated: {listed(dup)}")
        table = pd.DataFrame({"id": ids.to_numpy(), "path": paths, "labels": labels, "role": role.to_numpy()})
        if "subset" in frame.columns:
            table["subset"] = subset_column(frame, what).to_numpy()
        protocol = {"dataset": kind, "source": what, "split": self.split,
                    "root": str(base) if base is not None else None}
        return table, protocol, f"retrieval_csv ({what})"


_OPTIONS = ("options ks (1+5+10), queries, gallery, match (any|all|jaccard:<t>), per_class, max_pairs, "
            "index (exact|ivf|hnsw), size")

register_task(TaskSpec(
    name="retrieval_folder",
    target="percepbench.tasks.retrieval_user:RetrievalFolder",
    description=f"retrieval on your own images: path=<folder> with one subfolder per class; {_OPTIONS}",
    kind="retrieval", measure="recall@1", needs_data=True,
))

register_task(TaskSpec(
    name="retrieval_csv",
    target="percepbench.tasks.retrieval_user:RetrievalCSV",
    description=f"retrieval on your own table: path=<CSV/Parquet/hf://...> with columns path,label (a|b|c), "
                f"optional id, role, subset; {_OPTIONS}",
    kind="retrieval", measure="recall@1", needs_data=True,
))
