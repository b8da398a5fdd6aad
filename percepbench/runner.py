"""The runner: the only place where metrics meet tasks.

For each task: prepare its items once; for each metric: feed the item images through the metric in
batches, keep every per-item distance, check that every one is finite (a NaN or infinite distance fails
the pair: :func:`check_finite_distances`), let the task score them (bootstrap CIs), and write the results
directory after every (task, metric) so that an interrupted run keeps what it finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

import percepbench
from percepbench import distributed
from percepbench.config import RunConfig, resize_for_pair
from percepbench.cpu_info import cpu_flags, cpu_model, precision_advice
from percepbench.embedding_store import SCRATCH_DIR, EmbeddingMatrix
from percepbench.errors import DataError, PercepbenchError, UsageError, WeightsError, user_message
from percepbench.metrics_registry.base import DistanceMetric
from percepbench.prefetch import read_ahead
from percepbench.registry import METRICS, TASKS
from percepbench.results import (
    ALL,
    COMPARISON_COLUMNS,
    RESULTS_FILE,
    RunResults,
    load_results,
    records_frame,
    write_results,
)
from percepbench.results_schema import EmbeddingStats, Environment, Failure, ProtocolEntry, RunMeta
from percepbench.rundir import lock_run_dir, remove_run_files, settings_differences
from percepbench.specs import InputConvention, MetricSpec, TaskSpec
from percepbench.weights import usable_offline

if TYPE_CHECKING:
    # For the type checker only: importing percepbench.tasks.base at run time imports the package
    # percepbench.tasks, whose __init__ registers every benchmark, and the core never imports tasks (the
    # registry loads a task's module when its spec is created). Every task the runner gets is built by a
    # TaskSpec and follows this interface.
    from percepbench.tasks.base import Task

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


def environment(device: torch.device) -> Environment:
    """Where a run runs: versions, platform, the device and its name, the host CPU (``meta``)."""
    cpu = cpu_model()
    if device.type == "cuda":
        name: str | None = torch.cuda.get_device_name(device)
    else:
        name = cpu if device.type == "cpu" else None
    return {
        "percepbench_version": percepbench.__version__,
        "git_sha": git_sha(),
        "torch_version": torch.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": str(device),
        "device_name": name,
        "cpu_model": cpu,
        "cpu_flags": cpu_flags(),
        "world_size": distributed.world_size(),
    }


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
    """``torch.autocast`` for ``precision`` ``bf16``/``fp16`` on ``device``; nothing for ``fp32`` and ``int8``
    (dynamic quantisation changes the model, not the arithmetic context: :func:`build_metric`)."""
    if precision == "int8":
        if device.type != "cpu":
            raise UsageError(f"precision 'int8' (dynamic int8 quantisation) runs on the CPU only, not on "
                             f"{str(device)!r}; use bf16 or fp16 there")
        return contextlib.nullcontext()
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
    """``runs/<YYYYmmdd-HHMMSS>`` in the working directory, ``-2``, ``-3``… appended while the name is taken."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / stamp
    out, i = base, 1
    while out.exists():
        i += 1
        out = base.with_name(f"{stamp}-{i}")
    return out


#: The metric of a ``meta.failed`` entry for a failure while comparing the metrics of a task.
PAIRED_COMPARISONS = "(paired comparisons)"


def _quiet_libraries() -> None:
    """``--quiet``: no progress bars from the libraries percepbench calls either (Hugging Face datasets)."""
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"  # read by datasets when it is imported
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()


def _check_run_options(config: RunConfig) -> None:
    """The options :func:`run` checks itself: seed, ``resume``/``overwrite`` (which need ``out``)."""
    for name in ("resume", "overwrite"):
        if not isinstance(getattr(config, name), bool):
            raise UsageError(f"{name} must be true or false, got {getattr(config, name)!r}")
    if config.resume and config.overwrite:
        raise UsageError("--resume and --overwrite exclude each other: continue the run in --out, or replace it")
    for name, purpose in (("resume", "continue"), ("overwrite", "replace")):
        if getattr(config, name) and not config.out:
            raise UsageError(f"--{name} needs --out: the run directory to {purpose}")
    seed = config.seed
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise UsageError(f"seed must be an integer from 0 to 2**32 - 1, got {seed!r}")


def _make_out_dir(out: Path | None) -> Path:
    """Create the run directory: ``out`` (and its parents; it may exist already), or with ``out`` None a new
    :func:`default_out_dir`, claimed by creating it (two runs started in the same second get two)."""
    while True:
        target = out if out is not None else default_out_dir()
        try:
            target.mkdir(parents=True, exist_ok=out is not None)
        except FileExistsError:
            if out is None:
                continue  # another run took this name since default_out_dir() looked
            raise UsageError(f"--out {out} exists and is not a directory") from None
        except OSError as exc:
            raise UsageError(f"{target}: cannot create the run directory ({exc.strerror or exc})") from exc
        return target


def _previous_run(out: Path, config: RunConfig, settings: dict[str, Any]) -> RunResults | None:
    """What the results already in ``out`` mean for this run; reads, never writes.

    None when there are none, or with ``overwrite`` (they are removed once the run holds the directory).
    With ``resume``: the previous results, when the settings that decide records match
    (:func:`percepbench.rundir.settings_differences`; else a :class:`UsageError` naming each key). Without
    either flag, a :class:`UsageError`: results are replaced only on request.
    """
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    if not (out / RESULTS_FILE).exists() or config.overwrite:
        return None
    if not config.resume:
        raise UsageError(f"{out} already holds a {RESULTS_FILE}: continue that run with --resume, replace its "
                         "results with --overwrite, or choose another --out")
    try:
        previous = load_results(out)
    except DataError as exc:
        raise DataError(f"{exc}; --resume cannot continue it (--overwrite replaces it)") from exc
    meta = previous.meta
    recorded = {**meta["config"], "metrics": list(meta["metrics"]), "tasks": list(meta["tasks"]),
                "seed": meta["seed"], "precision": meta["precision"], "resize": meta["config"].get("resize")}
    differences = settings_differences(recorded, settings)
    if differences:
        raise UsageError(f"--resume: the run in {out} was made with other settings: {'; '.join(differences)}. "
                         "Resume with the settings it was made with, or use --overwrite or another --out")
    return previous


def _finished_pairs(previous: RunResults | None
                    ) -> dict[tuple[str, str], tuple[list[dict[str, Any]], pd.DataFrame, ProtocolEntry]]:
    """The (task, metric) pairs a previous run finished: a protocol entry, records and samples, each kept as
    the previous run wrote it. A pair that lacks any of the three is not finished (it runs again)."""
    if previous is None or previous.samples is None:
        return {}
    records, samples = previous.records, previous.samples
    out = {}
    for entry in previous.meta["protocol"]:
        task, metric = entry["task"], entry["metric"]
        recs = records[(records["task"] == task) & (records["metric"] == metric)]
        rows = samples[(samples["task"] == task) & (samples["metric"] == metric)]
        if len(recs) and len(rows):
            out[(task, metric)] = (recs.to_dict("records"), rows.reset_index(drop=True), entry)
    return out


