"""``benchmarks/retrieval_scale.py`` at a tiny size: it runs, and what it writes is complete and consistent.

The script is run as a user runs it (a subprocess, its own workers in further subprocesses) on 300 images,
20 queries and 16-dimensional embeddings. Its numbers are checked against what the test counts itself: the
files on disk, the embedding cache entries, and a numpy brute-force top-k of the search matrix it leaves
in ``--workdir``. Timings are only checked to be positive (no timed assertions).
"""

from __future__ import annotations

import hashlib
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "retrieval_scale.py"
IMAGES, QUERIES, DIM, K = 300, 20, 16, 10
RUNS = 2  # rounds: every row is the median of its runs


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("retrieval_scale")
    out, work = tmp / "out", tmp / "work"
    done = subprocess.run([sys.executable, str(SCRIPT), "--images", str(IMAGES), "--queries", str(QUERIES),
                           "--dim", str(DIM), "--out", str(out), "--workdir", str(work), "--runs", str(RUNS)],
                          capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "retrieval_scale.json").read_text()), (out / "retrieval_scale.md").read_text(), work


def _positive(value):
    return isinstance(value, (int, float)) and value > 0


@pytest.mark.slow
def test_images_are_distinct_and_in_the_folder_layout(bench):
    result, _, work = bench
    files = sorted((work / "images").glob("*/*.png"))
    assert len(files) == IMAGES
    assert len({hashlib.sha256(p.read_bytes()).hexdigest() for p in files}) == IMAGES  # no two files equal
    classes = {p.parent.name for p in files}
    assert len(classes) == result["classes"] == IMAGES // 2  # 1,000 classes asked, at most images / 2
    assert result["images_on_disk_mb"] == pytest.approx(sum(p.stat().st_size for p in files) / 2**20, abs=0.1)
    assert result["embedding_matrix_mb"] == pytest.approx(IMAGES * DIM * 4 / 2**20, abs=0.1)


@pytest.mark.slow
def test_end_to_end_cold_then_warm(bench):
    result, _, work = bench
    cold, warm = result["end_to_end"]
    assert (cold["run"], warm["run"]) == ("cold cache", "warm cache")
    assert "error" not in cold and "error" not in warm
    assert (cold["embedded"], cold["from_cache"]) == (IMAGES, 0)
    assert (warm["embedded"], warm["from_cache"]) == (0, IMAGES)
    entries = list((work / "embed_cache").rglob("*.npy"))
    assert result["cache"]["entries"] == len(entries) == IMAGES
    for row in (cold, warm):
        for key in ("wall_seconds", "prepare_seconds", "embed_seconds", "images_per_second", "process_seconds"):
            assert _positive(row[key]), (row["run"], key, row[key])
        assert row["search_seconds"] >= 0  # the search's own timer, whole milliseconds
        assert row["wall_seconds"] >= row["prepare_seconds"] + row["embed_seconds"] - 0.02  # each rounded to 10 ms
        assert row["process_seconds"] > row["wall_seconds"]
        assert 0.0 <= row["recall@1"] <= 100.0
        memory = row["memory"]
        assert _positive(memory["peak_rss_mb"]) and memory["peak_rss_mb"] >= memory["baseline_rss_mb"] > 0
    # one embedding per image, 16 float32 values: every cache entry holds one
    assert np.load(entries[0]).shape == (DIM,)
    assert warm["recall@1"] == cold["recall@1"]  # embeddings read back from the cache rank the same


