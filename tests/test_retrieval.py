"""Retrieval: measures by hand, relevance rules, leave-one-out, ties, faiss = brute force, the pairwise
limit, the embedding cache, bounded memory, and the command line on generated folder and CSV data."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pandas as pd
import pytest
import torch

from percepbench.cli import main
from percepbench.config import RunConfig
from percepbench.embedding_store import EmbeddingMatrix
from percepbench.errors import UsageError
from percepbench.models.dreamsim import normalize_embedding
from percepbench.results import load_results
from percepbench.runner import run
from percepbench.search import brute_force, search
from percepbench.specs import InputConvention, MetricSpec
from percepbench.tasks.retrieval import Relevance, parse_match, retrieval_measures
from percepbench.tasks.retrieval_user import RetrievalCSV

from layouts import DAMAGED, CocoImage, make_coco, make_csv_table, write_png

FAST = ["--n-boot", "20", "-q", "--num-workers", "0"]

# ------------------------------------------------------------------------------------------ measures by hand


def test_measures_by_hand():
    hits = np.array([[False, True, True],    # R = 4
                     [True, False, True],    # R = 2
                     [False, False, False],  # R = 1
                     [True, True, True]])    # R = 3 = k
    m = retrieval_measures(hits, np.array([4, 2, 1, 3]), [1, 3])
    assert m["recall@1"].tolist() == [0, 1, 0, 1]
    assert m["recall@3"].tolist() == [1, 1, 0, 1]
    assert m["precision@1"].tolist() == [0, 1, 0, 1]
    assert m["precision@3"] == pytest.approx([2 / 3, 2 / 3, 0, 1])
    # AP@3 = (1 / min(3, R)) * sum_i P@i rel_i
    assert m["map@3"] == pytest.approx([(1 / 2 + 2 / 3) / 3, (1 + 2 / 3) / 2, 0, 1])
    assert m["map@1"].tolist() == [0, 1, 0, 1]
    assert list(m) == ["recall@1", "recall@3", "precision@1", "precision@3", "map@1", "map@3"]


def test_measures_refuse_bad_input():
    with pytest.raises(ValueError, match="R >= 1"):
        retrieval_measures(np.ones((1, 2), bool), np.array([0]), [1])
    with pytest.raises(ValueError, match="needs 5 ranked"):
        retrieval_measures(np.ones((1, 2), bool), np.array([1]), [5])


LABELS = [("a", "b"), ("a",), ("b", "c"), ("a", "b", "c"), ("d",)]


@pytest.mark.parametrize(("match", "expected"), [
    ("any", [3, 2, 2, 3, 0]),
    ("all", [1, 2, 1, 0, 0]),            # the gallery image has every label of the query
    ("jaccard:0.5", [2, 1, 1, 2, 0]),    # |A & B| / |A | B| >= 0.5
])
def test_relevance_counts_by_hand(match, expected):
    rule, t = parse_match(match)
    rel = Relevance(LABELS, rule, t)
    everyone = np.arange(5)
    assert (rel.counts(everyone, everyone) - 1).tolist() == expected  # minus the query itself


@pytest.mark.parametrize("bad", ["some", "jaccard:0", "jaccard:1.5", "jaccard:x"])
def test_bad_match_is_refused(bad):
    with pytest.raises(ValueError, match="match must be"):
        parse_match(bad)


# ------------------------------------------------------------------------------------------ generated data

#: flat grey levels; c/1 is alone in its class (R = 0: never a query)
GREYS = {"a/1.png": 10, "a/2.png": 20, "b/1.png": 30, "b/2.png": 100, "c/1.png": 40}
#: worked out by hand from |grey difference| with ties broken by id (see the test)
EXPECTED = {"recall@1": 50.0, "recall@2": 75.0, "precision@1": 50.0, "precision@2": 37.5, "map@1": 50.0,
            "map@2": 62.5}
TOP2 = {"a/1.png": ["a/2.png", "b/1.png"], "a/2.png": ["a/1.png", "b/1.png"], "b/1.png": ["a/2.png", "c/1.png"],
        "b/2.png": ["c/1.png", "b/1.png"]}


def make_folder(root, greys=GREYS):
    for rel, grey in greys.items():
        write_png(root / rel, grey, 8)
    return root


@pytest.fixture
def metrics(register_temp):
    register_temp(MetricSpec(name="toy-meanabs", target="helpers_metrics:MeanAbs", description="pairwise"))
    register_temp(MetricSpec(name="toy-grey", target="helpers_metrics:GreyLevel", description="embeds",
                             inputs=InputConvention(size=8, interpolation="bilinear")))
    return ["toy-meanabs", "toy-grey"]


def test_folder_rankings_by_hand(tmp_path, clean_env, metrics):
    """a/1 (10): a/2 at 10, b/1 at 20 -> hit, miss. a/2 (20): a/1 and b/1 both at 10 -> the tie goes to
    the smaller id a/1 (hit), then b/1 (miss). b/1 (30): a/2 and c/1 both at 10 -> a/2, c/1 (two misses).
    b/2 (100): c/1 at 60, b/1 at 70 -> miss, hit. c/1 has no relevant image: not a query."""
    make_folder(tmp_path / "imgs")
    res = run(RunConfig(metrics=metrics, tasks=["retrieval_folder"], out=str(tmp_path / "run"), n_boot=20,
                        progress=False, num_workers=0, embed_cache=False,
                        task_args={"retrieval_folder": {"path": str(tmp_path / "imgs"), "ks": "1+2"}}))
    for metric in metrics:
        recs = res.records[(res.records["metric"] == metric) & (res.records["subset"] == "all")]
        assert dict(zip(recs["measure"], recs["value"], strict=True)) == pytest.approx(EXPECTED)
        assert set(recs["n"]) == {4}
        s = res.samples[res.samples["metric"] == metric].set_index("item")
        assert {q: list(s.loc[q, "topk_ids"]) for q in TOP2} == TOP2
        ten = 10 / 255 if metric == "toy-meanabs" else 10.0  # MeanAbs: |a - b| / 255; GreyLevel: |a - b|
        assert list(s.loc["a/2.png", "topk_distances"]) == pytest.approx([ten, ten], rel=1e-5)
        assert s["relevant"].tolist() == [1, 1, 1, 1]
        for q, row in s.iterrows():
            assert q not in list(row["topk_ids"])  # leave-one-out
    proto = res.meta["task_protocols"]["retrieval_folder"]
    assert proto["queries"] == 4 and proto["gallery"] == 5 and proto["queries_without_relevant"] == 1
    search_info = {p["metric"]: p["search"] for p in res.meta["protocol"]}
    assert search_info["toy-grey"]["backend"].startswith("faiss") and search_info["toy-grey"]["space"] == "l2"
    assert search_info["toy-meanabs"]["pairs"] == 4 * 5
    # the metrics tie on every query: paired comparisons per measure, all zero
    comp = res.comparisons
    assert set(comp["measure"]) == set(EXPECTED) and (comp["diff"] == 0).all()


def test_k_equal_to_the_gallery_a_query_sees(tmp_path, clean_env, metrics):
    """ks=4 with 5 images: every query ranks all 4 others. Full rankings by hand (ties by id): a/1: a/2 (hit),
    b/1, c/1, b/2; a/2: a/1 (hit), b/1, c/1, b/2; b/1: a/2, c/1, a/1, b/2 (hit at 4); b/2: c/1, b/1 (hit at 2),
    a/2, a/1. R = 1 each: AP@4 = 1, 1, 1/4, 1/2."""
    make_folder(tmp_path / "imgs")
    res = run(RunConfig(metrics=["toy-grey"], tasks=["retrieval_folder"], out=str(tmp_path / "run"), n_boot=20,
                        progress=False, num_workers=0, embed_cache=False,
                        task_args={"retrieval_folder": {"path": str(tmp_path / "imgs"), "ks": 4}}))
    values = dict(zip(res.records["measure"], res.records["value"], strict=True))
    assert values == pytest.approx({"recall@4": 100.0, "precision@4": 25.0, "map@4": 100 * (1 + 1 + 0.25 + 0.5) / 4})
    s = res.samples.set_index("item")
    assert list(s.loc["b/1.png", "topk_ids"]) == ["a/2.png", "c/1.png", "a/1.png", "b/2.png"]


def test_duplicates_of_the_query_rank_first_and_the_query_never(tmp_path, clean_env, metrics):
    greys = {"a/1.png": 50, "a/2.png": 50, "a/3.png": 50, "b/1.png": 50, "b/2.png": 90}
    make_folder(tmp_path / "imgs", greys)
    res = run(RunConfig(metrics=["toy-grey"], tasks=["retrieval_folder"], out=str(tmp_path / "run"), n_boot=20,
                        progress=False, num_workers=0, embed_cache=False,
                        task_args={"retrieval_folder": {"path": str(tmp_path / "imgs"), "ks": "1+3"}}))
    s = res.samples.set_index("item")
    # four images at distance 0 from each other: ties in id order, the query itself left out
    assert list(s.loc["a/1.png", "topk_ids"]) == ["a/2.png", "a/3.png", "b/1.png"]
    assert list(s.loc["b/1.png", "topk_ids"]) == ["a/1.png", "a/2.png", "a/3.png"]
    assert list(s.loc["b/2.png", "topk_ids"]) == ["a/1.png", "a/2.png", "a/3.png"]


def test_folder_cli_end_to_end_with_report(tmp_path, clean_env, metrics, capsys):
    make_folder(tmp_path / "imgs")
    out = tmp_path / "run"
    code = main(["run", "-m", ",".join(metrics), "-t", "retrieval_folder", "--task-args",
                 f"retrieval_folder:path={tmp_path / 'imgs'},ks=1+2,per_class=true", "-o", str(out), *FAST])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    res = load_results(out)
    recs = res.records[(res.records["subset"] == "class:a") & (res.records["metric"] == "toy-grey")]
    # class a: queries a/1 and a/2, both right at rank 1
    assert dict(zip(recs["measure"], recs["value"], strict=True))["recall@1"] == 100.0
    assert "recall@1" in captured.out and "map@2" in captured.out
    assert (out / "report" / "report.html").is_file()
    # compare gates retrieval rows on the per-query values of each measure
    assert main(["compare", str(out), str(out), "--markdown", str(tmp_path / "c.md")]) == 0
    text = (tmp_path / "c.md").read_text()
    assert "| retrieval_folder | all | toy-grey | map@2 |" in text and "paired" in text


def test_second_run_embeds_nothing(tmp_path, clean_env, metrics):
    import helpers_metrics

    make_folder(tmp_path / "imgs")
    cfg = dict(metrics=["toy-grey"], tasks=["retrieval_folder"], n_boot=20, progress=False, num_workers=0,
               embed_cache=str(tmp_path / "cache"),
               task_args={"retrieval_folder": {"path": str(tmp_path / "imgs"), "ks": "1+2"}})
    helpers_metrics.GreyLevel.embedded = 0
    first = run(RunConfig(out=str(tmp_path / "r1"), **cfg))
    assert helpers_metrics.GreyLevel.embedded == 5
    second = run(RunConfig(out=str(tmp_path / "r2"), **cfg))
    assert helpers_metrics.GreyLevel.embedded == 5  # nothing embedded the second time
    emb = second.meta["protocol"][0]["embedding"]
    assert emb["from_cache"] == 5 and emb["embedded"] == 0
    pd.testing.assert_frame_equal(first.records, second.records)
    assert not (tmp_path / "r2" / ".scratch").exists()  # the embedding matrix is removed after the pair


def test_pairwise_limit_refuses_before_writing(tmp_path, clean_env, metrics):
    make_folder(tmp_path / "imgs")
    out = tmp_path / "run"
    with pytest.raises(UsageError) as err:
        run(RunConfig(metrics=metrics, tasks=["retrieval_folder"], out=str(out), progress=False, num_workers=0,
                      task_args={"retrieval_folder": {"path": str(tmp_path / "imgs"), "ks": "1", "max_pairs": 10}}))
    msg = str(err.value)
    assert "toy-meanabs on retrieval_folder: 20 query x gallery" in msg and "max_pairs=10" in msg
    assert "pairs/s" in msg and "about" in msg and "--task-args retrieval_folder:max_pairs=N" in msg
    assert "toy-grey" not in msg  # the embedding metric searches, it has no pairwise limit
    assert not out.exists()


def test_approximate_index_records_its_recall(tmp_path, clean_env, metrics):
    make_folder(tmp_path / "imgs")
    res = run(RunConfig(metrics=["toy-grey"], tasks=["retrieval_folder"], out=str(tmp_path / "run"), n_boot=20,
                        progress=False, num_workers=0, embed_cache=False,
                        task_args={"retrieval_folder": {"path": str(tmp_path / "imgs"), "ks": "1+2",
                                                        "index": "hnsw"}}))
    info = res.meta["protocol"][0]["search"]
    assert info["index"] == "hnsw" and info["recall_vs_exact"]["queries_checked"] == 4
    assert 0.0 <= info["recall_vs_exact"]["value"] <= 1.0


def test_nan_embeddings_fail_the_pair_naming_images(tmp_path, clean_env, register_temp):
    register_temp(MetricSpec(name="toy-nan", target="helpers_metrics:NaNEmbed", description="x",
                             inputs=InputConvention(size=8, interpolation="bilinear")))
    make_folder(tmp_path / "imgs")
    res = run(RunConfig(metrics=["toy-nan"], tasks=["retrieval_folder"], out=str(tmp_path / "run"), n_boot=20,
                        progress=False, num_workers=0, embed_cache=False,
                        task_args={"retrieval_folder": {"path": str(tmp_path / "imgs"), "ks": "1"}}))
    assert res.records.empty
    (failure,) = res.meta["failed"]
    assert "NonFiniteDistances" in failure["error"] and "a/1.png" in failure["error"]


def test_coco_layout_cli_end_to_end(tmp_path, clean_env, metrics, capsys):
    """Query 1 (grey 10, person): 2 at 10 (cat, miss), 3 at 20 (person|cat, hit). Query 2 (20, cat): 1 and 3
    both at 10, the tie to the smaller id 1 (miss), then 3 (hit). Query 3 (30, person|cat): 2 at 10 (hit), 1
    at 20 (hit), R = 2. Image 4 has no instance: a distractor, never a query."""
    images = [CocoImage(1, 10, ((1, 50.0),), "000000000001.png"), CocoImage(2, 20, ((17, 40.0),), "000000000002.png"),
              CocoImage(3, 30, ((1, 10.0), (17, 20.0)), "000000000003.png"), CocoImage(4, 200, (), "000000000004.png")]
    make_coco(tmp_path / "data" / "coco", images)
    out = tmp_path / "run"
    code = main(["run", "-m", ",".join(metrics), "-t", "coco_retrieval", "--data-root", str(tmp_path / "data"),
                 "--task-args", "coco_retrieval:ks=1+2", "-o", str(out), *FAST])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    res = load_results(out)
    for metric in metrics:
        recs = res.records[res.records["metric"] == metric]
        values = dict(zip(recs["measure"], recs["value"], strict=True))
        assert values == pytest.approx({"recall@1": 100 / 3, "recall@2": 100.0, "precision@1": 100 / 3,
                                        "precision@2": 200 / 3, "map@1": 100 / 3, "map@2": 200 / 3})
    assert res.meta["task_protocols"]["coco_retrieval"]["queries"] == 3


# ------------------------------------------------------------------------------------------ CSV tables


def csv_rows(labels, roles=None):
    rows = []
    for i, ls in enumerate(labels):
        row = {"path": f"img/{i}.png", "label": ls}
        if roles:
            row["role"] = roles[i]
        rows.append(row)
    return rows


def prepared(path, **options):
    task = RetrievalCSV(path=str(path), **options)
    task.prepare(num_workers=0, progress=False)
    return task


@pytest.mark.parametrize(("match", "relevant"), [
    ("any", {"img/0.png": 3, "img/1.png": 2, "img/2.png": 2, "img/3.png": 3}),
    ("all", {"img/0.png": 1, "img/1.png": 2, "img/2.png": 1}),
    ("jaccard:0.5", {"img/0.png": 2, "img/1.png": 1, "img/2.png": 1, "img/3.png": 2}),
])
def test_csv_multilabel_queries_and_r(tmp_path, match, relevant):
    labels = ["a|b", "a", "b|c", "a|b|c", "d"]
    csv = make_csv_table(tmp_path / "t.csv", csv_rows(labels), images={f"img/{i}.png": 10 * i for i in range(5)})
    task = prepared(csv, match=match, ks="1")
    assert dict(zip(task.items["item"], task.items["relevant"], strict=True)) == relevant
    assert task.protocol()["queries_without_relevant"] == 5 - len(relevant)


def test_csv_roles_and_distractors(tmp_path):
    labels = ["a", "a", "b", "", "a"]
    roles = ["query", "gallery", "gallery", "gallery", "both"]
    csv = make_csv_table(tmp_path / "t.csv", csv_rows(labels, roles), images={f"img/{i}.png": i for i in range(5)})
    task = prepared(csv, ks="1+3")
    # queries: 0 (query only, R = 2: images 1 and 4) and 4 (R = 1: image 1; itself left out)
    assert dict(zip(task.items["item"], task.items["relevant"], strict=True)) == {"img/0.png": 2, "img/4.png": 1}
    assert len(task.gallery_images) == 4 and task.self_in_gallery.tolist() == [-1, 3]


def test_csv_scores_with_a_pairwise_metric(tmp_path, clean_env, metrics):
    # greys: query 0 at 0; gallery 10 (a), 20 (b), 30 (a) -> top-2 of 0: 10 (hit), 20 (miss)
    rows = [{"path": "img/q.png", "label": "a", "role": "query"},
            {"path": "img/g1.png", "label": "a", "role": "gallery"},
            {"path": "img/g2.png", "label": "b", "role": "gallery"},
            {"path": "img/g3.png", "label": "a|b", "role": "gallery"}]
    csv = make_csv_table(tmp_path / "t.csv", rows,
                         images={"img/q.png": 0, "img/g1.png": 10, "img/g2.png": 20, "img/g3.png": 30})
    res = run(RunConfig(metrics=["toy-meanabs"], tasks=["retrieval_csv"], out=str(tmp_path / "run"), n_boot=20,
                        progress=False, num_workers=0, task_args={"retrieval_csv": {"path": str(csv), "ks": "1+2"}}))
    s = res.samples.iloc[0]
    assert list(s["topk_ids"]) == ["img/g1.png", "img/g2.png"] and list(s["topk_hits"]) == [True, False]
    assert s["relevant"] == 2 and s["map@2"] == pytest.approx(0.5)


@pytest.mark.parametrize(("edit", "message"), [
    ("no_label_column", "missing column(s) label"),
    ("empty_label", "column 'label' is empty in 1 row(s) that can be queries (line 3)"),
    ("bad_role", "column 'role' must be query, gallery or both"),
    ("duplicate_id", "image ids must be unique"),
])
def test_bad_tables_exit_2_naming_the_file(tmp_path, clean_env, metrics, capsys, edit, message):
    rows = csv_rows(["a", "a", "b"])
    if edit == "no_label_column":
        rows = [{"path": r["path"]} for r in rows]
    elif edit == "empty_label":
        rows[1]["label"] = ""
    elif edit == "bad_role":
        rows = [{**r, "role": "probe"} for r in rows]
    else:
        rows = [{**r, "id": "same"} for r in rows]
    csv = make_csv_table(tmp_path / "t.csv", rows, images={f"img/{i}.png": i for i in range(3)})
    code = main(["run", "-m", "toy-meanabs", "-t", "retrieval_csv", "--task-args", f"retrieval_csv:path={csv}",
                 "-o", str(tmp_path / "run"), *FAST])
    err = capsys.readouterr().err
    assert code == 2 and str(csv) in err and message in err, err


@pytest.mark.parametrize(("layout", "message"), [
    ("missing", "image folder not found"),
    ("loose", "lie directly in the folder, in no class: x.png"),
    ("empty_class", "class folder(s) hold no image"),
    ("damaged", "cannot be read"),
    ("k_too_big", "larger than the gallery a query sees (4 image(s), itself left out)"),
    ("queries_too_many", "queries=9 but only 4 images can be queries"),
])
def test_bad_folders_exit_2_naming_the_path(tmp_path, clean_env, metrics, capsys, layout, message):
    root = tmp_path / "imgs"
    options = "ks=1"
    if layout != "missing":
        make_folder(root)
    if layout == "loose":
        write_png(root / "x.png", 5)
    elif layout == "empty_class":
        (root / "z").mkdir()
    elif layout == "damaged":
        (root / "a" / "1.png").write_bytes(DAMAGED)
    elif layout == "k_too_big":
        options = "ks=1+5"
    elif layout == "queries_too_many":
        options = "ks=1,queries=9"
    code = main(["run", "-m", "toy-meanabs", "-t", "retrieval_folder", "--task-args",
                 f"retrieval_folder:path={root},{options}", "-o", str(tmp_path / "run"), *FAST])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert str(root) in err
    assert not (tmp_path / "run").exists()


def test_query_sample_is_seeded(tmp_path):
    labels = ["a", "a", "b", "b", "a", "b", "a", "b"]
    csv = make_csv_table(tmp_path / "t.csv", csv_rows(labels), images={f"img/{i}.png": i for i in range(8)})
    picks = []
    for seed in (0, 0, 1):
        task = RetrievalCSV(path=str(csv), queries=3, ks="1")
        task.prepare(num_workers=0, progress=False, seed=seed)
        picks.append(task.items["item"].tolist())
    assert picks[0] == picks[1] and len(picks[0]) == 3
    assert picks[0] != picks[2]


# ------------------------------------------------------------------------------------------ search


def cosine_distance(a, b):
    return 1.0 - torch.nn.functional.cosine_similarity(a, b, dim=-1)


def reference_ranking(q, g, k, exclude):
    """numpy oracle: cosine distances in float64, stable sort (ties by position), the query's own row out."""
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    d = 1.0 - qn.astype(np.float64) @ gn.astype(np.float64).T
    d[np.arange(len(q))[exclude >= 0], exclude[exclude >= 0]] = np.inf
    return np.argsort(d, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_exact_search_equals_brute_force_on_dreamsim_embeddings(backend):
    """DreamSim's embeddings are centred and L2-normalised; the search must rank exactly as brute force over
    ``1 - cosine`` does, ties (duplicated rows) by position, the query's own row never returned."""
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(1500, 48, generator=gen) + 3.0  # an offset, so that centring matters
    feats[200:230] = feats[7]                           # 31 copies of row 7: ties beyond the candidate margin
    gallery = normalize_embedding(feats).numpy()
    rows = np.r_[np.arange(0, 1500, 11), 7, 215]
    exclude = rows.copy()
    result = search(gallery[rows], gallery, 10, distance=cosine_distance, space="cosine", exclude=exclude,
                    backend=backend, chunk_rows=400)
    bf_i, bf_d = brute_force(gallery[rows], gallery, 10, cosine_distance, exclude=exclude)
    np.testing.assert_array_equal(result.positions, bf_i)
    np.testing.assert_allclose(result.distances, bf_d)
    assert result.info["brute_force_queries"] >= 2  # the duplicated rows needed the full brute force
    # and brute force itself agrees with an independent numpy ranking away from exact ties
    ref = reference_ranking(gallery[rows], gallery, 10, exclude)
    clean = [i for i, r in enumerate(rows) if r not in (7, *range(200, 230))]
    np.testing.assert_array_equal(bf_i[clean], ref[clean])
    assert not (result.positions == exclude[:, None]).any()


def test_search_without_a_known_space_brute_forces_the_distance():
    rng = np.random.default_rng(1)
    g = rng.normal(size=(300, 8)).astype(np.float32)

    def manhattan(a, b):
        return (a - b).abs().sum(-1)

    result = search(g[:20], g, 5, distance=manhattan, space=None, exclude=np.arange(20))
    d = np.abs(g[:20, None, :] - g[None, :, :]).sum(-1)
    d[np.arange(20), np.arange(20)] = np.inf
    np.testing.assert_array_equal(result.positions, np.argsort(d, axis=1, kind="stable")[:, :5])


def test_search_on_a_memory_map_stays_bounded(tmp_path):
    """A 150,000 x 128 gallery (77 MB on disk) searched in chunks of 8,192 rows: Python-side allocations stay
    far below the matrix (tracemalloc sees numpy's buffers, not the mapped pages)."""
    n, dim = 150_000, 128
    store = EmbeddingMatrix(n, tmp_path / ".scratch" / "g.npy")
    rng = np.random.default_rng(0)
    tracemalloc.start()
    for s in range(0, n, 10_000):
        store.put(np.arange(s, s + 10_000), rng.standard_normal((10_000, dim), dtype=np.float32))
    gallery = store.finish()
    _, write_peak = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    queries = np.asarray(gallery[:200])
    result = search(queries, gallery, 10, distance=cosine_distance, space="cosine", exclude=np.arange(200),
                    backend="faiss", chunk_rows=8192)
    _, search_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    matrix_bytes = n * dim * 4
    assert write_peak < matrix_bytes / 5 and search_peak < matrix_bytes / 5, (write_peak, search_peak)
    assert isinstance(gallery, np.memmap)
    ref = reference_ranking(queries[:20], np.asarray(gallery), 10, np.arange(20))
    np.testing.assert_array_equal(result.positions[:20], ref)
    store.close()
    assert not (tmp_path / ".scratch").exists()


def test_results_json_records_the_protocol(tmp_path, clean_env, metrics):
    make_folder(tmp_path / "imgs")
    run(RunConfig(metrics=["toy-grey"], tasks=["retrieval_folder"], out=str(tmp_path / "run"), n_boot=20,
                  progress=False, num_workers=0, embed_cache=False,
                  task_args={"retrieval_folder": {"path": str(tmp_path / "imgs"), "ks": "1+2", "match": "all"}}))
    proto = json.loads((tmp_path / "run" / "results.json").read_text())["meta"]["task_protocols"]["retrieval_folder"]
    assert proto["match"] == "all" and proto["ks"] == [1, 2] and "leave_one_out" in proto
    assert proto["ties"].startswith("broken by image id")


def test_docs_example_reproduces_its_psnr_row(tmp_path, clean_env, capsys, monkeypatch):
    """docs/retrieval.md: its Python block writes the example data, and `percepbench run` prints the PSNR
    row the page shows (the other metrics are left out to keep the test short)."""
    import re

    from conftest import REPO

    text = (REPO / "docs" / "retrieval.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    row = re.search(r"^psnr +(.*)$", text, flags=re.M).group(1).split()
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/retrieval.md", "exec"), {"__name__": "docs_example"})
    assert main(["run", "-m", "psnr", "-t", "retrieval_folder", "--task-args",
                 "retrieval_folder:path=photo_crops,size=64", "-o", "runs/demo", "--n-boot", "1000",
                 "--num-workers", "0"]) == 0
    printed = re.search(r"^psnr +(.*)$", capsys.readouterr().out, flags=re.M).group(1).split()
    assert printed == row