def _prepare_task(tspec: TaskSpec, task: Task, config: RunConfig) -> None:
    """``task.prepare`` (reads or builds its items). A ``ValueError`` or ``TypeError`` becomes a
    :class:`UsageError` and an ``OSError`` a :class:`DataError`, each naming the task; percepbench's own
    errors (:class:`DataError`, :class:`UsageError`, weights errors) pass as they are."""
    try:
        task.prepare(data_root=config.data_root, num_workers=config.num_workers, progress=config.progress,
                     seed=config.seed)
    except PercepbenchError:
        raise
    except (ValueError, TypeError) as exc:
        raise UsageError(f"task {tspec.name!r}: cannot prepare its items: {exc}") from exc
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        raise DataError(f"task {tspec.name!r}: {where}cannot read its data ({exc.strerror or exc})") from exc


def attach_matcher(tspec: TaskSpec, task: Task, config: RunConfig, device: torch.device) -> None:
    """For a task that generates its items with a metric's help (``attr_contests`` with ``match_by``): build
    that metric here, where metrics meet tasks, and hand the task ``matcher(a, b) -> float``, the metric's
    distance between two float (H, W, 3) images in [0, 1]."""
    name = getattr(task, "match_by", None)
    if not name:
        return
    spec = METRICS.get(METRICS.resolve(name))
    metric = build_metric(spec, config, device)

    def matcher(a: np.ndarray, b: np.ndarray) -> float:
        ta, tb = (torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)).permute(2, 0, 1)[None].to(device)
                  for v in (a, b))
        with torch.inference_mode():
            return float(metric.pairwise(ta, tb).float().reshape(-1)[0])

    task.matcher = matcher


def _args_for(registry, spec_name: str, args: dict[str, dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for name, kv in args.items():
        if registry.resolve(name) == spec_name:
            merged.update(kv)
    return merged


def random_weight_metrics(metric_specs: list[MetricSpec], config: RunConfig) -> list[str]:
    """The metrics of a run built with ``pretrained=false``: random weights, not the published metric (labelled
    so in the printed table, ``results.json``, the reports and ``compare``)."""
    return [s.name for s in metric_specs
            if _args_for(METRICS, s.name, config.metric_args).get("pretrained", s.kwargs.get("pretrained")) is False]


def check_metric_options(spec: MetricSpec, config: RunConfig) -> None:
    """:class:`UsageError` naming an option the metric does not take, with "did you mean" and its options."""
    from percepbench.config import TORCHMETRICS_OPTIONS, check_options

    check_options("metric", spec.name, spec.load(), _args_for(METRICS, spec.name, config.metric_args),
                  hidden=TORCHMETRICS_OPTIONS | {"reduction"})


def build_metric(spec: MetricSpec, config: RunConfig, device: torch.device) -> DistanceMetric:
    """Instantiate a metric once for the whole run, with its ``--metric-args``, on ``device``."""
    args = _args_for(METRICS, spec.name, config.metric_args)
    check_metric_options(spec, config)
    try:
        metric = spec.create(reduction="none", **args)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"metric {spec.name!r}: cannot build it with options {args}: {exc}") from exc
    if not isinstance(metric, DistanceMetric):
        raise TypeError(f"metric {spec.name!r} built a {type(metric).__name__}, not a DistanceMetric")
    metric = metric.to(device)
    if metric.computes_in(config.precision) == "int8":
        metric.quantize_int8()
    if config.compile and metric.embeds:
        metric.compile_embedding()
    if args:  # options the user set: a value the metric rejects (ssim:sigma=0) fails now, before anything runs
        side = max(spec.inputs.size or 64, spec.inputs.min_size, 16)
        probe = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0)).to(device)
        try:
            with torch.inference_mode():
                metric.pairwise(probe, probe.flip(-1))
        except (ValueError, TypeError, RuntimeError) as exc:
            raise UsageError(f"metric {spec.name!r} with options {args} fails on a test pair of "
                             f"{side}x{side} images: {exc}") from exc
    return metric


def build_task(spec: TaskSpec, config: RunConfig) -> Task:
    from percepbench.config import check_options

    args = _args_for(TASKS, spec.name, config.task_args)
    check_options("task", spec.name, spec.load(), args)
    try:
        return spec.create(**args)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"task {spec.name!r}: bad --task-args {args}: {exc}") from exc


def compare_metrics(task_name: str, task: Task, samples: list[pd.DataFrame], config: RunConfig
                    ) -> list[dict[str, Any]]:
    """Paired comparison of every two metrics scored on ``task`` (``task.compare``), per subset and pooled."""
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
                groups.append((ALL, np.ones(len(fa), dtype=bool)))
            measures = getattr(task, "measures", None) or [task.measure]
            for subset, mask in groups:
                for measure in measures:
                    extra = {"measure": measure} if len(measures) > 1 or measure != task.measure else {}
                    r = task.compare(fa[mask], fb[mask], n_boot=config.n_boot, seed=config.seed, **extra)
                    if r is None:  # the measure is not defined on this subset (an analysis' reference pairs)
                        continue
                    out.append({"task": task_name, "subset": str(subset), "measure": measure,
                                "metric_a": a, "metric_b": b, **r, "n": int(mask.sum())})
    return out


def weight_hashes(spec: MetricSpec, metric: Any = None) -> list[dict[str, Any]]:
    """Each weight file of a metric with the sha256 it is verified against: the known one, else the one
    recorded at download (None when neither exists). Files shipped in an installed package (LPIPS heads,
    DISTS alpha/beta) are listed too, with their path inside the package ("" when it is not installed)
    and ``url`` the package's page. With the built ``metric``: only the files it used
    (``metric.weight_files_used``; ``pretrained=false`` uses none, or only the shipped ones), plus the
    files of ``metric.extra_weight_files`` (``{filename, path, url, sha256}``: a ``checkpoint=`` folder)."""
    from percepbench.download import recorded_sha256
    from percepbench.errors import WeightsError
    from percepbench.weights import weight_path

    used = getattr(metric, "weight_files_used", None)
    out = []
    for w in spec.weights:
        if used is not None and w.filename not in used:
            continue
        try:
            path = weight_path(w)
        except WeightsError:  # shipped in a package that is not installed: the metric cannot run
            out.append({"filename": w.filename, "path": "", "url": w.url, "sha256": w.sha256})
            continue
        out.append({"filename": w.filename, "path": str(path), "url": w.url,
                    "sha256": w.sha256 or (recorded_sha256(path) if path.is_file() else None)})
    # files the user pointed the metric at (a trained DreamSim checkpoint: adapter or head, with sha256)
    out.extend(dict(f) for f in (getattr(metric, "extra_weight_files", None) or []))
    return out


class NonFiniteDistances(ValueError):
    """Some distances of a (task, metric) pair are NaN or infinite: the pair is failed, never scored."""


#: How many item ids a :class:`NonFiniteDistances` message names before "... (N in all)".
SHOWN_ITEMS = 5


