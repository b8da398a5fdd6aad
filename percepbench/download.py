"""The one place percepbench fetches and checks files: resumable downloads, sha256, archives, weights.

Downloads use only the standard library (``urllib``): the body streams into ``<dest>.part``; an existing
``.part`` is resumed with an HTTP ``Range`` request (a server that answers ``200`` instead of ``206``
restarts it from zero); a dropped connection, timeout or refused connection is retried, resuming each
time. Only a complete file whose size and sha256 check out is moved to ``dest``, with ``os.replace``
(atomic), so ``dest`` never holds a partial or unverified download.

**sha256 bookkeeping.** Every verified file gets a sidecar ``<file>.sha256`` beside it, one line in
``sha256sum`` format (``<64 hex digits>  <file name>``), so ``sha256sum -c file.sha256`` also checks it.
It is written at the first successful download (or the first verification of a file placed by hand).
:func:`verify_file` hashes the file on every load and compares it with the known hash when the caller has
one, else with the recorded one: a file changed after download is caught either way. Hashing reads the
file in 1 MiB chunks.

**Offline mode.** With ``PERCEPBENCH_OFFLINE`` or ``HF_HUB_OFFLINE`` set to ``1`` (also ``true``/``yes``/
``on``; read at call time) nothing touches the network: :func:`download` raises :class:`OfflineError`
listing the exact path to place each file at and the URL to fetch it from. The same error, saying the
network failed, is raised when a download still fails after its retries.

Archives are extracted with :func:`extract_zip` (integrity check, path-traversal and symlink refusal,
staged extraction) and :func:`extract_tar` (the same contract for ``.tar``/``.tar.gz``/``.tar.bz2``/
``.tar.xz``: one streaming pass, links may only point inside the target, no device files); weight files
are checked with :func:`check_safetensors` (header only) and :func:`check_torch_file`
(``torch.load(..., weights_only=True)``; percepbench never unpickles arbitrary objects).
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import http.client
import json
import lzma
import math
import os
import re
import shutil
import ssl
import stat
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from percepbench.errors import OfflineError, WeightsError

__all__ = [
    "OFFLINE_ENV_VARS",
    "MissingFile",
    "check_safetensors",
    "check_torch_file",
    "download",
    "extract_tar",
    "extract_zip",
    "is_offline",
    "offline_error",
    "offline_reason",
    "part_path",
    "record_sha256",
    "recorded_sha256",
    "sha256_file",
    "sha256_sidecar",
    "verify_file",
]

OFFLINE_ENV_VARS = ("PERCEPBENCH_OFFLINE", "HF_HUB_OFFLINE")
_TRUE = frozenset({"1", "true", "yes", "on"})
_CHUNK = 1 << 20
_USER_AGENT = "percepbench (+https://github.com/percepbench)"
# Seconds to wait before retry k (k = 0, 1, ...) after an attempt that received nothing: _RETRY_WAIT_S * 2**k,
# at most _RETRY_WAIT_MAX_S. An attempt that made progress is retried at once (it resumes).
_RETRY_WAIT_S = 1.0
_RETRY_WAIT_MAX_S = 10.0
# HTTP statuses worth retrying; any other HTTP error (404, 403, ...) fails at once.
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


# --------------------------------------------------------------------------------------------------- offline


def is_offline() -> bool:
    """True when ``PERCEPBENCH_OFFLINE`` or ``HF_HUB_OFFLINE`` is set to ``1`` (or true/yes/on).

    Read at call time, so setting the variable inside a running process takes effect at once.
    """
    return any(os.environ.get(var, "").strip().lower() in _TRUE for var in OFFLINE_ENV_VARS)


def offline_reason() -> str:
    on = [var for var in OFFLINE_ENV_VARS if os.environ.get(var, "").strip().lower() in _TRUE]
    shown = " and ".join(f"{var}={os.environ[var]}" for var in on)
    return f"offline mode is on ({shown}); unset it to let percepbench download"


@dataclass(frozen=True)
class MissingFile:
    """A file that must be placed by hand: where, from which URL, and an optional note."""

    path: Path
    url: str
    note: str = ""


def offline_error(missing: Iterable[MissingFile], reason: str, *, what: str = "weight file(s)") -> OfflineError:
    """An :class:`OfflineError` listing every missing file with its exact path and URL.

    ``reason`` says why nothing was downloaded (offline mode, or the network error after the retries);
    ``what`` names the kind of files in the first line (``"weight file(s)"``, ``"NIGHTS file(s)"``, ...).
    """
    missing = list(missing)
    lines = [f"cannot download {len(missing)} {what}: {reason}.",
             "Fetch each URL yourself and place the file at the path shown:"]
    for m in missing:
        lines.append(f"  {m.path}")
        lines.append(f"      from {m.url}")
        if m.note:
            lines.append(f"      ({m.note})")
    lines.append("Files are checked against their sha256 when it is known; then run again.")
    return OfflineError("\n".join(lines), files=[(m.path, m.url) for m in missing], reason=reason)


# ---------------------------------------------------------------------------------------------------- sha256


def sha256_file(path: str | Path, chunk_size: int = _CHUNK) -> str:
    """Hex sha256 of a file, read in ``chunk_size`` chunks (constant memory on files of any size)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def sha256_sidecar(path: str | Path) -> Path:
    """Where the recorded sha256 of ``path`` lives: ``<path>.sha256``."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def part_path(dest: str | Path) -> Path:
    """The partial-download file of ``dest``: ``<dest>.part``."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".part")


