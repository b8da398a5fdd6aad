"""A realistic synthetic run directory for the report tests (written with ``percepbench.results``).

``make_run(path)`` writes one of each task kind the reports draw figures for: a 2AFC task with several
subsets and per-item samples and an odd-one-out task, plus a failed (task, metric) pair. Everything is drawn
from a seeded generator, so two calls give identical files.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from percepbench.results import ALL, RunResults, records_frame, write_results

METRICS = ("alpha", "beta.v1", "gamma_long_metric_name.variant_b")
SUBSETS = ("blur", "noise", "jpeg")


def _ci(values: np.ndarray) -> tuple[float, float]:
    """Normal-approximation 95% CI of a mean (x 100), clipped to [0, 100]."""
    m = float(values.mean()) * 100
    half = 196 * float(values.std(ddof=0)) / max(np.sqrt(len(values)), 1)
    return max(0.0, m - half), min(100.0, m + half)


def _score_records(task: str, frame: pd.DataFrame, measure: str) -> list[dict[str, Any]]:
    out = []
    for metric, per_metric in frame.groupby("metric", sort=False):
        groups = [(s, g) for s, g in per_metric.groupby("subset", sort=False)]
        if len(groups) > 1:
            groups.append((ALL, per_metric))
        for subset, g in groups:
            lo, hi = _ci(g["score"].to_numpy())
            out.append({"task": task, "subset": str(subset), "metric": metric, "measure": measure,
                        "value": float(g["score"].mean() * 100), "ci_low": lo, "ci_high": hi, "n": len(g)})
    return out


def twoafc_samples(task: str, metrics: Sequence[str], subsets: Sequence[str], per_subset: int,
                   rng: np.random.Generator) -> pd.DataFrame:
    """2AFC items (hard labels, a few soft ones and exact ties) with metric-dependent noise."""
    rows = []
    truth = rng.normal(size=(len(subsets), per_subset))  # > 0: the right image is closer
    for mi, metric in enumerate(metrics):
        scale = 10.0 ** (mi % 3)  # metrics live on different distance scales
        for si, subset in enumerate(subsets):
            for i in range(per_subset):
                signal = truth[si, i] + rng.normal(scale=0.4 + 0.3 * mi)
                d0 = scale * (1.0 + abs(rng.normal()))
                d1 = d0 - scale * 0.3 * signal
                if i == 0:
                    d1 = d0  # an exact tie in every subset
                p = 1.0 if truth[si, i] > 0 else 0.0
                if i == 1:
                    p = 0.5  # a soft label of exactly one half: score 0.5 whatever the distances
                rows.append({"task": task, "metric": metric, "item": f"{subset}/{i:04d}", "subset": subset,
                             "p": p, "d0": d0, "d1": d1})
    df = pd.DataFrame(rows)
    d0, d1, p = df["d0"].to_numpy(), df["d1"].to_numpy(), df["p"].to_numpy()
    df["score"] = np.where(d0 < d1, 1.0 - p, np.where(d1 < d0, p, 0.5))
    return df


def odd_samples(task: str, metrics: Sequence[str], n: int, rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for mi, metric in enumerate(metrics):
        for i in range(n):
            d = rng.uniform(0.1, 1.0, size=3) * (1 + mi)
            if rng.uniform() < 0.6:  # mostly the pair (1, 2) is the closest
                d[0] = d.min() * 0.8
            rows.append({"task": task, "metric": metric, "item": f"line{i + 1}", "subset": "val",
                         "img1": f"a{i}", "img2": f"b{i}", "img3": f"c{i}", "d12": d[0], "d13": d[1], "d23": d[2]})
    df = pd.DataFrame(rows)
    df["score"] = ((df["d12"] <= df["d13"]) & (df["d12"] <= df["d23"])).astype(float)
    return df


def task_spec(name: str, kind: str, measure: str) -> dict[str, Any]:
    return {"name": name, "target": f"tests.synthetic:{name}", "description": f"synthetic {kind} task",
            "kwargs": {}, "kind": kind, "measure": measure, "needs_data": False}


def metric_spec(name: str) -> dict[str, Any]:
    return {"name": name, "target": "tests.synthetic:Metric", "description": f"synthetic metric {name}",
            "kwargs": {}, "higher_is_better": False, "distance": "synthetic",
            "inputs": {"value_range": [0.0, 1.0], "size": 224, "interpolation": "bicubic", "min_size": 1,
                       "grayscale": "expand"}, "weights": []}


def make_run(path: str | Path, *, metrics: Sequence[str] = METRICS, subsets: Sequence[str] = SUBSETS,
             twoafc_task: str = "toy2afc", per_subset: int = 24, samples: bool = True, complete: bool = True,
             failed: bool = True, kinds: Sequence[str] = ("2afc", "odd_one_out"),
             task_args: dict[str, dict[str, Any]] | None = None, seed: int = 0) -> Path:
    """Write a synthetic run directory under ``path``; returns ``path``.

    With ``failed=True`` the last metric fails on the odd-one-out task (no records, an entry in
    ``meta["failed"]`` whose message holds ``|`` and HTML).
    """
    rng = np.random.default_rng(seed)
    out = Path(path)
    metrics = list(metrics)
    records: list[dict[str, Any]] = []
    frames: list[pd.DataFrame] = []
    tasks: dict[str, dict[str, Any]] = {}
    fails: list[dict[str, Any]] = []
    protocol: list[dict[str, Any]] = []
    if "2afc" in kinds:
        tasks[twoafc_task] = task_spec(twoafc_task, "2afc", "2afc_accuracy")
        frame = twoafc_samples(twoafc_task, metrics, subsets, per_subset, rng)
        frames.append(frame)
        records += _score_records(twoafc_task, frame, "2afc_accuracy")
    if "odd_one_out" in kinds:
        tasks["toyodd"] = task_spec("toyodd", "odd_one_out", "odd_one_out_accuracy")
        ok = metrics[:-1] if failed and len(metrics) > 1 else metrics
        frame = odd_samples("toyodd", ok, 40, rng)
        frames.append(frame)
        records += _score_records("toyodd", frame, "odd_one_out_accuracy")
        if failed and len(metrics) > 1:
            fails.append({"task": "toyodd", "metric": metrics[-1], "kind": "failure",
                          "error": "RuntimeError: out of memory | <b>boom</b> & more"})
    for task in tasks:
        for metric in metrics:
            if not any(f["task"] == task and f["metric"] == metric for f in fails):
                protocol.append({"task": task, "metric": metric, "inputs": metric_spec(metric)["inputs"],
                                 "resize": "224x224 bicubic", "scales_used": None, "embedding": None,
                                 "seconds": 0.5})
    meta = {
        "percepbench_version": "0.1.0", "git_sha": "0123456789abcdef0123456789abcdef01234567",
        "torch_version": "2.0.0", "python": "3.11.7", "platform": "Linux-synthetic", "device": "cpu",
        "device_name": "Synthetic CPU 9000", "cpu_model": "Synthetic CPU 9000", "cpu_flags": ["avx2", "fma"], "world_size": 1,
        "started": "2026-01-02T03:04:05+00:00", "finished": "2026-01-02T03:14:05+00:00" if complete else None,
        "precision": "fp32", "seed": seed,
        "config": {"metrics": metrics, "tasks": list(tasks), "out": str(out), "device": None, "batch_size": 32,
                   "num_workers": 0, "seed": seed, "data_root": None, "n_boot": 1000, "metric_args": {},
                   "task_args": task_args or {}, "progress": False},
        "metrics": {m: metric_spec(m) for m in metrics},
        "weights": {},
        "tasks": tasks,
        "task_protocols": {t: {"source": f"synthetic <{t}>", "labels": {"kind": tasks[t]["kind"]}}
                           for t in tasks},
        "protocol": protocol,
        "failed": fails,
    }
    sample_df = pd.concat(frames, ignore_index=True) if samples and frames else None
    write_results(out, RunResults(meta=meta, records=records_frame(records), samples=sample_df,
                                  complete=complete))
    return out