def check_finite_distances(columns: dict[str, np.ndarray], items: pd.DataFrame, *, metric: str, precision: str,
                           computed_in: str) -> None:
    """Raise :class:`NonFiniteDistances` when a distance column holds NaN or an infinity.

    The message names the metric, how many items are affected per column, the first :data:`SHOWN_ITEMS`
    item ids (``items["item"]``, row-aligned with the columns) and the likely cause: the autocast precision
    when the metric computed in ``bf16``/``fp16`` (``computed_in``), else the input images or the metric.
    """
    bad = np.zeros(len(items), dtype=bool)
    counts = []
    for col, values in columns.items():
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        nan, inf = int(np.isnan(v).sum()), int(np.isinf(v).sum())
        if nan or inf:
            counts.append(f"{col}: " + ", ".join(f"{k} {word}" for k, word in ((nan, "NaN"), (inf, "infinite")) if k))
            bad |= ~np.isfinite(v)
    if not bad.any():
        return
    ids = [str(i) for i in items["item"].to_numpy()[bad]]
    shown = ", ".join(ids[:SHOWN_ITEMS]) + (f", ... ({len(ids)} in all)" if len(ids) > SHOWN_ITEMS else "")
    if computed_in != "fp32":
        cause = (f"the metric computed under --precision {computed_in} (torch.autocast), where its arithmetic "
                 f"can overflow or lose the precision it needs: rerun it with --precision fp32, or list only "
                 "the precisions it supports in its spec (MetricSpec.precisions) so that it computes in fp32")
    else:
        asked = "" if precision == "fp32" else f" (the run asked for {precision}, which its spec does not list)"
        cause = (f"the metric computed in precision fp32{asked}, so the cause is in the input images (for "
                 "example flat or constant images where it divides by zero) or in the metric itself")
    raise NonFiniteDistances(
        f"{metric}: {bad.sum()} of {bad.size} items have a non-finite distance ({'; '.join(counts)}): items "
        f"{shown}; not scored (a NaN or infinite distance has no order). Likely cause: {cause}")


def compute_distances(metric: DistanceMetric, task: Task, spec: MetricSpec, config: RunConfig,
                      device: torch.device, desc: str) -> dict[str, np.ndarray] | None:
    """Per-item distance columns (``task.comparisons``) for one metric.

    Under ``torchrun`` each rank computes the items of its shard (:func:`percepbench.distributed.sharded`, by
    item id) and rank 0 gets every column back in the order of ``task.items``; the other ranks get None.
    """
    dataset = task.dataset(loaded_inputs(task, spec, config))
    workers = 0 if getattr(task, "in_memory", False) else resolve_num_workers(config.num_workers, device)
    items = task.items.reset_index(drop=True)

    def shard(positions: np.ndarray) -> tuple[dict[str, np.ndarray], None]:
        part = dataset if len(positions) == len(dataset) else Subset(dataset, positions.tolist())
        loader = DataLoader(part, batch_size=config.batch_size, shuffle=False, num_workers=workers,
                            pin_memory=device.type == "cuda")
        # written in place: keeping each batch's small result tensor alive between the large transient
        # image buffers fragments the heap, and the process grew ~70 KB per triplet (1.1 GB at 20,000;
        # docs/benchmarks/memory_scale.md)
        columns = {col: np.empty(len(part), dtype=np.float64) for col, _, _ in task.comparisons}
        done = 0
        with torch.inference_mode(), precision_context(device, config.precision):
            # without worker processes, a thread decodes the next batch while this one computes (when the
            # metric's work is worth overlapping: percepbench.prefetch.read_ahead)
            batches = read_ahead(loader, depth=1 if workers == 0 else 0)
            for batch in tqdm(batches, total=len(loader), desc=desc, unit="batch", disable=not config.progress,
                              leave=False):
                n = 0
                for col, a, b in task.comparisons:
                    d = metric.pairwise(batch[a].to(device, non_blocking=True),
                                        batch[b].to(device, non_blocking=True))
                    values = d.detach().float().reshape(-1).cpu().numpy()
                    n = len(values)
                    columns[col][done:done + n] = values
                done += n
        if done != len(part):
            raise RuntimeError(f"{desc}: the loader gave {done} items, expected {len(part)}")
        return columns, None

    ids = [f"{s}/{i}" for s, i in zip(items["subset"].astype(str), items["item"].astype(str), strict=True)]
    gathered = distributed.sharded(ids, shard, check=_weights_digest(metric), what="items")
    return None if gathered is None else gathered[0]


def loaded_inputs(task: Task, spec: MetricSpec, config: RunConfig) -> InputConvention:
    """How ``task`` loads images for metric ``spec``: the metric's fixed size when it has one; else the size
    ``--resize`` gives this pair (bicubic; :func:`percepbench.config.resize_for_pair`: the metric's entry,
    the task's, the run-wide size); else the task's own choice (``task.inputs_for``: BAPPS' official 64 px,
    a retrieval task's ``size=``) or the files at native size."""
    size, _ = _resize_setting(task, spec, config)
    if size is not None:
        return dataclasses.replace(spec.inputs, size=size, interpolation="bicubic")
    return task.inputs_for(spec.inputs)


def _resize_setting(task: Task, spec: MetricSpec, config: RunConfig) -> tuple[int | None, str]:
    """(size, the setting that asked for it) from ``--resize`` for a metric without a fixed size, else (None, "")."""
    if spec.inputs.size is not None:
        return None, ""
    return resize_for_pair(config, getattr(task.spec, "name", "") or "", spec.name)


def _embedding_path_usable(metric: DistanceMetric, task: Task, spec: MetricSpec) -> bool:
    return bool(getattr(metric, "embeds", False)) and spec.inputs.size is not None and task.image_paths() is not None


def _weights_digest(metric: DistanceMetric) -> str:
    """Under ``torchrun``: a digest of the metric's parameters and buffers (computed once per run), which every
    rank must share; "" in a single process."""
    if not distributed.active():
        return ""
    memo = getattr(metric, "_percepbench_state_sha", None)
    if memo is None:
        from percepbench.embed_cache import state_hash

        memo = metric._percepbench_state_sha = state_hash([metric])
    return memo


def _cache_for(metric: DistanceMetric, spec: MetricSpec, config: RunConfig) -> Any:
    """The metric's on-disk embedding cache (its fingerprint computed once per run), or None when off."""
    from percepbench.embed_cache import EmbeddingCache, default_root, metric_fingerprint

    if config.embed_cache is False:
        return None
    memo = getattr(metric, "_percepbench_fingerprint", None)  # hashing the weights once per run is enough
    if memo is None:
        memo = metric_fingerprint(metric, spec, _args_for(METRICS, spec.name, config.metric_args),
                                  precision=metric.computes_in(config.precision))
        metric._percepbench_fingerprint = memo
    fingerprint, description = memo
    root = Path(config.embed_cache) if config.embed_cache else default_root()
    return EmbeddingCache(root, fingerprint, description)


