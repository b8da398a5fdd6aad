"""The one place percepbench fetches and checks files: resumable downloads, sha256, archives, weights.

Downloads use only the standard library (``urllib``): the body streams into ``<dest>.part``, and the first
response's validators (``ETag``, ``Last-Modified``) go to ``<dest>.part.json``. A ``.part`` is resumed only
with that record, by an HTTP ``Range`` request with ``If-Range`` (a server whose file changed, or that
ignores ranges, answers ``200`` and the download restarts from zero); a ``.part`` without a record, or from
a server that sent no validator, is never resumed. A dropped connection, timeout or refused connection is
retried, resuming each time. An HTML page (``Content-Type: text/html``) is refused, and without a known
sha256 the file's declared format (zip, tar, torch, safetensors, from its name) is checked from its
content. Only a complete file whose size and sha256 check out is moved to ``dest``, with ``os.replace``
(atomic), so ``dest`` never holds a partial or unverified download.

**Several processes.** A download holds :func:`file_lock` on ``<dest>.lock`` (``fcntl.flock``, released by
the kernel when its holder dies, ``kill -9`` included): a second process asking for the same file waits,
then verifies the finished file instead of downloading it again. Callers use the same lock around
extraction (:mod:`percepbench.weights`) and around each dataset part (:mod:`percepbench.data`).

**sha256 bookkeeping.** Every verified file gets a sidecar ``<file>.sha256`` beside it, one line in
``sha256sum`` format (``<64 hex digits>  <file name>``), so ``sha256sum -c file.sha256`` also checks it.
It is written at the first successful download (or the first verification of a file placed by hand); where
nobody publishes a hash, that record is trust on first use, which :func:`trust_level` says in words.
:func:`verify_file` hashes the file on every load and compares it with the known hash when the caller has
one, else with the recorded one: a file changed after download is caught either way. Hashing reads the
file in 1 MiB chunks.

**Offline mode.** With ``PERCEPBENCH_OFFLINE`` or ``HF_HUB_OFFLINE`` set to ``1`` (also ``true``/``yes``/
``on``; read at call time) nothing touches the network: :func:`download` raises :class:`OfflineError`
listing the exact path to place each file at and the URL to fetch it from. The same error, saying the
network failed, is raised when a download still fails after its retries.

**Retries.** Every request (a download, or a range read) goes through one retry loop: network errors and
HTTP 408/425/429/5xx are retried; an attempt that received nothing waits 1 s, 2 s, 4 s, ... (at most 10 s)
before the next one, an attempt that made progress is retried at once; any other HTTP error fails at once.

**One member of a remote zip.** :func:`fetch_zip_member` copies one member out of a zip on a server that
honours HTTP ``Range`` (through :class:`RangeReader`: the central directory, then that member, not the
whole archive), with the same retries, user agent and offline switch as :func:`download`.

Archives are extracted with :func:`extract_zip` (integrity check, staged extraction) and :func:`extract_tar`
(the same contract for ``.tar``/``.tar.gz``/``.tar.bz2``/``.tar.xz``: one streaming pass); both check every
member with :func:`safe_member_parts` (no absolute paths, drive letters, ``..`` or NUL, no device files or
FIFOs; a zip may hold no links at all, a tar link becomes a copy of the earlier file it points to and any
other link is refused, so an extracted tree holds no links), refuse an archive that expands past
:func:`extraction_limit` (10 times its size, at least 64 MiB; ``$PERCEPBENCH_MAX_EXTRACT_RATIO`` raises
it), and report a full disk as :class:`~percepbench.errors.DiskFullError` naming the file; weight files
are checked with :func:`check_safetensors` (header only) and :func:`check_torch_file`
(``torch.load(..., weights_only=True)``; percepbench never unpickles arbitrary objects).
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import gzip
import http.client
import io
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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from percepbench.errors import DataError, DiskFullError, OfflineError, UsageError, WeightsError
from percepbench.fileio import CHUNK as _CHUNK
from percepbench.fileio import atomic_write, atomic_write_text, lock_file, sha256_file

__all__ = [
    "DEFAULT_EXTRACT_RATIO",
    "EXTRACT_FLOOR_BYTES",
    "EXTRACT_RATIO_ENV",
    "OFFLINE_ENV_VARS",
    "TOFU",
    "MissingFile",
    "RangeReader",
    "check_safetensors",
    "check_torch_file",
    "download",
    "extract_tar",
    "extract_zip",
    "extraction_limit",
    "fetch_zip_member",
    "file_format",
    "file_lock",
    "is_offline",
    "offline_error",
    "offline_reason",
    "part_path",
    "part_record",
    "record_sha256",
    "recorded_sha256",
    "safe_member_parts",
    "sha256_file",
    "sha256_sidecar",
    "trust_level",
    "verify_file",
]

OFFLINE_ENV_VARS = ("PERCEPBENCH_OFFLINE", "HF_HUB_OFFLINE")
_TRUE = frozenset({"1", "true", "yes", "on"})
_USER_AGENT = "percepbench (+https://github.com/percepbench)"
# Seconds to wait before retry k (k = 0, 1, ...) after an attempt that received nothing: _RETRY_WAIT_S * 2**k,
# at most _RETRY_WAIT_MAX_S. An attempt that made progress is retried at once (it resumes).
_RETRY_WAIT_S = 1.0
_RETRY_WAIT_MAX_S = 10.0
# HTTP statuses worth retrying; any other HTTP error (404, 403, ...) fails at once.
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
#: environment variable that raises (or lowers) the extraction limit: extracted bytes per archive byte
EXTRACT_RATIO_ENV = "PERCEPBENCH_MAX_EXTRACT_RATIO"
#: default extraction limit: an archive may expand to this many times its own size ...
DEFAULT_EXTRACT_RATIO = 10.0
#: ... or to this many bytes, whichever is larger
EXTRACT_FLOOR_BYTES = 64 << 20
#: what ``weights verify`` / ``data verify`` say about a file whose hash nobody publishes
TOFU = "recorded on first use, never checked against a published value"
_DISK_FULL = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


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

    The sidecar is written with :func:`percepbench.fileio.atomic_write_text`, so a reader never sees half a
    line.
    """
    path = Path(path)
    digest = _normalise_sha256(digest) or ""
    return atomic_write_text(sha256_sidecar(path), f"{digest}  {path.name}\n")


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


