"""Benchmark: what the embedding path and the on-disk embedding cache save on a file-based 2AFC task.

A 2AFC task of N triplets of distinct 256x256 PNG files (as in NIGHTS and BAPPS, where each triplet has its
own reference) scored by a DreamSim metric with random weights (the cost does not depend on the weights):

- ``pairwise``: the pair-by-pair path (each reference embedded twice, once per comparison);
- ``embed, no cache``: each unique image embedded once (3 per triplet instead of 4);
- ``embed, cold cache``: the same, also writing the cache;
- ``embed, warm cache``: a re-run: every embedding read from the cache, no model time;
- ``embed, no cache, --precision bf16``: the embedding path under bf16 autocast.

Usage: ``python benchmarks/embedding_cache.py [--triplets 48] [--variant dino_vitb16] [--out docs/benchmarks]``.
Writes ``embedding_cache.json`` and ``embedding_cache.md`` next to the other benchmark results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from percepbench.config import RunConfig
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--triplets", type=int, default=48)
    parser.add_argument("--variant", default="dino_vitb16")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "benchmarks"))
    args = parser.parse_args()
    torch.manual_seed(0)
    metric = DreamSimMetric(variant=args.variant, pretrained=False, reduction="none")
    spec = METRICS.get(f"dreamsim.{args.variant}")
    device = torch.device("cpu")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "img").mkdir()
        task = make_task(tmp / "img", args.triplets)
        base = RunConfig(batch_size=args.batch_size, progress=False, embed_cache=False)
        cached = RunConfig(batch_size=args.batch_size, progress=False, embed_cache=str(tmp / "cache"))
        seconds, direct = timed(lambda: compute_distances(metric, task, spec, base, device, "pairwise"))
        rows.append({"path": "pairwise", "seconds": seconds, "images_embedded": 4 * args.triplets})
        for name, config in (("embed, no cache", base), ("embed, cold cache", cached), ("embed, warm cache", cached)):
            seconds, (dists, stats) = timed(lambda config=config, name=name: compute_distances_from_embeddings(
                metric, task, spec, config, device, name, file_hashes={}))
            assert np.allclose(dists["d0"], direct["d0"], atol=1e-5) and np.allclose(dists["d1"], direct["d1"], atol=1e-5)
            rows.append({"path": name, "seconds": seconds, "images_embedded": stats["embedded"],
                         "from_cache": stats["from_cache"]})
        # the same embedding path with the metric under bf16 autocast (`percepbench run --precision bf16`)
        bf16 = RunConfig(batch_size=args.batch_size, progress=False, embed_cache=False, precision="bf16")
        seconds, (dists, stats) = timed(lambda: compute_distances_from_embeddings(
            metric, task, spec, bf16, device, "bf16", file_hashes={}))
        drift = max(float(np.abs(dists[c] - direct[c]).max()) for c in ("d0", "d1"))
        rows.append({"path": "embed, no cache, --precision bf16", "seconds": seconds,
                     "images_embedded": stats["embedded"], "from_cache": 0, "max_abs_distance_change": drift})
    result = {"variant": args.variant, "triplets": args.triplets, "image_size": 256, "batch_size": args.batch_size,
              "device": "cpu", "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
              "cores": os.cpu_count(), "torch": torch.__version__, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "embedding_cache.json").write_text(json.dumps(result, indent=2) + "\n")
    pairwise = rows[0]["seconds"]
    lines = [f"# Embedding path and embedding cache: DreamSim `{args.variant}` (random weights), "
             f"{args.triplets} triplets of 256x256 PNG files, batch {args.batch_size}, CPU ({os.cpu_count()} cores)",
             "", "| path | images embedded | seconds | speed-up vs pairwise |", "|---|---:|---:|---:|"]
    lines += [f"| {r['path']} | {r['images_embedded']} | {r['seconds']:.2f} | {_ratio(pairwise, r['seconds'])} |"
              for r in rows]
    lines += ["", "Distances of every fp32 path agree with the pairwise path within 1e-5 (asserted by the script); "
              f"bf16 autocast moves them by at most {rows[-1]['max_abs_distance_change']:.1e}. "
              "Produced by `benchmarks/embedding_cache.py`; numbers from one run."]
    (out / "embedding_cache.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