def embed_files(metric: DistanceMetric, task: Task, spec: MetricSpec, config: RunConfig, device: torch.device,
                desc: str, paths: list[str], store: EmbeddingMatrix, *, file_hashes: dict[str, str],
                image_references: int | None = None) -> tuple[EmbeddingStats, list[int]]:
    """Embed every file of ``paths`` (unique) into ``store`` row by row; return the counts and the rows whose
    embedding is not finite.

    With the on-disk cache on, files already embedded under the same metric fingerprint (which includes the
    precision the metric computes in) are read from it and new finite embeddings are added to it.
    ``file_hashes`` (path -> sha256) is shared across the metrics of a task so each file is hashed once per
    run. Images are streamed through a ``DataLoader`` and each batch is written to ``store`` at once, so
    memory does not grow with the number of files.
    """
    from percepbench.embed_cache import hash_files

    stats: EmbeddingStats = {"unique_images": len(paths),
                             "image_references": len(paths) if image_references is None else image_references,
                             "from_cache": 0, "embedded": 0, "cache": None}
    cache = _cache_for(metric, spec, config)
    missing = list(range(len(paths)))
    if cache is not None:
        todo = [p for p in paths if p not in file_hashes]
        if todo:
            try:
                workers = max(4, resolve_num_workers(config.num_workers, device))
                file_hashes.update(zip(todo, hash_files(todo, workers=workers), strict=True))
            except OSError as exc:
                raise DataError(f"{getattr(exc, 'filename', None) or exc}: cannot read image file ({exc})") from exc
        stats["cache"] = str(cache.dir)
        missing = []
        for i, p in enumerate(paths):
            row = cache.get(file_hashes[p], store.dim)
            if row is None:
                missing.append(i)
            else:
                store.put([i], row[None, :])
        stats["from_cache"] = len(paths) - len(missing)
    bad: list[int] = []
    if missing:
        dataset = task.image_dataset([paths[i] for i in missing], loaded_inputs(task, spec, config))
        workers = resolve_num_workers(config.num_workers, device)
        loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=False, num_workers=workers,
                            pin_memory=device.type == "cuda")
        pos = 0
        with torch.inference_mode(), precision_context(device, config.precision):
            batches = read_ahead(loader, depth=1 if workers == 0 else 0)  # decode ahead in a thread
            for batch in tqdm(batches, total=len(loader), desc=f"{desc} (embed)", unit="batch",
                              disable=not config.progress, leave=False):
                emb = metric.embed_images(batch.to(device, non_blocking=True)).float().cpu().numpy()
                rows = missing[pos:pos + len(emb)]
                store.put(rows, emb)
                finite = np.isfinite(emb).all(axis=1)
                for i, row, ok in zip(rows, emb, finite, strict=True):
                    if not ok:
                        bad.append(i)
                    elif cache is not None:  # a NaN embedding is never cached
                        cache.put(file_hashes[paths[i]], row)
                pos += len(emb)
        stats["embedded"] = len(missing)
    if cache is not None:
        stats["corrupt_entries_replaced"] = cache.corrupt
    return stats, bad


def compute_distances_from_embeddings(
    metric: DistanceMetric, task: Task, spec: MetricSpec, config: RunConfig, device: torch.device, desc: str,
    *, file_hashes: dict[str, str],
) -> tuple[dict[str, np.ndarray], EmbeddingStats] | tuple[None, None]:
    """Per-item distance columns for an embedding metric on a file-based task.

    Each unique image file is embedded once (:func:`embed_files`: NIGHTS references, BAPPS patches shared
    across comparisons, through the on-disk cache), then every comparison is an ``embedding_distance``
    between rows of the embedding matrix. Returns the columns and counts for the protocol.

    Under ``torchrun`` each rank embeds the unique images of its shard (:func:`percepbench.distributed.sharded`,
    by path; each through the shared embedding cache) and rank 0 gathers the embeddings by path and
    computes the distances; the other ranks return ``(None, None)``.
    """
    per_item = task.image_paths()
    unique = list(dict.fromkeys(p for row in per_item for p in row))
    index = {p: i for i, p in enumerate(unique)}
    slot_of = {slot: k for k, slot in enumerate(task.slots)}
    references = sum(len(r) for r in per_item)

    def shard(positions: np.ndarray) -> tuple[dict[str, np.ndarray], EmbeddingStats]:
        part = EmbeddingMatrix(len(positions))
        counts, _ = embed_files(metric, task, spec, config, device, desc, [unique[i] for i in positions], part,
                                file_hashes=file_hashes, image_references=references)
        return {"embedding": np.asarray(part.finish()) if len(positions) else np.zeros((0, 0), np.float32)}, counts

    gathered = distributed.sharded(unique, shard, check=_weights_digest(metric), what="images")
    if gathered is None:
        return None, None
    rows, counts = gathered
    stats = _merged_counts(counts, len(unique))
    table = torch.from_numpy(rows["embedding"]) if unique else torch.empty(0, 0)
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


def _merged_counts(counts: list[EmbeddingStats], unique_images: int) -> EmbeddingStats:
    """The embedding counts of every rank (one entry in a single process) as one run's counts."""
    stats: EmbeddingStats = {**counts[0], "unique_images": unique_images}
    for key in ("from_cache", "embedded", "corrupt_entries_replaced"):
        if key in stats:
            stats[key] = sum(c.get(key, 0) for c in counts)  # type: ignore[literal-required]
    return stats


# ------------------------------------------------------------------------------------ set-level (retrieval)


def embedding_space(metric: DistanceMetric) -> str | None:
    """How the metric's ``embedding_distance`` maps onto a faiss index: ``"cosine"`` for the default
    ``1 - cosine`` (and metrics that declare ``embedding_space = "cosine"``), ``"l2"`` when declared, else
    None (the search then brute-forces ``embedding_distance`` itself)."""
    declared = getattr(metric, "embedding_space", None)
    if declared in ("cosine", "l2"):
        return declared
    if type(metric).embedding_distance is DistanceMetric.embedding_distance:
        return "cosine"
    return None


def ranks_with_embeddings(metric: DistanceMetric, task: Task, spec: MetricSpec) -> bool:
    """Whether a set-level task ranks with this metric's embeddings (else query x gallery distances)."""
    return bool(getattr(metric, "embeds", False)) and spec.inputs.size is not None


def _non_finite(what: str, metric: str, ids: list[str], precision: str) -> NonFiniteDistances:
    shown = ", ".join(ids[:SHOWN_ITEMS]) + (f", ... ({len(ids)} in all)" if len(ids) > SHOWN_ITEMS else "")
    cause = ("the autocast precision (rerun with --precision fp32)" if precision != "fp32" else
             "the input images (for example flat images) or the metric itself")
    return NonFiniteDistances(f"{metric}: {len(ids)} {what} non-finite: {shown}; a NaN or infinite value has no "
                              f"order, so the ranking is not scored. Likely cause: {cause}")


