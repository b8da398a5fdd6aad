"""The runner: the only place where metrics meet tasks.

For each task: prepare its items once; for each metric: feed the item images through the metric in
batches, keep every per-item distance, let the task score them (bootstrap CIs), and write the results
directory after every (task, metric) so that an interrupted run keeps what it finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
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


def resolve_num_workers(num_workers: int | None, device: torch.device) -> int:
    """``num_workers``, or the automatic choice: 0 on the CPU, ``min(8, cores - 1)`` otherwise."""
    if num_workers is not None:
        return int(num_workers)
    if device.type == "cpu":
        return 0
    return max(0, min(8, (os.cpu_count() or 1) - 1))


_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def precision_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for ``precision`` ``bf16``/``fp16`` on ``device``; nothing for ``fp32``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in _AUTOCAST_DTYPES:
        raise UsageError(f"precision must be one of fp32, {', '.join(_AUTOCAST_DTYPES)}, got {precision!r}")
    if not torch.amp.is_autocast_available(device.type):
        raise UsageError(f"precision {precision!r}: torch has no autocast for device {str(device)!r}; use fp32")
    return torch.autocast(device.type, dtype=_AUTOCAST_DTYPES[precision])


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
    dataset = task.dataset(task.inputs_for(spec.inputs))
    workers = 0 if getattr(task, "in_memory", False) else resolve_num_workers(config.num_workers, device)
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=False, num_workers=workers,
                        pin_memory=device.type == "cuda")
    columns: dict[str, list[torch.Tensor]] = {col: [] for col, _, _ in task.comparisons}
    with torch.inference_mode(), precision_context(device, config.precision):
        for batch in tqdm(loader, desc=desc, unit="batch", disable=not config.progress, leave=False):
            for col, a, b in task.comparisons:
                d = metric.pairwise(batch[a].to(device, non_blocking=True), batch[b].to(device, non_blocking=True))
                columns[col].append(d.detach().float().reshape(-1).cpu())
    return {col: torch.cat(vals).numpy().astype(np.float64) for col, vals in columns.items()}


def _embedding_path_usable(metric: DistanceMetric, task: Any, spec: MetricSpec) -> bool:
    return bool(getattr(metric, "embeds", False)) and spec.inputs.size is not None and task.image_paths() is not None


def compute_distances_from_embeddings(
    metric: DistanceMetric, task: Any, spec: MetricSpec, config: RunConfig, device: torch.device, desc: str,
    *, file_hashes: dict[str, str],
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Per-item distance columns for an embedding metric on a file-based task.

    Each unique image file is embedded once (NIGHTS references, BAPPS patches shared across comparisons);
    with the on-disk cache on, images already embedded under the same metric fingerprint are read from it
    and new embeddings are added to it. ``file_hashes`` (path -> sha256) is shared across the metrics of a
    task so each file is hashed once per run. Returns the columns and counts for the protocol.
    """
    from percepbench.embed_cache import EmbeddingCache, default_root, hash_files, metric_fingerprint

    per_item = task.image_paths()
    unique = list(dict.fromkeys(p for row in per_item for p in row))
    index = {p: i for i, p in enumerate(unique)}
    slot_of = {slot: k for k, slot in enumerate(task.slots)}
    embeddings: list[np.ndarray | None] = [None] * len(unique)
    stats: dict[str, Any] = {"unique_images": len(unique), "image_references": sum(len(r) for r in per_item),
                             "from_cache": 0, "embedded": 0, "cache": None}
    cache = None
    if config.embed_cache is not False:
        todo = [p for p in unique if p not in file_hashes]
        if todo:
            try:
                workers = max(4, resolve_num_workers(config.num_workers, device))
                file_hashes.update(zip(todo, hash_files(todo, workers=workers), strict=True))
            except OSError as exc:
                raise DataError(f"{getattr(exc, 'filename', None) or exc}: cannot read image file ({exc})") from exc
        memo = getattr(metric, "_percepbench_fingerprint", None)  # hashing the weights once per run is enough
        if memo is None:
            memo = metric_fingerprint(metric, spec, _args_for(METRICS, spec.name, config.metric_args),
                                      precision=config.precision)
            metric._percepbench_fingerprint = memo
        fingerprint, description = memo
        root = Path(config.embed_cache) if config.embed_cache else default_root()
        cache = EmbeddingCache(root, fingerprint, description)
        stats["cache"] = str(cache.dir)
        for i, p in enumerate(unique):
            embeddings[i] = cache.get(file_hashes[p])
        stats["from_cache"] = sum(e is not None for e in embeddings)
    missing = [i for i, e in enumerate(embeddings) if e is None]
    if missing:
        dataset = task.image_dataset([unique[i] for i in missing], task.inputs_for(spec.inputs))
        loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=False,
                            num_workers=resolve_num_workers(config.num_workers, device),
                            pin_memory=device.type == "cuda")
        pos = 0
        with torch.inference_mode(), precision_context(device, config.precision):
            for batch in tqdm(loader, desc=f"{desc} (embed)", unit="batch", disable=not config.progress, leave=False):
                emb = metric.embed_images(batch.to(device, non_blocking=True)).float().cpu().numpy()
                for row in emb:
                    i = missing[pos]
                    embeddings[i] = row
                    if cache is not None:
                        cache.put(file_hashes[unique[i]], row)
                    pos += 1
        stats["embedded"] = len(missing)
    if cache is not None:
        stats["corrupt_entries_replaced"] = cache.corrupt
    dims = {e.shape[0] for e in embeddings}  # type: ignore[union-attr]
    if len(dims) > 1:
        raise RuntimeError(f"{spec.name}: embeddings of different sizes {sorted(dims)}")
    table = torch.from_numpy(np.stack(embeddings)) if embeddings else torch.empty(0, 0)
    idx = torch.tensor([[index[p] for p in row] for row in per_item], dtype=torch.long).reshape(len(per_item), -1)
    columns: dict[str, np.ndarray] = {}
    with torch.inference_mode():
        for col, a, b in task.comparisons:
            out = []
            for start in range(0, len(per_item), 4096):
                ea = table[idx[start:start + 4096, slot_of[a]]].to(device)
                eb = table[idx[start:start + 4096, slot_of[b]]].to(device)
                out.append(metric.embedding_distance(ea, eb).float().reshape(-1).cpu())
            columns[col] = (torch.cat(out) if out else torch.empty(0)).numpy().astype(np.float64)
    return columns, stats


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
    precision_context(device, config.precision)  # unsupported precision/device: fail before writing anything
    config = dataclasses.replace(config, num_workers=resolve_num_workers(config.num_workers, device))
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
        "precision": config.precision,
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
        file_hashes: dict[str, str] = {}
        for mspec in metric_specs:
            t0 = time.perf_counter()
            embedding_stats = None
            try:
                metric = metrics[mspec.name]
                desc = f"{tspec.name} · {mspec.name}"
                if _embedding_path_usable(metric, task, mspec):
                    dists, embedding_stats = compute_distances_from_embeddings(
                        metric, task, mspec, config, device, desc, file_hashes=file_hashes)
                else:
                    dists = compute_distances(metric, task, mspec, config, device, desc)
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
            loaded = task.inputs_for(mspec.inputs)
            meta["protocol"].append({
                "task": tspec.name, "metric": mspec.name,
                "inputs": loaded.to_dict(),
                "resize": ("native size" if loaded.size is None else
                           f"{loaded.size}x{loaded.size} {loaded.interpolation}")
                          + (" (the task's official protocol)" if loaded != mspec.inputs else ""),
                "scales_used": getattr(metric, "last_scales", None),
                "embedding": embedding_stats,
                "seconds": round(time.perf_counter() - t0, 3),
            })
            flush()
        comparisons.extend(compare_metrics(tspec.name, task, samples, config))
        flush()
    meta["finished"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    flush(complete=True)
    return results
