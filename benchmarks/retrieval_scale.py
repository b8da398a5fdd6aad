"""Benchmark: what a retrieval gallery of N images costs percepbench itself (memory, time, search).

Three parts; parts 2 and 3 run each measurement in its own worker **subprocess** (this file with
``--worker``), so every peak-memory number is that job's alone:

1. **Images.** N distinct 32x32 PNG files in the ``retrieval_folder`` layout, ``<root>/<class>/<image>.png``
   (``--classes`` folders, image i in class i mod C; a class colour plus seeded noise, the image's index
   written into its first pixels so no two files are equal). Written by a process pool; a ``--workdir``
   that already holds the same set (``images/manifest.json``) is reused.
2. **End to end.** ``percepbench run --tasks retrieval_folder --task-args retrieval_folder:path=...,queries=Q``
   (:func:`percepbench.runner.run` with a :class:`~percepbench.config.RunConfig`) with a metric registered
   only here, ``bench_projection``: ``embeds = True``, ``embed`` = the pixels average-pooled to 8x8, centred,
   times a fixed random (192, ``--dim``) matrix; inputs 32x32 bilinear. It costs almost nothing, so the
   numbers are percepbench's own cost (scanning and checking the files, decoding, the memory-mapped
   embedding store, the embedding cache, the search, scoring, writing the results), not a model's. Run
   twice with one embedding cache folder, empty before the first run: **cold** (every image embedded and
   written to the cache) and **warm** (every embedding read from the cache). The phases are timed by wrapping the runner's
   ``_prepare_task`` and ``embed_files`` in the worker process; the search time is the search's own
   ``info["seconds"]``.
3. **Search.** An N x ``--dim`` float32 matrix written to an ``.npy`` file and memory-mapped
   (``--matrix clustered``: ``--classes`` Gaussian centres plus unit noise, the structure embeddings of a
   labelled set have; ``gaussian``: no structure, the hard case for approximate indexes); Q of its rows
   are the queries, each left out of its own gallery, k = 10, distance 1 - cosine.
   :func:`percepbench.search.search` with faiss exact, torch exact (matrix product + ``topk`` per chunk),
   HNSW and IVF (their ``recall_vs_exact`` from ``info``), and a **plain torch top-k** baseline: the whole
   matrix loaded into memory, the Q x N similarity matrix in one product, one ``torch.topk`` (skipped when
   it would not fit in the available memory). Every ranking is also compared with the faiss exact one
   (overlap of the top-k sets, a cross-check of ``recall_vs_exact``).

Memory: each worker reports its kernel high-water mark (``VmHWM`` on Linux, else ``ru_maxrss``) and, on
Linux, the peaks of its anonymous and its file-backed resident memory (``RssAnon``/``RssFile`` in
``/proc/self/status``, sampled every 10 ms). Pages of a memory-mapped file count as file-backed resident
memory while mapped, and the kernel drops them under memory pressure; anonymous memory is what the
process really holds. The baseline is the worker's memory after its imports (torch, faiss, percepbench),
before any work. DataLoader worker processes (used on CUDA devices) are not counted.

Usage: ``python benchmarks/retrieval_scale.py [--images 100000] [--queries 1000] [--dim 768]
[--out docs/benchmarks] [--workdir DIR] [--classes 1000] [--matrix clustered] [--device cpu]
[--batch-size 256] [--runs 3]``. Every measurement is repeated ``--runs`` times in interleaved rounds (the
cold/warm pair with a fresh cache each round; each search configuration once per round); the tables show the
median of each number over the rounds (wall seconds also as min-max) and the JSON keeps every round. Writes ``retrieval_scale.json`` and ``retrieval_scale.md`` into
``--out``. Without ``--workdir`` the generated files go to a temporary folder removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

#: the registry name of the benchmark's own metric
METRIC_NAME = "bench_projection"
#: side of the generated images (and the metric's input size)
IMAGE_SIZE = 32
#: side the metric pools the images to before the projection
POOLED = 8
K = 10
#: search configurations: (label, backend, index)
SEARCHES = (("faiss exact", "faiss", "exact"), ("torch exact", "torch", "exact"),
            ("faiss HNSW", "faiss", "hnsw"), ("faiss IVF", "faiss", "ivf"),
            ("plain torch top-k", "naive", "exact"))
MB = 2**20


# ---------------------------------------------------------------------------------------------- memory


def _status_kb() -> dict[str, int]:
    """``VmRSS``, ``VmHWM``, ``RssAnon``, ``RssFile`` of this process in kB (Linux), else {}."""
    out: dict[str, int] = {}
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                    out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def _maxrss_mb() -> float:
    import resource  # POSIX only

    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value / MB if sys.platform == "darwin" else value / 1024  # bytes on macOS, kB on Linux


class MemoryWatch:
    """Peak resident memory of this process from :meth:`start` on (see the module docstring)."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.peak = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self.baseline: dict[str, int] = {}
        self.baseline_rss_mb = 0.0

    def _sample(self) -> None:
        now = _status_kb()
        for key in self.peak:
            self.peak[key] = max(self.peak[key], now.get(key, 0))

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> MemoryWatch:
        self.baseline = _status_kb()
        self.baseline_rss_mb = self.baseline["VmRSS"] / 1024 if self.baseline else _maxrss_mb()
        self._sample()
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join()
        self._sample()
        status = _status_kb()
        peak = status["VmHWM"] / 1024 if "VmHWM" in status else _maxrss_mb()
        out: dict[str, Any] = {
            "peak_rss_mb": round(peak, 1),
            "baseline_rss_mb": round(self.baseline_rss_mb, 1),
            "rss_growth_mb": round(peak - self.baseline_rss_mb, 1),
        }
        if self.baseline:
            out.update({
                "peak_anon_mb": round(self.peak["RssAnon"] / 1024, 1),
                "peak_file_mb": round(self.peak["RssFile"] / 1024, 1),
                "baseline_anon_mb": round(self.baseline.get("RssAnon", 0) / 1024, 1),
                "baseline_file_mb": round(self.baseline.get("RssFile", 0) / 1024, 1),
                "anon_growth_mb": round((self.peak["RssAnon"] - self.baseline.get("RssAnon", 0)) / 1024, 1),
                "file_growth_mb": round((self.peak["RssFile"] - self.baseline.get("RssFile", 0)) / 1024, 1),
            })
        return out