def rank_gallery(metric: DistanceMetric, task: Task, spec: MetricSpec, config: RunConfig, device: torch.device,
                 desc: str, *, file_hashes: dict[str, str], scratch: Path
                 ) -> tuple[np.ndarray, np.ndarray, EmbeddingStats | None, dict[str, Any]] | None:
    """The top-``task.k`` gallery positions and distances of every query of a set-level task.

    Embedding metrics: every image of the task embedded once (:func:`embed_files`, into a memory-mapped
    matrix in ``scratch``), then :func:`percepbench.search.search` (faiss, exact by default, re-ranked with
    the metric's ``embedding_distance``; ties by image id). Other metrics: :func:`rank_pairwise`.
    Returns ``(positions, distances, embedding stats or None, search info)``.

    Under ``torchrun`` each rank embeds the images of its shard (by path, through the shared embedding cache;
    in memory, so ranks need no shared scratch folder) and rank 0 gathers the embeddings by path and searches
    (the search is cheap next to the embedding); pairwise metrics shard the queries. Ranks other than 0 return
    None.
    """
    from percepbench.search import search

    computed_in = metric.computes_in(config.precision)
    if not ranks_with_embeddings(metric, task, spec):
        return rank_pairwise(metric, task, spec, config, device, desc)
    paths = task.image_files()
    with contextlib.ExitStack() as stack:
        def shard(positions: np.ndarray) -> tuple[dict[str, np.ndarray], tuple[EmbeddingStats, list[str]]]:
            # one process: a memory-mapped matrix in the run's scratch folder, so a large gallery is never
            # held in memory; a rank: its shard in memory, sent to rank 0
            whole = not distributed.active()
            store = EmbeddingMatrix(len(positions), scratch / f"{uuid.uuid4().hex}.npy" if whole else None)
            stack.callback(store.close)
            mine = [paths[i] for i in positions]
            counts, bad = embed_files(metric, task, spec, config, device, desc, mine, store, file_hashes=file_hashes)
            return {"embedding": store.finish()}, (counts, [mine[i] for i in bad])

        gathered = distributed.sharded(paths, shard, check=_weights_digest(metric), what="images")
        if gathered is None:
            return None
        columns, extras = gathered
        bad_paths = [p for _, bad in extras for p in bad]
        if bad_paths:
            raise _non_finite("image embeddings are", spec.name, sorted(bad_paths), computed_in)
        stats = _merged_counts([counts for counts, _ in extras], len(paths))
        matrix = columns.get("embedding", np.zeros((len(paths), 0), dtype=np.float32))
        space = embedding_space(metric)
        options = task.search

        def distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return metric.embedding_distance(a.to(metric.device), b.to(metric.device))

        result = search(_Rows(matrix, task.query_images), _Rows(matrix, task.gallery_images), task.k,
                        distance=distance, space=space, exclude=task.self_in_gallery, index=options["index"],
                        nprobe=options["nprobe"], ef_search=options["ef_search"], device=device,
                        seed=config.seed, progress=config.progress, desc=f"{desc} (search)")
    if not np.isfinite(result.distances).all():
        rows = np.flatnonzero(~np.isfinite(result.distances).all(axis=1))
        raise _non_finite("queries have distances that are", spec.name,
                          [str(task.items["item"].iloc[i]) for i in rows], computed_in)
    info = dict(result.info)
    if distributed.active():
        info["embedded_by_ranks"] = distributed.world_size()
    return result.positions, result.distances, stats, info


class _Rows:
    """Rows ``rows`` of a (memory-mapped) matrix, indexed like an array of ``len(rows)`` rows."""

    def __init__(self, matrix: np.ndarray, rows: np.ndarray) -> None:
        self.matrix, self.rows = matrix, np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self.matrix[self.rows[key]])


def _held_images(task: Task, positions: np.ndarray, inputs: Any) -> torch.Tensor:
    dataset = task.image_dataset([task.images["path"].iloc[int(i)] for i in positions], inputs)
    return torch.stack([dataset[i] for i in range(len(dataset))])


def rank_pairwise(metric: DistanceMetric, task: Task, spec: MetricSpec, config: RunConfig, device: torch.device,
                  desc: str) -> tuple[np.ndarray, np.ndarray, None, dict[str, Any]] | None:
    """Top-k by evaluating the metric on every (query, gallery image) pair, for metrics without embeddings.

    Queries are held in memory in blocks of at most :data:`HELD_IMAGES` images; for each block the gallery
    images are streamed through a ``DataLoader`` and every (query, gallery) pair is evaluated in batches of
    ``--batch-size`` pairs. The Q x G distance matrix (at most ``max_pairs`` values, checked before the run
    by :func:`check_pair_limits`) is ranked with ties broken by image id.

    Under ``torchrun`` each rank ranks the queries of its shard (by query id) against the whole gallery and
    rank 0 gathers the top-k rows by id; the other ranks return None.
    """
    from percepbench.search import tie_key

    t0 = time.perf_counter()
    inputs = loaded_inputs(task, spec, config)
    queries, gallery = task.query_images, task.gallery_images
    ng = len(gallery)
    gallery_data = task.image_dataset(task.images["path"].to_numpy()[gallery].tolist(), inputs)
    workers = resolve_num_workers(config.num_workers, device)
    query_ids = [str(i) for i in task.items["item"]]

    def shard(rows: np.ndarray) -> tuple[dict[str, np.ndarray], list[str]]:
        nq = len(rows)
        dist = np.empty((nq, ng), dtype=np.float64)
        bar = tqdm(total=nq * ng, desc=f"{desc} (pairs)", unit="pair", unit_scale=True,
                   disable=not config.progress, leave=False)
        with torch.inference_mode(), precision_context(device, config.precision):
            for qs in range(0, nq, HELD_IMAGES):
                held = _held_images(task, queries[rows[qs:qs + HELD_IMAGES]], inputs).to(device)
                h = held.shape[0]
                loader = DataLoader(gallery_data, batch_size=max(1, config.batch_size), shuffle=False,
                                    num_workers=workers, pin_memory=device.type == "cuda")
                gs = 0
                for batch in loader:
                    batch = batch.to(device, non_blocking=True)
                    b = batch.shape[0]
                    a_idx = torch.arange(h, device=device).repeat_interleave(b)
                    b_idx = torch.arange(b, device=device).repeat(h)
                    out = []
                    for s in range(0, h * b, max(1, config.batch_size)):
                        sl = slice(s, s + max(1, config.batch_size))
                        d = metric.pairwise(held[a_idx[sl]], batch[b_idx[sl]])
                        out.append(d.detach().float().reshape(-1).cpu())
                    dist[qs:qs + h, gs:gs + b] = torch.cat(out).numpy().reshape(h, b)
                    gs += b
                    bar.update(h * b)
        bar.close()
        own = task.self_in_gallery[rows]
        bad = ~np.isfinite(dist)
        bad[np.flatnonzero(own >= 0), own[own >= 0]] = False
        dist[np.flatnonzero(own >= 0), own[own >= 0]] = np.inf  # leave-one-out
        order = np.lexsort((np.broadcast_to(np.arange(ng), dist.shape), tie_key(dist)), axis=1)[:, :task.k]
        return ({"positions": order, "distances": np.take_along_axis(dist, order, axis=1)},
                [query_ids[rows[i]] for i in np.flatnonzero(bad.any(axis=1))])

    gathered = distributed.sharded(query_ids, shard, check=_weights_digest(metric), what="queries")
    if gathered is None:
        return None
    columns, bad_queries = gathered
    bad_ids = [q for part in bad_queries for q in part]
    if bad_ids:
        order = {q: i for i, q in enumerate(query_ids)}
        raise _non_finite("queries have distances that are", spec.name, sorted(bad_ids, key=order.__getitem__),
                          metric.computes_in(config.precision))
    nq = len(queries)
    info = {"backend": "pairwise (the metric on every query x gallery pair)", "index": "exact",
            "queries": nq, "gallery": ng, "k": task.k, "pairs": nq * ng,
            "seconds": round(time.perf_counter() - t0, 3)}
    if distributed.active():
        info["queries_sharded_over_ranks"] = distributed.world_size()
    positions = columns.get("positions", np.zeros((nq, min(task.k, ng)), dtype=np.int64))
    distances = columns.get("distances", np.zeros((nq, min(task.k, ng)), dtype=np.float64))
    return positions, distances, None, info


