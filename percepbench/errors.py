"""Exception types. The CLI maps :class:`UsageError` and :class:`DataError` to exit code 2."""

from __future__ import annotations


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