@pytest.mark.slow
def test_search_rows_match_a_numpy_brute_force(bench):
    result, _, work = bench
    rows = {row["search"]: row for row in result["search"]}
    assert list(rows) == ["faiss exact", "torch exact", "faiss HNSW", "faiss IVF", "plain torch top-k"]
    matrix = np.load(work / "matrix.npy")
    queries = np.load(work / "query_rows.npy")
    assert matrix.shape == (IMAGES, DIM) and matrix.dtype == np.float32
    assert len(queries) == QUERIES == len(set(queries.tolist()))
    unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    dist = 1.0 - unit[queries].astype(np.float64) @ unit.T.astype(np.float64)
    dist[np.arange(QUERIES), queries] = np.inf  # leave-one-out
    oracle = np.argsort(dist, axis=1, kind="stable")[:, :K]
    for name, backend, index in (("faiss exact", "faiss", "exact"), ("torch exact", "torch", "exact"),
                                 ("plain torch top-k", "naive", "exact"), ("faiss HNSW", "faiss", "hnsw"),
                                 ("faiss IVF", "faiss", "ivf")):
        row = rows[name]
        assert "error" not in row and "skipped" not in row, row
        found = np.load(work / f"positions_{backend}_{index}.npy")
        assert found.shape == (QUERIES, K)
        assert not (found == queries[:, None]).any()  # never the query itself
        overlap = np.mean([len(set(a) & set(b)) / K for a, b in zip(found.tolist(), oracle.tolist(), strict=True)])
        last = row["runs"][-1]  # the positions file holds the last round's ranking
        if index == "exact":
            assert overlap == 1.0, name
        else:  # approximate: the script's recall is the overlap with exact search, as counted here
            assert 0.0 <= row["recall_vs_exact"] <= 1.0
            assert last["recall_vs_exact"] == pytest.approx(overlap, abs=1e-6), name
        assert last["overlap_with_faiss_exact"] == pytest.approx(overlap, abs=1e-4)
        # search() times in whole milliseconds: at this size a phase may round to 0 (then no queries/s)
        assert row["build_seconds"] >= 0 and row["search_seconds"] >= 0
        assert row["queries_per_second"] is None if row["search_seconds"] == 0 else _positive(row["queries_per_second"])
        assert row["total_seconds"] >= row["search_seconds"]
        assert _positive(row["wall_seconds"]) and row["wall_seconds"] >= row["total_seconds"] - 1e-3
        assert _positive(row["memory"]["peak_rss_mb"])


@pytest.mark.slow
def test_json_environment_and_markdown(bench):
    result, text, _ = bench
    assert (result["images"], result["queries"], result["dim"], result["k"]) == (IMAGES, QUERIES, DIM, K)
    assert result["small_run"] is True
    env = result["environment"]
    for key in ("platform", "cpu_model", "cores", "torch", "faiss", "python", "device", "date"):
        assert env[key], key
    assert text.startswith(f"# Retrieval at scale: {IMAGES} images, {QUERIES} queries")
    assert f"Small run ({IMAGES} images)" in text
    assert "dreamsim_embed_speed.md" in text
    for label in ("cold cache", "warm cache", "faiss exact", "torch exact", "faiss HNSW", "faiss IVF",
                  "plain torch top-k"):
        assert f"| {label} |" in text


@pytest.mark.slow
def test_rows_are_medians_of_their_rounds(bench):
    result, text, _ = bench
    assert result["runs"] == RUNS
    assert f"Median of {RUNS} runs" in text
    for row in result["end_to_end"] + result["search"]:
        runs = row["runs"]
        assert len(runs) == RUNS
        for key in ("wall_seconds", "process_seconds"):
            values = [r[key] for r in runs]
            assert row[key] == pytest.approx(statistics.median(values))
            assert row["ranges"][key] == [min(values), max(values)]
        peaks = [r["memory"]["peak_rss_mb"] for r in runs]
        assert row["memory"]["peak_rss_mb"] == pytest.approx(statistics.median(peaks))
    cold, warm = result["end_to_end"]
    # every round's cold run starts from an empty cache, and its warm run reads every image back
    assert [(r["embedded"], r["from_cache"]) for r in cold["runs"]] == [(IMAGES, 0)] * RUNS
    assert [(r["embedded"], r["from_cache"]) for r in warm["runs"]] == [(0, IMAGES)] * RUNS