# ---------------------------------------------------------------------------------------------- images


def _image_chunk(root: str, start: int, stop: int, classes: int, seed: int) -> int:
    """Write images ``start..stop-1``; return the bytes written."""
    from PIL import Image

    total = 0
    for i in range(start, stop):
        cls = i % classes
        colour = np.random.default_rng([seed, 1, cls]).integers(40, 216, 3)
        noise = np.random.default_rng([seed, 2, i]).normal(0.0, 24.0, (IMAGE_SIZE, IMAGE_SIZE, 3))
        arr = np.clip(colour[None, None, :] + noise, 0, 255).astype(np.uint8)
        arr[0, :4, :] = np.frombuffer(int(i).to_bytes(12, "little"), dtype=np.uint8).reshape(4, 3)  # distinct
        path = Path(root) / f"c{cls:04d}" / f"{i:07d}.png"
        Image.fromarray(arr).save(path, compress_level=1)
        total += path.stat().st_size
    return total


def make_images(root: Path, n: int, classes: int, seed: int, workers: int) -> dict[str, Any]:
    """N distinct PNG files under ``root/<class>/`` (reused when ``root/manifest.json`` matches)."""
    manifest = {"images": n, "classes": classes, "seed": seed, "size": IMAGE_SIZE, "format": 1}
    marker = root / "manifest.json"
    if marker.is_file():
        try:
            saved = json.loads(marker.read_text())
        except ValueError:
            saved = {}
        if {k: saved.get(k) for k in manifest} == manifest:
            return {"seconds": saved.get("seconds"), "reused": True, "bytes_on_disk": saved.get("bytes")}
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    for cls in range(classes):
        (root / f"c{cls:04d}").mkdir(parents=True, exist_ok=True)
    step = max(1, min(5000, -(-n // max(1, 4 * workers))))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_image_chunk, str(root), s, min(n, s + step), classes, seed) for s in range(0, n, step)]
        written = sum(f.result() for f in futures)
    seconds = time.perf_counter() - t0
    # the manifest sits in the root beside the class folders; retrieval_folder reads only image suffixes
    marker.write_text(json.dumps({**manifest, "bytes": written, "seconds": round(seconds, 2)}) + "\n")
    return {"seconds": round(seconds, 2), "reused": False, "bytes_on_disk": written}


def make_matrix(path: Path, n: int, dim: int, classes: int, kind: str, seed: int) -> float:
    """Write the N x dim float32 search matrix to ``path`` (``.npy``) in chunks; return seconds."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.0, (classes, dim)).astype(np.float32)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    for s in range(0, n, 65_536):
        e = min(n, s + 65_536)
        block = rng.normal(0.0, 1.0, (e - s, dim)).astype(np.float32)
        if kind == "clustered":
            block += centres[np.arange(s, e) % classes]
        out[s:e] = block
    out.flush()
    del out
    return round(time.perf_counter() - t0, 2)


# ---------------------------------------------------------------------------------------------- workers


def register_projection_metric(dim: int) -> None:
    """Define ``RandomProjection`` in this module and register it as :data:`METRIC_NAME`.

    Defined on demand so the search workers, which run this file too, do not import the metric stack
    (torchmetrics takes seconds to import).
    """
    import torch

    from percepbench.metrics_registry.base import DistanceMetric
    from percepbench.registry import METRICS
    from percepbench.specs import InputConvention, MetricSpec

    class RandomProjection(DistanceMetric):
        """A near-free embedding metric: 8x8-pooled, centred pixels times a fixed random matrix."""

        embeds = True

        def __init__(self, dim: int = 768, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            gen = torch.Generator().manual_seed(0)
            self.register_buffer("projection", torch.randn(3 * POOLED * POOLED, dim, generator=gen))

        def embed(self, x: torch.Tensor) -> torch.Tensor:
            pooled = torch.nn.functional.adaptive_avg_pool2d(x, POOLED).flatten(1) - 0.5
            return pooled @ self.projection

        def distance(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return self.embedding_distance(self.embed(preds), self.embed(target))

    globals()["RandomProjection"] = RandomProjection
    if METRIC_NAME not in [s.name for s in METRICS.specs()]:
        METRICS.register(MetricSpec(
            name=METRIC_NAME, target=f"{__name__}:RandomProjection", kwargs={"dim": dim},
            description="benchmark only: a fixed random projection of 8x8-pooled pixels",
            inputs=InputConvention(size=IMAGE_SIZE, interpolation="bilinear")), source="benchmarks/retrieval_scale.py")


def run_end_to_end(job: dict[str, Any]) -> dict[str, Any]:
    """One ``percepbench run`` of ``retrieval_folder`` with the projection metric, phases timed."""
    import faiss  # noqa: F401  (imported by the search during the run: loaded first, out of the baseline)

    import percepbench.runner as runner
    import percepbench.search  # noqa: F401
    from percepbench.config import RunConfig

    register_projection_metric(job["dim"])
    phases = {"prepare": 0.0, "embed": 0.0}

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                phases[name] += time.perf_counter() - t0
        return wrapper

    runner._prepare_task = timed("prepare", runner._prepare_task)
    runner.embed_files = timed("embed", runner.embed_files)
    config = RunConfig(metrics=[METRIC_NAME], tasks=["retrieval_folder"], out=job["out"], device=job["device"],
                       batch_size=job["batch_size"], progress=False, embed_cache=job["cache"],
                       task_args={"retrieval_folder": {"path": job["images"], "queries": job["queries"]}})
    watch = MemoryWatch().start()
    t0 = time.perf_counter()
    results = runner.run(config)
    wall = time.perf_counter() - t0
    memory = watch.stop()
    if job["device"].startswith("cuda"):
        import torch

        memory["gpu_peak_mb"] = round(torch.cuda.max_memory_allocated() / MB, 1)
    if results.meta["failed"]:
        raise RuntimeError(f"the run failed: {results.meta['failed']}")
    entry = results.meta["protocol"][0]
    embedding, search = entry["embedding"], entry["search"]
    records = results.records
    recall = records[records["measure"] == "recall@1"]["value"]
    touched = embedding["embedded"] + embedding["from_cache"]
    return {
        "wall_seconds": round(wall, 2),
        "prepare_seconds": round(phases["prepare"], 2),
        "embed_seconds": round(phases["embed"], 2),
        "search_seconds": search["seconds"],
        "other_seconds": round(wall - phases["prepare"] - phases["embed"] - search["seconds"], 2),
        "images_per_second": round(touched / max(phases["embed"], 1e-9), 1),
        "embedded": embedding["embedded"],
        "from_cache": embedding["from_cache"],
        "search_backend": search["backend"],
        "brute_force_queries": search.get("brute_force_queries"),
        "recall@1": float(recall.iloc[0]) if len(recall) else None,
        "memory": memory,
    }


def run_search(job: dict[str, Any]) -> dict[str, Any]:
    """One search configuration over the memory-mapped matrix; the ranking saved for cross-checks."""
    import faiss  # noqa: F401  (loaded before the baseline is taken)
    import torch

    from percepbench.search import search

    matrix = np.load(job["matrix"], mmap_mode="r")
    rows = np.load(job["rows"])
    device = torch.device(job["device"])
    watch = MemoryWatch().start()
    t0 = time.perf_counter()
    if job["backend"] == "naive":
        out = _plain_topk(job["matrix"], rows, job["k"], device)
    else:
        def distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return 1.0 - torch.nn.functional.cosine_similarity(a, b, dim=-1)

        queries = np.ascontiguousarray(matrix[rows])
        result = search(queries, matrix, job["k"], distance=distance, space="cosine", exclude=rows,
                        backend=job["backend"], index=job["index"], device=device, seed=job["seed"])
        info = result.info
        build = info.get("build_seconds", 0.0)
        out = {"positions": result.positions, "build_seconds": build,
               "search_seconds": round(info["search_seconds"] - build, 3), "total_seconds": info["seconds"],
               "backend_resolved": info["backend"], "brute_force_queries": info["brute_force_queries"]}
        if "recall_vs_exact" in info:
            out["recall_vs_exact"] = info["recall_vs_exact"]["value"]
            out["recall_queries_checked"] = info["recall_vs_exact"]["queries_checked"]
        out.update({key: info[key] for key in ("nlist", "nprobe", "ef_search", "hnsw_m") if key in info})
    wall = time.perf_counter() - t0
    memory = watch.stop()
    if device.type == "cuda":
        memory["gpu_peak_mb"] = round(torch.cuda.max_memory_allocated(device) / MB, 1)
    np.save(job["positions"], out.pop("positions"))
    # search() reports whole milliseconds: a search faster than that has no queries/s (None)
    out.update({"wall_seconds": round(wall, 4), "memory": memory,
                "queries_per_second": round(len(rows) / out["search_seconds"], 1) if out["search_seconds"] > 0
                else None})
    return out


def _plain_topk(path: str, rows: np.ndarray, k: int, device: Any) -> dict[str, Any]:
    """The whole matrix in memory, one Q x N similarity matrix, one ``torch.topk``."""
    import torch

    t0 = time.perf_counter()
    gallery = torch.from_numpy(np.load(path)).to(device)  # read fully, not memory-mapped
    gallery = torch.nn.functional.normalize(gallery, dim=1)
    load = time.perf_counter() - t0
    t1 = time.perf_counter()
    idx = torch.from_numpy(rows).to(device)
    sims = gallery[idx] @ gallery.T
    sims[torch.arange(len(rows), device=device), idx] = -float("inf")  # leave-one-out
    top = torch.topk(sims, k, dim=1)
    positions = top.indices.cpu().numpy()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {"positions": positions, "build_seconds": round(load, 4),
            "search_seconds": round(time.perf_counter() - t1, 4), "total_seconds": round(time.perf_counter() - t0, 4),
            "backend_resolved": f"torch ({device.type}), whole matrix in memory"}


def _worker(job_file: str) -> None:
    job = json.loads(Path(job_file).read_text())
    result = run_end_to_end(job) if job["kind"] == "end_to_end" else run_search(job)
    Path(job["result"]).write_text(json.dumps(result) + "\n")


def in_subprocess(job: dict[str, Any], workdir: Path, name: str) -> dict[str, Any]:
    """Run ``job`` in a fresh Python process (this file with ``--worker``); its result, or ``{"error"}``."""
    job_file, result_file = workdir / f"{name}.job.json", workdir / f"{name}.result.json"
    result_file.unlink(missing_ok=True)
    job_file.write_text(json.dumps({**job, "result": str(result_file)}))
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", str(job_file)],
                          capture_output=True, text=True, check=False)
    process_seconds = round(time.perf_counter() - t0, 2)
    if done.returncode != 0 or not result_file.is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        print(f"  {name} failed (exit {done.returncode}): {' | '.join(tail)}", file=sys.stderr)
        return {"error": f"exit {done.returncode}: {' | '.join(tail)}", "process_seconds": process_seconds}
    return {**json.loads(result_file.read_text()), "process_seconds": process_seconds}


# ---------------------------------------------------------------------------------------------- repeats


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def median_of_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from the same measurement repeated: the median of every number over the runs (nested dicts
    too), every other value from the first run; a run that failed makes the row that failure. The runs
    themselves go under ``"runs"``, each top-level number's [min, max] under ``"ranges"``."""
    failed = [r for r in runs if "error" in r]
    if failed:
        return {**failed[0], "runs": runs}
    out = _median_fields(runs)
    out["ranges"] = {key: [min(r[key] for r in runs), max(r[key] for r in runs)] for key, value in runs[0].items()
                     if _number(value) and all(_number(r.get(key)) for r in runs)}
    out["runs"] = runs
    return out


def _median_fields(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in runs[0].items():
        values = [r.get(key) for r in runs]
        if isinstance(value, dict) and all(isinstance(v, dict) for v in values):
            out[key] = _median_fields(values)
        elif _number(value) and all(_number(v) for v in values):
            middle = statistics.median(values)
            out[key] = int(middle) if all(isinstance(v, int) for v in values) and middle == int(middle) else middle
        else:
            out[key] = value
    return out


# ---------------------------------------------------------------------------------------------- report


def _folder_bytes(folder: Path, suffix: str = "") -> tuple[int, int]:
    """(files, bytes) of the files under ``folder`` whose name ends with ``suffix``."""
    files = size = 0
    for dirpath, _, names in os.walk(folder):
        for name in names:
            if not name.endswith(suffix):
                continue
            files += 1
            size += os.path.getsize(os.path.join(dirpath, name))
    return files, size


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x.tolist()) & set(y.tolist())) / a.shape[1] for x, y in zip(a, b, strict=True)]))


