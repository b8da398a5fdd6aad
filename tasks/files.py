"""Shared machinery of the file-based tasks (``nights``, ``bapps_2afc``, ``bapps_jnd``, ``things``, the CSV tasks).

A file task resolves, in ``prepare``, one absolute path per (item, slot), checks that every file exists
and that its header can be read (first few problems reported, each naming the file), and records every
image's size (integer and float images are also checked for values :func:`percepbench.images.to_rgb`
decodes). ``dataset(inputs)`` then serves the files through :func:`percepbench.images.load_rgb` (decoded by
PIL mode) and :func:`percepbench.images.apply_convention` (the metric's own resize), as uint8 (3, H, W) tensors.

Images batched together must share one size: a metric with a fixed input size gets every image resized to
it; a metric that takes native-size images gets the files as they are, so when the files differ in size
``dataset`` raises a :class:`~percepbench.errors.DataError` that says which files differ.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd
from PIL import Image, UnidentifiedImageError

from percepbench.errors import DataError
from percepbench.images import (
    apply_convention,
    decode_problem,
    file_problem,
    load_rgb,
    pil_to_tensor,
    size_problem,
)
from percepbench.specs import InputConvention
from percepbench.tasks.base import Task, TwoAFCTask

if TYPE_CHECKING:  # torch loads when the runner reads a dataset, so `percepbench list` stays light
    import torch
    from torch.utils.data import Dataset

#: how many problems an error message lists before "... and N more"
MAX_LISTED = 5


def split_list(value: str | Iterable[str] | None) -> list[str] | None:
    """A task-arg list: a Python list, or a string separated by ``+``, ``;``, ``|``, ``,`` or spaces.

    ``--task-args`` already splits on commas between options, so on the command line write
    ``subsets=cnn+traditional``; config files may use a list.
    """
    if value is None:
        return None
    if isinstance(value, str):
        return [v for v in re.split(r"[+;|,\s]+", value) if v]
    return [str(v).strip() for v in value if str(v).strip()]


def listed(values: Sequence[Any], limit: int = MAX_LISTED) -> str:
    """``a, b, c`` with at most ``limit`` entries, then ``(and N more)``."""
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f" (and {len(values) - limit} more)" if len(values) > limit else "")


def read_csv(path: Path, required: Sequence[str]) -> pd.DataFrame:
    """Read a CSV with pandas; :class:`DataError` naming the file when it is missing, unparsable or lacks columns."""
    if not path.is_file():
        raise DataError(f"{path}: CSV file not found")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"{path}: cannot parse CSV ({exc})") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(frame.columns)}; "
                        f"expected at least {', '.join(required)}")
    return frame


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python value it holds (for readable messages)."""
    return value.item() if hasattr(value, "item") else value


def numeric_column(frame: pd.DataFrame, column: str, path: Path, *, lo: float | None = None,
                   hi: float | None = None) -> pd.Series:
    """Column as float; :class:`DataError` naming the file and the first bad CSV lines when not numeric or out of range."""
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna()
    what = "not a number"
    if not bad.any() and (lo is not None or hi is not None):
        bad = ((values < lo) if lo is not None else False) | ((values > hi) if hi is not None else False)
        what = f"outside [{lo}, {hi}]"
    if bad.any():
        idx = list(frame.index[bad.to_numpy()])
        examples = [f"line {i + 2}: {_plain(frame[column].loc[i])!r}" for i in idx[:MAX_LISTED]]
        raise DataError(f"{path}: column {column!r} has {len(idx)} value(s) {what} ({listed(examples)})")
    return values.astype(float)


def _probe(path: str) -> tuple[str, tuple[int, int] | str]:
    """``("ok", (w, h))``, ``("missing", "")`` or ``("unreadable", reason)`` from the image header (and the
    pixels of integer and float images, whose values decide whether they decode: :func:`decode_problem`)."""
    problem = file_problem(path)
    if problem:
        return "unreadable", problem
    try:
        with Image.open(path) as im:
            problem = size_problem(im) or decode_problem(im)
            if problem is not None:
                return "unreadable", problem
            return "ok", im.size
    except FileNotFoundError:
        return "missing", ""
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        if not os.path.exists(path):
            return "missing", ""
        return "unreadable", str(exc)


