"""Shared machinery of the built-in quality-score (MOS) datasets on files: ``tid2013``, ``kadid10k``, ``pipal``.

Each dataset module declares its layout, its label-file reader and its :class:`~percepbench.datasets.DatasetSource`
beside its task; this module holds only what they share:

- :class:`MOSDatasetTask`: a :class:`~percepbench.tasks.files.FileTask` on the correlation task kind
  (:class:`~percepbench.tasks.mos.CorrelationTask`). ``prepare`` finds the dataset folder (the ``root=`` option,
  else ``<data_root>/<folder>``), has the dataset module read its labels into a *listing* (one row per
  distorted image: ``item`` = the distorted file's name as the label file gives it, ``subset`` = its
  distortion type, ``reference`` = the reference image's id, ``mos``, and the absolute paths ``ref_path`` and
  ``dist_path``), keeps the distortion types named by ``types=``, then checks that every distorted image has
  its reference (else a :class:`~percepbench.errors.DataError` naming both files and the label file) and
  that every image exists and can be read.
- :func:`verify_listing`: the ``percepbench data verify`` rule of all three: the folder, the label file(s)
  read exactly as the task reads them, and every image the labels name (``--deep``: decodable).
- :func:`read_scores`: a score column as floats, a :class:`DataError` naming the file and line for a value
  that is not a number or lies outside the documented range.
- :class:`FolderIndex`: file names of one folder resolved exactly, else case-insensitively (TID2013's
  file names differ in case from its label file).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from percepbench.data import download_command, image_problems, task_data_dir
from percepbench.datasets import DatasetSource
from percepbench.errors import DataError
from percepbench.tasks.files import FileTask, listed, split_list
from percepbench.tasks.mos import CorrelationTask

#: the columns of a listing (see the module docstring)
LISTING_COLUMNS = ("item", "subset", "reference", "mos", "ref_path", "dist_path", "line")


class MissingLabels(DataError):
    """The label file(s) of a dataset are not there (the task adds where to get the data)."""


class FolderIndex:
    """The regular files directly in ``folder`` (or, with ``recursive``, anywhere below it), looked up by name:
    the exact name first, else the one file whose name matches ignoring case.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     _ = (Path(tmp) / "I01.BMP").write_bytes(b"")
    ...     print(FolderIndex(Path(tmp)).find("i01.bmp").name, FolderIndex(Path(tmp)).find("i02.bmp"))
    I01.BMP None
    """

    def __init__(self, folder: Path, *, recursive: bool = False) -> None:
        self.folder = folder
        self.exact: dict[str, Path] = {}
        self.folded: dict[str, list[Path]] = {}
        if not folder.is_dir():
            return
        if recursive:
            walk = ((Path(top), files) for top, _, files in os.walk(folder))
        else:
            walk = iter([(folder, [e.name for e in os.scandir(folder) if e.is_file()])])
        for top, files in walk:
            for name in sorted(files):
                path = top / name
                self.exact.setdefault(name, path)
                self.folded.setdefault(name.lower(), []).append(path)

    def find(self, name: str) -> Path | None:
        """The file called ``name``, else the single file whose name equals it ignoring case, else None."""
        if name in self.exact:
            return self.exact[name]
        same = self.folded.get(name.lower(), [])
        return same[0] if len(same) == 1 else None

    def path(self, name: str) -> Path:
        """:meth:`find`, or ``folder/name`` (the path that messages name) when there is no such file."""
        return self.find(name) or self.folder / name


def read_scores(values: Sequence[str], lines: Sequence[int], path: Path, *, what: str,
                lo: float | None = None, hi: float | None = None) -> list[float]:
    """``values`` (text from label file ``path``, one per line number in ``lines``) as finite floats within
    ``[lo, hi]``; :class:`DataError` naming the file and the first bad lines otherwise."""
    out: list[float] = []
    bad_number, bad_range = [], []
    for value, line in zip(values, lines, strict=True):
        try:
            x = float(str(value).strip())
        except ValueError:
            x = math.nan
        if not math.isfinite(x):
            bad_number.append(f"line {line}: {str(value).strip()!r}")
        elif (lo is not None and x < lo) or (hi is not None and x > hi):
            bad_range.append(f"line {line}: {x:g}")
        out.append(x)
    if bad_number:
        raise DataError(f"{path}: {len(bad_number)} {what} value(s) not a finite number ({listed(bad_number)})")
    if bad_range:
        raise DataError(f"{path}: {len(bad_range)} {what} value(s) outside the documented range [{lo:g}, {hi:g}] "
                        f"({listed(bad_range)})")
    return out


def check_unique(names: Sequence[str], lines: Sequence[int], path: Path) -> None:
    """:class:`DataError` naming ``path`` when a distorted image is listed twice."""
    seen: dict[str, int] = {}
    dup = []
    for name, line in zip(names, lines, strict=True):
        if name in seen:
            dup.append(f"{name} (lines {seen[name]} and {line})")
        seen.setdefault(name, line)
    if dup:
        raise DataError(f"{path}: {len(dup)} distorted image(s) listed more than once: {listed(dup)}")


def type_names(types: Mapping[int, str]) -> dict[int, str]:
    """Subset names ``NN_slug`` of the numbered distortion types.

    >>> type_names({1: "gaussian_blur", 10: "jpeg"})
    {1: '01_gaussian_blur', 10: '10_jpeg'}
    """
    return {k: f"{k:02d}_{v}" for k, v in types.items()}


def select_types(wanted: str | Iterable[str] | None, types: Mapping[int, str], dataset: str) -> list[str] | None:
    """The subset names picked by a ``types=`` option: each entry a type number (``7``, ``07``), its subset
    name (``07_quantization_noise``) or its slug (``quantization_noise``); None = every type.

    Raises:
        ValueError: an entry that names no type (listing the known ones).
    """
    entries = split_list(wanted)
    if not entries:
        return None
    names = type_names(types)
    by_key: dict[str, str] = {}
    for k, slug in types.items():
        for key in (str(k), f"{k:02d}", names[k], slug):
            by_key[key.lower()] = names[k]
    chosen = []
    for entry in entries:
        key = entry.strip().lower()
        if key not in by_key:
            raise ValueError(f"{dataset}: unknown distortion type {entry!r} in types=; give numbers or names "
                             f"from: {', '.join(names.values())}")
        chosen.append(by_key[key])
    return list(dict.fromkeys(chosen))


def listing_frame(rows: list[dict[str, Any]], path: Path) -> pd.DataFrame:
    """Rows (dicts with :data:`LISTING_COLUMNS`) as a listing; :class:`DataError` when there are none."""
    if not rows:
        raise DataError(f"{path}: no scored images in it")
    return pd.DataFrame(rows, columns=list(LISTING_COLUMNS))


def unpaired(listing: pd.DataFrame) -> list[str]:
    """``"<distorted> (reference <path> missing)"`` for each distorted image whose reference file is absent."""
    ref_ok = {p: os.path.isfile(p) for p in pd.unique(listing["ref_path"])}
    return [f"{d} (its reference {r} is missing)"
            for d, r in zip(listing["dist_path"], listing["ref_path"], strict=True) if not ref_ok[r]]


class MOSDatasetTask(FileTask, CorrelationTask):
    """A built-in MOS dataset on files; subclasses set the class attributes and :meth:`read`.

    Options: ``root`` (the dataset folder itself), ``types`` (distortion types to score; default all).
    """

    #: registry name of the dataset source (``tid2013``) and its folder under the data root
    dataset_name: ClassVar[str] = ""
    folder: ClassVar[str] = ""
    title: ClassVar[str] = ""
    #: numbered distortion types (empty: the set is scored pooled only)
    types: ClassVar[Mapping[int, str]] = {}
    #: what the scores are, for the run's protocol
    score_note: ClassVar[str] = ""
    source_url: ClassVar[str] = ""

    def __init__(self, root: str | None = None, types: str | Sequence[str] | None = None) -> None:
        super().__init__()
        self.root = None if root in (None, "") else str(root)
        if types not in (None, "") and not self.types:
            raise ValueError(f"{self.dataset_name} has no distortion types to select (it is scored pooled)")
        self.selected = select_types(types, self.types, self.dataset_name)

    def read(self, folder: Path) -> tuple[pd.DataFrame, str]:
        """``(listing, label file(s) read)`` of the dataset in ``folder``; :class:`DataError` for bad labels."""
        raise NotImplementedError

    def how_to_get(self, data_root: Path | None) -> str:
        """Where the data comes from, for messages (the dataset module's text)."""
        raise NotImplementedError

    def prepare(self, *, data_root: str | None = None, num_workers: int = 0, progress: bool = True,
                seed: int = 0) -> None:
        folder, base, note = task_data_dir(self.folder, self.root, data_root)
        hint = self.how_to_get(base)
        if not folder.is_dir():
            raise DataError(f"{folder}: {self.title} folder not found{note}. {hint}")
        try:
            listing, labels = self.read(folder)
        except MissingLabels as exc:
            raise MissingLabels(f"{exc}{note}. {hint}") from exc
        n_all = len(listing)
        if self.selected is not None:
            listing = listing[listing["subset"].isin(self.selected)]
            if listing.empty:
                raise DataError(f"{labels}: no images of the distortion type(s) {', '.join(self.selected)}")
        alone = unpaired(listing)
        if alone:
            raise DataError(f"{labels}: {len(alone)} distorted image(s) without their reference image: "
                            f"{listed(alone)}. {hint}")
        items = listing[["item", "subset", "reference", "mos"]].reset_index(drop=True)
        paths = list(zip(listing["ref_path"].astype(str), listing["dist_path"].astype(str), strict=True))
        self._finish(items, paths, what=f"{self.title} ({labels})", hint=hint, num_workers=num_workers)
        self._protocol = {
            "dataset": self.title,
            "root": str(folder),
            "labels": labels,
            "source": self.source_url,
            "scores": self.score_note,
            "types": "all" if self.selected is None else ", ".join(self.selected),
            "rows_in_labels": n_all,
            "comparison": "d = d(reference, distorted); predicted quality = -d",
            "measures": "srcc, krcc, plcc, plcc_fit (4-parameter logistic), per distortion type and pooled "
                        "('all'); CIs resample whole reference images",
        }


def verify_listing(source: DatasetSource, root: Path, read: Callable[[Path], tuple[pd.DataFrame, str]],
                   deep: bool, fix: str) -> list[str]:
    """The problems of a MOS dataset under data root ``root``: its folder, its labels (read by ``read``, as the
    task reads them) and every image they name, present (and with ``deep``, decodable); each ends with ``fix``."""
    dest = root / source.folder
    if not dest.is_dir():
        return [f"{dest}: {source.title} folder missing. {fix}"]
    try:
        listing, _ = read(dest)
    except DataError as exc:
        return [f"{exc}. {fix}"]
    return image_problems(dest, [*listing["ref_path"].astype(str), *listing["dist_path"].astype(str)], fix,
                          deep=deep)


def manual_fix(source_name: str, root: Path) -> str:
    """The fix for a dataset placed by hand: where its instructions are."""
    return (f"Fix: get it by hand as `{download_command(source_name, root)}` explains (percepbench cannot "
            "download it)")


_SPACES = re.compile(r"\s+")


def text_lines(path: Path, what: str) -> list[tuple[int, str]]:
    """``[(line number, stripped text, white space collapsed to one space), ...]`` of the non-blank lines of
    label file ``path``; :class:`MissingLabels` when it is missing, :class:`DataError` naming it when it cannot
    be read."""
    if not path.is_file():
        raise MissingLabels(f"{path}: {what} not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        try:
            text = path.read_text(encoding="latin-1")
        except OSError as exc:
            raise DataError(f"{path}: cannot read {what} ({exc})") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read {what} ({exc})") from exc
    return [(i, _SPACES.sub(" ", line.strip())) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]
