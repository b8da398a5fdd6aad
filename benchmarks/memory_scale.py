"""Benchmark: peak memory of `percepbench run` as a 2AFC set grows (issue 18 point 4).

A ``2afc_csv`` table of N triplets over a pool of U distinct 64x64 PNG files (seeded noise, the index
written into the first pixels so no two files are equal; every triplet draws three of them with a seeded
generator, ``p`` uniform in [0, 1]). Each size runs in its own **subprocess** (this file with ``--worker``)
so that every peak is that run's alone: :func:`percepbench.runner.run` with a cheap metric (``psnr`` by
default: the numbers are percepbench's own cost: reading and checking the table, decoding, the per-item
distances, scoring with bootstrap CIs, writing ``results.json`` and ``samples.parquet``), no report.

Memory is measured as in ``retrieval_scale.py`` (its :class:`MemoryWatch`: the kernel high-water mark, and
the growth over the worker's memory after its imports, split into anonymous and file-backed pages).
"Bounded" means the growth does not scale with N beyond the per-item results themselves (a few float64
columns and ids per triplet): the images are decoded batch by batch by the DataLoader and never held.

Every size runs ``--runs`` times, in interleaved rounds (every size once per round); the table shows the
median of each number over the rounds (wall seconds and peak RSS also as min-max), the JSON every run.

Usage: ``python benchmarks/memory_scale.py [--sizes 2000,20000,100000] [--pool 2000] [--metrics psnr]
[--out docs/benchmarks] [--workdir DIR] [--batch-size 32] [--n-boot 1000] [--runs 3]``. Writes
``memory_scale.json`` and ``memory_scale.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from retrieval_scale import MemoryWatch, environment, median_of_runs


def make_pool(folder: Path, n: int, seed: int) -> list[str]:
    """``n`` distinct 64x64 PNG files in ``folder``; their names."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        name = f"img{i:06d}.png"
        path = folder / name
        if not path.is_file():
            arr = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
            arr[0, :3, 0] = (i >> 16) & 255, (i >> 8) & 255, i & 255
            Image.fromarray(arr).save(path)
        names.append(name)
    return names


def make_table(path: Path, names: list[str], n: int, seed: int) -> None:
    """A ``2afc_csv`` table of ``n`` triplets (columns ref, left, right, p; paths relative to the table)."""
    import pandas as pd

    rng = np.random.default_rng(seed + 1)
    picks = np.stack([rng.choice(len(names), size=3, replace=False) for _ in range(n)])
    frame = pd.DataFrame({"ref": [f"images/{names[i]}" for i in picks[:, 0]],
                          "left": [f"images/{names[i]}" for i in picks[:, 1]],
                          "right": [f"images/{names[i]}" for i in picks[:, 2]],
                          "p": np.round(rng.uniform(0, 1, size=n), 3)})
    frame.to_csv(path, index=False)


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    from percepbench.config import RunConfig
    from percepbench.results import load_results
    from percepbench.runner import run

    watch = MemoryWatch().start()
    t0 = time.perf_counter()
    config = RunConfig(metrics=job["metrics"], tasks=["2afc_csv"], task_args={"2afc_csv": {"path": job["table"]}},
                       out=job["out"], device="cpu", batch_size=job["batch_size"], n_boot=job["n_boot"],
                       progress=False, embed_cache=False)
    run(config)
    seconds = time.perf_counter() - t0
    memory = watch.stop()
    results = load_results(job["out"])
    return {"triplets": job["triplets"], "seconds": round(seconds, 2), **memory,
            "samples": len(results.samples), "records": len(results.records),
            "samples_file_mb": round(Path(job["out"], "samples.parquet").stat().st_size / 2**20, 2)}


def _worker(job_file: str) -> None:
    job = json.loads(Path(job_file).read_text())
    Path(job["result"]).write_text(json.dumps(run_job(job)) + "\n")


def in_subprocess(job: dict[str, Any], workdir: Path, name: str) -> dict[str, Any]:
    import subprocess

    job_file, result_file = workdir / f"{name}.job.json", workdir / f"{name}.result.json"
    result_file.unlink(missing_ok=True)
    job_file.write_text(json.dumps({**job, "result": str(result_file)}))
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", str(job_file)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0 or not result_file.is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise SystemExit(f"{name} failed (exit {done.returncode}): {' | '.join(tail)}")
    return json.loads(result_file.read_text())


def _runs_text(runs: int) -> str:
    if runs == 1:
        return "One run per size; every row is a separate process."
    return (f"Median of {runs} runs per size in interleaved rounds (every size once per round; wall s and peak "
            "RSS also min-max); every run is a separate process.")


def _spread(row: dict[str, Any], key: str, digits: int) -> str:
    text = f"{row[key]:,.{digits}f}"
    if len(row.get("runs", [])) < 2:
        return text
    low, high = row["ranges"][key]
    return f"{text} ({low:,.{digits}f}-{high:,.{digits}f})"