def check_files(paths: Sequence[str], *, what: str, hint: str = "", num_workers: int = 0) -> Counter:
    """Check that every file exists and has a readable image header; return a Counter of sizes ``(w, h)``.

    Raises :class:`DataError` listing the first few missing files (with their count), then, if none is
    missing, the first few unreadable ones: no image header, or an image :func:`percepbench.images.to_rgb`
    refuses (a float image outside [0, 1], an unconvertible mode, ...). Only headers are read, plus the
    pixels of integer and float images: a file damaged past its header fails later, when it is loaded,
    with a :class:`DataError` naming it.
    """
    unique = list(dict.fromkeys(paths))
    workers = max(1, min(32, 4 * max(1, num_workers)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(_probe, unique, chunksize=256))
    missing = [p for p, (status, _) in zip(unique, results, strict=True) if status == "missing"]
    if missing:
        raise DataError(f"{what}: {len(missing)} of {len(unique)} referenced image file(s) do not exist: "
                        f"{listed(missing)}" + (f". {hint}" if hint else ""))
    unreadable = [f"{p} ({info})" for p, (status, info) in zip(unique, results, strict=True)
                  if status == "unreadable"]
    if unreadable:
        raise DataError(f"{what}: {len(unreadable)} image file(s) cannot be read: {listed(unreadable)}")
    return Counter(info for _, info in results)  # type: ignore[misc]


class FileTriplets:
    """Element ``i``: dict slot -> uint8 (3, H, W), the files of item ``i`` loaded and resized for ``inputs``."""

    def __init__(self, paths: Sequence[Sequence[str]], slots: Sequence[str], inputs: InputConvention,
                 expected_size: tuple[int, int] | None = None) -> None:
        self.paths, self.slots, self.inputs = paths, tuple(slots), inputs
        self.expected_size = expected_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        out = {}
        for slot, path in zip(self.slots, self.paths[i], strict=True):
            im = apply_convention(load_rgb(path), self.inputs)
            if self.expected_size is not None and im.size != self.expected_size:
                raise DataError(
                    f"{path}: image is {im.size[0]}x{im.size[1]} but this task's images are "
                    f"{self.expected_size[0]}x{self.expected_size[1]}; images are batched at native size for "
                    "this metric, so they must all have the same size")
            out[slot] = pil_to_tensor(im)
        return out


class FileImages:
    """Element ``i``: the file ``paths[i]`` loaded as RGB and resized for ``inputs``, uint8 (3, H, W)."""

    def __init__(self, paths: Sequence[str], inputs: InputConvention) -> None:
        self.paths, self.inputs = list(paths), inputs

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return pil_to_tensor(apply_convention(load_rgb(self.paths[i]), self.inputs))


class FileTask(Task):
    """A task whose items are image files on disk (subclasses fill ``_items`` and ``_paths`` in ``prepare``).

    Slots, comparisons and scoring come from the task kind it is mixed with (:class:`FileTwoAFCTask`,
    the JND tasks). ``native_load = (size, interpolation)`` makes metrics without a fixed input size get
    the files resized to that size (the benchmark's official protocol) instead of at native size.
    """

    native_load: ClassVar[tuple[int, str] | None] = None

    def inputs_for(self, inputs: InputConvention) -> InputConvention:
        if inputs.size is None and self.native_load is not None:
            size, interpolation = self.native_load
            return dataclasses.replace(inputs, size=size, interpolation=interpolation)
        return inputs

    def __init__(self) -> None:
        self._items: pd.DataFrame | None = None
        self._paths: list[tuple[str, ...]] = []
        self._sizes: Counter = Counter()
        self._protocol: dict[str, Any] = {}

    def _finish(self, items: pd.DataFrame, paths: list[tuple[str, ...]], *, what: str, hint: str = "",
                num_workers: int = 0) -> None:
        """Check the files of every item, then keep the items, paths and image sizes."""
        if len(items) == 0:
            raise DataError(f"{what}: no items left to score")
        flat = [p for row in paths for p in row]
        self._sizes = check_files(flat, what=what, hint=hint, num_workers=num_workers)
        self._items = items.reset_index(drop=True)
        self._paths = paths

    def dataset(self, inputs: InputConvention) -> Dataset:
        """Files of every item, resized as ``inputs`` says; :class:`DataError` if native sizes differ."""
        if self._items is None:
            raise RuntimeError("call prepare() first")
        expected = None
        if inputs.size is None:
            if len(self._sizes) > 1:
                raise DataError(
                    f"{self.spec.name if self.spec else type(self).__name__}: image files differ in size "
                    f"({self.size_summary()}) and this metric takes images at native size (no fixed input "
                    "size), so they cannot be batched; resize the data to one size or use a metric with a "
                    "fixed input size")
            expected = next(iter(self._sizes), None)
        return FileTriplets(self._paths, self.slots, inputs, expected)

    def image_paths(self) -> list[tuple[str, ...]] | None:
        if self._items is None:
            raise RuntimeError("call prepare() first")
        return list(self._paths)

    def image_dataset(self, paths: list[str], inputs: InputConvention) -> Dataset:
        return FileImages(paths, inputs)

    def size_summary(self) -> str:
        """``"64x64: 300 files"``-style summary of the image sizes seen in ``prepare``."""
        return ", ".join(f"{w}x{h}: {n} file(s)" for (w, h), n in self._sizes.most_common())

    def protocol(self) -> dict[str, Any]:
        return {
            **self._protocol,
            "items": 0 if self._items is None else len(self._items),
            "items_per_subset": {} if self._items is None else
            {str(k): int(v) for k, v in self._items["subset"].value_counts(sort=False).items()},
            "image_sizes": self.size_summary(),
            "resize": "per metric: its fixed input size and interpolation (PIL) when it has one, else "
                      + (f"{self.native_load[0]}x{self.native_load[0]} {self.native_load[1]} (the benchmark's "
                         "official protocol)" if self.native_load else
                         "the files at native size (then all images must share one size)")
                      + "; recorded per metric in meta.protocol",
        }


class FileTwoAFCTask(FileTask, TwoAFCTask):
    """A 2AFC task whose items are image files on disk."""
