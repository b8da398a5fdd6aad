"""Benchmark datasets: the data root, and fetching and checking any registered dataset source.

This module knows no dataset by name: each benchmark module of ``percepbench.tasks`` declares its
:class:`~percepbench.datasets.DatasetSource` (URLs, parts, layout, verify rules) and registers it in
:data:`~percepbench.registry.DATASETS`; plugins add theirs through the entry-point group
``percepbench.datasets``. ``percepbench data list|download|verify`` wrap the registry,
:func:`download_dataset` and :func:`verify_dataset`.

**Data root.** :func:`data_root`, the one place it is resolved: the argument (``--root``, ``--data-root``),
else ``$PERCEPBENCH_DATA``, else ``$XDG_CACHE_HOME/percepbench/data`` (``~/.cache/percepbench/data``), so
``percepbench data download nights`` then ``percepbench run -t nights`` needs no flag; tasks go through
:func:`task_data_dir` (their ``root=`` option first). A per-user cache folder, not ``./data``, so that a run
started from another folder finds the downloads. Each dataset has a folder under the root whose content
is what the tasks read, and percepbench's bookkeeping in ``<folder>/.percepbench/``: ``downloads/``
(archives, deleted once extracted unless ``keep_archives``), ``done/<part>.json`` (one marker per extracted
part) and short-lived ``staging-*`` folders.

**Download.** A part is skipped when its marker exists and every file it recorded is there with its size
(deleting or truncating a file makes the next call fetch that part again); a part already in place without
a marker (unzipped by hand) is kept and marked. Otherwise the archive goes through
:func:`percepbench.download.download` (resume, format check, sha256 recorded at the first download when
none is published: :func:`trust_notes` says so) or :func:`~percepbench.download.fetch_zip_member` (one
member, HTTP range requests), is extracted safely into a staging folder (no links survive extraction;
size bounded against archive bombs), each path it produces is found without following any link and
renamed into place, and the marker is written last, atomically. A corrupt or unsafe archive is deleted and
nothing of it installed; after a full disk (:class:`~percepbench.errors.DiskFullError`) the archive is
kept. Each part (:mod:`percepbench.dataset_parts`) is fetched under :func:`~percepbench.download.file_lock` on
``<folder>/.percepbench/locks/<part>.lock``: a second process downloading the same dataset waits, then
finds the part done. Offline
(``PERCEPBENCH_OFFLINE=1`` / ``HF_HUB_OFFLINE=1``), one :class:`~percepbench.errors.OfflineError` lists
every archive still needed with its URL and the path to put it at. A source with ``manual`` instructions is
never fetched (:class:`ManualDownloadError`). ``PERCEPBENCH_DATA_URL_<NAME>`` replaces a source's base URL
(a mirror, or a test server).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

from percepbench.dataset_parts import (
    fetch_part,
    files_under,
    is_done,
    marker_path,
    missing_entry,
    placed_by_hand,
    state_dir,
    write_marker,
)
from percepbench.datasets import URL_ENV_PREFIX, DatasetSource, Part
from percepbench.download import (
    MissingFile,
    file_lock,
    is_offline,
    offline_error,
    offline_reason,
    trust_level,
)
from percepbench.errors import DataError, OfflineError
from percepbench.registry import DATASETS

__all__ = ["DATASETS", "DATA_ENV", "DATA_ROOT_HELP", "URL_ENV_PREFIX", "DatasetSource", "ManualDownloadError",
           "Part", "data_root", "dataset_dir", "download_command", "download_dataset", "fix_hint", "get_source",
           "missing_grouped", "task_data_dir", "trust_notes", "unreadable_images", "verify_dataset"]

DATA_ENV = "PERCEPBENCH_DATA"

#: how a task's "data not found" message says where the data root comes from (what :func:`data_root` does)
DATA_ROOT_HELP = ("pass --data-root <data root> (or set PERCEPBENCH_DATA; without either, the default data "
                  "root $XDG_CACHE_HOME/percepbench/data, i.e. ~/.cache/percepbench/data, is used, as by the "
                  "download command)")
_MAX_LISTED = 5


class ManualDownloadError(DataError):
    """A dataset percepbench cannot fetch by itself; the message says what to fetch and where to put it."""


def _listed(values: Sequence[str], sep: str = ", ") -> str:
    return sep.join(values[:_MAX_LISTED]) + (f" (and {len(values) - _MAX_LISTED} more)"
                                              if len(values) > _MAX_LISTED else "")


# ------------------------------------------------------------------------------------------------- root


def data_root(root: str | Path | None = None) -> Path:
    """The data root: ``root``, else ``$PERCEPBENCH_DATA``, else ``$XDG_CACHE_HOME/percepbench/data``
    (``~/.cache/percepbench/data`` without ``XDG_CACHE_HOME``). Resolved at call time; not created.
    """
    if root not in (None, ""):
        return Path(root).expanduser()
    env = env_data_root()
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "percepbench" / "data"


def env_data_root() -> str | None:
    """``$PERCEPBENCH_DATA`` when set and not blank, else None (the one place that reads it)."""
    return os.environ.get(DATA_ENV, "").strip() or None


def task_data_dir(folder: str, root: str | Path | None, given_data_root: str | Path | None
                  ) -> tuple[Path, Path | None, str]:
    """Where a task reads its dataset: ``(folder path, the data root it sits in or None, note)``.

    ``root`` (a task's ``root=`` option: the dataset folder itself) wins, and the data root is its ancestor
    when its path ends with ``folder`` (``/data/bapps/dataset`` for ``"bapps/dataset"``), else None. Otherwise
    the folder is ``<data_root(given_data_root)>/<folder>``, and ``note`` says so when no data root was given.
    """
    parts = PurePosixPath(folder).parts
    if root not in (None, ""):
        path = Path(root).expanduser()
        inside = path.parts[-len(parts):] == parts and len(path.parts) > len(parts)
        return path, path.parents[len(parts) - 1] if inside else None, ""
    base = data_root(given_data_root)
    note = "" if given_data_root else f" (no data root given, so the default data root {base} was used)"
    return base.joinpath(*parts), base, note


def dataset_dir(name: str, root: str | Path | None = None) -> Path:
    """``<data root>/<folder of the dataset>``, e.g. ``~/.cache/percepbench/data/nights``."""
    return data_root(root) / get_source(name).folder


def how_to_get(name: str, data_root: str | Path | None, text: str, parts: Sequence[str] | None = None) -> str:
    """``text`` (a dataset's instructions), preceded by the exact download command for ``data_root`` when it
    is known (a task's error message for missing data)."""
    if data_root is None:
        return text
    return f"Run `{download_command(name, data_root, parts)}` to download it. {text}"


def download_command(name: str, root: str | Path | None = None, parts: Sequence[str] | None = None,
                     action: str = "download") -> str:
    """The exact shell command that fetches (or verifies) ``name`` under the resolved data root."""
    cmd = ["percepbench", "data", action, name, "--root", str(data_root(root))]
    if parts:
        cmd += ["--parts", ",".join(parts)]
    return shlex.join(cmd)


# ------------------------------------------------------------------------------------------------ sources


def get_source(name: str) -> DatasetSource:
    """The registered :class:`DatasetSource` called ``name`` (case-insensitive).

    Raises:
        UnknownNameError: (a :class:`UsageError`) with "did you mean" and the command listing every dataset.
    """
    return DATASETS.get(str(name).strip().lower())


# ------------------------------------------------------------------------------------------------ download


def download_dataset(name: str, root: str | Path | None = None, *, parts: str | Iterable[str] | None = None,
                     progress: bool = True, keep_archives: bool = False, force: bool = False) -> Path:
    """Download and extract dataset ``name`` under the data root; return its folder (``<root>/<name>``).

    Idempotent: parts already extracted (marker present, recorded files intact) are skipped, so a second
    call downloads and extracts nothing. A part without a marker whose folders are already there and not
    empty (a dataset unzipped by hand) is kept as it is and marked, with a note on stderr; ``force=True``
    fetches it anyway. See the module docstring for sources, resume and safety.

    Args:
        name: a registered dataset (``percepbench data list``: ``nights``, ``bapps``, ``things``, plugins).
        root: data root; default :func:`data_root` (``$PERCEPBENCH_DATA``, else the per-user cache).
        parts: part or group names of the source (a string may be ``"jnd,twoafc_train"``); default the
            source's ``default_parts``.
        progress: show download progress bars.
        keep_archives: keep the downloaded archives (with their ``.sha256``) in ``<folder>/.percepbench/
            downloads`` after extraction; by default they are deleted once extracted.
        force: fetch and extract the selected parts again even when their markers say they are done
            (for files damaged in place; an archive kept with ``keep_archives`` is re-verified and reused).

    Raises:
        UsageError: unknown dataset or part name.
        OfflineError: offline mode is on (or the network failed after retries) and some archive is
            needed: lists every such archive with its URL, the path to place it at and where it goes.
        ManualDownloadError: a dataset fetched by hand (a source with ``manual`` instructions, such as
            THINGS) is not complete: says exactly what to fetch and where to put it.
        DataError: an archive is corrupt, truncated or unsafe, or expands past the extraction limit (it is
            deleted; the next call downloads it again), or does not hold the expected folders; an HTTP error
            such as 404; a download that is an HTML page or not of the part's format.
        DiskFullError: the disk filled while downloading or extracting; the message names the file being
            written (a downloaded archive is kept).
    """
    source = get_source(name)
    root_path = data_root(root)
    dest = root_path / source.folder
    if source.manual:
        problems = source.verify(source, root_path, source.select(parts), False)
        if not problems:
            return dest
        raise ManualDownloadError(
            source.manual.format(dest=dest, root=root_path, verify=download_command(source.name, root_path,
                                                                                    action="verify"))
            + "\nMissing now: " + _listed(problems, "; "))
    selected = source.select(parts)
    if force:
        for p in selected:  # forget "done" first, so an interrupted forced run is redone next time
            marker_path(dest, p).unlink(missing_ok=True)
    todo = [p for p in selected if not is_done(dest, p)]
    if not force:
        adopted = [p for p in todo if placed_by_hand(dest, p)]
        for p in adopted:  # keep data the user unzipped by hand; `verify` checks it, --force re-fetches it
            write_marker(dest, p, source.url(p), None, files_under(dest, p.produces), adopted=True)
        if adopted:
            shown = ", ".join(p.name for p in adopted[:5]) + (f" and {len(adopted) - 5} more" if len(adopted) > 5 else "")
            print(f"{source.title}: {len(adopted)} part(s) already in place ({shown}), kept as they are; "
                  f"check them with `{download_command(source.name, root_path, action='verify')}`, or pass "
                  "--force to fetch them again", file=sys.stderr)
        todo = [p for p in todo if p not in adopted]
    if not todo:
        return dest
    what = f"{source.title} file(s)"

    def needs_network(p: Part) -> bool:
        return p.kind == "zip_member" or not (state_dir(dest) / "downloads" / p.filename).is_file()

    def missing_now() -> list[MissingFile]:
        return [missing_entry(source, p, dest) for p in todo if not is_done(dest, p) and needs_network(p)]

    if is_offline() and any(needs_network(p) for p in todo):
        raise offline_error(missing_now(), offline_reason(), what=what)
    for part in todo:
        # one process fetches a part while the others wait, then find it done (every rank of a job may ask)
        with file_lock(state_dir(dest) / "locks" / part.marker_name[:-5]):
            if is_done(dest, part):
                continue
            try:
                fix = download_command(source.name, root_path,
                                       None if part.name in source.default_parts else [part.name])
                fetch_part(source, part, dest, fix=fix, progress=progress, keep_archives=keep_archives)
            except OfflineError as exc:  # the network failed: list everything still missing, not just this part
                raise offline_error(missing_now(), exc.reason, what=what) from exc
    return dest


# -------------------------------------------------------------------------------------------------- verify


def verify_dataset(name: str, root: str | Path | None = None, *, parts: str | Iterable[str] | None = None,
                   deep: bool = False) -> list[str]:
    """Check dataset ``name`` under the data root; return the problems found (empty: all good).

    Runs the source's own ``verify`` (declared beside its task, e.g. in ``percepbench.tasks.nights``) on
    the selected parts (default: the source's default parts). Every missing folder or file is named (a
    whole missing folder once, not each file in it), and each problem ends with the fix: the exact
    ``percepbench data download ...`` command (for a dataset fetched by hand, where its instructions are).
    ``deep=True`` also decodes every image and label file.

    Raises:
        UsageError: unknown dataset or part name.
    """
    source = get_source(name)
    return source.verify(source, data_root(root), source.select(parts), deep)


def trust_notes(name: str, root: str | Path | None = None, *, parts: str | Iterable[str] | None = None
                ) -> list[str]:
    """What the download of each selected part was checked against, one line per part with a marker.

    ``"<part>: archive sha256 <64 hex digits> <trust>"``, where ``<trust>`` is
    :func:`percepbench.download.trust_level` of the part's published sha256: "checked against a published
    sha256", or "recorded on first use, never checked against a published value" (every built-in source
    today: their hosts publish no checksums). A part read out of a remote zip names its member; a part
    placed by hand says that no archive was checked. Parts without a marker (not downloaded) are skipped.

    Raises:
        UsageError: unknown dataset or part name.
    """
    source = get_source(name)
    dest = data_root(root) / source.folder
    notes: list[str] = []
    for part in source.select(parts):
        try:
            record = json.loads(marker_path(dest, part).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        digest = record.get("archive_sha256") if isinstance(record, dict) else None
        if not isinstance(record, dict) or record.get("adopted") or not digest:
            notes.append(f"{part.name}: placed by hand, not checked against any download")
            continue
        what = f"member {part.member}" if part.kind == "zip_member" else "archive"
        notes.append(f"{part.name}: {what} sha256 {digest} {trust_level(part.sha256)}")
    return notes


def fix_hint(source: DatasetSource, root: Path, part_names: Sequence[str] | None = None, *,
             delete: Path | None = None) -> str:
    """``Fix: run `<download command>``` (first ``delete <file>`` for a damaged file: a file missing from a
    part makes the next download fetch that part again, whereas a damaged one of the same size would not).

    """
    extra = [p for p in (part_names or ()) if p not in source.default_parts]
    command = download_command(source.name, root, extra or None)
    if delete is not None:
        return f"Fix: delete {delete}, then run `{command}`"
    return f"Fix: run `{command}`"


def missing_grouped(base: Path, rels: Sequence[str], fix: str, what: str) -> list[str]:
    """One problem per missing folder (when the folder holding the file is gone), else per missing file."""
    problems: list[str] = []
    folders: dict[str, int] = {}
    for rel in rels:
        parent = str(PurePosixPath(rel).parent)
        if parent not in (".", "") and not (base / parent).is_dir():
            folders[parent] = folders.get(parent, 0) + 1
        else:
            problems.append(f"{base / rel}: {what} missing. {fix}")
    grouped = [f"{base / folder}: folder missing ({n} referenced {what}(s) in it). {fix}"
               for folder, n in sorted(folders.items())]
    return grouped + problems


def image_problems(base: Path, files: Sequence[str | Path], fix: str, *, deep: bool,
                   unreadable_fix: Callable[[Path], str] | None = None) -> list[str]:
    """What is wrong with the image files a dataset's labels name (absolute, or relative to ``base``): the
    missing ones, grouped by folder (:func:`missing_grouped`), and with ``deep`` the ones PIL cannot decode.
    Each problem ends with ``fix`` (an undecodable file with ``unreadable_fix(path)`` when given)."""
    paths = list(dict.fromkeys(Path(f) if Path(f).is_absolute() else base / f for f in files))
    missing = [p for p in paths if not p.is_file()]
    problems = missing_grouped(base, [os.path.relpath(p, base).replace(os.sep, "/") for p in missing], fix, "image")
    if deep:
        gone = set(missing)
        problems += [f"{p}: image cannot be read ({why}). {unreadable_fix(p) if unreadable_fix else fix}"
                     for p, why in unreadable_images([p for p in paths if p not in gone])]
    return problems


def unreadable_images(paths: Sequence[Path]) -> list[tuple[Path, str]]:
    """``(path, reason)`` for each image that PIL cannot fully decode (8 threads)."""
    from PIL import Image

    def check(path: Path) -> tuple[Path, str] | None:
        try:
            with Image.open(path) as im:
                im.load()
        except Exception as exc:  # any decoder failure is a problem to report, not a crash
            return path, f"{type(exc).__name__}: {exc}"
        return None

    with ThreadPoolExecutor(max_workers=8) as pool:
        return [r for r in pool.map(check, paths) if r is not None]
