"""One part of a dataset: its marker, and fetching, extracting and installing it.

:mod:`percepbench.data` decides which parts of a source to fetch; this module does the work for one part
and keeps the bookkeeping in ``<dataset folder>/.percepbench/`` (``done/<part>.json`` markers,
``downloads/`` archives, short-lived ``staging-*`` folders). A part is installed by moving what it produces
out of a staging folder, found without following any link, and its marker is written last, atomically.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

from percepbench.datasets import DatasetSource, Part
from percepbench.download import (
    MissingFile,
    download,
    extract_tar,
    extract_zip,
    fetch_zip_member,
    recorded_sha256,
    sha256_sidecar,
)
from percepbench.errors import DataError, DiskFullError, OfflineError, WeightsError
from percepbench.fileio import atomic_write_text, sha256_file

__all__ = ["STATE_DIR", "fetch_part", "files_under", "is_done", "locate", "marker_path", "missing_entry",
           "placed_by_hand", "state_dir", "write_marker"]

STATE_DIR = ".percepbench"
_MAX_LISTED = 5


def state_dir(dest: Path) -> Path:
    return dest / STATE_DIR


def marker_path(dest: Path, part: Part) -> Path:
    return state_dir(dest) / "done" / part.marker_name


def is_done(dest: Path, part: Part) -> bool:
    """The part's marker exists, and every file it recorded is there with the recorded size."""
    try:
        record = json.loads(marker_path(dest, part).read_text(encoding="utf-8"))
        files = record["files"]
        if not isinstance(files, dict):
            return False
        for rel, size in files.items():
            if (dest / rel).stat().st_size != size:
                return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return all((dest / rel).exists() for rel in part.produces)


def write_marker(dest: Path, part: Part, url: str, sha256: str | None, files: dict[str, int], *,
                  adopted: bool = False) -> None:
    record = {"part": part.name, "url": url, "archive_sha256": sha256, "extracted_at": time.time(),
              "files": files, "adopted": adopted}
    atomic_write_text(marker_path(dest, part), json.dumps(record, indent=0, sort_keys=True))


def placed_by_hand(dest: Path, part: Part) -> bool:
    """No marker, but everything the part produces is already there (a dataset unzipped by hand)."""
    if marker_path(dest, part).exists():
        return False  # ours: a marker that no longer matches means damage, so fetch again
    for rel in part.produces:
        path = dest / rel
        if not (path.is_file() or (path.is_dir() and any(path.iterdir()))):
            return False
    return True


