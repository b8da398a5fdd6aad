"""What int8 costs DreamSim in accuracy, and what it buys in speed: percepbench's int8 layers against fp32 and
against torch's ``quantize_dynamic`` (the scheme percepbench used before, kept here as the reference point).

Builds DreamSim (``--variant``, LoRA merged as ``DreamSimMetric`` does) from random weights written in the
official formats, three times: fp32, percepbench int8 (:mod:`percepbench.int8`: per-row activations), and
``torch.ao.quantization.quantize_dynamic`` (per-tensor activations, one scale per batch). Images: the real
photographs in ``../shared/fixtures`` (DreamSim demo and LPIPS example images), each in four views (whole,
mirrored, centre crop, rotated), so every pair of views is a distance. For each int8 scheme:

- embedding error against fp32 (max |diff| over elements, normalised embeddings) and the distance error over
  every pair (median and max of |d_int8 - d_fp32|);
- batch dependence: max |diff| between an image embedded in the whole batch and embedded alone;
- speed: images/s of ``embed`` at ``--batch`` (median of ``--repeats`` calls, the three models interleaved).

Usage: ``python benchmarks/int8_accuracy.py [--variant dino_vitb16] [--batch 16] [--repeats 3]
[--out docs/benchmarks]``; writes ``int8_accuracy.json`` and ``int8_accuracy.md`` into ``--out``.
Needs the test extras (the official ``dreamsim`` package writes the weights' official formats).
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from percepbench.cpu_info import cpu_facts  # noqa: E402
from percepbench.int8 import SCHEME, quantize_linears  # noqa: E402
from percepbench.models.dreamsim import build_dreamsim, preprocess  # noqa: E402

FIXTURES = ROOT.parent / "shared" / "fixtures"


def views(path: Path) -> list[torch.Tensor]:
    """Four (1, 3, 224, 224) views of one photograph: whole, mirrored, centre crop (70%), rotated 90 degrees."""
    im = Image.open(path).convert("RGB")
    w, h = im.size
    crop = im.crop((int(0.15 * w), int(0.15 * h), int(0.85 * w), int(0.85 * h)))
    return [preprocess(v) for v in (im, ImageOps.mirror(im), crop, im.rotate(90, expand=True))]


def torch_dynamic(model: torch.nn.Module) -> torch.nn.Module:
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)


def pair_distances(e: torch.Tensor) -> torch.Tensor:
    """1 - cosine for every pair i < j of the rows of ``e``."""
    e = torch.nn.functional.normalize(e, dim=-1)
    i, j = torch.triu_indices(len(e), len(e), offset=1)
    return 1 - (e[i] * e[j]).sum(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="dino_vitb16")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", default=str(FIXTURES), help="a folder of photographs (PNG/JPEG, searched "
                                                                 "recursively; default: the shared fixtures)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks"))
    args = parser.parse_args()
    files = sorted(p for p in Path(args.images).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if len(files) < 2:
        parser.error(f"{args.images}: fewer than 2 images")
    x = torch.cat([v for f in files for v in views(f)])
    with tempfile.TemporaryDirectory() as tmp:
        from dreamsim_official import write_official_cache

        write_official_cache(Path(tmp))
        fp32 = build_dreamsim(args.variant, cache_dir=tmp, merge=True).eval()
    ours = copy.deepcopy(fp32)
    quantize_linears(ours)
    models = {"fp32": fp32, "percepbench int8": ours, "torch quantize_dynamic": torch_dynamic(copy.deepcopy(fp32))}
    with torch.inference_mode():
        emb = {name: m.embed(x) for name, m in models.items()}
        alone = {name: torch.cat([m.embed(x[i:i + 1]) for i in range(len(x))]) for name, m in models.items()}
        batch = x[:args.batch] if len(x) >= args.batch else x.repeat((args.batch + len(x) - 1) // len(x), 1, 1, 1)[
            :args.batch]
        times: dict[str, list[float]] = {name: [] for name in models}
        for m in models.values():
            m.embed(batch)  # warm-up
        for _ in range(args.repeats):
            for name, m in models.items():
                t0 = time.perf_counter()
                m.embed(batch)
                times[name].append(time.perf_counter() - t0)
    d_fp32 = pair_distances(emb["fp32"])
    rows = []
    for name in models:
        err = (pair_distances(emb[name]) - d_fp32).abs()
        rows.append({
            "model": name, "img_s": args.batch / statistics.median(times[name]), "seconds": times[name],
            "max_abs_embedding_diff": (emb[name] - emb["fp32"]).abs().max().item(),
            "median_abs_distance_error": err.median().item(), "max_abs_distance_error": err.max().item(),
            "batch_dependence": (emb[name] - alone[name]).abs().max().item(),
        })
    fp32_rate = rows[0]["img_s"]
    meta = {"date": _dt.date.today().isoformat(), "variant": args.variant, "batch": args.batch,
            "repeats": args.repeats, "images": len(x), "pairs": len(d_fp32),
            "median_fp32_distance": d_fp32.median().item(), "int8_scheme": SCHEME, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpu": cpu_facts(), "weights": "random, official formats"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "int8_accuracy.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    cpu = meta["cpu"]
    lines = [
        "# int8 on the CPU: accuracy against fp32, batch dependence, speed",
        "",
        f"`python benchmarks/int8_accuracy.py --variant {args.variant} --batch {args.batch} --repeats "
        f"{args.repeats}` ({meta['date']}): DreamSim `{args.variant}` (LoRA merged), random weights in the "
        f"official formats, {len(x)} views of the {len(files)} fixture photographs, {len(d_fp32)} pairs "
        f"(median fp32 distance {meta['median_fp32_distance']:.4f}); {meta['threads']} threads, torch "
        f"{meta['torch']}, CPU {cpu.get('model')} ({', '.join(cpu.get('flags', []))}). Speed: `embed` at batch "
        f"{args.batch}, median of {args.repeats} calls, the models interleaved.",
        "",
        "| model | img/s | vs fp32 | max abs embedding diff | distance error, median | distance error, max "
        "| batch dependence |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['img_s']:.2f} | {r['img_s'] / fp32_rate:.2f}x | "
                     f"{r['max_abs_embedding_diff']:.1e} | {r['median_abs_distance_error']:.1e} | "
                     f"{r['max_abs_distance_error']:.1e} | {r['batch_dependence']:.1e} |")
    lines += ["", "Batch dependence: max |diff| between an image's embedding computed in the whole batch and "
              "computed alone (fp32: rounding only)."]
    (out / "int8_accuracy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
