"""End-to-end NIGHTS 2AFC evaluation: ``percepbench run`` against the official evaluation procedure.

What is timed is a whole process, start-up and model load included, as a user runs it:

- ``official``: the official evaluation procedure (the ``dreamsim`` 0.2.1 package's model built by
  ``dreamsim.dreamsim()``; the DreamSim repository's NIGHTS evaluation loop: a ``DataLoader`` over
  ``data.csv`` filtered to ``votes >= 6`` and ``split == "test"``, each image opened with PIL, resized to
  224x224 bicubic and made a tensor, then ``model(ref, left)`` and ``model(ref, right)`` per batch, so four
  images are embedded per triplet), always fp32;
- ``percepbench <setting>``: ``python -m percepbench run -m dreamsim.<variant> -t nights`` on the same
  files and the same weights, with ``--precision`` fp32 / bf16 / int8 (and ``+compile`` for
  ``torch.compile``; on CUDA ``cuda:`` settings). Its report is written as usual.

The data are generated NIGHTS-layout triplets (``nights/data.csv``, ``ref/`` and ``distort/`` PNGs of
768x768 smooth random images, as the release's image size); the weights are random ones written in the
official file formats (``tests/dreamsim_official.py``), the same files for both sides. Rounds run the
settings one after the other, rotating their order each round so that no setting always goes first; the
table gives the median, min and max over rounds, and each ratio is official / setting from the same round
(median of the per-round ratios). Scores and the per-triplet 2AFC decisions of every setting are compared
with the official ones (agreement = share of triplets whose decision, d0 < d1 or d1 < d0, is the same).

Usage (needs the test extras: the official ``dreamsim`` package)::

    python benchmarks/nights_end_to_end.py [--triplets 500] [--rounds 3] [--settings fp32,int8]
        [--variant dino_vitb16] [--batch-size 16] [--device cpu] [--out docs/benchmarks]

Writes ``nights_end_to_end.json`` (every process's wall time, score and agreement, the CPU model and its
flags) and ``nights_end_to_end.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

#: The official procedure, run in its own process: argv = nights folder, weights dir, variant, batch size,
#: device, workers, output JSON. It imports only the official package and the test helper that stands in for
#: torch.hub (the network) with the same random DINO weights.
OFFICIAL = r'''
import json, sys, time
t_start = time.perf_counter()
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

sys.path.insert(0, sys.argv[8])
from dreamsim_official import official_model

nights, weights, variant, batch, device, workers, out = sys.argv[1:8]


class TwoAFC(Dataset):  # the official NIGHTS test loader: votes >= 6, one split, PIL + bicubic 224
    def __init__(self, root):
        csv = pd.read_csv(f"{root}/data.csv")
        self.csv = csv[(csv["votes"] >= 6) & (csv["split"] == "test")].reset_index(drop=True)
        self.root = root
        self.tf = transforms.Compose([transforms.Resize((224, 224), interpolation=transforms.InterpolationMode.BICUBIC),
                                      transforms.ToTensor()])

    def __len__(self):
        return len(self.csv)

    def load(self, rel):
        return self.tf(Image.open(f"{self.root}/{rel}").convert("RGB"))

    def __getitem__(self, i):
        row = self.csv.iloc[i]
        return (self.load(row["ref_path"]), self.load(row["left_path"]), self.load(row["right_path"]),
                torch.tensor(float(row["right_vote"])), int(row["id"]))


dino = torch.load(f"{weights}/checkpoints/dino_vitbase16_pretrain.pth", weights_only=True)
model, _ = official_model(__import__("pathlib").Path(weights), dino, dreamsim_type=variant)
model = model.to(device)
loader = DataLoader(TwoAFC(nights), batch_size=int(batch), shuffle=False, num_workers=int(workers))
d0s, d1s, targets, ids = [], [], [], []
with torch.no_grad():
    for ref, left, right, target, idx in loader:
        ref, left, right = ref.to(device), left.to(device), right.to(device)
        d0s.append(model(ref, left).cpu())
        d1s.append(model(ref, right).cpu())
        targets.append(target)
        ids.append(idx)
d0, d1, p = torch.cat(d0s), torch.cat(d1s), torch.cat(targets)
score = ((d0 < d1) * (1 - p) + (d1 < d0) * p + (d1 == d0) * 0.5).mean().item()
json.dump({"score": score, "id": torch.cat(ids).tolist(), "d0": d0.tolist(), "d1": d1.tolist(),
           "inside_s": time.perf_counter() - t_start}, open(out, "w"))
'''


def cpu_facts() -> dict:
    from percepbench.cpu_info import cpu_facts as facts

    return facts()


def _triplet(args: tuple[Path, int, int, int]) -> dict:
    """Write the three images of triplet ``i`` (its own random stream: the files do not depend on how many
    processes write them) and return its ``data.csv`` row."""
    from PIL import Image

    nights, i, size, seed = args
    rng = np.random.default_rng([seed, i])
    chunk = f"{i // 1000:03d}"
    paths = {"ref": f"ref/{chunk}/{i % 1000:03d}.png", "left": f"distort/{chunk}/{i % 1000:03d}_0.png",
             "right": f"distort/{chunk}/{i % 1000:03d}_1.png"}
    base = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    for slot, rel in paths.items():
        small = base if slot == "ref" else np.clip(base.astype(int) + rng.integers(-60, 61, base.shape), 0, 255)
        img = Image.fromarray(small.astype(np.uint8)).resize((size, size), Image.BICUBIC)
        arr = np.asarray(img).astype(np.int16) + rng.integers(-6, 7, (size, size, 3))
        (nights / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(nights / rel)
    p = float(rng.integers(0, 2))
    return {"id": i, "left_vote": 1 - p, "right_vote": p, "votes": 6, "ref_path": paths["ref"],
            "left_path": paths["left"], "right_path": paths["right"], "split": "test", "is_imagenet": bool(i % 2),
            "prompt": f"prompt {i}"}


def write_nights(folder: Path, n: int, size: int, seed: int = 0) -> Path:
    """``n`` NIGHTS-layout test triplets of smooth random ``size``-pixel images (p in {0, 1}, votes 6),
    written by all cores."""
    from concurrent.futures import ProcessPoolExecutor

    import pandas as pd

    nights = folder / "nights"
    jobs = [(nights, i, size, seed) for i in range(n)]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        rows = list(pool.map(_triplet, jobs, chunksize=16))
    pd.DataFrame(rows).to_csv(nights / "data.csv", index=False)
    return nights


def run_official(work: Path, nights: Path, weights: Path, args: argparse.Namespace, k: int) -> dict:
    script = work / "official_eval.py"
    script.write_text(OFFICIAL)
    out = work / f"official_{k}.json"
    wall, rss = timed_process([sys.executable, str(script), str(nights), str(weights), args.variant,
                               str(args.batch_size), args.device, str(args.official_workers), str(out),
                               str(ROOT / "tests")], work, _env(args))
    res = json.loads(out.read_text())
    order = np.argsort(res["id"])
    return {"wall_s": wall, "peak_rss_mb": rss, "score": res["score"], "inside_s": res["inside_s"],
            "d0": np.asarray(res["d0"])[order], "d1": np.asarray(res["d1"])[order]}


def _high_water_mb(pid: int) -> float | None:
    """``VmHWM`` of a running process (Linux): the peak resident set of its current program, in MB."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


