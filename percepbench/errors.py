"""Exception types. The CLI maps :class:`UsageError` and :class:`DataError` to exit code 2."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class PercepbenchError(Exception):
    """Base class for errors percepbench raises on purpose, with a message meant for users."""


class UsageError(PercepbenchError, ValueError):
    """A request that cannot be satisfied as written: unknown name, bad option, bad config file."""


class UnknownNameError(UsageError, KeyError):
    """A metric or task name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DataError(PercepbenchError, ValueError):
    """Input data (an image, a CSV, a results file) that is missing, unreadable or malformed."""


class WeightsError(PercepbenchError, RuntimeError):
    """Weight files that are missing, cannot be downloaded or fail verification."""


class OfflineError(WeightsError):
    """Weight files are needed but cannot be downloaded: offline mode is on, or the network failed.

    The message lists every file to place by hand with the URL to fetch it from; ``files`` holds the same
    as ``(path, url)`` pairs and ``reason`` says why nothing was downloaded.
    """

    def __init__(self, message: str, *, files: Sequence[tuple[Path, str]] = (), reason: str = ""):
        super().__init__(message)
        self.files: list[tuple[Path, str]] = list(files)
        self.reason = reason


class DiskFullError(WeightsError):
    """A write failed because the disk is full (``ENOSPC``); the message names the file being written."""


_WORKER_HEADER = "in DataLoader worker process"


def user_message(exc: BaseException) -> str:
    """``exc``'s message for people: an error raised in a ``DataLoader`` worker comes back from torch wrapped
    in "Caught X in DataLoader worker process N. Original Traceback ...": this returns the original one-line
    message instead (the same text as without workers)."""
    text = str(exc)
    if _WORKER_HEADER not in text or "Original Traceback" not in text:
        return text
    lines = [line for line in text.splitlines() if line.strip()]
    name = type(exc).__name__
    for i in range(len(lines) - 1, -1, -1):  # the exception line: "<module>.<Name>: message", maybe multi-line
        head = lines[i].split(":", 1)
        if len(head) == 2 and (head[0] == name or head[0].endswith("." + name)):
            return "\n".join([head[1].strip(), *lines[i + 1:]])
    return lines[-1].strip()