def _available_mb() -> float | None:
    try:
        import psutil

        return psutil.virtual_memory().available / MB
    except ImportError:
        return None


def environment(device: str) -> dict[str, Any]:
    import faiss
    import torch

    import percepbench
    from percepbench.cpu_info import cpu_facts
    from percepbench.runner import cpu_model, resolve_device, resolve_num_workers

    try:
        import psutil

        total = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        total = None
    return {"date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "platform": platform.platform(),
            "python": platform.python_version(), "cpu_model": cpu_model(), "cpu": cpu_facts(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "memory_gb": total, "torch": torch.__version__,
            "faiss": faiss.__version__, "numpy": np.__version__, "percepbench": percepbench.__version__,
            "device": device, "device_name": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
            "loader_workers": resolve_num_workers(None, resolve_device(device))}


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _runs_text(runs: int) -> str:
    if runs == 1:
        return "One run; every row is a separate process."
    return (f"Median of {runs} runs in interleaved rounds (wall s and search s also min-max); every row of "
            "every round is a separate process.")


def _cpu_text(env: dict[str, Any]) -> str:
    cpu = env.get("cpu") or {}
    return "CPU instructions: " + (", ".join(cpu.get("accelerators") or []) or "none of AVX2/AVX-512/AMX found")


def _spread(row: dict[str, Any], key: str, digits: int = 1) -> str:
    """``row[key]`` (a median) followed by its (min-max) over the runs when there were several."""
    text = _fmt(row[key], digits)
    low, high = row.get("ranges", {}).get(key, (None, None))
    return f"{text} ({_fmt(low, digits)}-{_fmt(high, digits)})" if len(row.get("runs", [])) > 1 else text


def markdown(result: dict[str, Any]) -> str:
    env, n, q, dim = result["environment"], result["images"], result["queries"], result["dim"]
    matrix_mb = result["embedding_matrix_mb"]
    lines = [f"# Retrieval at scale: {n:,} images, {q:,} queries, {dim}-dim embeddings, k = {K}", ""]
    if result["small_run"]:
        lines += [f"**Small run ({n:,} images): checks the script and the format only. These are not the scale "
                  "numbers; run `python benchmarks/retrieval_scale.py` (100,000 images) for those.**", ""]
    lines += [
        f"Script: `benchmarks/retrieval_scale.py`; raw numbers in `retrieval_scale.json`. Run on {env['date'][:10]}: "
        f"{env['cpu_model'] or 'unknown CPU'}, {env['cores']} cores ({env['torch_threads']} torch threads), "
        f"{_fmt(env['memory_gb'])} GB RAM, {env['platform']}, torch {env['torch']}, faiss {env['faiss']}, "
        f"device `{env['device']}`; {_cpu_text(env)}. {_runs_text(result['runs'])}",
        "",
        "## End to end: `percepbench run --tasks retrieval_folder`",
        "",
        f"{n:,} PNG files of {IMAGE_SIZE}x{IMAGE_SIZE} pixels in {result['classes']:,} class folders "
        f"({_fmt(result['images_on_disk_mb'])} MB; written in {_fmt(result['generation']['seconds'])} s"
        f"{' by an earlier run of the script, reused' if result['generation']['reused'] else ''}), `queries={q}`, exact search, batch "
        f"{result['batch_size']}, {env['loader_workers']} DataLoader workers (the runner's automatic choice on "
        f"`{env['device']}`), `RunConfig` defaults otherwise (1,000 bootstrap resamples; the HTML report the "
        "command line builds afterwards is not included). The metric is "
        f"`{METRIC_NAME}`, registered by the script: a fixed random projection of 8x8-pooled pixels to {dim} "
        "dimensions, which costs almost nothing, so these numbers are **percepbench's own cost** (scanning and "
        "checking the files, decoding, the memory-mapped embedding store, the embedding cache, search, scoring, "
        "writing results), not a model's. For model throughput see "
        "[dreamsim_embed_speed.md](dreamsim_embed_speed.md): with DreamSim the embedding phase dominates.",
        "",
        "| run | wall s | prepare s | embed s | images/s (embed phase) | search s | rest s | embedded | "
        "from cache | peak RSS MB | RSS growth MB | anon growth MB | file-backed growth MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["end_to_end"]:
        if "error" in row:
            lines.append(f"| {row['run']} | failed: {row['error']} |" + " |" * 11)
            continue
        m = row["memory"]
        lines.append(
            f"| {row['run']} | {_spread(row, 'wall_seconds')} | {_fmt(row['prepare_seconds'])} | "
            f"{_fmt(row['embed_seconds'])} | {_fmt(row['images_per_second'], 0)} | {_fmt(row['search_seconds'])} | "
            f"{_fmt(row['other_seconds'])} | {row['embedded']:,} | {row['from_cache']:,} | "
            f"{_fmt(m['peak_rss_mb'], 0)} | {_fmt(m['rss_growth_mb'], 0)} | {_fmt(m.get('anon_growth_mb'), 0)} | "
            f"{_fmt(m.get('file_growth_mb'), 0)} |")
    cache = result["cache"]
    lines += [
        "",
        f"Embedding matrix: {n:,} x {dim} x 4 bytes = **{_fmt(matrix_mb)} MB**. Embedding cache after the cold "
        f"run: {cache['entries']:,} files, {_fmt(cache['mb'])} MB. *prepare*: reading the folder, checking every "
        "file's header, sampling the queries; *embed*: decoding + metric + writing the store (warm: reading the "
        "cache, after hashing every file); *rest*: ranking columns, bootstrap CIs, writing `results.json` and "
        "the samples. *peak RSS*: the worker's kernel high-water mark; *growth*: peaks over the worker's memory "
        "after its imports, split into anonymous memory (what the process holds) and file-backed pages (memory-"
        "mapped files such as the embedding store, which the kernel can drop under pressure).",
        "",
        "## Search: `percepbench.search.search` on a memory-mapped matrix",
        "",
        f"{n:,} x {dim} float32 ({_fmt(matrix_mb)} MB `.npy`, memory-mapped), matrix `{result['matrix']}`, "
        f"{q:,} of its rows as queries (each left out of its own gallery), k = {K}, distance 1 - cosine, device "
        f"`{env['device']}`. *search s* is the candidate search (for the plain baseline: the product and the "
        "top-k) and *queries/s* = queries / search s; *total s* adds the exact re-ranking and, for HNSW/IVF, the recall check (an exact search "
        "of the queries). *overlap* is the top-k overlap with the faiss exact ranking.",
        "",
        "| search | build / load s | search s | queries/s | total s | recall@10 vs exact | overlap with faiss "
        "exact | peak RSS MB | RSS growth MB | anon growth MB | file-backed growth MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["search"]:
        if "error" in row or "skipped" in row:
            lines.append(f"| {row['search']} | {row.get('error') or row.get('skipped')} |" + " |" * 9)
            continue
        m = row["memory"]
        lines.append(
            f"| {row['search']} | {_fmt(row['build_seconds'], 2)} | {_spread(row, 'search_seconds', 2)} | "
            f"{_fmt(row['queries_per_second'], 0)} | {_fmt(row['total_seconds'], 2)} | "
            f"{_fmt(row.get('recall_vs_exact'), 3)} | {_fmt(row.get('overlap_with_faiss_exact'), 3)} | "
            f"{_fmt(m['peak_rss_mb'], 0)} | {_fmt(m['rss_growth_mb'], 0)} | {_fmt(m.get('anon_growth_mb'), 0)} | "
            f"{_fmt(m.get('file_growth_mb'), 0)} |")
    lines += ["", "## Reading", ""] + [f"- {s}" for s in reading(result)]
    return "\n".join(lines) + "\n"


def reading(result: dict[str, Any]) -> list[str]:
    """Short statements computed from the numbers (nothing here is written by hand)."""
    out = []
    matrix_mb = result["embedding_matrix_mb"]
    runs = {row["run"]: row for row in result["end_to_end"] if "error" not in row}
    cold, warm = runs.get("cold cache"), runs.get("warm cache")
    if cold:
        m = cold["memory"]
        anon = m.get("anon_growth_mb")
        growth = f"{_fmt(anon, 0)} MB of anonymous memory" if anon is not None else f"{_fmt(m['rss_growth_mb'], 0)} MB"
        out.append(f"Cold run: {_fmt(cold['wall_seconds'])} s for {result['images']:,} images; the worker grew by "
                   f"{growth} over its imports, against a {_fmt(matrix_mb)} MB embedding matrix "
                   f"(ratio {(anon if anon is not None else m['rss_growth_mb']) / max(matrix_mb, 1e-9):.2f}). "
                   f"Embedding phase {_fmt(cold['images_per_second'], 0)} images/s with a near-free metric: "
                   "the ceiling percepbench's loading puts on any model.")
        share = {k: cold[f"{k}_seconds"] / max(cold["wall_seconds"], 1e-9) for k in ("prepare", "embed", "search",
                                                                                        "other")}
        top = max(share, key=share.get)
        out.append(f"Largest phase of the cold run: {top} ({share[top]:.0%} of the wall time).")
    if cold and warm:
        out.append(f"Warm cache: embedding phase {_fmt(warm['embed_seconds'])} s vs {_fmt(cold['embed_seconds'])} s "
                   f"cold ({warm['from_cache']:,} embeddings read from {result['cache']['entries']:,} cache files, "
                   f"{_fmt(warm['images_per_second'], 0)} images/s); whole run {_fmt(warm['wall_seconds'])} s vs "
                   f"{_fmt(cold['wall_seconds'])} s.")
    rows = {row["search"]: row for row in result["search"] if "error" not in row and "skipped" not in row}
    exact = [r for r in ("faiss exact", "torch exact") if r in rows]
    if exact:
        best = max(exact, key=lambda r: rows[r]["queries_per_second"] or float("inf"))
        def grew(r: str) -> str:
            m = rows[r]["memory"]
            anon = m.get("anon_growth_mb")
            return f"+{_fmt(anon, 0)} MB anonymous" if anon is not None else f"+{_fmt(m['rss_growth_mb'], 0)} MB RSS"

        out.append("Exact search: " + ", ".join(f"{r} {_fmt(rows[r]['queries_per_second'], 0)} queries/s "
                                                 f"({grew(r)})" for r in exact)
                   + f"; fastest {best}. The growth is to set against the {_fmt(matrix_mb)} MB matrix (memory-"
                   "mapped, read in chunks of at most 65,536 rows).")
    for name in ("faiss HNSW", "faiss IVF"):
        if name in rows:
            r = rows[name]
            out.append(f"{name}: {_fmt(r['queries_per_second'], 0)} queries/s after a {_fmt(r['build_seconds'])} s "
                       f"build, recall@10 vs exact {_fmt(r.get('recall_vs_exact'), 3)}; peak RSS "
                       f"{_fmt(r['memory']['peak_rss_mb'], 0)} MB (the index holds the whole gallery in memory).")
    if "plain torch top-k" in rows and "faiss exact" in rows:
        p, f = rows["plain torch top-k"], rows["faiss exact"]
        pa, fa = p["memory"].get("anon_growth_mb"), f["memory"].get("anon_growth_mb")
        if pa is not None and fa is not None:
            mem = f"anonymous memory +{_fmt(pa, 0)} MB vs +{_fmt(fa, 0)} MB"
        else:
            mem = f"RSS growth {_fmt(p['memory']['rss_growth_mb'], 0)} MB vs {_fmt(f['memory']['rss_growth_mb'], 0)} MB"
        out.append(f"Plain torch top-k (everything in memory): {_fmt(p['queries_per_second'], 0)} queries/s vs faiss "
                   f"exact {_fmt(f['queries_per_second'], 0)}; {mem}. It holds the whole matrix and the queries x "
                   "gallery score matrix in RAM; the chunked search holds one gallery chunk at a time.")
    bad = [row["search"] for row in rows.values() if row.get("overlap_with_faiss_exact") is not None
           and row["search"] in ("torch exact", "plain torch top-k") and row["overlap_with_faiss_exact"] < 0.999]
    if bad:
        out.append(f"Exact rankings disagree with faiss exact: {', '.join(bad)} (see the overlap column).")
    return out


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--classes", type=int, default=1000, help="class folders (at most images / 2)")
    parser.add_argument("--matrix", choices=("clustered", "gaussian"), default="clustered")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "benchmarks"))
    parser.add_argument("--workdir", default=None, help="keeps the generated images there (reused by a re-run)")
    parser.add_argument("--runs", type=int, default=3, help="rounds of every measurement; the tables show medians")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker)
        return
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.images < 2 * K + 2 or args.queries < 1 or args.dim < 1:
        parser.error(f"need --images >= {2 * K + 2}, --queries >= 1 and --dim >= 1")
    if args.queries > args.images:
        parser.error("--queries cannot exceed --images")
    classes = max(1, min(args.classes, args.images // 2))
    with contextlib.ExitStack() as stack:
        if args.workdir:
            work = Path(args.workdir).expanduser().resolve()
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="retrieval_scale_")))
        result = measure(args, work, classes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "retrieval_scale.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (out / "retrieval_scale.md").write_text(text)
    print(text)


def measure(args: argparse.Namespace, work: Path, classes: int) -> dict[str, Any]:
    n, q, dim = args.images, args.queries, args.dim
    images = work / "images"
    print(f"writing {n:,} images into {images} ...", file=sys.stderr)
    generation = make_images(images, n, classes, args.seed, workers=os.cpu_count() or 1)
    _, image_bytes = _folder_bytes(images, ".png")
    cache = work / "embed_cache"
    shutil.rmtree(cache, ignore_errors=True)
    rounds: dict[str, list[dict[str, Any]]] = {"cold cache": [], "warm cache": []}
    for round_ in range(args.runs):
        shutil.rmtree(cache, ignore_errors=True)  # every round's cold run starts from an empty cache
        for run in rounds:
            print(f"end to end, {run}, round {round_ + 1}/{args.runs} ...", file=sys.stderr)
            run_dir = work / "run"
            shutil.rmtree(run_dir, ignore_errors=True)
            job = {"kind": "end_to_end", "images": str(images), "queries": q, "dim": dim, "cache": str(cache),
                   "out": str(run_dir), "device": args.device, "batch_size": args.batch_size}
            rounds[run].append(in_subprocess(job, work, run.replace(" ", "_")))
    end_to_end = [{"run": run, **median_of_runs(found)} for run, found in rounds.items()]
    cache_files, cache_bytes = _folder_bytes(cache, ".npy") if cache.is_dir() else (0, 0)
    shutil.rmtree(work / "run", ignore_errors=True)

    matrix = work / "matrix.npy"
    print(f"writing the {n:,} x {dim} search matrix ...", file=sys.stderr)
    matrix_seconds = make_matrix(matrix, n, dim, classes, args.matrix, args.seed)
    rows = work / "query_rows.npy"  # the query rows, shared by every search (and read by the tests)
    np.save(rows, np.sort(np.random.default_rng(args.seed).choice(n, size=q, replace=False)))
    found_runs: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in SEARCHES}
    skipped: dict[str, str] = {}
    for round_ in range(args.runs):
        exact_positions = None
        for label, backend, index in SEARCHES:
            if label in skipped:
                continue
            print(f"search: {label}, round {round_ + 1}/{args.runs} ...", file=sys.stderr)
            if backend == "naive":
                need = (n * dim * 4 * 2 + q * n * 4 * 2) / MB  # the matrix (+ normalised copy), the scores (+ mask)
                free = _available_mb()
                if free is not None and need > 0.8 * free:
                    skipped[label] = f"needs about {need:,.0f} MB, {free:,.0f} MB available"
                    continue
            positions = work / f"positions_{backend}_{index}.npy"  # each round's ranking replaces the last
            job = {"kind": "search", "matrix": str(matrix), "queries": q, "k": K, "backend": backend,
                   "index": index, "device": args.device, "seed": args.seed, "rows": str(rows),
                   "positions": str(positions)}
            row = in_subprocess(job, work, f"search_{backend}_{index}")
            if "error" not in row:
                ranking = np.load(positions)
                if label == "faiss exact":
                    exact_positions = ranking
                if exact_positions is not None:
                    row["overlap_with_faiss_exact"] = round(_overlap(ranking, exact_positions), 4)
            found_runs[label].append(row)
    searches = [{"search": label, "skipped": skipped[label]} if label in skipped and not found_runs[label]
                else {"search": label, **median_of_runs(found_runs[label])} for label, _, _ in SEARCHES]
    return {
        "benchmark": "retrieval_scale",
        "images": n, "queries": q, "dim": dim, "k": K, "classes": classes, "image_size": IMAGE_SIZE,
        "matrix": args.matrix, "batch_size": args.batch_size, "seed": args.seed, "runs": args.runs,
        "small_run": n < 100_000,
        "environment": environment(args.device),
        "memory_measure": "per worker process: kernel high-water mark (VmHWM, else ru_maxrss); on Linux also the "
                          "peaks of RssAnon/RssFile sampled every 10 ms; baseline = after the worker's imports",
        "generation": generation,
        "images_on_disk_mb": round(image_bytes / MB, 1),
        "embedding_matrix_mb": round(n * dim * 4 / MB, 1),
        "cache": {"entries": cache_files, "mb": round(cache_bytes / MB, 1)},
        "end_to_end": end_to_end,
        "matrix_seconds": matrix_seconds,
        "search": searches,
    }


if __name__ == "__main__":
    main()