def _normalise_sha256(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    value = sha256.strip().lower()
    if not _SHA256_RE.match(value):
        raise ValueError(f"sha256 must be 64 hexadecimal digits, got {sha256!r}")
    return value


def record_sha256(path: str | Path, digest: str) -> Path:
    """Write ``digest`` to the sidecar of ``path`` (``sha256sum`` format), atomically; return the sidecar.

    The sidecar is written to a temporary name and moved into place, so a reader never sees half a line.
    """
    path = Path(path)
    digest = _normalise_sha256(digest) or ""
    sidecar = sha256_sidecar(path)
    tmp = sidecar.with_name(sidecar.name + f".tmp{os.getpid()}")
    tmp.write_text(f"{digest}  {path.name}\n", encoding="utf-8")
    os.replace(tmp, sidecar)
    return sidecar


def recorded_sha256(path: str | Path) -> str | None:
    """The sha256 recorded for ``path`` in its sidecar, or None when there is no sidecar.

    Raises:
        WeightsError: the sidecar exists but does not start with a 64-digit hex hash.
    """
    sidecar = sha256_sidecar(path)
    try:
        text = sidecar.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    token = text.split(maxsplit=1)[0].lower() if text.strip() else ""
    if not _SHA256_RE.match(token):
        raise WeightsError(f"{sidecar} (the recorded sha256 of {Path(path).name}) is unreadable; "
                           "delete it and the file, and download the file again")
    return token


def verify_file(path: str | Path, sha256: str | None = None, *, size: int | None = None) -> str:
    """Check a file against its known sha256, else against the recorded one; return its sha256.

    With ``sha256`` given, the file must match it (and the sidecar is updated to it). Without, the file
    must match the hash recorded in ``<path>.sha256`` at download; a file with neither (placed by hand)
    has its hash recorded now, so later changes are caught. ``size``, when given, is checked first
    (cheap). The whole file is hashed in chunks on every call.

    Raises:
        WeightsError: the file is missing, or its size or sha256 differs; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weight file {path} does not exist")
    if size is not None and (actual_size := path.stat().st_size) != size:
        raise WeightsError(f"weight file {path} has {actual_size} bytes, expected {size}: it is truncated or "
                           "not the right file; delete it and download it again")
    expected = _normalise_sha256(sha256)
    digest = sha256_file(path)
    recorded = recorded_sha256(path)
    if expected is not None:
        if digest != expected:
            raise WeightsError(f"weight file {path} fails its checksum: sha256 {digest}, expected {expected}; "
                               "delete it and download it again")
        if recorded != digest:
            _try_record(path, digest)
        return digest
    if recorded is None:
        _try_record(path, digest)
        return digest
    if digest != recorded:
        raise WeightsError(f"weight file {path} changed since it was downloaded: sha256 {digest}, recorded "
                           f"{recorded} in {sha256_sidecar(path)}; delete both files and download it again")
    return digest


def _try_record(path: Path, digest: str) -> None:
    # A read-only shared cache is fine: the file verified, it just cannot be bookkept.
    with contextlib.suppress(OSError):
        record_sha256(path, digest)


# -------------------------------------------------------------------------------------------------- download


class _ShortBody(Exception):
    """The server closed the connection before sending the whole body."""


def download(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    size: int | None = None,
    progress: bool = True,
    timeout: float = 60.0,
    retries: int = 3,
) -> Path:
    """Download ``url`` to ``dest`` resumably and atomically, verify it, and return ``dest``.

    An existing ``dest`` is verified (:func:`verify_file`) instead of downloaded again. Otherwise the body
    streams into ``<dest>.part``, resuming an existing one with ``Range: bytes=N-``; a connection that
    drops, times out or is refused is retried up to ``retries`` more times, resuming each time. The
    complete file must have ``size`` bytes and the ``sha256`` when they are given; it then replaces
    ``dest`` atomically and its sha256 is recorded in ``<dest>.sha256``. When a resumed download fails its
    checksum (the ``.part`` was stale), it is downloaded once more from zero before giving up.

    Args:
        url: http(s) URL; redirects are followed.
        dest: final path; parent folders are created.
        sha256: expected hex sha256 of the file, when known.
        size: expected size in bytes, when known.
        progress: show a tqdm progress bar.
        timeout: seconds for the connection and for each read.
        retries: further attempts after the first one fails on the network.

    Raises:
        OfflineError: offline mode is on (nothing is requested), or the network still fails after the
            retries; the message lists ``dest`` and ``url``. A partial ``.part`` is kept for resuming.
        WeightsError: an HTTP error such as 404, or the size or sha256 of the file is wrong (the
            ``.part`` is deleted); the message names the file, the URL, the expected and actual values.
        ValueError: ``sha256`` is not 64 hexadecimal digits.
    """
    dest = Path(dest)
    expected = _normalise_sha256(sha256)
    if dest.is_file():
        verify_file(dest, expected, size=size)
        return dest
    if is_offline():
        raise offline_error([MissingFile(dest, url)], offline_reason())
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)

    from tqdm.auto import tqdm

    with tqdm(desc=dest.name, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress,
              dynamic_ncols=True) as bar:
        for fresh_try in (False, True):
            resumed = _fetch(url, dest, part, size=size, timeout=timeout, retries=retries, bar=bar)
            actual_size = part.stat().st_size
            if size is not None and actual_size != size:
                part.unlink(missing_ok=True)
                raise WeightsError(f"download of {dest.name} from {url} has {actual_size} bytes, expected "
                                   f"{size}; removed it (the URL may serve a different file now)")
            digest = sha256_file(part)
            if expected is None or digest == expected:
                break
            part.unlink(missing_ok=True)
            if resumed and not fresh_try:
                continue  # the old .part held other bytes: one clean download from zero
            raise WeightsError(f"checksum mismatch for {dest.name} downloaded from {url}: sha256 {digest}, "
                               f"expected {expected}; the partial file was removed and {dest} not written")
    os.replace(part, dest)
    record_sha256(dest, digest)
    return dest


def _fetch(url: str, dest: Path, part: Path, *, size: int | None, timeout: float, retries: int,
           bar: Any) -> bool:
    """Make ``part`` hold the whole body of ``url``, retrying and resuming; True if any request resumed."""
    resumed = False
    last_error: BaseException | None = None
    waits = 0
    for _attempt in range(retries + 1):
        before = part.stat().st_size if part.exists() else 0
        resumed = resumed or before > 0
        try:
            _fetch_once(url, part, size=size, timeout=timeout, bar=bar)
            return resumed
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code not in _RETRY_STATUS:
                raise WeightsError(f"cannot download {dest.name} from {url}: HTTP {exc.code} {exc.reason}; "
                                   f"fetch it by hand and place it at {dest}") from exc
            last_error = exc
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError,
                ssl.SSLError, _ShortBody) as exc:
            last_error = exc
        after = part.stat().st_size if part.exists() else 0
        if after <= before:  # nothing gained: back off before the next try
            time.sleep(min(_RETRY_WAIT_S * 2**waits, _RETRY_WAIT_MAX_S))
            waits += 1
    detail = f"{type(last_error).__name__}: {getattr(last_error, 'reason', None) or last_error}"
    reason = f"the network failed after {retries + 1} attempt(s) ({detail})"
    note = f"{part.stat().st_size} bytes kept in {part}; the next attempt resumes" if part.exists() else ""
    raise offline_error([MissingFile(dest, url, note)], reason) from last_error


def _parse_content_range(value: str | None) -> tuple[int, int | None]:
    """``bytes START-END/TOTAL`` -> (START, TOTAL or None)."""
    m = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value or "")
    if not m:
        raise _ShortBody(f"unusable Content-Range {value!r}")
    return int(m.group(1)), None if m.group(3) == "*" else int(m.group(3))


def _fetch_once(url: str, part: Path, *, size: int | None, timeout: float, bar: Any) -> None:
    """One request: append to ``part`` (or restart it); raise when the body ends early."""
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        part.unlink()
        offset = 0
    if size is not None and offset == size and offset > 0:
        _bar_to(bar, offset, size)
        return
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # range not satisfiable: the .part is not a prefix of this file
            exc.close()
            part.unlink()
            raise _ShortBody("server refused the resume range; restarting from zero") from exc
        raise
    with response:
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if response.status == 206 and offset:
            start, total = _parse_content_range(response.headers.get("Content-Range"))
            if start != offset:
                part.unlink()
                raise _ShortBody(f"server resumed at byte {start}, not {offset}; restarting from zero")
            if total is None and length is not None:
                total = offset + length
            mode = "ab"
        elif response.status in (200, 206):  # 200: the server ignored Range, so the body starts at zero
            offset, total, mode = 0, length, "wb"
        else:
            raise _ShortBody(f"unexpected HTTP status {response.status}")
        _bar_to(bar, offset, total)
        received = offset
        # read1 returns what has arrived instead of waiting for a full chunk, so the bytes received before
        # a stall or a drop are on disk when the read fails, and the next attempt resumes after them.
        read = getattr(response, "read1", response.read)
        with open(part, mode) as fh:
            while chunk := read(_CHUNK):
                fh.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received < total:
        raise _ShortBody(f"connection closed after {received} of {total} bytes")


def _bar_to(bar: Any, position: int, total: int | None) -> None:
    bar.reset(total=total)
    if position:
        bar.update(position)


# ---------------------------------------------------------------------------------------------------- zip


_DRIVE_RE = re.compile(r"^[A-Za-z]:")


def _member_parts(zip_path: Path, info: zipfile.ZipInfo) -> tuple[str, ...]:
    """The safe relative path of a zip member as components; refuses anything that could escape."""
    name = info.filename
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise WeightsError(f"zip {zip_path} holds a symbolic link {name!r}; refusing to extract it")
    if not name or "\x00" in name or name.startswith(("/", "\\")) or _DRIVE_RE.match(name):
        raise WeightsError(f"zip {zip_path} member {name!r} has an absolute path; refusing to extract it")
    parts = tuple(p for p in re.split(r"[/\\]", name) if p not in ("", "."))
    if any(p == ".." for p in parts) or any(_DRIVE_RE.match(p) for p in parts):
        raise WeightsError(f"zip {zip_path} member {name!r} would be written outside the target folder; "
                           "refusing to extract it")
    return parts


def _install_staged(new: Path, old: Path, target_dir: Path) -> None:
    """Move each top-level entry of the staging folder ``new`` into ``target_dir``; what it replaces goes to ``old``."""
    for entry in sorted(p.name for p in new.iterdir()):
        final = target_dir / entry
        if final.is_symlink() or final.exists():
            os.replace(final, old / entry)
        os.replace(new / entry, final)


def extract_zip(zip_path: str | Path, target_dir: str | Path) -> list[Path]:
    """Extract a zip archive into ``target_dir`` safely; return the paths of the files extracted.

    The archive is checked first: it must open as a zip and every member must pass its CRC check, and no
    member may escape ``target_dir`` (absolute paths, ``..`` components, drive letters) or be a symbolic
    link. Members are extracted into a temporary folder inside ``target_dir``; each top-level entry is
    then moved to its final name with a rename (an existing entry of that name is replaced), so an
    interrupted extraction leaves no half-written file under a final name.

    Raises:
        WeightsError: the zip is truncated or corrupt (the message says to delete and re-download it), or
            a member is unsafe (the message names the member). Nothing is extracted in either case.
    """
    zip_path, target_dir = Path(zip_path), Path(target_dir)
    broken = (f"zip {zip_path} is truncated or corrupt ({{}}); delete it and download it again")
    try:
        archive = zipfile.ZipFile(zip_path)
    except FileNotFoundError as exc:
        raise WeightsError(f"zip {zip_path} does not exist") from exc
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise WeightsError(broken.format(exc)) from exc
    with archive:
        members: list[tuple[zipfile.ZipInfo, tuple[str, ...]]] = []
        seen: set[tuple[str, ...]] = set()
        for info in archive.infolist():
            parts = _member_parts(zip_path, info)
            if not parts:
                continue
            if parts in seen and not info.is_dir():
                raise WeightsError(f"zip {zip_path} holds {info.filename!r} twice; refusing to extract it")
            seen.add(parts)
            members.append((info, parts))
        try:
            bad = archive.testzip()
        except (zipfile.BadZipFile, EOFError, OSError, zlib.error, RuntimeError, NotImplementedError) as exc:
            raise WeightsError(broken.format(exc)) from exc
        if bad is not None:
            raise WeightsError(broken.format(f"member {bad!r} fails its CRC check"))

        target_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".extracting-", dir=target_dir))
        try:
            new, old = staging / "new", staging / "old"
            new.mkdir()
            old.mkdir()
            files: list[tuple[str, ...]] = []
            for info, parts in members:
                out = new.joinpath(*parts)
                if info.is_dir():
                    out.mkdir(parents=True, exist_ok=True)
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with archive.open(info) as src, open(out, "xb") as dst:
                        shutil.copyfileobj(src, dst, _CHUNK)
                except (zipfile.BadZipFile, EOFError, zlib.error, RuntimeError) as exc:
                    raise WeightsError(broken.format(exc)) from exc
                except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
                    raise WeightsError(f"zip {zip_path} member {info.filename!r} clashes with another "
                                       "member; refusing to extract it") from exc
                files.append(parts)
            _install_staged(new, old, target_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return [target_dir.joinpath(*parts) for parts in files]


# ---------------------------------------------------------------------------------------------------- tar


_TAR_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError, ValueError)


def _tar_member_parts(tar_path: Path, name: str) -> tuple[str, ...]:
    """The safe relative path of a tar member as components; refuses absolute paths and ``..``."""
    if not name or "\x00" in name or name.startswith(("/", "\\")) or _DRIVE_RE.match(name):
        raise WeightsError(f"tar {tar_path} member {name!r} has an absolute path; refusing to extract it")
    parts = tuple(p for p in re.split(r"[/\\]", name) if p not in ("", "."))
    if any(p == ".." for p in parts) or any(_DRIVE_RE.match(p) for p in parts):
        raise WeightsError(f"tar {tar_path} member {name!r} would be written outside the target folder; "
                           "refusing to extract it")
    return parts


def _symlink_target_parts(tar_path: Path, parts: tuple[str, ...], member: tarfile.TarInfo) -> str:
    """The link target of a symlink member, checked to stay inside the extraction folder (lexically)."""
    target = member.linkname
    if not target or "\x00" in target or target.startswith(("/", "\\")) or _DRIVE_RE.match(target):
        raise WeightsError(f"tar {tar_path} member {member.name!r} is a link to {target!r}, outside the target "
                           "folder; refusing to extract it")
    depth = len(parts) - 1  # folders above the link inside the archive
    for p in re.split(r"[/\\]", target):
        if p in ("", "."):
            continue
        depth = depth - 1 if p == ".." else depth + 1
        if depth < 0:
            raise WeightsError(f"tar {tar_path} member {member.name!r} is a link to {target!r}, outside the "
                               "target folder; refusing to extract it")
    return target


def extract_tar(tar_path: str | Path, target_dir: str | Path) -> list[Path]:
    """Extract a tar archive (plain, gzip, bzip2 or xz) into ``target_dir`` safely; return the files and
    links extracted.

    The same contract as :func:`extract_zip`: members go into a temporary folder inside ``target_dir``
    and each top-level entry is then renamed to its final name (an existing entry of that name is
    replaced); any problem removes the temporary folder, so nothing is extracted. The archive is read in
    one streaming pass (a multi-GB ``.tar.gz`` is decompressed once) and checked member by member:

    - refused: absolute paths, drive letters, ``..`` components, symbolic links whose target leaves the
      extraction folder (absolute, or climbing above it), hard links to anything but an earlier regular
      file member, device files, FIFOs, and a regular file listed twice;
    - every file is written through a parent folder whose real path is inside the temporary folder, so a
      link inside the archive cannot redirect a later member elsewhere;
    - file modes, owners and times from the archive are not applied (files get the default mode);
    - the archive must end properly: a stream cut short (truncated download) or a failing gzip CRC is an
      error, checked after the last member by reading the end-of-archive blocks and the rest of the stream.

    Raises:
        WeightsError: the archive is missing, truncated or corrupt (the message says to delete and download
            it again), or a member is unsafe (the message names it). Nothing is extracted in either case.
    """
    tar_path, target_dir = Path(tar_path), Path(target_dir)
    broken = f"tar {tar_path} is truncated or corrupt ({{}}); delete it and download it again"
    if not tar_path.is_file():
        raise WeightsError(f"tar {tar_path} does not exist")
    try:
        archive = tarfile.open(tar_path, "r:*")  # noqa: SIM115 (closed by the ``with archive`` below)
    except _TAR_READ_ERRORS as exc:
        raise WeightsError(broken.format(exc)) from exc
    target_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extracting-", dir=target_dir))
    try:
        with archive:
            new, old = staging / "new", staging / "old"
            new.mkdir()
            old.mkdir()
            real_new = new.resolve()
            files: list[tuple[str, ...]] = []
            regular: set[tuple[str, ...]] = set()
            members = iter(archive)
            while True:
                try:
                    member = next(members)
                except StopIteration:
                    break
                except _TAR_READ_ERRORS as exc:
                    raise WeightsError(broken.format(exc)) from exc
                parts = _tar_member_parts(tar_path, member.name)
                if not parts:
                    continue
                out = new.joinpath(*parts)
                if member.isdir():
                    _inside_real(tar_path, member.name, out, real_new, is_dir=True)
                    out.mkdir(parents=True, exist_ok=True)
                    continue
                if not (member.isreg() or member.issym() or member.islnk()):
                    kind = ("device file" if member.ischr() or member.isblk() else
                            "FIFO" if member.isfifo() else f"special member (type {member.type!r})")
                    raise WeightsError(f"tar {tar_path} member {member.name!r} is a {kind}; refusing to extract it")
                if parts in regular or out.is_symlink() or out.exists():
                    raise WeightsError(f"tar {tar_path} holds {member.name!r} twice; refusing to extract it")
                _inside_real(tar_path, member.name, out.parent, real_new, is_dir=True)
                out.parent.mkdir(parents=True, exist_ok=True)
                if member.issym():
                    os.symlink(_symlink_target_parts(tar_path, parts, member), out)
                    files.append(parts)
                    continue
                if member.islnk():
                    source = _tar_member_parts(tar_path, member.linkname)
                    if source not in regular:
                        raise WeightsError(f"tar {tar_path} member {member.name!r} is a hard link to "
                                           f"{member.linkname!r}, which is not an earlier file of the archive; "
                                           "refusing to extract it")
                    shutil.copyfile(new.joinpath(*source), out)
                else:
                    _copy_member(archive, member, out, broken)
                regular.add(parts)
                files.append(parts)
            _check_tar_end(archive, broken)
            _install_staged(new, old, target_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [target_dir.joinpath(*parts) for parts in files]


def _inside_real(tar_path: Path, name: str, path: Path, real_root: Path, *, is_dir: bool) -> None:
    """Refuse ``path`` when an existing prefix of it resolves (through a link) outside ``real_root``."""
    probe = path
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        probe = probe.parent
    real = probe.resolve()
    if real != real_root and real_root not in real.parents:
        raise WeightsError(f"tar {tar_path} member {name!r} would be written through a link outside the "
                           "target folder; refusing to extract it")
    if is_dir and probe.exists() and not probe.is_dir():
        raise WeightsError(f"tar {tar_path} member {name!r} clashes with another member; refusing to extract it")


def _copy_member(archive: tarfile.TarFile, member: tarfile.TarInfo, out: Path, broken: str) -> None:
    try:
        src = archive.extractfile(member)
    except _TAR_READ_ERRORS as exc:
        raise WeightsError(broken.format(exc)) from exc
    if src is None:  # not a regular file after all
        raise WeightsError(broken.format(f"member {member.name!r} has no data"))
    with src, open(out, "xb") as dst:
        while True:
            try:
                chunk = src.read(_CHUNK)
            except _TAR_READ_ERRORS as exc:
                raise WeightsError(broken.format(exc)) from exc
            if not chunk:
                break
            dst.write(chunk)
    if out.stat().st_size != member.size:
        raise WeightsError(broken.format(f"member {member.name!r} has {out.stat().st_size} of {member.size} bytes"))


def _check_tar_end(archive: tarfile.TarFile, broken: str) -> None:
    """After the last member: the archive must end properly, not just stop.

    tarfile stops quietly when the header after a member is cut short (or is garbage), so a truncated
    archive could look complete. A plain tar must hold a zero end-of-archive block where the next header
    would be. A compressed stream is read to its end instead (seeking back in it would decompress it all
    again): that checks its CRC and end-of-stream marker, and it must extend at least one block past the
    last member.
    """
    fileobj = archive.fileobj
    compressed = isinstance(fileobj, (gzip.GzipFile, bz2.BZ2File, lzma.LZMAFile))
    try:
        if compressed:
            while fileobj.read(_CHUNK):
                pass
            tail = b"\0" * tarfile.BLOCKSIZE if fileobj.tell() >= archive.offset + tarfile.BLOCKSIZE else b""
        else:
            fileobj.seek(archive.offset)
            tail = fileobj.read(tarfile.BLOCKSIZE)
    except _TAR_READ_ERRORS as exc:
        raise WeightsError(broken.format(exc)) from exc
    if len(tail) < tarfile.BLOCKSIZE or tail.strip(b"\0"):
        raise WeightsError(broken.format(f"no end-of-archive block after byte {archive.offset}"))


# ------------------------------------------------------------------------------------------- weight formats


_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8, "C64": 8,
}
_MAX_HEADER = 100 * 1024 * 1024


def check_safetensors(path: str | Path) -> dict[str, Any]:
    """Validate a ``.safetensors`` file's header without reading the tensors; return the header.

    Checks: an 8-byte little-endian header length that fits in the file; a JSON object header; for each
    tensor a known shape and ``data_offsets`` inside the data section whose length matches dtype x
    shape; tensors that tile the data section with no gap or overlap, ending exactly at the end of the
    file (a truncated or padded file fails).

    Raises:
        WeightsError: any check fails; the message names the file and the problem.
    """
    path = Path(path)

    def bad(problem: str) -> WeightsError:
        return WeightsError(f"{path} is not a valid safetensors file: {problem}; delete it and download it "
                            "again")

    try:
        file_size = path.stat().st_size
        with open(path, "rb") as fh:
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise bad(f"only {file_size} bytes, too short for the 8-byte header length")
            n = int.from_bytes(prefix, "little")
            if n == 0 or n > _MAX_HEADER or 8 + n > file_size:
                raise bad(f"header length {n} does not fit in a file of {file_size} bytes")
            raw = fh.read(n)
    except OSError as exc:
        raise WeightsError(f"cannot read {path}: {exc}") from exc
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(f"header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    data_size = file_size - 8 - n
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise bad(f"entry {name!r} is not an object")
        offsets, shape, dtype = entry.get("data_offsets"), entry.get("shape"), entry.get("dtype")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
            raise bad(f"tensor {name!r} has no valid data_offsets")
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise bad(f"tensor {name!r} has no valid shape")
        begin, end = offsets
        if not 0 <= begin <= end <= data_size:
            raise bad(f"tensor {name!r} data_offsets {offsets} fall outside the {data_size}-byte data section")
        if dtype in _DTYPE_BYTES and end - begin != math.prod(shape) * _DTYPE_BYTES[dtype]:
            raise bad(f"tensor {name!r} ({dtype}, shape {shape}) needs "
                      f"{math.prod(shape) * _DTYPE_BYTES[dtype]} bytes, data_offsets give {end - begin}")
        spans.append((begin, end, name))
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise bad(f"tensor {name!r} starts at byte {begin} of the data section, expected {position}")
        position = end
    if position != data_size:
        raise bad(f"tensors cover {position} bytes but the data section has {data_size} (file size "
                  "inconsistent with the header)")
    return header


def check_torch_file(path: str | Path) -> Any:
    """Load a torch checkpoint safely on the CPU and return it; any failure becomes a WeightsError.

    Uses ``torch.load(path, weights_only=True, map_location="cpu")``: tensors, containers and plain
    values only, never arbitrary pickled objects.

    Raises:
        WeightsError: the file is missing, truncated, not a torch file, or needs unsafe unpickling.
    """
    import torch

    path = Path(path)
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise WeightsError(f"cannot load torch file {path} safely (weights_only=True): "
                           f"{type(exc).__name__}: {first}; if it is truncated or corrupt, delete it "
                           "and download it again") from exc
