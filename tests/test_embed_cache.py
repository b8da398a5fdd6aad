"""Embedding metrics on file tasks: each unique image embedded once per run; the on-disk cache serves
re-runs and other tasks; entries survive concurrent writers and interrupted writes."""

from __future__ import annotations

import multiprocessing as mp
import shutil

import numpy as np
import pytest
import torch

from percepbench.cli import main
from percepbench.config import RunConfig
from percepbench.embed_cache import EmbeddingCache, metric_fingerprint
from percepbench.results import load_results
from percepbench.specs import InputConvention, MetricSpec

from helpers_metrics import ToyEmbed
from layouts import make_csv_table, write_png

FAST = ["--n-boot", "20", "-q", "--num-workers", "0"]
COLOURS = {"a": (200, 30, 30), "b": (190, 40, 35), "c": (20, 200, 40), "d": (30, 30, 220)}


def make_images(folder):
    """``folder/<name>.png``: 12x12 noisy colours ``COLOURS`` (seeded noise in [-20, 20))."""
    for seed, (name, rgb) in enumerate(COLOURS.items()):
        write_png(folder / f"{name}.png", rgb, 12, noise=20, seed=seed)


def write_2afc_csv(tmp_path):
    """6 triplets over 4 unique images (the reference ``a`` is shared by every row but the last)."""
    make_images(tmp_path / "img")
    rows = [("a", "b", "c", 0.0), ("a", "c", "b", 1.0), ("a", "b", "d", 0.2), ("a", "d", "b", 0.9),
            ("a", "c", "d", 0.5), ("b", "a", "d", 0.1)]
    return make_csv_table(tmp_path / "triplets.csv", [
        {"ref": f"img/{r}.png", "left": f"img/{x}.png", "right": f"img/{y}.png", "p": p} for r, x, y, p in rows])


def write_jnd_csv(tmp_path):
    """3 pairs over the images of ``write_2afc_csv``."""
    rows = [("a", "b", 1.0), ("c", "d", 0.0), ("a", "d", 0.2)]
    return make_csv_table(tmp_path / "pairs.csv", [
        {"p0": f"img/{x}.png", "p1": f"img/{y}.png", "same": same} for x, y, same in rows])


@pytest.fixture
def toys(register_temp):
    conv = InputConvention(size=16, interpolation="bilinear")
    register_temp(MetricSpec(name="toy-embed", target="helpers_metrics:ToyEmbed", description="t", inputs=conv))
    register_temp(MetricSpec(name="toy-embed-pairwise", target="helpers_metrics:ToyEmbedPairwise",
                             description="t", inputs=conv))
    ToyEmbed.embedded = 0


def run(capsys, *args):
    code = main(["run", *args, *FAST])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def protocol(out, metric="toy-embed"):
    res = load_results(out)
    return res, next(p for p in res.meta["protocol"] if p["metric"] == metric)