# ----------------------------------------------------------------------------------------------- retries


class _ShortBody(Exception):
    """The server closed the connection before sending the whole body (or the bytes asked for)."""


_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError, ssl.SSLError,
                   _ShortBody)
_T = TypeVar("_T")


def _with_retries(attempt: Callable[[], _T], *, retries: int,
                  on_http_error: Callable[[urllib.error.HTTPError], Exception],
                  on_failure: Callable[[str], Exception], progress: Callable[[], int] = lambda: 0) -> _T:
    """Return ``attempt()``, trying it at most ``retries + 1`` times: the one retry loop of every request.

    A network error or an HTTP status in ``_RETRY_STATUS`` is retried; any other HTTP error raises
    ``on_http_error(error)`` at once. Before retry ``k`` of an attempt that made no progress (``progress()``
    did not grow) the loop waits ``_RETRY_WAIT_S * 2**k`` seconds, at most ``_RETRY_WAIT_MAX_S``; an attempt
    that made progress is retried at once. When every attempt failed, raises ``on_failure(reason)`` with
    ``reason = "the network failed after N attempt(s) (<last error>)"``.
    """
    last: BaseException | None = None
    waits = 0
    for _attempt in range(retries + 1):
        before = progress()
        try:
            return attempt()
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code not in _RETRY_STATUS:
                raise on_http_error(exc) from exc
            last = exc
        except _NETWORK_ERRORS as exc:
            last = exc
        if progress() <= before and _attempt < retries:  # nothing gained: back off before the next try
            time.sleep(min(_RETRY_WAIT_S * 2**waits, _RETRY_WAIT_MAX_S))
            waits += 1
    detail = f"{type(last).__name__}: {getattr(last, 'reason', None) or last}"
    raise on_failure(f"the network failed after {retries + 1} attempt(s) ({detail})") from last


def _request(url: str, *, range_from: int | None, timeout: float, if_range: str | None = None) -> Any:
    """Open ``url`` with percepbench's user agent, no content encoding, ``Range: bytes=<range_from>-``
    unless ``range_from`` is None, and ``If-Range: <if_range>`` when given."""
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if range_from is not None:
        headers["Range"] = f"bytes={range_from}-"
    if if_range is not None:
        headers["If-Range"] = if_range
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


# ------------------------------------------------------------------------------------------------- locks


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on ``<path>.lock`` for the ``with`` block; yield the lock file's path.

    The one lock of every download and extraction shared by several processes (every rank of a multi-GPU
    job fetches the same files at once): one process works while the others wait here, then find its
    result. It is ``fcntl.flock`` on the lock file, which the kernel releases when the holder exits or is
    killed (``kill -9`` leaves no stale lock to clean up); the lock file itself stays, empty. Parent folders
    are created. On a system without ``fcntl`` (Windows) ``msvcrt.locking`` on the file's first byte is
    used instead. A lock file that cannot be created (a read-only cache) is an error only when the file
    still has to be written: callers check for a finished file before taking the lock.

    Raises:
        WeightsError: the lock file cannot be created or locked; the message names it.
    """
    path = Path(path)
    lock = path.with_name(path.name + ".lock")
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        held = contextlib.ExitStack()
        held.enter_context(lock_file(lock))
    except OSError as exc:
        raise WeightsError(f"cannot create or lock the lock file {lock} ({exc.strerror or exc}); percepbench "
                           f"needs to write in {lock.parent} to fetch {path.name}") from exc
    with held:  # leaving it closes the descriptor, which releases the lock
        yield lock


@contextlib.contextmanager
def _disk_full(writing: Path, what: str) -> Iterator[None]:
    """Turn a full disk (``ENOSPC``/``EDQUOT``) while writing ``writing`` into a :class:`DiskFullError`."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _DISK_FULL:
            raise
        raise DiskFullError(f"no space left on the device writing {writing} ({what}); free space there, or "
                            "point percepbench at a larger disk, and run again") from exc


# ------------------------------------------------------------------------------------------------ formats


_FORMAT_SUFFIXES = ((".safetensors", "safetensors"), (".zip", "zip"), (".tar", "tar"), (".tar.gz", "tar"),
                    (".tgz", "tar"), (".tar.bz2", "tar"), (".tar.xz", "tar"), (".pth", "torch"),
                    (".pt", "torch"), (".ckpt", "torch"))
