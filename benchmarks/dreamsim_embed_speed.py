"""Throughput of DreamSim ``embed``: percepbench vs the official ``dreamsim`` package, identical random weights.

Writes random weights in the official on-disk formats to a temporary cache dir, builds both models from it,
checks they agree, and times ``embed`` (images/s) for the ensemble and ``dino_vitb16`` at batch 1/16/64:
fp32 and bf16 autocast on the CPU, and the same on CUDA when a GPU is present (``bf16+compile``: also
``torch.compile`` on percepbench's side; the official model is never compiled). Times are the median of
``--repeats`` calls, ours and official interleaved, each after a warm-up; ratios are official median / our
median from the same run (> 1: percepbench is faster). Each row also gives the achieved model GFLOP/s
(images/s x the variant's GFLOP per image by formula, ``benchmarks/compute_rate.py``) and, with
``--peak-tflops`` (on H100/H200 bf16 rows 790 by default, the measured dense bf16 rate), its fraction of peak.
Usage::

    python benchmarks/dreamsim_embed_speed.py [--batches 1,16,64] [--repeats 3] [--settings cpu:fp32,cuda:bf16]
        [--peak-tflops 790] [--out docs/benchmarks/dreamsim_embed_speed.json]

Needs the test extras (the official ``dreamsim`` package).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from compute_rate import flops_per_image

from percepbench.cpu_info import cpu_facts
from percepbench.models.dreamsim import build_dreamsim

from dreamsim_official import official_model, write_official_cache

#: measured dense bf16 matmul rate of the GPUs percepbench was sized for (TFLOP/s), by name fragment
BF16_PEAK_TFLOPS = {"H100": 790.0, "H200": 790.0}


def timed_pair(ours, theirs, x, repeats: int, device: torch.device) -> tuple[list[float], list[float]]:
    """Seconds per call of ``ours(x)`` and ``theirs(x)``, ``repeats`` of each, interleaved, after one warm-up each.

    Interleaving (ours, theirs, ours, theirs, ...) puts both models under the same machine state in every
    round, so the ratio of the medians is not skewed by a slow spell hitting one of them only.
    """
    def once(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    t_ours: list[float] = []
    t_theirs: list[float] = []
    with torch.no_grad():
        ours(x)
        theirs(x)
        for _ in range(repeats):
            t_ours.append(once(ours))
            t_theirs.append(once(theirs))
    return t_ours, t_theirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,16,64")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", default="dino_vitb16,ensemble")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--settings", default="cpu:fp32,cpu:bf16,cuda:fp32,cuda:bf16",
                        help="device:precision pairs (precision fp32, bf16 autocast, or bf16+compile); cuda ones "
                             "are skipped when no GPU is present")
    parser.add_argument("--peak-tflops", type=float,
                        help="the device's peak rate for the fraction-of-peak column (default: 790 for bf16 rows "
                             "on H100/H200, else none)")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    settings = []
    for item in args.settings.split(","):
        dev, _, precision = item.strip().partition(":")
        if dev not in ("cpu", "cuda") or precision not in ("fp32", "bf16", "bf16+compile"):
            parser.error(f"bad setting {item!r}: expected cpu|cuda:fp32|bf16|bf16+compile")
        if dev == "cuda" and not torch.cuda.is_available():
            continue
        settings.append((torch.device(dev), None if precision == "fp32" else torch.bfloat16,
                         precision.endswith("+compile")))
    if not settings:
        parser.error(f"nothing to measure for --settings {args.settings!r} (no CUDA device here?)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        states = write_official_cache(root)
        for variant in args.variants.split(","):
            theirs, _ = official_model(root, states["dino"], dreamsim_type=variant)
            ours = build_dreamsim(variant, cache_dir=root)
            for device, dtype, compiled in settings:
                theirs.to(device)
                ours.to(device)
                embed = torch.compile(ours.embed) if compiled else ours.embed
                gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
                peak = args.peak_tflops or next((v for k, v in BF16_PEAK_TFLOPS.items() if k in gpu and dtype), None)
                for b in batches:
                    x = torch.rand(b, 3, 224, 224, device=device)

                    def run(model, x=x, device=device, dtype=dtype, embed=embed, ours=ours):
                        fn = embed if model is ours else model.embed
                        if dtype is None:
                            return fn(x)
                        with torch.autocast(device.type, dtype=dtype):
                            return fn(x)

                    # fp32 rows: agreement with the official model; bf16 rows: our bf16 against official fp32
                    with torch.no_grad():
                        err = ((run(ours).float() - theirs.embed(x).float()).abs().max().item()
                               if b <= 16 else None)

                    times_ours, times_theirs = timed_pair(lambda x, m=ours: run(m, x),
                                                          lambda x, m=theirs: run(m, x), x, args.repeats, device)
                    t_ours, t_theirs = statistics.median(times_ours), statistics.median(times_theirs)
                    gflops = b / t_ours * flops_per_image(variant)
                    row = {"variant": variant, "device": str(device),
                           "dtype": ("bf16-autocast" if dtype else "fp32") + ("+compile" if compiled else ""),
                           "batch": b, "ours_img_s": b / t_ours, "official_img_s": b / t_theirs,
                           "ratio": t_theirs / t_ours,
                           "ours_s": times_ours, "official_s": times_theirs, "max_abs_embed_diff": err, "ours_model_gflops": gflops,
                           "peak_tflops": peak, "fraction_of_peak": gflops / (peak * 1000) if peak else None}
                    rows.append(row)
                    print(f"{variant:12s} {row['device']:5s} {row['dtype']:13s} batch {b:3d}: ours "
                          f"{row['ours_img_s']:7.2f} img/s, official {row['official_img_s']:7.2f} img/s, "
                          f"ratio {row['ratio']:.2f}, {gflops:,.0f} GFLOP/s"
                          + (f" ({100 * row['fraction_of_peak']:.0f}% of {peak:.0f} TFLOP/s)" if peak else "")
                          + (f", max |diff| {err:.1e}" if err is not None else ""), flush=True)
            theirs.cpu()
            ours.cpu()
    meta = {"torch": torch.__version__, "cpu": cpu_facts(),
            "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
