"""The run directory of ``percepbench run``: one run at a time, and the files percepbench owns in it.

- :func:`lock_run_dir` holds :func:`percepbench.fileio.lock_file` on ``<out>/.lock`` for the life of a run. It does
  not wait: a second run into the same directory fails at once with a :class:`~percepbench.errors.UsageError`
  naming the process that holds it (its pid is written in the lock file). The operating system releases the
  lock when the holding process ends in any way, ``kill -9`` included, so a lock is never left stale; on a
  normal exit (an exception included) the lock file is also removed. On Windows ``msvcrt.locking`` takes
  the place of ``flock`` (untested there). ``flock`` on a network file system may lock only within one
  machine.
- :func:`remove_run_files` removes what a run and its default report wrote (``--overwrite``), and nothing
  else.
- :func:`settings_differences` lists the settings that must match for ``--resume`` to continue a run.

Standard library only.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from percepbench.embedding_store import SCRATCH_DIR
from percepbench.errors import UsageError
from percepbench.fileio import LockHeld, lock_file
from percepbench.results import RESULTS_FILE, SAMPLES_FILE

LOCK_FILE = ".lock"
#: The settings a resumed run must share with the run it continues: they decide every record.
RESUME_KEYS = ("metrics", "tasks", "metric_args", "task_args", "seed", "precision", "n_boot", "resize", "resize_for")


def _holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="ascii", errors="replace")[:64].strip()
    except OSError:
        text = ""
    return f"pid {text}" if text.isdigit() else "pid unknown"


@contextlib.contextmanager
def lock_run_dir(out: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold an exclusive lock on the existing directory ``out`` (``<out>/.lock``) for the ``with`` block.

    Raises :class:`UsageError` at once, without waiting, when another process (or another open of the
    lock in this process) holds it: ``"<out> is in use by another percepbench run (pid N)"``.
    """
    folder = Path(out)
    path = folder / LOCK_FILE
    while True:
        held = contextlib.ExitStack()
        try:
            fd = held.enter_context(lock_file(path, wait=False))
        except LockHeld:
            raise UsageError(f"{folder} is in use by another percepbench run ({_holder(path)}); wait for it to "
                             "end or choose another --out") from None
        except OSError as exc:
            raise UsageError(f"{path}: cannot lock the run directory ({exc.strerror or exc})") from exc
        # The previous holder removes the file when it ends; if that happened between our open and our lock,
        # we hold a lock on a removed file: open the file that is there now and lock again.
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(os.fstat(fd), current):
            break
        held.close()
    with held:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        try:
            yield path
        finally:
            with contextlib.suppress(OSError):  # removed while still locked, so no other run can lock it meanwhile
                path.unlink()


#: Markdown image links of ``report.md`` (``![title](name.png)``): the figure files the report wrote.
_FIGURE_LINK = re.compile(r"\]\(([^()\s/\\]+)\.(png|svg|pdf)\)")


def remove_run_files(out: str | os.PathLike[str]) -> list[Path]:
    """Remove the files percepbench wrote in the run directory ``out``; return the paths removed.

    Removed: ``results.json`` (first, so that the folder never holds a results file whose samples are
    gone), ``samples.parquet``, the temporary files an interrupted atomic write of either leaves
    (``.results.json.*.tmp``, ``.samples.parquet.*.tmp``), and in ``report/`` the report's
    ``report.html``, ``report.md`` and the figure files ``report.md`` links (each in every figure format);
    ``report/`` itself when nothing else is left in it; the embedding matrices an interrupted retrieval run
    left in ``.scratch/`` (:mod:`percepbench.embedding_store`), and the folder when it is then empty. Every
    other file stays.
    """
    from percepbench.reports.build import HTML_FILE, MARKDOWN_FILE, REPORT_DIR
    from percepbench.reports.figures import FORMATS

    folder = Path(out)
    targets = [folder / RESULTS_FILE, folder / SAMPLES_FILE]
    for name in (RESULTS_FILE, SAMPLES_FILE):
        targets += sorted(folder.glob(f".{name}.*.tmp"))
    report = folder / REPORT_DIR
    if report.is_dir():
        try:
            text = (report / MARKDOWN_FILE).read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = ""
        stems = dict.fromkeys(m.group(1) for m in _FIGURE_LINK.finditer(text))
        targets += [report / f"{stem}.{fmt}" for stem in stems for fmt in FORMATS]
        targets += [report / HTML_FILE, report / MARKDOWN_FILE]
    scratch = folder / SCRATCH_DIR
    if scratch.is_dir():
        targets += sorted(scratch.glob("*.npy"))
    removed = []
    for path in targets:
        if path.is_file() or path.is_symlink():
            path.unlink()
            removed.append(path)
    if scratch.is_dir():
        with contextlib.suppress(OSError):
            scratch.rmdir()
    if report.is_dir():
        with contextlib.suppress(OSError):  # not empty: the user's files stay, and so does the folder
            report.rmdir()
    return removed


def _canonical(value: Any) -> Any:
    """``value`` as JSON reads it back (tuples as lists), so settings compare equal across a results file."""
    return json.loads(json.dumps(value, default=str))


def settings_differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``"<key> <recorded> there, <current> now"`` for each of :data:`RESUME_KEYS` whose values differ.

    ``metrics`` and ``tasks`` are compared as sets of resolved names (the order of a selection does not
    change a record); the other keys as JSON values.
    """
    out = []
    for key in RESUME_KEYS:
        was, now = _canonical(recorded.get(key)), _canonical(current.get(key))
        same = sorted(was or []) == sorted(now or []) if key in ("metrics", "tasks") else was == now
        if not same:
            out.append(f"{key} {was!r} there, {now!r} now")
    return out
