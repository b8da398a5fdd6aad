"""The results schema: one ``results.json`` per run plus a per-item ``samples.parquet``.

``results.json``::

    {
      "schema": "percepbench-results",
      "schema_version": 1,
      "complete": true,               # false while a run is still going (or was interrupted)
      "meta": {                       # RunMeta, typed in percepbench.results_schema
        # environment
        "percepbench_version", "git_sha", "torch_version", "python", "platform",
        "device", "device_name", "cpu_model", "cpu_flags", "world_size",
        # timings (the seconds of each (task, metric) are in protocol[].seconds)
        "started", "finished",
        # settings and what ran
        "precision", "seed", "config", "metrics", "tasks", "weights", "random_weights",
        "task_protocols", "protocol", "failed"
      },
      "records": [{task, subset, metric, measure, value, ci_low, ci_high, n}, ...],
      "comparisons": [{task, subset, measure, metric_a, metric_b, diff, ci_low, ci_high, p_value, n}, ...],
      "samples": "samples.parquet"
    }

``meta.protocol`` holds one ``{task, metric, inputs, resize, scales_used, embedding, seconds}`` per
(task, metric) pair that produced records; ``meta.failed`` one ``{task, metric, kind, error}`` per pair that
failed (``kind`` is ``"data"`` for missing or unreadable data, ``"weights"`` for weight files that are missing
and could not be fetched, else ``"failure"``), and one whose ``metric`` is
``"(paired comparisons)"`` when comparing a task's metrics ended the run. The types of every key,
and the reading rules (absent keys read as empty, unknown keys kept), are in
:mod:`percepbench.results_schema`.

``comparisons`` pair every two metrics of a task on the same items (``diff`` = score of ``metric_a``
minus score of ``metric_b``, in the measure's units; paired bootstrap CI; sign-flip permutation p-value),
so "A beats B" is a tested claim. Files written before it existed read back with no comparisons.

Records are long-format, one row per (task, subset, metric, measure); pandas and seaborn read them as
they are. A task with several subsets also has a pooled record per (metric, measure) whose subset is
:data:`ALL` (``"all"``). ``samples.parquet`` holds one row per (task, metric, item) with the item's subset,
its label columns, the distances and the item's score, so every record can be recomputed without running
a model.

Both files are written atomically (:func:`percepbench.fileio.atomic_write`): an interrupted run leaves the
last complete state, never a truncated file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from percepbench.errors import DataError
from percepbench.fileio import atomic_write
from percepbench.results_schema import RunMeta, read_meta

SCHEMA = "percepbench-results"
SCHEMA_VERSION = 1
RESULTS_FILE = "results.json"
SAMPLES_FILE = "samples.parquet"
#: The subset name of a pooled record (every item of a task with several subsets).
ALL = "all"
RECORD_COLUMNS = ["task", "subset", "metric", "measure", "value", "ci_low", "ci_high", "n"]
COMPARISON_COLUMNS = ["task", "subset", "measure", "metric_a", "metric_b", "diff", "ci_low", "ci_high",
                      "p_value", "n"]
#: The columns that identify a row of ``samples.parquet``; every samples file also has ``score``.
SAMPLE_KEY_COLUMNS = ["task", "subset", "item", "metric"]


@dataclass
class RunResults:
    """A run's results in memory: metadata, long-format records and (optionally) per-item samples."""

    meta: RunMeta
    records: pd.DataFrame
    samples: pd.DataFrame | None = None
    complete: bool = True
    comparisons: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=COMPARISON_COLUMNS))
    path: Path | None = field(default=None, compare=False)


def records_frame(records: list[dict[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    """Records as a DataFrame with :data:`RECORD_COLUMNS` first; raises ``ValueError`` when one is missing."""
    df = pd.DataFrame(records)
    if df.empty:
        return pd.DataFrame(columns=RECORD_COLUMNS)
    missing = [c for c in RECORD_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"records lack columns {missing}")
    extra = [c for c in df.columns if c not in RECORD_COLUMNS]
    return df[RECORD_COLUMNS + extra]


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def write_results(out_dir: str | Path, results: RunResults) -> Path:
    """Write ``samples.parquet`` (if any) then ``results.json``, each atomically. Returns the JSON path."""
    out = Path(out_dir)
    records = records_frame(results.records)
    payload = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "complete": bool(results.complete),
        "meta": results.meta,
        "records": json.loads(records.to_json(orient="records")),
        "comparisons": json.loads(pd.DataFrame(results.comparisons, columns=COMPARISON_COLUMNS)
                                  .to_json(orient="records")),
        "samples": SAMPLES_FILE if results.samples is not None else None,
    }
    text = json.dumps(payload, indent=2, default=_json_default, allow_nan=True)
    if results.samples is not None:
        samples = results.samples
        atomic_write(out / SAMPLES_FILE, lambda fh: samples.to_parquet(fh, index=False))
    atomic_write(out / RESULTS_FILE, lambda fh: fh.write(text + "\n"), mode="w", encoding="utf-8")
    return out / RESULTS_FILE


def load_results(path: str | Path, *, samples: bool = True) -> RunResults:
    """Read a run directory (or its ``results.json``). Raises :class:`DataError` naming the file.

    ``meta`` comes back as :class:`~percepbench.results_schema.RunMeta` (checked, absent keys filled:
    :func:`~percepbench.results_schema.read_meta`); ``samples=False`` skips reading ``samples.parquet``.
    """
    p = Path(path)
    json_path = p / RESULTS_FILE if p.is_dir() else p
    if not json_path.is_file():
        raise DataError(f"{json_path}: no such results file")
    try:
        payload = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{json_path}: not a readable results file ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("schema") != SCHEMA:
        raise DataError(f"{json_path}: not a percepbench results file (schema {payload.get('schema')!r})"
                        if isinstance(payload, dict) else f"{json_path}: not a percepbench results file")
    version = payload.get("schema_version")
    if version != SCHEMA_VERSION:
        raise DataError(
            f"{json_path}: results schema version {version!r} is not supported by this percepbench "
            f"(reads version {SCHEMA_VERSION})"
        )
    meta = read_meta(payload.get("meta"), str(json_path))
    try:
        records = records_frame(payload.get("records") or [])
        comparisons = pd.DataFrame(payload.get("comparisons") or [], columns=COMPARISON_COLUMNS)
    except ValueError as exc:
        raise DataError(f"{json_path}: {exc}") from exc
    sample_df = None
    if samples and payload.get("samples"):
        sample_path = json_path.parent / payload["samples"]
        try:
            sample_df = pd.read_parquet(sample_path)
        except Exception as exc:  # pyarrow raises several types
            raise DataError(f"{sample_path}: cannot read per-item samples ({exc})") from exc
        missing = [c for c in [*SAMPLE_KEY_COLUMNS, "score"] if c not in sample_df.columns]
        if missing:
            raise DataError(f"{sample_path}: per-item samples lack columns {missing}")
    return RunResults(
        meta=meta,
        records=records,
        samples=sample_df,
        complete=bool(payload.get("complete", False)),
        comparisons=comparisons,
        path=json_path.parent,
    )