_FORMATS = frozenset({"zip", "tar", "torch", "safetensors", "any"})
# torch.save's legacy (non-zip) format starts with the pickled magic number 0x1950a86a20f9469cfc6c
_TORCH_LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_HTML_TYPES = ("text/html", "application/xhtml+xml")


def file_format(name: str | Path) -> str | None:
    """The format a file name declares: ``"zip"``, ``"tar"`` (``.tar``, ``.tar.gz``, ``.tgz``,
    ``.tar.bz2``, ``.tar.xz``), ``"torch"`` (``.pth``, ``.pt``, ``.ckpt``), ``"safetensors"``, or None."""
    lower = Path(name).name.lower()
    for suffix, fmt in _FORMAT_SUFFIXES:
        if lower.endswith(suffix):
            return fmt
    return None


def _looks_like_html(head: bytes) -> bool:
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return text.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<?xml"))


def _format_problem(path: Path, fmt: str | None) -> str:
    """Why ``path`` is not a file of format ``fmt`` (``""`` when it is). Without a format, only an HTML page
    is refused."""
    with open(path, "rb") as fh:
        head = fh.read(512)
    html = "; it looks like an HTML page (an error or login page), not the file" if _looks_like_html(head) else ""
    shown = f"it starts with {head[:16]!r}{html}"
    if fmt == "zip":
        if zipfile.is_zipfile(path):
            return ""
        if head.startswith(b"PK\x03\x04"):
            return "a truncated or corrupt zip archive (no central directory at its end)"
        return f"not a zip archive ({shown})"
    if fmt == "tar":
        ok = (head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00"))
              or head[257:262] == b"ustar")
        return "" if ok else f"not a tar archive, plain or gzip/bzip2/xz-compressed ({shown})"
    if fmt == "torch":
        legacy = head[:1] == b"\x80" and head[2:14] == _TORCH_LEGACY_MAGIC
        return "" if legacy or zipfile.is_zipfile(path) else f"not a torch checkpoint ({shown})"
    if fmt == "safetensors":
        try:
            check_safetensors(path)
        except WeightsError as exc:
            return f"not a valid safetensors file ({str(exc).split('safetensors file: ', 1)[-1].split('; delete it')[0]})"
        return ""
    return "an HTML page (an error or login page), not the file" if html else ""


def trust_level(sha256: str | None, prefix: str | None = None) -> str:
    """What a file's checksum has been checked against, in words (what ``weights verify`` and ``data
    verify`` print):

    - a known full ``sha256``: ``"checked against a published sha256"``;
    - only a published ``prefix``: ``"recorded on first use, checked only against the published sha256
      prefix <prefix>"``;
    - neither: :data:`TOFU`, ``"recorded on first use, never checked against a published value"``.
    """
    if sha256:
        return "checked against a published sha256"
    if prefix:
        return f"recorded on first use, checked only against the published sha256 prefix {prefix}"
    return TOFU


# -------------------------------------------------------------------------------------------------- download


