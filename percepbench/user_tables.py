"""Reading a user's judgment table (``2afc_csv``, ``jnd_csv``): CSV, Parquet, JSON Lines, or a Hub dataset.

``path=`` accepts

- a ``.csv`` / ``.tsv`` file, read with pandas (errors name the file and the CSV line);
- a ``.parquet``, ``.jsonl`` / ``.json`` or ``.arrow`` file, or a folder saved with
  ``datasets.Dataset.save_to_disk``, read with Hugging Face ``datasets``;
- a dataset on the Hugging Face Hub, ``hf://datasets/<owner>/<name>`` (optionally ``@<revision>``), read
  with ``datasets.load_dataset`` when online (``split=`` picks the split, default ``test`` when the
  dataset has one, else ``train``).

Image columns hold either **paths** (relative to the table's folder, or absolute) or **images** (a
``datasets.Image`` column, as Hub datasets and Parquet exports store them). Images are written once, byte
for byte (no re-encoding), to a content-addressed folder ``<data root>/user_images/<sha256[:2]>/<sha256>.<ext>``,
so from then on every task reads files — the same loaders, the same checks, and the embedding cache keys
on the same content hashes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from percepbench.errors import DataError, UsageError
from percepbench.fileio import atomic_write_bytes

HUB_PREFIX = "hf://datasets/"
DATASETS_SUFFIXES = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".arrow": "arrow"}
PANDAS_SUFFIXES = {".csv": ",", ".tsv": "\t"}
_FORMATS = {b"\x89PNG": ".png", b"\xff\xd8\xff": ".jpg", b"GIF8": ".gif", b"BM": ".bmp", b"RIFF": ".webp"}


def describe(source: str) -> str:
    """``"user CSV"``, ``"user Parquet table"``, ``"Hub dataset owner/name"``..."""
    if source.startswith(HUB_PREFIX):
        return f"Hub dataset {source[len(HUB_PREFIX):]}"
    p = Path(source)
    if p.is_dir():
        return "user dataset folder (datasets.save_to_disk)"
    return {".csv": "user CSV", ".tsv": "user TSV"}.get(p.suffix.lower(), f"user {p.suffix.lstrip('.')} table")


def load_table(source: str, *, split: str | None = None) -> tuple[pd.DataFrame, Path | None, str]:
    """``(frame, folder for relative paths or None, what)``; image columns of ``datasets`` come back as
    dicts ``{"bytes", "path"}``. :class:`DataError` names the file on any read problem."""
    if source.startswith(HUB_PREFIX):
        return _load_hub(source, split), None, describe(source)
    p = Path(source).expanduser()
    if not p.exists():
        raise DataError(f"{p}: judgment table not found")
    suffix = p.suffix.lower()
    if p.is_file() and suffix in PANDAS_SUFFIXES:
        try:
            frame = pd.read_csv(p, sep=PANDAS_SUFFIXES[suffix])
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
            raise DataError(f"{p}: cannot parse {suffix.lstrip('.').upper()} ({exc})") from exc
        frame.columns = [str(c).strip() for c in frame.columns]
        return frame, p.resolve().parent, describe(source)
    if p.is_dir() or suffix in DATASETS_SUFFIXES:
        return _load_with_datasets(p), (p.resolve() if p.is_dir() else p.resolve().parent), describe(source)
    raise DataError(f"{p}: unsupported table format {suffix or '(no suffix)'}; use .csv, .tsv, .parquet, "
                    ".jsonl, .json, .arrow, a datasets.save_to_disk folder, or hf://datasets/<owner>/<name>")


def _to_frame(ds: Any) -> pd.DataFrame:
    """A ``datasets.Dataset`` as a DataFrame, image columns undecoded (``{"bytes", "path"}``)."""
    from datasets import Image

    for name, feature in ds.features.items():
        if isinstance(feature, Image):
            ds = ds.cast_column(name, Image(decode=False))
    return ds.to_pandas()


def _load_with_datasets(p: Path) -> pd.DataFrame:
    import datasets

    try:
        if p.is_dir():
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                raise DataError(f"{p}: holds several splits ({', '.join(ds)}); point path= at one split's folder")
        else:
            ds = datasets.load_dataset(DATASETS_SUFFIXES[p.suffix.lower()], data_files=str(p), split="train")
    except DataError:
        raise
    except Exception as exc:  # datasets/pyarrow raise many types for unreadable files
        raise DataError(f"{p}: cannot read the table with the datasets library ({type(exc).__name__}: {exc})") from exc
    return _to_frame(ds)


def _load_hub(source: str, split: str | None) -> pd.DataFrame:
    import datasets

    from percepbench.download import is_offline

    repo, _, revision = source[len(HUB_PREFIX):].partition("@")
    if not repo or repo.count("/") != 1:
        raise UsageError(f"{source!r}: a Hub dataset is written hf://datasets/<owner>/<name>[@revision]")
    if is_offline():
        raise DataError(f"{source}: offline mode (PERCEPBENCH_OFFLINE / HF_HUB_OFFLINE) is on, so the Hub "
                        "dataset cannot be fetched; download it while online (it is then in the Hugging Face "
                        "cache), or export it to a Parquet file and pass path=<file>.parquet")
    try:
        splits = datasets.get_dataset_split_names(repo, revision=revision or None)
        chosen = split or ("test" if "test" in splits else "train" if "train" in splits else splits[0])
        if chosen not in splits:
            raise DataError(f"{source}: no split {chosen!r}; it has {', '.join(splits)} (task option split=)")
        ds = datasets.load_dataset(repo, split=chosen, revision=revision or None)
    except DataError:
        raise
    except Exception as exc:  # network, authentication, missing repo
        raise DataError(f"{source}: cannot load the Hub dataset ({type(exc).__name__}: {exc})") from exc
    return _to_frame(ds)


def image_suffix(data: bytes) -> str:
    for magic, suffix in _FORMATS.items():
        if data.startswith(magic):
            return suffix
    return ".img"


def store_image(data: bytes, root: Path) -> Path:
    """Write ``data`` to ``root/<h[:2]>/<h><ext>`` (h = sha256) unless present; atomic; returns the path."""
    digest = hashlib.sha256(data).hexdigest()
    path = root / digest[:2] / f"{digest}{image_suffix(data)}"
    if path.is_file() and path.stat().st_size == len(data):
        return path
    return atomic_write_bytes(path, data)


def image_column_paths(frame: pd.DataFrame, column: str, *, base: Path | None, images_root: Path,
                       what: str) -> list[str]:
    """Absolute file paths for an image column of paths or of ``{"bytes", "path"}`` images."""
    out: list[str] = []
    for i, value in enumerate(frame[column].tolist()):
        if isinstance(value, dict):
            data = value.get("bytes")
            if data:
                out.append(str(store_image(bytes(data), images_root)))
                continue
            value = value.get("path")
        if value is None or (isinstance(value, float) and pd.isna(value)) or not str(value).strip():
            raise DataError(f"{what}: column {column!r} is empty in row {i + 1}")
        text = str(value).strip()
        if base is None and not os.path.isabs(text):
            raise DataError(f"{what}: column {column!r} row {i + 1} holds a relative path {text!r} but the "
                            "table has no folder to resolve it against")
        out.append(os.path.join(base, text) if base is not None else text)
    return out


def check_columns(frame: pd.DataFrame, required: Sequence[str], what: str) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(f"{what}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, frame.columns))}; "
                        f"expected at least {', '.join(required)}")
