"""The results schema: one ``results.json`` per run plus a per-item ``samples.parquet``.

``results.json``::

    {
      "schema": "percepbench-results",
      "schema_version": 1,
      "complete": true,               # false while a run is still going (or was interrupted)
      "meta": {percepbench_version, git_sha, torch_version, python, platform, device, seed,
               started, finished, config, metrics: {name: spec}, tasks: {name: spec},
               protocol: [{task, metric, ...}], skipped: [{task, metric, reason}]},
      "records": [{task, subset, metric, measure, value, ci_low, ci_high, n}, ...],
      "comparisons": [{task, subset, measure, metric_a, metric_b, diff, ci_low, ci_high, p_value, n}, ...],
      "samples": "samples.parquet"
    }

``comparisons`` pair every two metrics of a task on the same items (``diff`` = score of ``metric_a``
minus score of ``metric_b``, in the measure's units; paired bootstrap CI; sign-flip permutation p-value),
so "A beats B" is a tested claim. Files written before it existed read back with no comparisons.

Records are long-format, one row per (task, subset, metric, measure); pandas and seaborn read them as
they are. ``samples.parquet`` holds one row per (task, metric, item) with the distances, the label and
the item's score, so every record can be recomputed without running a model.

Both files are written atomically (temporary file + ``os.replace``): an interrupted run leaves the last
complete state, never a truncated file.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from percepbench.errors import DataError

SCHEMA = "percepbench-results"
SCHEMA_VERSION = 1
RESULTS_FILE = "results.json"
SAMPLES_FILE = "samples.parquet"
RECORD_COLUMNS = ["task", "subset", "metric", "measure", "value", "ci_low", "ci_high", "n"]
COMPARISON_COLUMNS = ["task", "subset", "measure", "metric_a", "metric_b", "diff", "ci_low", "ci_high",
                      "p_value", "n"]
SAMPLE_KEY_COLUMNS = ["task", "subset", "item", "metric"]


@dataclass
class RunResults:
    """A run's results in memory: metadata, long-format records and (optionally) per-item samples."""

    meta: dict[str, Any]
    records: pd.DataFrame
    samples: pd.DataFrame | None = None
    complete: bool = True
    comparisons: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=COMPARISON_COLUMNS))
    path: Path | None = field(default=None, compare=False)


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def records_frame(records: list[dict[str, Any]] | pd.DataFrame) -> pd.DataFrame:
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
    if results.samples is not None:
        _atomic_write(out / SAMPLES_FILE, lambda tmp: results.samples.to_parquet(tmp, index=False))
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
    _atomic_write(out / RESULTS_FILE, lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"))
    return out / RESULTS_FILE


def load_results(path: str | Path, *, samples: bool = True) -> RunResults:
    """Read a run directory (or its ``results.json``). Raises :class:`DataError` naming the file."""
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
    try:
        records = records_frame(payload.get("records") or [])
    except ValueError as exc:
        raise DataError(f"{json_path}: {exc}") from exc
    sample_df = None
    if samples and payload.get("samples"):
        sample_path = json_path.parent / payload["samples"]
        try:
            sample_df = pd.read_parquet(sample_path)
        except Exception as exc:  # pyarrow raises several types
            raise DataError(f"{sample_path}: cannot read per-item samples ({exc})") from exc
    return RunResults(
        meta=payload.get("meta") or {},
        records=records,
        samples=sample_df,
        complete=bool(payload.get("complete", False)),
        comparisons=pd.DataFrame(payload.get("comparisons") or [], columns=COMPARISON_COLUMNS),
        path=json_path.parent,
    )
