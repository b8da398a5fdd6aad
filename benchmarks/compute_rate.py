"""Benchmark: this machine's fp32 (and bf16) matrix-multiply rate, and the FLOPs of one DreamSim image.

The yardstick of docs/performance.md: achieved GFLOP/s of a model = images/s x FLOPs per image, compared with
what the same machine reaches on a plain large matrix product.

- **Rate**: ``torch.mm`` of two square matrices (``--size``, default 2048) in fp32 and in bf16, ``--repeats``
  timed calls after a warm-up; median, min and max GFLOP/s (2 n^3 FLOPs a product).
- **FLOPs per image**: by formula from the backbone configs (:func:`vit_gflop`; ``tests/test_benchmarks_memory.py``
  checks it against ``torch.utils.flop_counter.FlopCounterMode``, which does not count the fused attention).

Usage: ``python benchmarks/compute_rate.py [--size 2048] [--repeats 7] [--out docs/benchmarks]``; writes
``compute_rate.json`` and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch


def matmul_rate(size: int, repeats: int, dtype: torch.dtype) -> dict[str, float]:
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    torch.mm(a, b)  # warm-up
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        rates.append(2 * size**3 / (time.perf_counter() - t0) / 1e9)
    return {"median_gflops": round(statistics.median(rates), 1), "min_gflops": round(min(rates), 1),
            "max_gflops": round(max(rates), 1)}


def vit_gflop(backbone: str) -> float:
    """GFLOP of one 224x224 image through a backbone of :data:`percepbench.models.configs.BACKBONES`, by
    formula (2 FLOPs per multiply-add): patch embedding, per block the fused qkv, the two attention products
    (T x T x width each), the output projection and the MLP (4 x width hidden), and the CLIP projection.
    LayerNorms, softmax, GELU and additions (under 1%) are left out."""
    from percepbench.models.configs import BACKBONES

    cfg = BACKBONES[backbone]
    patches = (224 // cfg.patch_size) ** 2
    t, d, hidden = patches + 1, cfg.width, 4 * cfg.width
    block = 2 * t * d * 3 * d + 2 * 2 * t * t * d + 2 * t * d * d + 2 * 2 * t * d * hidden
    total = 2 * patches * 3 * cfg.patch_size**2 * d + cfg.depth * block + 2 * d * (cfg.proj_dim or 0)
    return total / 1e9


def flops_per_image(variant: str) -> float:
    """GFLOP of one image through a DreamSim variant: the sum of its backbones (:func:`vit_gflop`)."""
    from percepbench.models.configs import VARIANTS

    return sum(vit_gflop(b) for b in VARIANTS[variant].backbones)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--variants", default="dino_vitb16,ensemble")
    parser.add_argument("--out", default="docs/benchmarks")
    args = parser.parse_args()
    from percepbench.runner import cpu_model

    result = {
        "cpu_model": cpu_model(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "matmul_size": args.size, "repeats": args.repeats,
        "fp32": matmul_rate(args.size, args.repeats, torch.float32),
        "bf16": matmul_rate(args.size, args.repeats, torch.bfloat16),
        "gflop_per_image": {v: round(flops_per_image(v), 2) for v in args.variants.split(",") if v},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compute_rate.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