def files_under(dest: Path, produced: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for rel in produced:
        path = dest / rel
        items = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for f in items:
            out[f.relative_to(dest).as_posix()] = f.stat().st_size
    return out


def missing_entry(source: DatasetSource, part: Part, dest: Path) -> MissingFile:
    url = source.url(part)
    if part.kind == "zip_member":
        target = dest / part.produces[0]
        return MissingFile(target, url, f"only the member {part.member} of this zip is needed: percepbench reads "
                                        f"it with HTTP range requests; by hand, extract {part.member} from the "
                                        f"zip and place it at {target}")
    archive = state_dir(dest) / "downloads" / part.filename
    into = ", ".join(str(dest / rel) for rel in part.produces)
    return MissingFile(archive, url, f"{source.title} part {part.name}"
                                     + (f", {part.approx}" if part.approx else "")
                                     + f": percepbench extracts it on the next run into {into}")


def fetch_part(source: DatasetSource, part: Part, dest: Path, *, fix: str, progress: bool,
               keep_archives: bool) -> None:
    """Download, extract and install one part into ``dest``, then write its marker (see :mod:`percepbench.data`).

    ``fix`` is the command that fetches the part again, quoted in error messages.
    """
    url = source.url(part)
    state = state_dir(dest)
    work = state / f"staging-{part.marker_name[:-5]}"
    shutil.rmtree(work, ignore_errors=True)  # left over by an interrupted run
    archive: Path | None = None
    digest: str | None = None
    try:
        content = work / "content"
        if part.kind == "zip_member":
            assert part.member is not None
            out = content.joinpath(*PurePosixPath(part.member).parts)
            final = dest / part.produces[0]
            try:
                fetch_zip_member(url, part.member, out, progress=progress,
                                 what=f"{source.title} {part.produces[0]}")
            except DataError as exc:
                raise DataError(f"{exc}. By hand: download {url}, extract {part.member} from it and place it "
                                f"at {final}") from exc
            digest = sha256_file(out)
        else:
            archive = state / "downloads" / part.filename
            try:
                download(url, archive, sha256=part.sha256, size=part.size, progress=progress, format=part.kind)
            except OfflineError:  # a WeightsError too, but download_dataset lists every missing file
                raise
            except DiskFullError as exc:
                raise DiskFullError(f"{source.title} part {part.name}: {exc}") from exc
            except WeightsError as exc:
                raise DataError(f"{source.title} part {part.name}: {exc}; run `{fix}` to download it again"
                                ) from exc
            digest = recorded_sha256(archive)
            extract = extract_tar if part.kind == "tar" else extract_zip
            try:
                extract(archive, content)
            except DiskFullError as exc:  # the archive is fine: keep it for the next run
                raise DiskFullError(f"{source.title} part {part.name}: {exc}; the archive {archive} is kept, so "
                                    f"the next `{fix}` extracts it without downloading it again") from exc
            except WeightsError as exc:
                for f in (archive, sha256_sidecar(archive)):
                    f.unlink(missing_ok=True)
                raise DataError(f"{source.title} part {part.name}: {exc}. The archive {archive} (from {url}) "
                                f"was deleted and nothing of it installed; run `{fix}` to download it again"
                                ) from exc
        moves = []
        for rel in part.produces:
            found = locate(content, rel, source.strip_prefixes, flat=part.flat)
            if found is None:
                top = sorted(p.name for p in content.iterdir()) if content.is_dir() else []
                raise DataError(
                    f"{source.title} part {part.name}: the archive from {url} does not contain {rel!r} "
                    f"(looked for it with and without leading folders; the archive's top level holds "
                    f"{', '.join(top[:_MAX_LISTED]) or 'nothing'}); its layout is not the expected one, so "
                    f"nothing was installed. Extract it by hand so that {dest / rel} exists")
            moves.append((found, dest / rel))
        trash = work / "old"
        trash.mkdir(parents=True, exist_ok=True)
        for i, (src, dst) in enumerate(moves):
            dst.parent.mkdir(parents=True, exist_ok=True)
            if dst.is_symlink() or dst.exists():
                os.replace(dst, trash / str(i))
            os.replace(src, dst)
        write_marker(dest, part, url, digest, files_under(dest, part.produces))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if archive is not None and not keep_archives:
        # the archive's lock file too: safe, as the archive is only ever fetched under this part's lock
        for f in (archive, sha256_sidecar(archive), archive.with_name(archive.name + ".lock")):
            f.unlink(missing_ok=True)


def locate(content: Path, rel: str, prefixes: tuple[str, ...], *, flat: bool) -> Path | None:
    """Where ``rel`` (a path under the dataset folder) is inside an extracted archive.

    Tried in order: ``rel`` itself under the top or under each of ``prefixes``, then with its leading
    components dropped one by one (an archive of ``ref/000.zip`` may hold ``000/...`` or
    ``ref/000/...`` or ``nights/ref/000/...``); with ``flat``, finally the top of the archive itself.
    """
    parts = PurePosixPath(rel).parts
    want_file = bool(PurePosixPath(rel).suffix)
    for k in range(len(parts)):
        for prefix in ("", *prefixes):
            steps = (*PurePosixPath(prefix).parts, *parts[k:])
            cand = content.joinpath(*steps)
            if no_link_on_the_way(content, steps) and (cand.is_file() if want_file else cand.is_dir()):
                return cand
    if flat and not want_file and content.is_dir() and not content.is_symlink() and any(
            p.is_file() and not p.is_symlink() for p in content.iterdir()):
        return content
    return None


def no_link_on_the_way(content: Path, steps: Sequence[str]) -> bool:
    """True when neither ``content`` nor any folder or file on the way to ``content/<steps>`` is a link
    (nothing is located through a link; the extractors create none, this makes sure)."""
    path = content
    for step in ("", *steps):
        path = path / step if step else path
        if path.is_symlink():
            return False
    return True