def test_unique_images_embedded_once_and_distances_match_pairwise(capsys, tmp_path, clean_env, toys):
    csv = write_2afc_csv(tmp_path)
    run(capsys, "-m", "toy-embed", "-t", "2afc_csv", "--task-args", f"2afc_csv:path={csv}",
        "--no-embed-cache", "-o", str(tmp_path / "r1"))
    assert ToyEmbed.embedded == 4  # not 6 triplets x 3 images = 18
    res, proto = protocol(tmp_path / "r1")
    assert proto["embedding"] == {"unique_images": 4, "image_references": 18, "from_cache": 0, "embedded": 4,
                                  "cache": None}
    run(capsys, "-m", "toy-embed-pairwise", "-t", "2afc_csv", "--task-args", f"2afc_csv:path={csv}",
        "-o", str(tmp_path / "r2"))
    pairwise = load_results(tmp_path / "r2")
    _, proto2 = protocol(tmp_path / "r2", "toy-embed-pairwise")
    assert proto2["embedding"] is None
    a, b = res.samples, pairwise.samples
    np.testing.assert_allclose(a["d0"], b["d0"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(a["d1"], b["d1"], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(a["score"], b["score"])


def test_rerun_and_other_task_served_from_cache(capsys, tmp_path, clean_env, toys):
    csv, cache = write_2afc_csv(tmp_path), tmp_path / "cache"
    run(capsys, "-m", "toy-embed", "-t", "2afc_csv", "--task-args", f"2afc_csv:path={csv}",
        "--embed-cache", str(cache), "-o", str(tmp_path / "r1"))
    first, p1 = protocol(tmp_path / "r1")
    assert ToyEmbed.embedded == 4 and p1["embedding"]["embedded"] == 4 and p1["embedding"]["from_cache"] == 0
    entries = sorted(cache.rglob("*.npy"))
    assert len(entries) == 4 and (cache / p1["embedding"]["cache"].split("/")[-1] / "fingerprint.json").is_file()

    ToyEmbed.embedded = 0
    run(capsys, "-m", "toy-embed", "-t", "2afc_csv", "--task-args", f"2afc_csv:path={csv}",
        "--embed-cache", str(cache), "-o", str(tmp_path / "r2"))
    second, p2 = protocol(tmp_path / "r2")
    assert ToyEmbed.embedded == 0  # no model time at all
    assert p2["embedding"]["from_cache"] == 4 and p2["embedding"]["embedded"] == 0
    np.testing.assert_array_equal(first.samples["d0"], second.samples["d0"])
    np.testing.assert_array_equal(first.records["value"], second.records["value"])

    run(capsys, "-m", "toy-embed", "-t", "jnd_csv", "--task-args", f"jnd_csv:path={write_jnd_csv(tmp_path)}",
        "--embed-cache", str(cache), "-o", str(tmp_path / "r3"))
    assert ToyEmbed.embedded == 0  # another task over the same images
    assert protocol(tmp_path / "r3")[1]["embedding"]["from_cache"] == 4


def test_cache_keys_on_content_not_path(capsys, tmp_path, clean_env, toys):
    csv, cache = write_2afc_csv(tmp_path), tmp_path / "cache"
    run(capsys, "-m", "toy-embed", "-t", "2afc_csv", "--task-args", f"2afc_csv:path={csv}",
        "--embed-cache", str(cache), "-o", str(tmp_path / "r1"))
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "img", moved / "img")
    shutil.copy(csv, moved / "triplets.csv")
    write_png(moved / "img" / "d.png", (1, 2, 3), 12)  # one image edited
    ToyEmbed.embedded = 0
    run(capsys, "-m", "toy-embed", "-t", "2afc_csv", "--task-args", f"2afc_csv:path={moved / 'triplets.csv'}",
        "--embed-cache", str(cache), "-o", str(tmp_path / "r2"))
    _, proto = protocol(tmp_path / "r2")
    assert ToyEmbed.embedded == 1 and proto["embedding"]["from_cache"] == 3


def test_damaged_entry_is_recomputed(capsys, tmp_path, clean_env, toys):
    csv, cache = write_2afc_csv(tmp_path), tmp_path / "cache"
    run(capsys, "-m", "toy-embed", "-t", "2afc_csv", "--task-args", f"2afc_csv:path={csv}",
        "--embed-cache", str(cache), "-o", str(tmp_path / "r1"))
    entries = sorted(cache.rglob("*.npy"))
    entries[0].write_bytes(b"\x93NUMPY garbage")
    np.save(entries[1], np.zeros((2, 3), dtype=np.float32))  # wrong shape
    ToyEmbed.embedded = 0
    run(capsys, "-m", "toy-embed", "-t", "2afc_csv", "--task-args", f"2afc_csv:path={csv}",
        "--embed-cache", str(cache), "-o", str(tmp_path / "r2"))
    first, second = load_results(tmp_path / "r1"), load_results(tmp_path / "r2")
    _, proto = protocol(tmp_path / "r2")
    assert ToyEmbed.embedded == 2 and proto["embedding"]["corrupt_entries_replaced"] == 2
    np.testing.assert_allclose(first.samples["d0"], second.samples["d0"], rtol=1e-6)
    assert np.load(entries[0]).shape == (9,)  # rewritten whole


def test_interrupted_write_leaves_no_entry(tmp_path, monkeypatch):
    cache = EmbeddingCache(tmp_path, "f" * 32)

    def explode(f, arr, allow_pickle=False):
        f.write(b"\x93NUMPY partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "save", explode)
    with pytest.raises(KeyboardInterrupt):
        cache.put("ab" * 32, np.ones(4))
    monkeypatch.undo()
    assert cache.get("ab" * 32) is None and cache.corrupt == 0
    assert not list(tmp_path.rglob("*.tmp")) and not list(tmp_path.rglob("*.npy"))


def _hammer(root, worker, rounds):
    cache = EmbeddingCache(root, "c" * 32)
    bad = 0
    for _ in range(rounds):
        for k in range(8):
            key = f"{k:02x}" * 32
            cache.put(key, np.full(512, float(k), dtype=np.float32))
            got = cache.get(key, dim=512)
            if got is None or not np.all(got == k):
                bad += 1
    return bad + cache.corrupt


def test_concurrent_writers_never_see_a_partial_entry(tmp_path):
    ctx = mp.get_context("spawn")
    with ctx.Pool(3) as pool:
        bad = pool.starmap(_hammer, [(str(tmp_path), w, 40) for w in range(3)])
    assert bad == [0, 0, 0]
    assert len(list(tmp_path.rglob("*.npy"))) == 8 and not list(tmp_path.rglob("*.tmp"))


def test_fingerprint_tracks_weights_options_and_preprocessing():
    from helpers_metrics import WithNet

    spec = MetricSpec(name="x", target="helpers_metrics:WithNet", description="t",
                      inputs=InputConvention(size=16, interpolation="bilinear"))
    torch.manual_seed(0)
    m1 = WithNet()
    torch.manual_seed(0)
    m2 = WithNet()
    torch.manual_seed(1)
    m3 = WithNet()
    f1, desc = metric_fingerprint(m1, spec, {})
    assert metric_fingerprint(m2, spec, {})[0] == f1  # same weights, same everything
    assert metric_fingerprint(m3, spec, {})[0] != f1  # other weights
    assert metric_fingerprint(m1, spec, {"scale": 2})[0] != f1  # other options
    other = MetricSpec(name="x", target="helpers_metrics:WithNet", description="t",
                       inputs=InputConvention(size=32, interpolation="bilinear"))
    assert metric_fingerprint(m1, other, {})[0] != f1  # other preprocessing
    assert desc["inputs"]["size"] == 16 and len(desc["state_sha256"]) == 64


@pytest.mark.slow
def test_dreamsim_patch_metric_embedding_path_matches_pairwise(tmp_path, clean_env):
    """The real DreamSim metric (random weights, patch pooling) through both runner paths."""
    from percepbench.metrics_registry.dreamsim import DreamSimMetric
    from percepbench.registry import METRICS
    from percepbench.runner import compute_distances, compute_distances_from_embeddings
    from percepbench.tasks.csv_tasks import CSV2AFC

    task = CSV2AFC(path=str(write_2afc_csv(tmp_path)))
    task.prepare(progress=False)
    torch.manual_seed(0)
    metric = DreamSimMetric(variant="dino_vitb16_patch", pretrained=False, reduction="none")
    spec = METRICS.get("dreamsim.dino_vitb16_patch")
    config = RunConfig(batch_size=4, progress=False, embed_cache=str(tmp_path / "cache"))
    dev = torch.device("cpu")
    direct = compute_distances(metric, task, spec, config, dev, "direct")
    via, stats = compute_distances_from_embeddings(metric, task, spec, config, dev, "embed", file_hashes={})
    assert stats["embedded"] == 4 and stats["unique_images"] == 4
    for col in ("d0", "d1"):
        np.testing.assert_allclose(via[col], direct[col], atol=1e-5)
    again, stats = compute_distances_from_embeddings(metric, task, spec, config, dev, "embed", file_hashes={})
    assert stats["from_cache"] == 4 and stats["embedded"] == 0
    np.testing.assert_array_equal(again["d0"], via["d0"])
