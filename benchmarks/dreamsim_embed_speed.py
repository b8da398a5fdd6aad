"""Throughput of DreamSim ``embed``: percepbench vs the official ``dreamsim`` package, identical random weights.

Writes random weights in the official on-disk formats to a temporary cache dir, builds both models from it,
checks they agree, and times ``embed`` (images/s) for the ensemble and ``dino_vitb16`` at batch 1/16/64:
fp32 and bf16 autocast on the CPU, and the same on CUDA when a GPU is present. Ratios are official time /
our time from the same run (> 1: percepbench is faster). Usage::

    python benchmarks/dreamsim_embed_speed.py [--batches 1,16,64] [--repeats 3] [--settings cpu:fp32,cuda:bf16]
        [--out docs/benchmarks/dreamsim_embed_speed.json]

Needs the test extras (the official ``dreamsim`` package).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from percepbench.models.dreamsim import build_dreamsim

from dreamsim_official import official_model, write_official_cache


def timed(fn, x, repeats: int, device: torch.device) -> float:
    """Best-of-``repeats`` seconds for one call, after one warm-up call."""
    with torch.no_grad():
        fn(x)
        best = float("inf")
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default="dino_vitb16,ensemble")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--settings", default="cpu:fp32,cpu:bf16,cuda:fp32,cuda:bf16",
                        help="device:precision pairs (precision fp32, or bf16 autocast); cuda ones are skipped "
                             "when no GPU is present")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    settings = []
    for item in args.settings.split(","):
        dev, _, precision = item.strip().partition(":")
        if dev not in ("cpu", "cuda") or precision not in ("fp32", "bf16"):
            parser.error(f"bad setting {item!r}: expected cpu|cuda:fp32|bf16")
        if dev == "cuda" and not torch.cuda.is_available():
            continue
        settings.append((torch.device(dev), torch.bfloat16 if precision == "bf16" else None))
    if not settings:
        parser.error(f"nothing to measure for --settings {args.settings!r} (no CUDA device here?)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        states = write_official_cache(root)
        for variant in args.variants.split(","):
            theirs, _ = official_model(root, states["dino"], dreamsim_type=variant)
            ours = build_dreamsim(variant, cache_dir=root)
            for device, dtype in settings:
                theirs.to(device)
                ours.to(device)
                for b in batches:
                    x = torch.rand(b, 3, 224, 224, device=device)

                    def run(model, x=x, device=device, dtype=dtype):
                        if dtype is None:
                            return model.embed(x)
                        with torch.autocast(device.type, dtype=dtype):
                            return model.embed(x)

                    # fp32 rows: agreement with the official model; bf16 rows: our bf16 against official fp32
                    with torch.no_grad():
                        err = ((run(ours).float() - theirs.embed(x).float()).abs().max().item()
                               if b <= 16 else None)

                    t_ours = timed(lambda x, m=ours: run(m, x), x, args.repeats, device)
                    t_theirs = timed(lambda x, m=theirs: run(m, x), x, args.repeats, device)
                    row = {"variant": variant, "device": str(device), "dtype": "bf16-autocast" if dtype else "fp32",
                           "batch": b, "ours_img_s": b / t_ours, "official_img_s": b / t_theirs,
                           "ratio": t_theirs / t_ours, "max_abs_embed_diff": err}
                    rows.append(row)
                    print(f"{variant:12s} {row['device']:5s} {row['dtype']:13s} batch {b:3d}: ours "
                          f"{row['ours_img_s']:7.2f} img/s, official {row['official_img_s']:7.2f} img/s, "
                          f"ratio {row['ratio']:.2f}" + (f", max |diff| {err:.1e}" if err is not None else ""),
                          flush=True)
            theirs.cpu()
            ours.cpu()
    meta = {"torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
