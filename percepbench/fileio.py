"""Small file helpers every other module uses: one atomic write, one file hash.

- :func:`atomic_write` writes a file through a temporary name in the same folder and ``os.replace``
  (atomic on POSIX and Windows), so a reader sees the old content or the new one, never half of it, and an
  interrupted write leaves no stray file under the final name. The temporary file is removed on any error.
- :func:`sha256_file` hashes a file in 1 MiB chunks (constant memory on files of any size).

Standard library only: reports and the CLI import this without importing torch.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["CHUNK", "atomic_write", "atomic_write_bytes", "atomic_write_text", "sha256_file"]

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