def markdown(result: dict[str, Any]) -> str:
    env, rows = result["environment"], result["runs"]
    lines = [
        f"# Peak memory of `percepbench run` as a 2AFC set grows ({', '.join(result['metrics'])})",
        "",
        f"Script: `benchmarks/memory_scale.py`; raw numbers in `memory_scale.json`. Run on {env['date'][:10]}: "
        f"{env['cpu_model']} ({', '.join((env.get('cpu') or {}).get('accelerators') or []) or 'no AVX2/AVX-512/AMX'}), "
        f"{env['cores']} cores ({env['torch_threads']} torch threads), {env['memory_gb']} GB RAM, "
        f"{env['platform']}, torch {env['torch']}, device `cpu`. " + _runs_text(result.get("runs_per_size", 1)),
        "",
        f"`2afc_csv` tables of N triplets over a pool of {result['pool']:,} distinct 64x64 PNG files (every "
        f"triplet draws three), batch {result['batch_size']}, {result['n_boot']} bootstrap resamples, no "
        "report, no embedding cache. *growth*: peak over the worker's memory after its imports (anonymous = what "
        "the process holds; file-backed = mapped files).",
        "",
        "| triplets | wall s | triplets/s | peak RSS MB | RSS growth MB | anon growth MB | file-backed growth MB | "
        "samples rows | samples.parquet MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['triplets']:,} | {_spread(r, 'seconds', 1)} | {r['triplets'] / r['seconds']:,.0f} | "
                     f"{_spread(r, 'peak_rss_mb', 0)} | {r['rss_growth_mb']:,.0f} | {r.get('anon_growth_mb', float('nan')):,.0f} | "
                     f"{r.get('file_growth_mb', float('nan')):,.0f} | {r['samples']:,} | {r['samples_file_mb']:.2f} |")
    lines += ["", "## Reading", ""]
    small, large = rows[0], rows[-1]
    extra = large["triplets"] - small["triplets"]
    if extra > 0:
        per_k = (large.get("anon_growth_mb", large["rss_growth_mb"])
                 - small.get("anon_growth_mb", small["rss_growth_mb"]))
        lines.append(
            f"- From {small['triplets']:,} to {large['triplets']:,} triplets "
            f"({large['triplets'] / small['triplets']:.0f}x), the anonymous-memory growth changed by {per_k:+.0f} MB, "
            f"i.e. {1000 * per_k / extra:+.2f} MB per 1,000 extra triplets: the per-item results (ids, paths, a "
            "few float64 columns per triplet), not the images, which are decoded batch by batch and dropped.")
    if [r["triplets"] for r in rows] == [2000, 20000, 100000] and result["pool"] == 2000:
        lines.append(
            "- Before the runner wrote each batch's distances into preallocated arrays (it kept one small tensor "
            "per batch alive between the large transient image buffers, which fragmented the heap), the same "
            "three sizes peaked at 979, 1,781 and 2,377 MB on a 2-core AMD EPYC (one run each, anonymous growth "
            "115, 908 and 1,505 MB): about 15 MB per 1,000 triplets.")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", default="2000,20000,100000")
    parser.add_argument("--pool", type=int, default=2000)
    parser.add_argument("--metrics", default="psnr")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--out", default="docs/benchmarks")
    parser.add_argument("--workdir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=int, default=3, help="runs of every size; the table shows medians")
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker)
        return
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    sizes = [int(s) for s in args.sizes.split(",")]
    metrics = [m for m in args.metrics.split(",") if m]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        names = make_pool(work / "images", args.pool, args.seed)
        for n in sizes:
            make_table(work / f"triplets_{n}.csv", names, n, args.seed)
        found: dict[int, list[dict[str, Any]]] = {n: [] for n in sizes}
        for round_ in range(args.runs):
            for n in sizes:
                out = work / f"run_{n}"
                if out.exists():
                    import shutil

                    shutil.rmtree(out)
                job = {"metrics": metrics, "table": str(work / f"triplets_{n}.csv"), "out": str(out),
                       "batch_size": args.batch_size, "n_boot": args.n_boot, "triplets": n}
                print(f"{n:,} triplets, round {round_ + 1}/{args.runs} ...", flush=True)
                found[n].append(in_subprocess(job, work, f"run_{n}"))
                print(f"  {found[n][-1]['seconds']} s, peak RSS {found[n][-1]['peak_rss_mb']} MB", flush=True)
    result = {"environment": environment("cpu"), "metrics": metrics, "pool": args.pool,
              "batch_size": args.batch_size, "n_boot": args.n_boot, "runs_per_size": args.runs,
              "runs": [median_of_runs(found[n]) for n in sizes]}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory_scale.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "memory_scale.md").write_text(markdown(result))
    print(f"wrote {out / 'memory_scale.md'}")


if __name__ == "__main__":
    main()
