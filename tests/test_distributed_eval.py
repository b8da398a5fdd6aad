"""Distributed evaluation (``torchrun``, 2 CPU processes over gloo): the same records and per-item samples as
one process (2AFC items, file tasks with embeddings, retrieval rankings), only rank 0 writes, the shared
embedding cache holds each image once, and a failing rank is named while what was written stays readable.

The oracle of every comparison is a single-process ``percepbench run`` of the same settings; sharding and
gathering by id are also checked on their own (:func:`percepbench.distributed.shard_positions`).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from percepbench.cli import main
from percepbench.distributed import id_keys, shard_positions
from percepbench.results import load_results

from layouts import make_csv_table, write_png

TESTS = Path(__file__).resolve().parent
SEVERITY = ["-t", "severity2afc", "--task-args", "severity2afc:per_family=3,size=32"]
FAST = ["--n-boot", "50", "-q", "--no-report", "--device", "cpu", "--num-workers", "0"]
DINO = ["-m", "dino.vits16", "--metric-args", "dino.vits16:pretrained=false"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], cwd: Path, *, script: Path | None = None, **env: str
             ) -> subprocess.CompletedProcess[str]:
    """``python -m torch.distributed.run --nproc_per_node 2 -m percepbench.cli <args>`` (or ``script``)."""
    target = [str(script)] if script is not None else ["-m", "percepbench.cli"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), *target, *args]
    full_env = {**os.environ, "PERCEPBENCH_OFFLINE": "1", "OMP_NUM_THREADS": "1", **env}
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=600, check=False)


def _sorted_samples(run_dir: Path) -> pd.DataFrame:
    samples = load_results(run_dir).samples
    return samples.sort_values(["task", "metric", "subset", "item"]).reset_index(drop=True)


# ------------------------------------------------------------------------------------ sharding by id


def test_shards_depend_on_ids_not_positions():
    ids = [f"item{i:03d}" for i in range(11)]
    shards = [shard_positions(ids, r, 3) for r in range(3)]
    owned = [{ids[i] for i in s} for s in shards]
    assert sorted(i for s in shards for i in s.tolist()) == list(range(11))  # disjoint, every id once
    assert [len(s) for s in shards] == [4, 4, 3]
    # the k-th id in sorted order goes to rank k % 3, whatever order the ids come in
    assert owned == [{ids[k] for k in range(11) if k % 3 == r} for r in range(3)]
    shuffled = [ids[i] for i in np.random.default_rng(0).permutation(11)]
    assert [{shuffled[i] for i in shard_positions(shuffled, r, 3)} for r in range(3)] == owned
    assert [len(shard_positions(ids[:1], r, 2)) for r in range(2)] == [1, 0]  # fewer ids than ranks
    assert id_keys(["a", "b", "a"]) == ["a", "b", "a#1"]  # a repeated id still has one key per row
    with pytest.raises(ValueError, match="rank 2 is not in a world of 2"):
        shard_positions(ids, 2, 2)


# ------------------------------------------------------------------------------------ the offline default


@pytest.mark.slow
def test_offline_default_matches_one_process_and_only_rank0_writes(tmp_path, clean_env):
    work = tmp_path / "work"
    work.mkdir()
    res = torchrun(["run", "-m", "psnr,ssim", *SEVERITY, *FAST], work)
    assert res.returncode == 0, res.stderr[-3000:]
    runs = list((work / "runs").iterdir())
    assert len(runs) == 1, runs  # rank 1 did not claim a run directory of its own
    assert sorted(p.name for p in work.iterdir()) == ["runs"]
    assert sorted(p.name for p in runs[0].iterdir()) == ["results.json", "samples.parquet"]
    assert res.stdout.count("results: ") == 1  # one summary, printed by rank 0

    assert main(["run", "-m", "psnr,ssim", *SEVERITY, *FAST, "-o", str(tmp_path / "single")]) == 0
    one, two = load_results(tmp_path / "single"), load_results(runs[0])
    assert two.complete and two.meta["failed"] == []
    assert (one.meta["world_size"], two.meta["world_size"]) == (1, 2)  # the results say how they were computed
    pd.testing.assert_frame_equal(two.records, one.records, check_exact=True)
    pd.testing.assert_frame_equal(two.comparisons, one.comparisons, check_exact=True)
    dist_samples, single = _sorted_samples(runs[0]), _sorted_samples(tmp_path / "single")
    assert len(dist_samples) == 2 * 8 * 3  # two metrics x 8 families x 3 items: no item lost or repeated
    pd.testing.assert_frame_equal(dist_samples, single, check_exact=True)
    # rank 0 wrote the samples in the order of the items, as one process does
    assert two.samples["item"].tolist() == one.samples["item"].tolist()


# ------------------------------------------------------------------------------------ a file task, embeddings


def _triplets(tmp_path: Path) -> Path:
    greys = {f"img/g{k}.png": (20 * k + 10, 255 - 25 * k, (60 * k) % 256) for k in range(8)}
    names = sorted(greys)
    rows = [{"ref": names[i % 8], "left": names[(i + 1) % 8], "right": names[(i + 3) % 8], "p": (i % 5) / 4}
            for i in range(7)]
    return make_csv_table(tmp_path / "mine" / "triplets.csv", rows, images=greys)


@pytest.mark.slow
def test_file_task_with_embedding_metric_matches_one_process(tmp_path, clean_env):
    csv = _triplets(tmp_path)
    task = ["-t", "2afc_csv", "--task-args", f"2afc_csv:path={csv}"]
    cache = tmp_path / "embed-cache"
    res = torchrun(["run", *DINO, *task, *FAST, "--embed-cache", str(cache), "-o", str(tmp_path / "dist")], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    dist = load_results(tmp_path / "dist")
    stats = dist.meta["protocol"][0]["embedding"]
    unique = len({p for col in ("ref", "left", "right") for p in pd.read_csv(csv)[col]})
    assert unique == 8
    # each unique image embedded once, on one of the two ranks, into the one shared cache
    assert (stats["unique_images"], stats["embedded"], stats["from_cache"]) == (8, 8, 0)
    assert stats["image_references"] == 21
    assert len(list(cache.rglob("*.npy"))) == 8

    assert main(["run", *DINO, *task, *FAST, "--no-embed-cache", "-o", str(tmp_path / "single")]) == 0
    single = load_results(tmp_path / "single")
    a, b = _sorted_samples(tmp_path / "dist"), _sorted_samples(tmp_path / "single")
    assert a["item"].tolist() == b["item"].tolist() and len(a) == 7
    np.testing.assert_allclose(a[["d0", "d1"]].to_numpy(), b[["d0", "d1"]].to_numpy(), rtol=0, atol=1e-6)
    assert (a[["d0", "d1"]].to_numpy() > 1e-4).all()  # random weights, distinct colours: real distances
    pd.testing.assert_frame_equal(a.drop(columns=["d0", "d1"]), b.drop(columns=["d0", "d1"]), check_exact=True)
    pd.testing.assert_frame_equal(dist.records, single.records, check_exact=False, rtol=0, atol=1e-9)

    # what the two ranks wrote into the shared cache is whole and is what one process computes
    assert main(["run", *DINO, *task, *FAST, "--embed-cache", str(cache), "-o", str(tmp_path / "cached")]) == 0
    cached = load_results(tmp_path / "cached")
    assert cached.meta["protocol"][0]["embedding"]["from_cache"] == 8
    c = _sorted_samples(tmp_path / "cached")
    np.testing.assert_allclose(c[["d0", "d1"]].to_numpy(), b[["d0", "d1"]].to_numpy(), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------ retrieval


def _classes(root: Path) -> Path:
    """3 classes x 3 images: a class colour plus seeded noise (no two distances tie)."""
    for c, colour in enumerate([(200, 40, 40), (40, 200, 40), (40, 40, 200)]):
        for k in range(3):
            write_png(root / f"class{c}" / f"{k}.png", tuple(v + 12 * k for v in colour), 16, noise=30, seed=3 * c + k)
    return root


@pytest.mark.slow
def test_retrieval_matches_one_process(tmp_path, clean_env):
    """Embedding metric: each rank embeds its share of the images, rank 0 searches; pairwise metric: each
    rank ranks its share of the queries against the whole gallery. Same rankings as one process."""
    folder = _classes(tmp_path / "imgs")
    task = ["-t", "retrieval_folder", "--task-args", f"retrieval_folder:path={folder},ks=1+2"]
    cache = tmp_path / "embed-cache"
    res = torchrun(["run", "-m", "psnr,dino.vits16", "--metric-args", "dino.vits16:pretrained=false", *task, *FAST,
                    "--embed-cache", str(cache), "-o", str(tmp_path / "dist")], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert main(["run", "-m", "psnr,dino.vits16", "--metric-args", "dino.vits16:pretrained=false", *task, *FAST,
                 "--no-embed-cache", "-o", str(tmp_path / "single")]) == 0
    dist, single = load_results(tmp_path / "dist"), load_results(tmp_path / "single")
    assert dist.complete and dist.meta["failed"] == [] and dist.meta["world_size"] == 2
    protocol = {p["metric"]: p for p in dist.meta["protocol"]}
    # every image embedded once, by one of the two ranks, into the shared cache
    assert (protocol["dino.vits16"]["embedding"]["embedded"], len(list(cache.rglob("*.npy")))) == (9, 9)
    assert protocol["dino.vits16"]["search"]["embedded_by_ranks"] == 2
    assert protocol["psnr"]["search"]["queries_sharded_over_ranks"] == 2
    assert protocol["psnr"]["search"]["pairs"] == 9 * 9

    a, b = _sorted_samples(tmp_path / "dist"), _sorted_samples(tmp_path / "single")
    assert len(a) == 2 * 9  # two metrics x 9 queries: none lost or repeated
    assert [list(x) for x in a["topk_ids"]] == [list(x) for x in b["topk_ids"]]
    np.testing.assert_allclose(np.stack(a["topk_distances"].to_numpy()), np.stack(b["topk_distances"].to_numpy()),
                               rtol=0, atol=1e-6)
    # PSNR's top 2 of each query by hand: the two other images with the smallest mean squared error
    pixels = {f.relative_to(folder).as_posix(): np.asarray(Image.open(f).convert("RGB"), dtype=np.float64)
              for f in sorted(folder.rglob("*.png"))}
    psnr = a[a["metric"] == "psnr"].set_index("item")
    for query, x in pixels.items():
        mse = {other: ((x - y) ** 2).mean() for other, y in pixels.items() if other != query}
        assert list(psnr.loc[query, "topk_ids"]) == sorted(mse, key=mse.__getitem__)[:2]
    pd.testing.assert_frame_equal(dist.records, single.records, check_exact=False, rtol=0, atol=1e-9)


# ------------------------------------------------------------------------------------ a failing rank


def _launcher(tmp_path: Path) -> Path:
    """A script torchrun starts: registers the test metric ``fail-on-rank``, then runs the command line."""
    script = tmp_path / "launch.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        from percepbench.registry import METRICS
        from percepbench.specs import MetricSpec
        METRICS.register(MetricSpec(name="fail-on-rank", target="helpers_metrics:FailOnRank", description="t"),
                         source="test")
        from percepbench.cli import main
        sys.exit(main(sys.argv[1:]))
    """))
    return script