def timed_process(cmd: list[str], cwd: Path, env: dict, quiet: bool = False) -> tuple[float, float | None]:
    """Run ``cmd``; its wall time (s) and peak RSS (MB), or None where ``/proc`` is absent.

    The peak is the child's ``VmHWM``, read every 0.2 s while it runs (the last reading is within 0.2 s of its
    exit). Not ``wait4``'s ``ru_maxrss``: Linux carries the parent's peak into a forked child across exec, and
    this process holds the generated weights. Raises ``CalledProcessError`` when the command fails."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL if quiet else None)
    peak = None
    while proc.poll() is None:
        hwm = _high_water_mb(proc.pid)
        if hwm is not None:
            peak = max(peak or 0.0, hwm)
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    return wall, peak


def _env(args: argparse.Namespace) -> dict:
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    return env


def run_percepbench(work: Path, data_root: Path, weights: Path, setting: str, args: argparse.Namespace,
                    k: int) -> dict:
    import pandas as pd

    device, _, precision = setting.rpartition(":")
    precision, _, extra = precision.partition("+")
    out = work / f"run_{setting.replace(':', '_').replace('+', '_')}_{k}"
    metric = f"dreamsim.{args.variant}"
    cmd = [sys.executable, "-m", "percepbench", "run", "-m", metric, "-t", "nights", "--data-root",
           str(data_root), "--out", str(out), "--overwrite", "--no-embed-cache", "--quiet", "--precision",
           precision, "--batch-size", str(args.batch_size), "--device", device or args.device,
           "--metric-args", f"{metric}:cache_dir={weights}", "--n-boot", "1000"]
    if extra == "compile":
        cmd.append("--compile")
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    wall, rss = timed_process(cmd, work, _env(args), quiet=True)
    results = json.loads((out / "results.json").read_text())
    samples = pd.read_parquet(out / "samples.parquet")
    samples = samples.assign(id=samples["item"].astype(int)).sort_values("id").drop_duplicates("id")
    score = [r for r in results["records"] if r["measure"] == "2afc_accuracy" and r["subset"] == "all"]
    return {"wall_s": wall, "peak_rss_mb": rss, "score": float(score[0]["value"]) / 100 if score else float("nan"),
            "d0": samples["d0"].to_numpy(), "d1": samples["d1"].to_numpy(), "meta": results["meta"]}


def agreement(a: dict, b: dict) -> float:
    da = np.sign(a["d1"] - a["d0"])
    db = np.sign(b["d1"] - b["d0"])
    return float((da == db).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--triplets", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settings", default="fp32,int8",
                        help="percepbench settings, comma-separated: [device:]precision[+compile], precision fp32, "
                             "bf16, fp16 or int8 (default fp32,int8)")
    parser.add_argument("--variant", default="dino_vitb16")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--official-workers", type=int, default=0,
                        help="DataLoader workers of the official procedure (default 0, as percepbench on the CPU)")
    parser.add_argument("--size", type=int, default=768, help="image side of the generated files (default 768)")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS / --threads of every process")
    parser.add_argument("--weights", help="an official DreamSim cache dir holding the real files (the "
                                          "variant's backbone, its LoRA folder and checkpoints/ for DINO) instead "
                                          "of random weights")
    parser.add_argument("--nights", help="a real NIGHTS folder (data.csv, ref/, distort/) instead of generated "
                                         "triplets: its filtered test split is scored")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks"))
    parser.add_argument("--work", help="working folder, kept (its data and weights are reused when they match); "
                                       "default: a temporary one, removed afterwards")
    parser.add_argument("--rewrite", action="store_true",
                        help="measure nothing: recompute the derived fields of --out's results and rewrite them")
    args = parser.parse_args()
    if args.rewrite:
        rewrite(Path(args.out))
        return
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]

    sys.path.insert(0, str(ROOT / "tests"))
    import pandas as pd
    import torch

    from dreamsim_official import write_official_cache

    with contextlib.ExitStack() as stack:
        if args.work:
            work = Path(args.work)
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        t0 = time.perf_counter()
        nights = Path(args.nights) if args.nights else work / "data" / "nights"
        weights = Path(args.weights) if args.weights else work / "weights"
        if args.nights:
            csv = pd.read_csv(nights / "data.csv")
            args.triplets = int(((csv["votes"] >= 6) & (csv["split"] == "test")).sum())
        elif not (nights / "data.csv").is_file() or len(pd.read_csv(nights / "data.csv")) != args.triplets:
            write_nights(work / "data", args.triplets, args.size)
        if not args.weights and not (weights / "checkpoints").is_dir():
            write_official_cache(weights)
        print(f"data and weights ready in {time.perf_counter() - t0:.0f} s", flush=True)
        names = ["official", *settings]
        runs: dict[str, list[dict]] = {n: [] for n in names}
        for k in range(args.rounds):
            order = names[k % len(names):] + names[:k % len(names)]
            for name in order:
                res = (run_official(work, nights, weights, args, k) if name == "official" else
                       run_percepbench(work, nights.parent, weights, name, args, k))
                res["round"] = k
                runs[name].append(res)
                print(f"round {k + 1}/{args.rounds} {name:>16s}: {res['wall_s']:7.1f} s, 2AFC {res['score']:.4f}",
                      flush=True)
        official = runs["official"]
        rows = []
        for name in names:
            walls = [r["wall_s"] for r in runs[name]]
            rss = [r["peak_rss_mb"] for r in runs[name] if r.get("peak_rss_mb") is not None]
            row = {"setting": name, "wall_s": walls, "peak_rss_mb": max(rss) if rss else None, "median_s": statistics.median(walls), "min_s": min(walls),
                   "max_s": max(walls), "score": [r["score"] for r in runs[name]],
                   "images_embedded": (4 if name == "official" else 3) * args.triplets}
            if name != "official":
                row["ratios"] = [o["wall_s"] / r["wall_s"] for o, r in zip(official, runs[name], strict=True)]
                row["median_ratio"] = statistics.median(row["ratios"])
                row["decision_agreement"] = min(agreement(official[i], r) for i, r in enumerate(runs[name]))
                row["max_abs_distance_diff"] = max(
                    float(np.max(np.abs(np.concatenate([r["d0"] - o["d0"], r["d1"] - o["d1"]]))))
                    for o, r in zip(official, runs[name], strict=True))
            rows.append(row)
        derive(rows)
        meta = {"triplets": args.triplets, "weights": "real (--weights)" if args.weights else "random",
                "data": "NIGHTS (--nights)" if args.nights else "generated", "rounds": args.rounds, "variant": args.variant,
                "batch_size": args.batch_size, "device": args.device, "image_size": args.size,
                "official_workers": args.official_workers, "torch": torch.__version__,
                "threads": args.threads or torch.get_num_threads(), "cpu": cpu_facts(),
                "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                "date": time.strftime("%Y-%m-%d")}
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "nights_end_to_end.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
        (out / "nights_end_to_end.md").write_text(markdown(meta, rows))
        print(markdown(meta, rows))


def derive(rows: list[dict]) -> None:
    """Fields computed from each row's per-round values: ``identical_score`` (every round's 2AFC score equals
    the official one of the same round; both are means of multiples of 1/2 over the same n triplets, so two
    scores that differ differ by at least 1/(2n): equal to 1e-6 (the official score is a float32 mean) means
    equal)."""
    official = rows[0]["score"]
    for row in rows[1:]:
        row["identical_score"] = all(abs(a - b) < 1e-6 for a, b in zip(row["score"], official, strict=True))


def rewrite(out: Path) -> None:
    """``--rewrite``: recompute the derived fields of ``out/nights_end_to_end.json`` and rewrite both files
    (for a table whose measurements are kept while the script's derived columns changed)."""
    data = json.loads((out / "nights_end_to_end.json").read_text())
    derive(data["rows"])
    (out / "nights_end_to_end.json").write_text(json.dumps(data, indent=2) + "\n")
    (out / "nights_end_to_end.md").write_text(markdown(data["meta"], data["rows"]))


def markdown(meta: dict, rows: list[dict]) -> str:
    cpu = meta["cpu"]
    lines = [
        "# End-to-end NIGHTS 2AFC: percepbench against the official procedure", "",
        f"`python benchmarks/nights_end_to_end.py --triplets {meta['triplets']} --rounds {meta['rounds']}` "
        f"({meta['date']}): {meta['triplets']} {meta['data']} NIGHTS-layout triplets ({meta['image_size']}x"
        f"{meta['image_size']} PNG), DreamSim `{meta['variant']}` with {meta['weights']} weights in the official formats, "
        f"batch {meta['batch_size']}, device {meta['device']}, {meta['threads']} threads, torch {meta['torch']}; "
        f"CPU {cpu.get('model')} ({', '.join(cpu.get('accelerators') or ['no AVX-512/AMX'])}). Wall time of the "
        "whole process (start-up, model load, data loading, scoring, writing), median (min-max) over rounds; "
        "ratio = official / setting in the same round, median over rounds; agreement = share of triplets with "
        "the same 2AFC decision as the official procedure (worst round).", "",
        "| setting | images embedded | wall s, median (min-max) | speed-up vs official | 2AFC score | "
        "decision agreement | max abs distance diff | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = f"{r['median_ratio']:.2f}x" if "median_ratio" in r else "1"
        agree = f"{100 * r['decision_agreement']:.1f}%" if "decision_agreement" in r else "-"
        diff = f"{r['max_abs_distance_diff']:.1e}" if "max_abs_distance_diff" in r else "-"
        same = " (identical)" if r.get("identical_score") else ""
        rss = f"{r['peak_rss_mb']:,.0f}" if r.get("peak_rss_mb") else "-"
        lines.append(f"| {r['setting']} | {r['images_embedded']} | {r['median_s']:.1f} ({r['min_s']:.1f}-"
                     f"{r['max_s']:.1f}) | {ratio} | {r['score'][0]:.4f}{same} | {agree} | {diff} | {rss} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