def part_record(dest: str | Path) -> Path:
    """Where a partial download records the response it came from: ``<dest>.part.json``."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".part.json")


def download(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    size: int | None = None,
    progress: bool = True,
    timeout: float = 60.0,
    retries: int = 3,
    format: str | None = None,
) -> Path:
    """Download ``url`` to ``dest`` resumably and atomically, verify it, and return ``dest``.

    An existing ``dest`` is verified (:func:`verify_file`) instead of downloaded again. Otherwise the
    download holds :func:`file_lock` on ``dest`` (``<dest>.lock``): a second process asking for the same
    file waits, then finds and verifies it instead of downloading it again.

    The body streams into ``<dest>.part``. The first response's validators (``ETag``, unless weak, and
    ``Last-Modified``) are recorded in ``<dest>.part.json`` with the URL; a ``.part`` is resumed only with
    that record, by a ``Range: bytes=N-`` request carrying ``If-Range: <validator>``, so a server whose file
    changed sends all of it again (200) instead of the rest of another file. A ``.part`` without a record, a
    record of another URL, or a server that sent no validator means starting again from zero. A connection
    that drops, times out or is refused is retried up to ``retries`` more times, resuming each time.

    Before the file is accepted: a response with ``Content-Type: text/html`` is refused at once (a login or
    error page served with status 200); the complete file must have ``size`` bytes and the ``sha256`` when
    they are given. Without a known ``sha256`` (which would prove more), the ``format`` the file declares
    (``"zip"``, ``"tar"``, ``"torch"``, ``"safetensors"``; by default :func:`file_format` of ``dest``'s
    name; ``"any"`` for none) is checked from its content: a zip's central directory, a tar's (or its
    compressor's) magic bytes, a torch checkpoint's zip or legacy pickle header, a safetensors header
    (:func:`check_safetensors`); a file of no declared format must not be an HTML page. It then replaces
    ``dest`` atomically and its sha256 is recorded in ``<dest>.sha256``.
    When a resumed download fails its checksum (the ``.part`` was damaged), it is downloaded once more from
    zero before giving up.

    Args:
        url: http(s) URL; redirects are followed.
        dest: final path; parent folders are created.
        sha256: expected hex sha256 of the file, when known.
        size: expected size in bytes, when known.
        progress: show a tqdm progress bar.
        timeout: seconds for the connection and for each read.
        retries: further attempts after the first one fails on the network.
        format: the file's format (see above); default: what ``dest``'s name declares.

    Raises:
        OfflineError: offline mode is on (nothing is requested), or the network still fails after the
            retries; the message lists ``dest`` and ``url``. A partial ``.part`` is kept for resuming.
        DiskFullError: the disk filled while writing ``<dest>.part`` (kept for resuming; the message names it).
        WeightsError: an HTTP error such as 404, an HTML page, or the size, sha256 or format of the file is
            wrong (the ``.part`` is deleted); the message names the file, the URL, the expected and actual
            values.
        ValueError: ``sha256`` is not 64 hexadecimal digits, or ``format`` is unknown.
    """
    dest = Path(dest)
    expected = _normalise_sha256(sha256)
    if format is not None and format not in _FORMATS:
        raise ValueError(f"format must be one of {sorted(_FORMATS)}, got {format!r}")
    fmt = None if format == "any" else format or file_format(dest)
    if dest.is_file():
        verify_file(dest, expected, size=size)
        return dest
    if is_offline():
        raise offline_error([MissingFile(dest, url)], offline_reason())
    dest.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(dest):
        if dest.is_file():  # another process downloaded it while this one waited for the lock
            verify_file(dest, expected, size=size)
            return dest
        part = part_path(dest)
        if part.exists() and _validator(_read_record(part, url)) is None:
            _restart(part)  # of unknown origin, or from a server that sent no validator: never resumed

        from tqdm.auto import tqdm

        with tqdm(desc=dest.name, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress,
                  dynamic_ncols=True) as bar:
            for fresh_try in (False, True):
                resumed = _fetch(url, dest, part, size=size, timeout=timeout, retries=retries, bar=bar)
                actual_size = part.stat().st_size
                if size is not None and actual_size != size:
                    _restart(part)
                    raise WeightsError(f"download of {dest.name} from {url} has {actual_size} bytes, expected "
                                       f"{size}; removed it (the URL may serve a different file now)")
                digest = sha256_file(part)
                if expected is None or digest == expected:
                    break
                _restart(part)
                if resumed and not fresh_try:
                    continue  # the old .part held other bytes: one clean download from zero
                raise WeightsError(f"checksum mismatch for {dest.name} downloaded from {url}: sha256 {digest}, "
                                   f"expected {expected}; the partial file was removed and {dest} not written")
        problem = "" if expected is not None else _format_problem(part, fmt)  # a known sha256 proves more
        if problem:
            _restart(part)
            raise WeightsError(f"download of {dest.name} from {url} is {problem}; removed it, nothing was written "
                               f"to {dest} (check the URL in a browser)")
        os.replace(part, dest)
        part_record(dest).unlink(missing_ok=True)
        record_sha256(dest, digest)
    return dest


def _restart(part: Path) -> None:
    """Forget a partial download: the ``.part`` and its record."""
    part.unlink(missing_ok=True)
    part.with_name(part.name + ".json").unlink(missing_ok=True)


def _read_record(part: Path, url: str) -> dict[str, Any] | None:
    """The record of ``part`` when it exists, is readable and belongs to ``url``; else None."""
    try:
        record = json.loads(part.with_name(part.name + ".json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("url") == url else None


def _validator(record: dict[str, Any] | None) -> str | None:
    """What ``If-Range`` can carry for a record: its strong ``ETag``, else its ``Last-Modified``, else None."""
    if not record:
        return None
    etag, modified = record.get("etag"), record.get("last_modified")
    if isinstance(etag, str) and etag and not etag.startswith("W/"):
        return etag
    return modified if isinstance(modified, str) and modified else None


def _fetch(url: str, dest: Path, part: Path, *, size: int | None, timeout: float, retries: int,
           bar: Any) -> bool:
    """Make ``part`` hold the whole body of ``url``, retrying and resuming; True if any request resumed."""
    resumed = False

    def size_now() -> int:
        return part.stat().st_size if part.exists() else 0

    def attempt() -> None:
        nonlocal resumed
        resumed = resumed or size_now() > 0
        _fetch_once(url, dest, part, size=size, timeout=timeout, bar=bar)

    def http_error(exc: urllib.error.HTTPError) -> Exception:
        return WeightsError(f"cannot download {dest.name} from {url}: HTTP {exc.code} {exc.reason}; "
                            f"fetch it by hand and place it at {dest}")

    def failed(reason: str) -> Exception:
        note = ""
        if part.exists():
            then = ("the next attempt resumes it if the server still has the same file"
                    if _validator(_read_record(part, url)) else
                    "the server sent no ETag or Last-Modified, so the next attempt starts again from zero")
            note = f"{part.stat().st_size} bytes kept in {part}; {then}"
        return offline_error([MissingFile(dest, url, note)], reason)

    _with_retries(attempt, retries=retries, on_http_error=http_error, on_failure=failed, progress=size_now)
    return resumed


def _parse_content_range(value: str | None) -> tuple[int, int | None]:
    """``bytes START-END/TOTAL`` -> (START, TOTAL or None)."""
    m = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value or "")
    if not m:
        raise _ShortBody(f"unusable Content-Range {value!r}")
    return int(m.group(1)), None if m.group(3) == "*" else int(m.group(3))


def _fetch_once(url: str, dest: Path, part: Path, *, size: int | None, timeout: float, bar: Any) -> None:
    """One request: append to ``part`` (or restart it); raise when the body ends early."""
    offset = part.stat().st_size if part.exists() else 0
    record = _read_record(part, url) if offset else None
    validator = _validator(record)
    known_total = record.get("length") if record else None
    if offset and (validator is None or (size is not None and offset > size)
                   or (isinstance(known_total, int) and offset > known_total)):
        _restart(part)
        offset, record, validator = 0, None, None
    if size is not None and offset == size and offset > 0:
        _bar_to(bar, offset, size)
        return
    try:
        response = _request(url, range_from=offset or None, timeout=timeout, if_range=validator)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # range not satisfiable: the .part is not a prefix of this file
            exc.close()
            _restart(part)
            raise _ShortBody("server refused the resume range; restarting from zero") from exc
        raise
    with response:
        content_type = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type in _HTML_TYPES:
            _restart(part)
            raise WeightsError(f"{url} answered with an HTML page (Content-Type {content_type}, HTTP "
                               f"{response.status}), not the file: the link may have moved, expired or need a "
                               f"login; nothing was written to {dest}")
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        etag = response.headers.get("ETag")
        if response.status == 206 and offset:
            start, total = _parse_content_range(response.headers.get("Content-Range"))
            if start != offset or (etag and record and record.get("etag") and etag != record["etag"]):
                _restart(part)
                raise _ShortBody(f"server resumed at byte {start} of a file with ETag {etag}, not at byte {offset} "
                                 "of the recorded one; restarting from zero")
            if total is None and length is not None:
                total = offset + length
            mode = "ab"
        elif response.status in (200, 206):  # 200: a new download, or the file changed (If-Range), or no Range
            offset, total, mode = 0, length, "wb"
            atomic_write_text(part.with_name(part.name + ".json"), json.dumps(
                {"url": url, "etag": etag, "last_modified": response.headers.get("Last-Modified"),
                 "length": total}))
        else:
            raise _ShortBody(f"unexpected HTTP status {response.status}")
        _bar_to(bar, offset, total)
        received = offset
        # read1 returns what has arrived instead of waiting for a full chunk, so the bytes received before
        # a stall or a drop are on disk when the read fails, and the next attempt resumes after them.
        read = getattr(response, "read1", response.read)
        with _disk_full(part, f"downloading {url}; the bytes already received are kept there"), \
                open(part, mode) as fh:
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


# ------------------------------------------------------------------------------------ one member of a zip


_RANGE_BUFFER = 1 << 20


class RangeReader(io.RawIOBase):
    """A read-only, seekable view of a remote file through HTTP ``Range: bytes=N-`` requests.

    Each read asks for the bytes from the current position on and closes the connection once it has what
    it needs (open-ended ranges work with every server that supports ranges). Requests go through the
    downloader's retry loop (a read that drops resumes where it stopped) with its user agent; in offline
    mode every request raises :class:`~percepbench.errors.OfflineError` before touching the network. Wrap
    it in an ``io.BufferedReader`` so that small reads (zipfile's) do not each cost a request.

    Raises:
        OfflineError: offline mode is on, or the network still fails after the retries.
        DataError: the server does not honour ``Range`` (checked when the reader is created), or an HTTP
            error such as 404.
    """

    def __init__(self, url: str, *, timeout: float = 60.0, retries: int = 3) -> None:
        super().__init__()
        self.url, self.timeout, self.retries = url, timeout, retries
        self.pos = 0
        self.size = self._retry(self._probe)

    def _open(self, offset: int) -> Any:
        if is_offline():
            reason = offline_reason()
            raise OfflineError(f"cannot read {self.url}: {reason}", reason=reason)
        # offset 0 too: a server that honours ranges answers 206 with the total size in Content-Range
        return _request(self.url, range_from=offset, timeout=self.timeout)

    def _probe(self) -> int:
        with self._open(0) as response:
            m = re.fullmatch(r"\s*bytes\s+\d+-\d+/(\d+)\s*", response.headers.get("Content-Range") or "")
            if response.status != 206 or m is None:
                raise DataError(f"{self.url} does not support HTTP range requests (it answered "
                                f"{response.status} without a usable Content-Range), so one member cannot be "
                                "read out of it")
            return int(m.group(1))

    def _retry(self, fn: Callable[[], _T], progress: Callable[[], int] = lambda: 0) -> _T:
        def http_error(exc: urllib.error.HTTPError) -> Exception:
            return DataError(f"cannot read {self.url}: HTTP {exc.code} {exc.reason}")

        def failed(reason: str) -> Exception:
            return OfflineError(f"cannot read {self.url}: {reason}", reason=reason)

        return _with_retries(fn, retries=self.retries, on_http_error=http_error, on_failure=failed,
                             progress=progress)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise OSError(f"negative seek position {base + offset}")
        self.pos = base + offset
        return self.pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), max(0, self.size - self.pos))
        got = 0

        def fill() -> None:
            nonlocal got
            with self._open(self.pos + got) as response:
                if response.status != 206:
                    raise DataError(f"{self.url} stopped honouring HTTP range requests (it answered "
                                    f"{response.status})")
                while got < want:
                    chunk = response.read(want - got)
                    if not chunk:
                        raise _ShortBody(f"connection closed after {got} of {want} bytes")
                    view[got:got + len(chunk)] = chunk
                    got += len(chunk)

        if want:
            self._retry(fill, progress=lambda: got)
        self.pos += got
        return got


def fetch_zip_member(url: str, member: str, dest: str | Path, *, progress: bool = True, what: str = "",
                     timeout: float = 60.0, retries: int = 3) -> Path:
    """Copy ``member`` of the remote zip at ``url`` to ``dest`` (CRC-checked, written atomically); return ``dest``.

    Reads the zip's central directory and then that member with HTTP range requests (:class:`RangeReader`),
    so a member of a 58 GB archive costs a few requests, not the archive. ``what`` labels the progress bar.

    Raises:
        OfflineError: offline mode is on (nothing is requested; the message lists ``dest`` and ``url``), or
            the network still fails after the retries.
        DataError: the server does not honour ``Range``, the remote file is not a readable zip, the member
            is not in it (members of the same base name are listed), or an HTTP error such as 404.
    """
    from tqdm.auto import tqdm

    dest, base = Path(dest), PurePosixPath(member).name
    missing = [MissingFile(dest, url, f"only the member {member} of this zip is needed")]
    if is_offline():
        raise offline_error(missing, offline_reason(), what="file(s)")
    try:
        with io.BufferedReader(RangeReader(url, timeout=timeout, retries=retries),
                               buffer_size=_RANGE_BUFFER) as fh, zipfile.ZipFile(fh) as zf:
            try:
                info = zf.getinfo(member)
            except KeyError:
                close = [n for n in zf.namelist() if PurePosixPath(n).name == base][:5]
                raise DataError(f"{url} has no member {member!r}"
                                + (f" (members with that name: {', '.join(close)})" if close else "")) from None
            with zf.open(info) as src, tqdm(desc=f"{what or base} (from {PurePosixPath(url).name})",
                                            total=info.file_size, unit="B", unit_scale=True, unit_divisor=1024,
                                            disable=not progress, dynamic_ncols=True) as bar, \
                    _disk_full(dest, f"copying {member} out of {url}"):
                atomic_write(dest, lambda out: _copy_chunks(src, out, bar))
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        raise DataError(f"cannot read {member} out of {url}: {exc} (the remote file is not a readable zip)") from exc
    except OfflineError as exc:  # the network failed after the retries: say which file to place by hand
        raise offline_error(missing, exc.reason, what="file(s)") from exc
    return dest


def _copy_chunks(src: Any, out: Any, bar: Any) -> None:
    while chunk := src.read(_CHUNK):
        out.write(chunk)
        bar.update(len(chunk))


# ------------------------------------------------------------------------------------------ member safety


_DRIVE_RE = re.compile(r"^[A-Za-z]:")


def _is_absolute(path: str) -> bool:
    return not path or "\x00" in path or path.startswith(("/", "\\")) or bool(_DRIVE_RE.match(path))


def safe_member_parts(archive: str, name: str, *, special: str = "", link: str | None = None) -> tuple[str, ...]:
    """The relative path of archive member ``name`` as components, after refusing anything unsafe.

    The one member check of :func:`extract_zip` and :func:`extract_tar`. ``archive`` names the archive in
    messages (``"zip /path/a.zip"``). Each refusal is a :class:`~percepbench.errors.WeightsError` that names
    the archive and the member and ends with "refusing to extract it":

    - an empty name, a NUL byte, a leading ``/`` or ``\\``, or a drive letter: "has an absolute path";
    - a ``..`` component, or a drive letter in a later component: "would be written outside the target
      folder" (``/`` and ``\\`` both separate components);
    - ``special``: what the member is when it may not be extracted at all (``"device file"``, ``"FIFO"``,
      ``"symbolic link"``): "is a <special>";
    - ``link``: the target of a symbolic link member, which must stay inside the extraction folder, judged
      from the link's own folder without touching the disk: an absolute target, or one whose ``..``
      climb above the top, is "a link to <target>, outside the target folder".

    Returns ``()`` for a name with no components (``./``), which the extractors skip.
    """
    if _is_absolute(name):
        raise WeightsError(f"{archive} member {name!r} has an absolute path; refusing to extract it")
    parts = tuple(p for p in re.split(r"[/\\]", name) if p not in ("", "."))
    if any(p == ".." for p in parts) or any(_DRIVE_RE.match(p) for p in parts):
        raise WeightsError(f"{archive} member {name!r} would be written outside the target folder; "
                           "refusing to extract it")
    if special:
        raise WeightsError(f"{archive} member {name!r} is a {special}; refusing to extract it")
    if link is not None:
        outside = WeightsError(f"{archive} member {name!r} is a link to {link!r}, outside the target folder; "
                               "refusing to extract it")
        if _is_absolute(link):
            raise outside
        depth = len(parts) - 1  # folders above the link inside the archive
        for p in re.split(r"[/\\]", link):
            if p not in ("", "."):
                depth = depth - 1 if p == ".." else depth + 1
                if depth < 0:
                    raise outside
    return parts


def _special_kind(mode: int) -> str:
    """What a file of ``mode`` is when it is neither a regular file, a folder nor a link, else ``""``."""
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device file"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    return ""


# ----------------------------------------------------------------------------------------- extraction limit


def extraction_limit(archive: Path, max_ratio: float | None = None) -> tuple[int, float]:
    """``(bytes, ratio)``: how much ``archive`` may expand to when extracted.

    ``ratio`` is ``max_ratio``, else ``$PERCEPBENCH_MAX_EXTRACT_RATIO``, else :data:`DEFAULT_EXTRACT_RATIO`
    (10); the limit is ``ratio`` times the archive's size, and at least :data:`EXTRACT_FLOOR_BYTES`
    (64 MiB), so a small archive of compressible files is never refused. The datasets and weights
    percepbench fetches (PNG, JPEG, float tensors) expand less than twice.

    Raises:
        UsageError: ``$PERCEPBENCH_MAX_EXTRACT_RATIO`` (or ``max_ratio``) is not a positive number.
    """
    source = f"max_ratio={max_ratio!r}"
    if max_ratio is None:
        raw = os.environ.get(EXTRACT_RATIO_ENV, "").strip()
        source = f"{EXTRACT_RATIO_ENV}={raw!r}"
        try:
            max_ratio = float(raw) if raw else DEFAULT_EXTRACT_RATIO
        except ValueError:
            max_ratio = math.nan
    if not (math.isfinite(max_ratio) and max_ratio > 0):
        raise UsageError(f"{source} is not a number above 0: it is how many times its own size an archive may "
                         f"expand to when extracted (default {DEFAULT_EXTRACT_RATIO:g})")
    return max(int(max_ratio * archive.stat().st_size), EXTRACT_FLOOR_BYTES), max_ratio


class _Budget:
    """Counts the bytes an extraction writes and refuses the member that would pass the limit."""

    def __init__(self, label: str, archive: Path, max_ratio: float | None) -> None:
        self.label, self.archive = label, archive
        self.limit, self.ratio = extraction_limit(archive, max_ratio)
        self.used = 0

    def take(self, n: int) -> None:
        self.used += n
        if self.used > self.limit:
            raise WeightsError(
                f"{self.label} expands to more than {self.limit} bytes (the limit: {self.ratio:g} times its "
                f"{self.archive.stat().st_size} bytes, and at least {EXTRACT_FLOOR_BYTES}); refusing to extract it "
                f"(an archive bomb?). If the archive is genuine, allow a larger ratio with {EXTRACT_RATIO_ENV}=<ratio>")


# ---------------------------------------------------------------------------------------------------- zip


def _install_staged(new: Path, old: Path, target_dir: Path) -> None:
    """Move each top-level entry of the staging folder ``new`` into ``target_dir``; what it replaces goes to ``old``.

    Renames only: a link is moved as a link, never followed (the extractors create none anyway).
    """
    for entry in sorted(p.name for p in new.iterdir()):
        final = target_dir / entry
        if final.is_symlink() or final.exists():
            os.replace(final, old / entry)
        os.replace(new / entry, final)


def extract_zip(zip_path: str | Path, target_dir: str | Path, *, max_ratio: float | None = None) -> list[Path]:
    """Extract a zip archive into ``target_dir`` safely; return the paths of the files extracted.

    The archive is checked first: it must open as a zip and every member must pass its CRC check, no
    member may escape ``target_dir`` (absolute paths, ``..`` components, drive letters) or be a symbolic
    link, device file, FIFO or socket (:func:`safe_member_parts`), and the members' sizes may not add up to
    more than :func:`extraction_limit` (``max_ratio``, else ``$PERCEPBENCH_MAX_EXTRACT_RATIO``, else 10
    times the archive's size, at least 64 MiB; the bytes written are counted too). Members are extracted
    into a temporary folder inside ``target_dir``; each top-level entry is then moved to its final name
    with a rename (an existing entry of that name is replaced), so an interrupted extraction leaves no
    half-written file under a final name.

    Raises:
        WeightsError: the zip is truncated or corrupt (the message says to delete and re-download it), a
            member is unsafe (the message names the member), or it expands past the limit (the message
            says how to raise it). Nothing is extracted in any case.
        DiskFullError: the disk filled; the message names the file being written. Nothing is extracted.
        UsageError: ``$PERCEPBENCH_MAX_EXTRACT_RATIO`` is not a positive number.
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
        budget = _Budget(f"zip {zip_path}", zip_path, max_ratio)
        for info in archive.infolist():
            mode = info.external_attr >> 16  # unix mode bits, when the zip was made on unix
            special = "symbolic link" if stat.S_ISLNK(mode) else _special_kind(mode)
            parts = safe_member_parts(f"zip {zip_path}", info.filename, special=special)
            if not parts:
                continue
            if parts in seen and not info.is_dir():
                raise WeightsError(f"zip {zip_path} holds {info.filename!r} twice; refusing to extract it")
            seen.add(parts)
            members.append((info, parts))
            budget.take(info.file_size)  # declared sizes first: a bomb is refused before anything is written
        budget.used = 0
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
                    with (_disk_full(out, f"extracting {zip_path}; nothing was extracted"),
                          archive.open(info) as src, open(out, "xb") as dst):
                        while chunk := src.read(_CHUNK):
                            budget.take(len(chunk))
                            dst.write(chunk)
                except WeightsError:  # a full disk or the size limit (a RuntimeError too): as it is
                    raise
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


def _tar_special(member: tarfile.TarInfo) -> str:
    """What a tar member is when it is neither a file, a folder nor a link (refused), else ``""``."""
    if member.isreg() or member.isdir() or member.issym() or member.islnk():
        return ""
    return ("device file" if member.ischr() or member.isblk() else "FIFO" if member.isfifo()
            else f"special member (type {member.type!r})")


def _link_source(label: str, member: tarfile.TarInfo, parts: tuple[str, ...]) -> tuple[str, ...]:
    """The archive path (components) a link member points at: a hard link's name is relative to the top
    of the archive, a symbolic link's target to the link's own folder (``..`` resolved by name: the
    staged tree holds no links, so names are real paths)."""
    if member.islnk():
        return safe_member_parts(label, member.linkname)
    out: list[str] = list(parts[:-1])
    for p in re.split(r"[/\\]", member.linkname):
        if p == "..":
            out.pop()  # safe_member_parts(link=...) checked that the target never climbs above the top
        elif p not in ("", "."):
            out.append(p)
    return tuple(out)


def extract_tar(tar_path: str | Path, target_dir: str | Path, *, max_ratio: float | None = None) -> list[Path]:
    """Extract a tar archive (plain, gzip, bzip2 or xz) into ``target_dir`` safely; return the files
    extracted.

    The same contract as :func:`extract_zip`: members go into a temporary folder inside ``target_dir``
    and each top-level entry is then renamed to its final name (an existing entry of that name is
    replaced); any problem removes the temporary folder, so nothing is extracted. The archive is read in
    one streaming pass (a multi-GB ``.tar.gz`` is decompressed once) and checked member by member:

    - refused: absolute paths, drive letters, ``..`` components, device files, FIFOs, a regular file listed
      twice, and every link (symbolic or hard) whose target is not an earlier regular file of the archive:
      links to folders, to missing files, to later members, or leaving the extraction folder;
    - a link to an earlier file is extracted as a copy of that file, so the extracted tree holds no links
      at all: nothing is ever written or found through a link, and a chain of links (``p/q -> ..``, then
      ``p/q/p/q/.../x -> ../../victim``) cannot reach outside. A link to a link is a copy of the file the
      first one copied;
    - every file is written through a parent folder whose real path is inside the temporary folder;
    - the bytes written may not pass :func:`extraction_limit` (``max_ratio``, else
      ``$PERCEPBENCH_MAX_EXTRACT_RATIO``, else 10 times the archive's size, at least 64 MiB), checked
      before each member is written;
    - file modes, owners and times from the archive are not applied (files get the default mode);
    - the archive must end properly: a stream cut short (truncated download) or a failing gzip CRC is an
      error, checked after the last member by reading the end-of-archive blocks and the rest of the stream.

    Raises:
        WeightsError: the archive is missing, truncated or corrupt (the message says to delete and download
            it again), a member is unsafe (the message names it), or it expands past the limit (the message
            says how to raise it). Nothing is extracted in any case.
        DiskFullError: the disk filled; the message names the file being written. Nothing is extracted.
        UsageError: ``$PERCEPBENCH_MAX_EXTRACT_RATIO`` is not a positive number.
    """
    tar_path, target_dir = Path(tar_path), Path(target_dir)
    label = f"tar {tar_path}"
    broken = f"{label} is truncated or corrupt ({{}}); delete it and download it again"
    if not tar_path.is_file():
        raise WeightsError(f"tar {tar_path} does not exist")
    budget = _Budget(label, tar_path, max_ratio)
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
                parts = safe_member_parts(label, member.name, special=_tar_special(member),
                                          link=member.linkname if member.issym() else None)
                if not parts:
                    continue
                out = new.joinpath(*parts)
                if member.isdir():
                    _inside_real(tar_path, member.name, out, real_new, is_dir=True)
                    out.mkdir(parents=True, exist_ok=True)
                    continue
                if parts in regular or out.is_symlink() or out.exists():
                    raise WeightsError(f"tar {tar_path} holds {member.name!r} twice; refusing to extract it")
                _inside_real(tar_path, member.name, out.parent, real_new, is_dir=True)
                out.parent.mkdir(parents=True, exist_ok=True)
                with _disk_full(out, f"extracting {tar_path}; nothing was extracted"):
                    if member.issym() or member.islnk():
                        source = _link_source(label, member, parts)
                        if source not in regular:
                            kind = "a link" if member.issym() else "a hard link"
                            raise WeightsError(
                                f"tar {tar_path} member {member.name!r} is {kind} to {member.linkname!r}, which is "
                                "not an earlier file of the archive (links to folders, to missing or later "
                                "members are refused); refusing to extract it")
                        budget.take(new.joinpath(*source).stat().st_size)
                        _copy_file(new.joinpath(*source), out)
                    else:
                        budget.take(member.size)
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


def _copy_file(source: Path, out: Path) -> None:
    with open(source, "rb") as src, open(out, "xb") as dst:
        while chunk := src.read(_CHUNK):
            dst.write(chunk)


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