@pytest.mark.slow
def test_error_on_one_rank_names_it_and_the_run_goes_on(tmp_path, clean_env):
    out = tmp_path / "run"
    res = torchrun(["run", "-m", "fail-on-rank,psnr", *SEVERITY, *FAST, "-o", str(out)], tmp_path,
                   script=_launcher(tmp_path), PERCEPBENCH_TEST_FAIL_RANK="1")
    assert res.returncode != 0
    assert "FAILED fail-on-rank on severity2afc: RankFailed: rank 1 of 2: RuntimeError: failure injected on rank 1" \
        in res.stderr
    assert "Traceback" not in res.stderr.split("FAILED fail-on-rank")[0]  # rank 0 said it in one line
    results = load_results(out)  # readable, with the pair that did run
    assert results.complete
    assert [(f["metric"], f["kind"]) for f in results.meta["failed"]] == [("fail-on-rank", "failure")]
    assert "rank 1 of 2" in results.meta["failed"][0]["error"]
    assert set(results.records["metric"]) == {"psnr"}
    assert len(results.samples) == 24


@pytest.mark.slow
def test_rank_that_dies_stops_the_run_keeps_what_was_written_and_resumes(tmp_path, clean_env, register_temp):
    from percepbench.specs import MetricSpec

    out, script = tmp_path / "run", _launcher(tmp_path)
    args = ["run", "-m", "psnr,fail-on-rank", *SEVERITY, *FAST, "-o", str(out)]
    res = torchrun(args, tmp_path, script=script, PERCEPBENCH_TEST_FAIL_RANK="1", PERCEPBENCH_TEST_FAIL_HOW="exit",
                   PERCEPBENCH_TEST_FAIL_AFTER=str(out / "samples.parquet"))  # dies once psnr is written
    assert res.returncode != 0
    # torchrun names the rank that died and its exit code
    assert re.search(r"rank\s*: 1 \(local_rank: 1\)\s+exitcode\s*: 3\b", res.stderr), res.stderr[-3000:]
    results = load_results(out)  # written atomically: whole, with the pair finished before
    assert not results.complete
    assert set(results.records["metric"]) == {"psnr"}
    assert len(results.samples) == 24
    assert not list(out.glob(".*.tmp"))

    # --resume under torchrun keeps the finished pair and gives the results of one uninterrupted process
    res = torchrun([*args, "--resume"], tmp_path, script=script)
    assert res.returncode == 0, res.stderr[-3000:]
    register_temp(MetricSpec(name="fail-on-rank", target="helpers_metrics:FailOnRank", description="t"))
    assert main(["run", "-m", "psnr,fail-on-rank", *SEVERITY, *FAST, "-o", str(tmp_path / "single")]) == 0
    resumed, single = load_results(out), load_results(tmp_path / "single")
    assert resumed.complete and resumed.meta["failed"] == []
    pd.testing.assert_frame_equal(resumed.records, single.records, check_exact=True)
    pd.testing.assert_frame_equal(resumed.comparisons, single.comparisons, check_exact=True)
    pd.testing.assert_frame_equal(resumed.samples, single.samples, check_exact=True)
