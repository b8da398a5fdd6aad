"""Small file helpers every other module uses: one atomic write, one file hash.

- :func:`atomic_write` writes a file through a temporary name in the same folder and ``os.replace``
  (atomic on POSIX and Windows), so a reader sees the old content or the new one, never half of it, and an
  interrupted write leaves no stray file under the final name. The temporary file is removed on any error.
- :func:`sha256_file` hashes a file in 1 MiB chunks (constant memory on files of any size).
- :func:`lock_file` is the one inter-process lock (downloads, extractions, dataset parts, run directories):
  ``fcntl.flock`` on a lock file, which the kernel releases when the holder exits in any way (``kill -9``
  included), so a lock is never left stale. Waiting or not is the caller's choice.

Standard library only: reports and the CLI import this without importing torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["CHUNK", "LockHeld", "atomic_write", "atomic_write_bytes", "atomic_write_text", "lock_file", "sha256_file"]

CHUNK = 1 << 20


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[Any]], Any], *, mode: str = "wb",
                 encoding: str | None = None) -> Path:
    """Create or replace ``path`` atomically with what ``write(fileobj)`` writes; return ``path``.

    ``write`` receives an open file (binary by default; ``mode="w"`` with ``encoding`` for text). Parent
    folders are created. The new file gets the permissions of a file created with ``open`` under the
    process umask (not ``tempfile``'s 0600), so results and caches are as readable as reports.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, mode, encoding=encoding) as fh:
            write(fh)
            fh.flush()
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _umask() -> int:
    """The process umask, read without changing it where the OS allows (``/proc`` on Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it, then put it back
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """:func:`atomic_write` of ``data``."""
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`atomic_write` of ``text`` in UTF-8."""
    return atomic_write(path, lambda fh: fh.write(text), mode="w", encoding="utf-8")


def sha256_file(path: str | os.PathLike[str], chunk_size: int = CHUNK) -> str:
    """Hex sha256 of a file, read in ``chunk_size`` chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


class LockHeld(BlockingIOError):
    """:func:`lock_file` with ``wait=False`` found the lock held by another process (or another open file)."""


@contextlib.contextmanager
def lock_file(path: str | os.PathLike[str], *, wait: bool = True) -> Iterator[int]:
    """Hold an exclusive lock on the file ``path`` (created if missing) for the ``with`` block; yield its fd.

    ``wait=True`` blocks until the lock is free; ``wait=False`` raises :class:`LockHeld` at once when it is
    held. Where ``fcntl`` does not exist (Windows), ``msvcrt.locking`` on the first byte is used. The lock
    file is left in place (removing a lock file another process may be waiting on is unsafe); closing the
    descriptor, here or by the process ending, releases the lock.

    Raises:
        LockHeld: ``wait=False`` and the lock is held.
        OSError: the lock file cannot be created or locked.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            import msvcrt

            while True:
                try:
                    msvcrt.locking(fd, msvcrt.LK_NBLCK if not wait else msvcrt.LK_LOCK, 1)
                    break
                except OSError as exc:  # LK_LOCK gives up after 10 s: keep waiting
                    if not wait:
                        raise LockHeld(f"{path} is locked") from exc
        else:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError as exc:
                raise LockHeld(f"{path} is locked") from exc
        yield fd
    finally:
        os.close(fd)