#: how ``meta.protocol`` labels a load size a task fixed for native-size metrics (unless it has ``resize_note``)
OFFICIAL_LOAD = "the task's official protocol"
#: query images a pairwise ranking holds in memory at once
HELD_IMAGES = 256
#: pairs timed to estimate how long a refused pairwise ranking would take
_PROBE_PAIRS = 8


def _pairs_per_second(metric: DistanceMetric, size: int, device: torch.device, config: RunConfig) -> float:
    """Measured throughput of ``metric.pairwise`` on random images of ``size`` (one warm-up, one timed batch)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (_PROBE_PAIRS, 3, size, size), dtype=torch.uint8, generator=gen).to(device)
    b = torch.randint(0, 256, (_PROBE_PAIRS, 3, size, size), dtype=torch.uint8, generator=gen).to(device)
    with torch.inference_mode(), precision_context(device, config.precision):
        metric.pairwise(a, b)
        t0 = time.perf_counter()
        metric.pairwise(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - t0
    return _PROBE_PAIRS / max(elapsed, 1e-9)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} days"


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _download_size(metric_names: list[str]) -> str:
    """``"about 1.2 GB"`` for the missing weight files of these metrics (``"size unknown"`` when a file's size
    is not declared: upstream publishes no size for it)."""
    from percepbench.weights import cache_dir, is_present

    files = {w.filename: w for name in metric_names for w in METRICS.get(name).weights
             if w.cache != "package" and not is_present(w, cache_dir())}
    if not files:
        return "size unknown"
    known = sum(w.size for w in files.values() if w.size)
    unknown = sum(1 for w in files.values() if not w.size)
    text = f"{len(files)} file(s), about {known / 1e9:.2f} GB" if known >= 1e8 else \
        f"{len(files)} file(s), about {known / 1e6:.0f} MB"
    return text + (f" plus {unknown} of unknown size" if unknown and known else "") if known else \
        f"{len(files)} file(s) of unpublished size"


def check_prerequisites(missing: list[tuple[str, str, str, PercepbenchError]], ready: list[tuple[TaskSpec, Task]],
                        metrics: dict[str, DistanceMetric], config: RunConfig
                        ) -> list[tuple[str, str, str, PercepbenchError]]:
    """Say every missing prerequisite (weight files, datasets) in one message; return the ones the run skips.

    With nothing missing: nothing. With ``config.strict``, or when nothing at all could run: raise the one
    message (:class:`DataError` when only data is missing, exit 2; else :class:`WeightsError`, exit 1).
    Otherwise: log it as a warning and return the missing items; the run scores every other pair and
    records these pairs in ``meta.failed`` (kind ``"weights"`` or ``"data"``).
    """
    if not missing:
        return []
    lines = []
    for kind, title in (("weights", "metrics (or a task's matching metric) whose weight files are missing"),
                        ("data", "tasks whose data is missing or unreadable")):
        items = [(name, exc) for k, _, name, exc in missing if k == kind]
        if items:
            lines.append(f"{len(items)} {title}:")
            for name, exc in items:
                body = str(exc).strip().replace("\n", "\n      ")
                lines.append(f"  - {name}: {body}")
    weight_names = [name for kind, role, name, _ in missing if kind == "weights" and role == "metric"]
    if weight_names:
        lines.append(f"Fetch every missing weight file with: percepbench weights download {' '.join(weight_names)}"
                     f" ({_download_size(weight_names)}; each file's URL and place are listed above, to fetch "
                     "by hand when offline)")
    selection = []
    if weight_names:
        selection += ["-m", ",".join(weight_names)]
    data_tasks = [name for kind, role, name, _ in missing if kind == "data" and role == "task"]
    if data_tasks:
        selection += ["-t", ",".join(data_tasks)]
    if selection:
        root = ["--data-root", str(config.data_root)] if config.data_root and data_tasks else []
        lines.append(f"Or fetch all of it at once: {shlex.join(['percepbench', 'fetch', *selection, *root])}")
    message = "\n".join(lines)
    nothing_runs = not ready or not metrics
    if config.strict or nothing_runs:
        why = ("--strict: nothing was run" if config.strict else
               "no (task, metric) pair can run without them")
        error_type = DataError if all(kind == "data" for kind, _, _, _ in missing) else WeightsError
        raise error_type(f"prerequisites missing ({why}):\n{message}")
    log.warning("prerequisites missing: the other (task, metric) pairs run, these are recorded as failed "
                "(--strict stops instead):\n%s", message)
    return missing


def _skipped_pairs(skipped: list[tuple[str, str, str, PercepbenchError]], task_specs: list[TaskSpec],
                   metric_specs: list[MetricSpec]) -> list[Failure]:
    """One ``meta.failed`` entry per (task, metric) pair a missing prerequisite keeps from running."""
    found: dict[tuple[str, str], Failure] = {}
    for kind, role, name, exc in skipped:
        pairs = [(name, m.name) for m in metric_specs] if role == "task" else [(t.name, name) for t in task_specs]
        for task, metric in pairs:
            found.setdefault((task, metric), {"task": task, "metric": metric,
                                              "kind": "data" if kind == "data" else "weights",
                                              "error": f"{type(exc).__name__}: {_first_line(exc)}"})
    return [found[(t.name, m.name)] for t in task_specs for m in metric_specs if (t.name, m.name) in found]


def check_pair_limits(tasks: list[tuple[TaskSpec, Task]], metric_specs: list[MetricSpec],
                      metrics: dict[str, DistanceMetric], config: RunConfig, device: torch.device) -> None:
    """Refuse, before anything runs, every (set-level task, metric without embeddings) whose query x gallery
    distance evaluations exceed the task's ``max_pairs``: one :class:`UsageError` listing each with its
    count, the limit, the estimated time (measured on a few random pairs on this device) and the option
    that raises the limit."""
    problems = []
    for tspec, task in tasks:
        if not getattr(task, "set_level", False):
            continue
        pairs = task.pair_count()
        if pairs <= task.max_pairs:
            continue
        for mspec in metric_specs:
            metric = metrics[mspec.name]
            if ranks_with_embeddings(metric, task, mspec):
                continue
            size = loaded_inputs(task, mspec, config).size or 224
            rate = _pairs_per_second(metric, size, device, config)
            problems.append(f"{mspec.name} on {tspec.name}: {pairs:,} query x gallery distance evaluations "
                            f"({len(task.query_images):,} queries x {len(task.gallery_images):,} gallery images) "
                            f"exceed the limit max_pairs={task.max_pairs:,}; at {rate:,.0f} pairs/s measured on "
                            f"{device} ({size}x{size}) that is about {_duration(pairs / rate)}")
    if problems:
        names = sorted({p.split(" on ", 1)[1].split(":", 1)[0] for p in problems})
        raise UsageError(
            "metrics without embeddings rank a gallery by evaluating every (query, gallery image) pair, and "
            "these runs are too large:\n  " + "\n  ".join(problems) + "\nUse fewer queries or a smaller "
            f"gallery (--task-args {names[0]}:queries=N,gallery=N), an embedding metric, or raise the limit "
            f"with --task-args {names[0]}:max_pairs=N")


def run(config: RunConfig, *, finish: Callable[[RunResults], Any] | None = None) -> RunResults:
    """Run every selected metric on every selected task and write the results directory.

    First everything that can fail before a metric runs is checked, and nothing is written when it fails:
    the options and names, the device and precision, what ``out`` already holds (:func:`_previous_run`), and
    every task is built and prepared (its data read) and every metric built. Then the run directory is
    created and locked for the life of the run (:func:`percepbench.rundir.lock_run_dir`: a second run into
    it fails at once; an existing directory is locked before the tasks are prepared). With ``overwrite``
    the previous results are removed (:func:`percepbench.rundir.remove_run_files`); with ``resume`` the
    (task, metric) pairs the previous run finished are kept as written, the others run, and the results are
    those of an uninterrupted run. An exception that ends the run once the directory exists is recorded in
    ``meta.failed`` (its task and metric, or :data:`PAIRED_COMPARISONS` as the metric) before it propagates.
    ``finish``, when given, is called with the finished results while the directory is still locked (the
    command line builds the report there); what it raises propagates and is not recorded in the results.

    Under ``torchrun`` (:mod:`percepbench.distributed`): every rank checks the options, prepares the tasks
    and builds the metrics; rank 0 alone creates, locks and writes the run directory and calls ``finish``;
    the items (pairwise metrics) or unique images (embedding metrics) of each pair are sharded by id across
    the ranks and gathered by id on rank 0, which scores them; retrieval tasks run on rank 0 alone. The
    other ranks return results that were never written (no records).
    """
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
    if device.type == "cpu" and (advice := precision_advice(config.precision)) and distributed.is_main():
        log.warning(advice)
    if distributed.launched() and not distributed.is_main():
        config = dataclasses.replace(config, progress=False)  # one set of progress bars: rank 0's
    if not config.progress:
        _quiet_libraries()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    config = dataclasses.replace(config, num_workers=resolve_num_workers(config.num_workers, device))
    _check_run_options(config)
    settings = {"metrics": [s.name for s in metric_specs], "tasks": [s.name for s in task_specs],
                "metric_args": config.metric_args, "task_args": config.task_args, "seed": config.seed,
                "precision": config.precision, "n_boot": config.n_boot, "resize": config.resize,
                "resize_for": config.resize_for}
    requested = Path(config.out) if config.out else None
    with contextlib.ExitStack() as stack:
        device = stack.enter_context(distributed.session(device))  # torchrun: this rank's device
        main = distributed.is_main()  # only rank 0 touches the run directory
        locked = main and requested is not None and requested.is_dir()
        found: dict[str, RunResults | None] = {}

        def check_out_dir() -> None:  # on rank 0; an error there stops every rank (broadcast_from_main)
            if locked:  # a run going on there fails this one now, not after its data is read
                stack.enter_context(lock_run_dir(requested))
            found["previous"] = _previous_run(requested, config, settings) if requested is not None else None

        distributed.broadcast_from_main(check_out_dir)
        previous = found.get("previous")
        torch.manual_seed(config.seed)
        # build and prepare everything before any long work, so bad options and bad data fail fast (exit 2)
        # and nothing is written
        tasks = [(tspec, build_task(tspec, config)) for tspec in task_specs]
        for mspec in metric_specs:  # a misspelt metric option fails now, not after the tasks' data is read
            check_metric_options(mspec, config)
        missing: list[tuple[str, str, str, PercepbenchError]] = []  # (kind, "task"/"metric", its name, why)
        ready: list[tuple[TaskSpec, Task]] = []
        for tspec, task in tasks:
            try:
                attach_matcher(tspec, task, config, device)
                _prepare_task(tspec, task, config)
            except (DataError, WeightsError) as exc:  # everything missing is gathered, then said at once
                missing.append(("data" if isinstance(exc, DataError) else "weights", "task", tspec.name, exc))
                continue
            ready.append((tspec, task))
        metrics: dict[str, DistanceMetric] = {}
        for mspec in metric_specs:
            try:
                metrics[mspec.name] = build_metric(mspec, config, device)
            except WeightsError as exc:
                missing.append(("weights", "metric", mspec.name, exc))
        skipped = check_prerequisites(missing, ready, metrics, config)
        tasks = ready
        runnable = [m for m in metric_specs if m.name in metrics]
        check_pair_limits(tasks, runnable, metrics, config, device)
        distributed.agree(([t.name for t, _ in tasks], [m.name for m in runnable]),
                          "the (task, metric) pairs they can run (tasks, metrics)")

        def claim_out_dir() -> tuple[Path, list[tuple[str, str]]]:
            nonlocal previous
            out = _make_out_dir(requested)
            if not locked:
                stack.enter_context(lock_run_dir(out))
                if requested is not None:  # another run may have written there while this one prepared
                    previous = _previous_run(out, config, settings)
            if config.overwrite:
                remove_run_files(out)
            shutil.rmtree(out / SCRATCH_DIR, ignore_errors=True)  # what an interrupted run of this directory left
            return out, list(_finished_pairs(previous))

        # rank 0 claims the directory; every rank learns where it is and which pairs a resumed run keeps
        out, kept_pairs = distributed.broadcast_from_main(claim_out_dir)

        meta: RunMeta = {
            **environment(device),
            "started": (previous.meta["started"] if previous is not None and previous.meta["started"] else
                        _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")),
            "finished": None,
            "precision": config.precision,
            "seed": config.seed,
            "config": config.to_dict() | {"out": str(out)},
            "metrics": {s.name: s.to_dict() for s in metric_specs},
            "tasks": {s.name: s.to_dict() for s in task_specs},
            "weights": {name: files for name, files in
                        ((s.name, weight_hashes(s, metrics.get(s.name))) for s in metric_specs if s.weights)
                        if files},
            "random_weights": random_weight_metrics(metric_specs, config),
            "task_protocols": {tspec.name: task.protocol() for tspec, task in tasks},
            "protocol": [],
            "failed": [],
        }
        finished = _finished_pairs(previous) if main else {pair: ([], pd.DataFrame(), None) for pair in kept_pairs}
        meta["failed"] += [f for f in _skipped_pairs(skipped, task_specs, metric_specs)
                           if (f["task"], f["metric"]) not in finished]
        results = RunResults(meta=meta, records=records_frame([]), samples=None, complete=False, path=out)
        position: dict[str, str | None] = {"task": None, "metric": None}
        try:
            _score(config, device, tasks, runnable, metrics, results, finished, position)
        except Exception as exc:
            if position["task"] is not None:
                failure: Failure = {"task": position["task"], "metric": position["metric"] or PAIRED_COMPARISONS,
                                    "kind": "data" if isinstance(exc, DataError) else "failure",
                                    "error": f"{type(exc).__name__}: {user_message(exc)}"}
                meta["failed"].append(failure)
                if main:
                    with contextlib.suppress(Exception):  # the results as of the last finished pair, and why it ended
                        write_results(out, results)
            raise
        if finish is not None and main:
            finish(results)
        return results


def _score(config: RunConfig, device: torch.device, tasks: list[tuple[TaskSpec, Task]],
           metric_specs: list[MetricSpec], metrics: dict[str, DistanceMetric], results: RunResults,
           finished: dict[tuple[str, str], tuple[list[dict[str, Any]], pd.DataFrame, ProtocolEntry | None]],
           position: dict[str, str | None]) -> RunResults:
    """The scoring loop of :func:`run`, in its locked run directory ``results.path``.

    ``finished`` holds the pairs a resumed run keeps (:func:`_finished_pairs`): they are in the results
    from the first write, and every write puts records, samples and protocol entries in the order of an
    uninterrupted run (tasks, then metrics, as selected). ``position`` is set to the (task, metric) at work.
    """
    out = results.path
    meta = results.meta
    pairs = [(tspec.name, mspec.name) for tspec, _ in tasks for mspec in metric_specs]
    order = {pair: i for i, pair in enumerate(pairs)}
    records: list[dict[str, Any]] = []
    samples: list[pd.DataFrame] = []
    for kept_records, kept_samples, kept_entry in finished.values():
        if kept_entry is None:  # another rank under torchrun: it knows which pairs are kept, rank 0 keeps them
            continue
        records.extend(kept_records)
        samples.append(kept_samples)
        meta["protocol"].append(kept_entry)

    comparisons: list[dict[str, Any]] = []

    def in_run_order() -> None:
        def rank(task: Any, metric: Any) -> int:
            return order.get((task, metric), len(order))

        records.sort(key=lambda r: rank(r["task"], r["metric"]))
        samples.sort(key=lambda f: rank(f["task"].iloc[0], f["metric"].iloc[0]) if len(f) else len(order))
        meta["protocol"].sort(key=lambda p: rank(p["task"], p["metric"]))

    def flush(complete: bool = False) -> None:
        if not distributed.is_main():  # under torchrun only rank 0 writes
            return
        in_run_order()
        results.records = records_frame(records)
        results.comparisons = pd.DataFrame(comparisons, columns=COMPARISON_COLUMNS)
        results.samples = pd.concat(samples, ignore_index=True) if samples else None
        results.complete = complete
        write_results(out, results)

    flush()
    overall = tqdm(total=len(pairs), desc="run", unit="pair", disable=not config.progress,
                   initial=sum(p in finished for p in pairs), dynamic_ncols=True)
    for tspec, task in tasks:
        items = task.items.reset_index(drop=True)
        file_hashes: dict[str, str] = {}
        for mspec in metric_specs:
            position.update(task=tspec.name, metric=mspec.name)
            if (tspec.name, mspec.name) in finished:  # resumed: kept as the previous run wrote it
                continue
            overall.set_postfix_str(f"{tspec.name} · {mspec.name}")
            t0 = time.perf_counter()
            embedding_stats = None
            search_info = None
            try:
                metric = metrics[mspec.name]
                desc = f"{tspec.name} · {mspec.name}"
                if getattr(task, "set_level", False):
                    ranked = rank_gallery(metric, task, mspec, config, device, desc, file_hashes=file_hashes,
                                          scratch=out / SCRATCH_DIR)
                    if ranked is None:  # torchrun: rank 0 gathered this rank's part and ranks the queries
                        continue
                    positions, distances, embedding_stats, search_info = ranked
                    dists = task.ranking_columns(positions, distances)
                elif _embedding_path_usable(metric, task, mspec):
                    dists, embedding_stats = compute_distances_from_embeddings(
                        metric, task, mspec, config, device, desc, file_hashes=file_hashes)
                else:
                    dists = compute_distances(metric, task, mspec, config, device, desc)
                if not distributed.is_main():  # the distances were gathered on rank 0, which scores them
                    continue
                if not getattr(task, "set_level", False):
                    check_finite_distances(dists, items, metric=mspec.name, precision=config.precision,
                                           computed_in=metric.computes_in(config.precision))
                frame = items.copy()
                for col, values in dists.items():
                    frame[col] = values
                if "score" not in dists:
                    frame["score"] = task.item_scores(frame)
                frame.insert(0, "metric", mspec.name)
                frame.insert(0, "task", tspec.name)
                pair_records = [{"task": tspec.name, "metric": mspec.name, **rec}
                                for rec in task.score(frame, seed=config.seed, n_boot=config.n_boot)]
            except Exception as exc:  # one broken metric must not lose the others' results
                if isinstance(exc, distributed.RankLost):  # torchrun lost a rank: the run cannot go on
                    raise
                failure: Failure = {"task": tspec.name, "metric": mspec.name,
                                    "kind": "data" if isinstance(exc, DataError) else "failure",
                                    "error": f"{type(exc).__name__}: {user_message(exc)}"}
                meta["failed"].append(failure)
                log.warning("%s on %s failed: %s: %s", mspec.name, tspec.name, type(exc).__name__, user_message(exc))
                if os.environ.get("PERCEPBENCH_DEBUG"):
                    traceback.print_exc()
                flush()
                overall.update()
                continue
            samples.append(frame)
            records.extend(pair_records)
            loaded = loaded_inputs(task, mspec, config)
            by = (_resize_setting(task, mspec, config)[1]
                  or getattr(task, "resize_note", None) or OFFICIAL_LOAD)
            entry: ProtocolEntry = {
                "task": tspec.name, "metric": mspec.name,
                "inputs": loaded.to_dict(),
                "resize": ("native size" if loaded.size is None else
                           f"{loaded.size}x{loaded.size} {loaded.interpolation}")
                          + (f" ({by})" if loaded != mspec.inputs else ""),
                "scales_used": getattr(metric, "last_scales", None),
                "precision": metric.computes_in(config.precision),
                "embedding": embedding_stats,
                "seconds": round(time.perf_counter() - t0, 3),
            }
            if search_info is not None:
                entry["search"] = search_info
            meta["protocol"].append(entry)
            flush()
            overall.update()
        position["metric"] = None
        in_run_order()
        comparisons.extend(compare_metrics(tspec.name, task, samples, config))
        flush()
    overall.close()
    meta["finished"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    flush(complete=True)
    return results
