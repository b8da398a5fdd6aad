"""Benchmark: what the embedding path and the on-disk embedding cache save on a file-based 2AFC task.

A 2AFC task of N triplets of distinct 256x256 PNG files (as in NIGHTS and BAPPS, where each triplet has its
own reference) scored by a DreamSim metric with random weights (the cost does not depend on the weights):

- ``pairwise``: the pair-by-pair path (each reference embedded twice, once per comparison);
- ``embed, no cache``: each unique image embedded once (3 per triplet instead of 4);
- ``embed, cold cache``: the same, also writing the cache;
- ``embed, warm cache``: a re-run: every embedding read from the cache, no model time;
- ``embed, no cache, --precision bf16``: the embedding path under bf16 autocast;
- ``embed, no cache, --precision int8``: the embedding path with percepbench's int8 linear layers (a
  quantised copy of the same model).

Every path runs once per round, ``--runs`` rounds (default 3); the table shows each path's median seconds
(min-max) and its speed-up as the median over rounds of pairwise / path from the same round; the JSON keeps
every round. One process runs everything (the model is built once): the numbers are the scoring calls, not
start-up (``nights_end_to_end.py`` times whole processes).

Usage: ``python benchmarks/embedding_cache.py [--triplets 48] [--variant dino_vitb16] [--batch-size 16]
[--runs 3] [--out docs/benchmarks]``. Writes ``embedding_cache.json`` and ``embedding_cache.md`` next to the
other benchmark results.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from percepbench.config import RunConfig
from percepbench.cpu_info import cpu_facts
from percepbench.metrics_registry.dreamsim import DreamSimMetric
from percepbench.registry import METRICS
from percepbench.runner import compute_distances, compute_distances_from_embeddings
from percepbench.tasks.csv_tasks import CSV2AFC


def make_task(folder: Path, n: int) -> CSV2AFC:
    rng = np.random.default_rng(0)
    rows = ["ref,left,right,p"]
    for i in range(n):
        names = []
        for slot in ("ref", "left", "right"):
            arr = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
            Image.fromarray(arr).save(folder / f"{i:04d}_{slot}.png")
            names.append(f"{i:04d}_{slot}.png")
        rows.append(",".join(names) + f",{rng.integers(0, 2)}")
    (folder / "triplets.csv").write_text("\n".join(rows) + "\n")
    task = CSV2AFC(path=str(folder / "triplets.csv"))
    task.prepare(progress=False)
    return task


def _ratio(a: float, b: float) -> str:
    r = a / max(b, 1e-9)
    return f"{r:.1f}x" if r < 100 else f"{r:,.0f}x"


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


PATHS = ("pairwise", "embed, no cache", "embed, cold cache", "embed, warm cache", "embed, no cache, --precision bf16",
         "embed, no cache, --precision int8")


def one_round(metric, int8_metric, task, spec, args, tmp: Path) -> dict[str, dict]:
    """Every path once; the fp32 embedding paths checked against the pairwise distances."""
    device = torch.device("cpu")
    cache = tmp / "cache"
    shutil.rmtree(cache, ignore_errors=True)  # the cold path starts from an empty cache every round
    base = RunConfig(batch_size=args.batch_size, progress=False, embed_cache=False)
    cached = RunConfig(batch_size=args.batch_size, progress=False, embed_cache=str(cache))
    rows: dict[str, dict] = {}
    seconds, direct = timed(lambda: compute_distances(metric, task, spec, base, device, "pairwise"))
    rows["pairwise"] = {"seconds": seconds, "images_embedded": 4 * args.triplets, "from_cache": 0}
    runs = (("embed, no cache", metric, base), ("embed, cold cache", metric, cached),
            ("embed, warm cache", metric, cached),
            ("embed, no cache, --precision bf16", metric, RunConfig(batch_size=args.batch_size, progress=False,
                                                                     embed_cache=False, precision="bf16")),
            ("embed, no cache, --precision int8", int8_metric, RunConfig(batch_size=args.batch_size,
                                                                          progress=False, embed_cache=False,
                                                                          precision="int8")))
    for name, model, config in runs:
        seconds, (dists, stats) = timed(lambda model=model, config=config, name=name: compute_distances_from_embeddings(
            model, task, spec, config, device, name, file_hashes={}))
        drift = max(float(np.abs(dists[c] - direct[c]).max()) for c in ("d0", "d1"))
        if config.precision == "fp32" and drift > 1e-5:
            raise SystemExit(f"{name}: distances differ from the pairwise path by {drift:.1e} (> 1e-5)")
        rows[name] = {"seconds": seconds, "images_embedded": stats["embedded"], "from_cache": stats["from_cache"],
                      "max_abs_distance_change": drift}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--triplets", type=int, default=48)
    parser.add_argument("--variant", default="dino_vitb16")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3, help="rounds of every path; the table shows medians")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "benchmarks"))
    args = parser.parse_args()
    if args.runs < 1 or args.triplets < 1:
        parser.error("--runs and --triplets must be at least 1")
    torch.manual_seed(0)
    metric = DreamSimMetric(variant=args.variant, pretrained=False, reduction="none")
    int8_metric = copy.deepcopy(metric).quantize_int8()  # what `--precision int8` runs, on the same weights
    spec = METRICS.get(f"dreamsim.{args.variant}")
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "img").mkdir()
        task = make_task(tmp / "img", args.triplets)
        for r in range(args.runs):
            print(f"round {r + 1}/{args.runs} ...", flush=True)
            rounds.append(one_round(metric, int8_metric, task, spec, args, tmp))
    rows = []
    for name in PATHS:
        seconds = [found[name]["seconds"] for found in rounds]
        ratios = [found["pairwise"]["seconds"] / max(found[name]["seconds"], 1e-9) for found in rounds]
        last = rounds[-1][name]
        rows.append({"path": name, "seconds": statistics.median(seconds), "min_s": min(seconds),
                     "max_s": max(seconds), "round_seconds": seconds, "speedup_vs_pairwise": statistics.median(ratios),
                     "images_embedded": last["images_embedded"], "from_cache": last["from_cache"],
                     "max_abs_distance_change": max(found[name].get("max_abs_distance_change", 0.0)
                                                    for found in rounds)})
    result = {"variant": args.variant, "triplets": args.triplets, "image_size": 256, "batch_size": args.batch_size,
              "runs": args.runs, "device": "cpu", "threads": torch.get_num_threads(), "cpu": cpu_facts(),
              "cores": os.cpu_count(), "torch": torch.__version__, "platform": platform.platform(),
              "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"), "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "embedding_cache.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "embedding_cache.md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    cpu, rows = result["cpu"], result["rows"]
    by = {r["path"]: r for r in rows}
    runs = result["runs"]
    lines = [f"# Embedding path and embedding cache: DreamSim `{result['variant']}` (random weights), "
             f"{result['triplets']} triplets of 256x256 PNG files, batch {result['batch_size']}, CPU",
             "",
             f"Script: `benchmarks/embedding_cache.py`; raw numbers (every round) in `embedding_cache.json`. Run on "
             f"{result['date'][:10]}: {cpu.get('model') or 'unknown CPU'} "
             f"({', '.join(cpu.get('accelerators') or []) or 'no AVX2/AVX-512/AMX'}), {result['cores']} cores "
             f"({result['threads']} torch threads), torch {result['torch']}. "
             + (f"Median of {runs} rounds (every path once per round, in the order of the table); speed-up = "
                "pairwise / path from the same round, median over rounds." if runs > 1 else "One round."),
             "", "| path | images embedded | seconds, median (min-max) | speed-up vs pairwise |", "|---|---:|---:|---:|"]
    for r in rows:
        spread = f" ({r['min_s']:.2f}-{r['max_s']:.2f})" if runs > 1 else ""
        lines.append(f"| {r['path']} | {r['images_embedded']} | {r['seconds']:.2f}{spread} | "
                     f"{_ratio(r['speedup_vs_pairwise'], 1.0)} |")
    lines += ["", "Distances of every fp32 path agree with the pairwise path within 1e-5 (checked by the script "
              "every round); bf16 autocast moves them by at most "
              f"{by['embed, no cache, --precision bf16']['max_abs_distance_change']:.1e}, int8 by at most "
              f"{by['embed, no cache, --precision int8']['max_abs_distance_change']:.1e} (random weights: see "
              "docs/performance.md for what that means for 2AFC decisions). The warm cache reads every embedding "
              "back from disk after hashing the files; no model time."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
