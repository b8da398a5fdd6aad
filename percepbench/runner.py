"""The runner: the only place where metrics meet tasks.

For each task: prepare its items once; for each metric: feed the item images through the metric in
batches, keep every per-item distance, let the task score them (bootstrap CIs), and write the results
directory after every (task, metric) so that an interrupted run keeps what it finished.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

import percepbench
from percepbench.config import RunConfig
from percepbench.errors import DataError, UsageError
from percepbench.metrics_registry.base import DistanceMetric
from percepbench.registry import METRICS, TASKS
from percepbench.results import COMPARISON_COLUMNS, RESULTS_FILE, RunResults, records_frame, write_results
from percepbench.specs import MetricSpec, TaskSpec
from percepbench.weights import usable_offline

log = logging.getLogger("percepbench")


def git_sha() -> str | None:
    """Commit of the percepbench source tree, when it runs from a git checkout (editable install)."""
    src = Path(percepbench.__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    if out.returncode != 0 or not sha:
        return None
    dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=5, check=False).stdout.strip()
    return sha + ("-dirty" if dirty else "")


def resolve_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise UsageError(f"invalid device {device!r}: {exc}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} requested but CUDA is not available on this machine")
    return dev


def select_metrics(config: RunConfig) -> list[MetricSpec]:
    if config.metrics is None:
        return [s for s in METRICS.specs() if usable_offline(s)]
    return METRICS.select(config.metrics)


def default_out_dir() -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / stamp
    out, i = base, 1
    while out.exists():
        i += 1
        out = base.with_name(f"{stamp}-{i}")
    return out


def _check_out_dir(out: Path) -> None:
    if (out / RESULTS_FILE).exists():
        raise UsageError(f"{out} already holds a {RESULTS_FILE}; choose another --out (results are never overwritten)")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")


def _args_for(registry, spec_name: str, args: dict[str, dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for name, kv in args.items():
        if registry.resolve(name) == spec_name:
            merged.update(kv)
    return merged


def build_metric(spec: MetricSpec, config: RunConfig, device: torch.device) -> DistanceMetric:
    """Instantiate a metric once for the whole run, with its ``--metric-args``, on ``device``."""
    args = _args_for(METRICS, spec.name, config.metric_args)
    try:
        metric = spec.create(reduction="none", **args)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"metric {spec.name!r}: cannot build it with options {args}: {exc}") from exc
    if not isinstance(metric, DistanceMetric):
        raise TypeError(f"metric {spec.name!r} built a {type(metric).__name__}, not a DistanceMetric")
    return metric.to(device)


def build_task(spec: TaskSpec, config: RunConfig) -> Any:
    args = _args_for(TASKS, spec.name, config.task_args)
    try:
        return spec.create(**args)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"task {spec.name!r}: bad --task-args {args}: {exc}") from exc


def compare_metrics(task_name: str, task: Any, samples: list[pd.DataFrame], config: RunConfig
                    ) -> list[dict[str, Any]]:
    """Paired comparison of every two metrics scored on ``task`` (``task.compare``), per subset and pooled."""
    from percepbench.tasks.base import ALL_SUBSET

    frames = {f["metric"].iloc[0]: f.reset_index(drop=True) for f in samples
              if len(f) and f["task"].iloc[0] == task_name}
    names = list(frames)
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            fa, fb = frames[a], frames[b]
            subsets = list(pd.unique(fa["subset"]))
            groups = [(s, (fa["subset"] == s).to_numpy()) for s in subsets]
            if len(subsets) > 1:
                groups.append((ALL_SUBSET, np.ones(len(fa), dtype=bool)))
            for subset, mask in groups:
                r = task.compare(fa[mask], fb[mask], n_boot=config.n_boot, seed=config.seed)
                out.append({"task": task_name, "subset": str(subset), "measure": task.measure,
                            "metric_a": a, "metric_b": b, **r, "n": int(mask.sum())})
    return out


def weight_hashes(spec: MetricSpec) -> list[dict[str, Any]]:
    """Each weight file of a metric with the sha256 it was verified against (known or recorded)."""
    from percepbench.download import recorded_sha256
    from percepbench.weights import weight_path

    out = []
    for w in spec.weights:
        path = weight_path(w)
        out.append({"filename": w.filename, "path": str(path), "url": w.url,
                    "sha256": w.sha256 or (recorded_sha256(path) if path.is_file() else None)})
    return out


def compute_distances(metric: DistanceMetric, task: Any, spec: MetricSpec, config: RunConfig,
                      device: torch.device, desc: str) -> dict[str, np.ndarray]:
    """Per-item distance columns (``task.comparisons``) for one metric."""
    dataset = task.dataset(spec.inputs)
    workers = 0 if getattr(task, "in_memory", False) else config.num_workers
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda")
    columns: dict[str, list[torch.Tensor]] = {col: [] for col, _, _ in task.comparisons}
    with torch.inference_mode():
        for batch in tqdm(loader, desc=desc, unit="batch", disable=not config.progress, leave=False):
            for col, a, b in task.comparisons:
                d = metric.pairwise(batch[a].to(device, non_blocking=True), batch[b].to(device, non_blocking=True))
                columns[col].append(d.detach().float().reshape(-1).cpu())
    return {col: torch.cat(vals).numpy().astype(np.float64) for col, vals in columns.items()}


def run(config: RunConfig) -> RunResults:
    """Run every selected metric on every selected task and write the results directory."""
    task_specs: list[TaskSpec] = TASKS.select(config.tasks)
    metric_specs = select_metrics(config)
    if not metric_specs:
        raise UsageError("no metrics selected (none usable offline? see `percepbench list metrics`)")
    for name in config.metric_args:
        METRICS.resolve(name)
    for name in config.task_args:
        TASKS.resolve(name)
    device = resolve_device(config.device)
    out = Path(config.out) if config.out else default_out_dir()
    _check_out_dir(out)
    torch.manual_seed(config.seed)
    # build everything before any long work, so bad options fail fast (exit 2) and nothing is written
    tasks = [(tspec, build_task(tspec, config)) for tspec in task_specs]
    metrics = {mspec.name: build_metric(mspec, config, device) for mspec in metric_specs}

    meta: dict[str, Any] = {
        "percepbench_version": percepbench.__version__,
        "git_sha": git_sha(),
        "torch_version": torch.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "seed": config.seed,
        "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "finished": None,
        "config": config.to_dict() | {"out": str(out)},
        "metrics": {s.name: s.to_dict() for s in metric_specs},
        "weights": {s.name: weight_hashes(s) for s in metric_specs if s.weights},
        "tasks": {s.name: s.to_dict() for s in task_specs},
        "task_protocols": {},
        "protocol": [],
        "failed": [],
    }
    results = RunResults(meta=meta, records=records_frame([]), samples=None, complete=False, path=out)
    records: list[dict[str, Any]] = []
    samples: list[pd.DataFrame] = []

    comparisons: list[dict[str, Any]] = []

    def flush(complete: bool = False) -> None:
        results.records = records_frame(records)
        results.comparisons = pd.DataFrame(comparisons, columns=COMPARISON_COLUMNS)
        results.samples = pd.concat(samples, ignore_index=True) if samples else None
        results.complete = complete
        write_results(out, results)

    flush()
    for tspec, task in tasks:
        task.prepare(data_root=config.data_root, num_workers=config.num_workers, progress=config.progress,
                     seed=config.seed)
        meta["task_protocols"][tspec.name] = task.protocol()
        items = task.items.reset_index(drop=True)
        for mspec in metric_specs:
            t0 = time.perf_counter()
            try:
                metric = metrics[mspec.name]
                dists = compute_distances(metric, task, mspec, config, device, f"{tspec.name} · {mspec.name}")
            except Exception as exc:  # one broken metric must not lose the others' results
                meta["failed"].append({"task": tspec.name, "metric": mspec.name,
                                       "kind": "data" if isinstance(exc, DataError) else "failure",
                                       "error": f"{type(exc).__name__}: {exc}"})
                log.warning("%s on %s failed: %s: %s", mspec.name, tspec.name, type(exc).__name__, exc)
                if os.environ.get("PERCEPBENCH_DEBUG"):
                    traceback.print_exc()
                flush()
                continue
            frame = items.copy()
            for col, values in dists.items():
                frame[col] = values
            frame["score"] = task.item_scores(frame)
            frame.insert(0, "metric", mspec.name)
            frame.insert(0, "task", tspec.name)
            samples.append(frame)
            for rec in task.score(frame, seed=config.seed, n_boot=config.n_boot):
                records.append({"task": tspec.name, "metric": mspec.name, **rec})
            meta["protocol"].append({
                "task": tspec.name, "metric": mspec.name,
                "inputs": mspec.inputs.to_dict(),
                "resize": "native size" if mspec.inputs.size is None else
                          f"{mspec.inputs.size}x{mspec.inputs.size} {mspec.inputs.interpolation}",
                "scales_used": getattr(metric, "last_scales", None),
                "seconds": round(time.perf_counter() - t0, 3),
            })
            flush()
        comparisons.extend(compare_metrics(tspec.name, task, samples, config))
        flush()
    meta["finished"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    flush(complete=True)
    return results
