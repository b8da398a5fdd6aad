"""``percepbench train``: loss conventions, the loop, resume (in process and after kill -9), the MLP head and
its feature cache, export into the official ``dreamsim`` package, checkpoints as metrics, bad input.

Most tests train a tiny ViT (2 blocks, width 32, patch 32) registered for the tests only, with random
(seeded) base weights, on generated NIGHTS-layout data; the export test uses the zero-shot ViT-S/16
(``dino_vits16``) and the metric tests ViT-B/16, all with random weights in the official file formats.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from percepbench.cli import main
from percepbench.models.configs import BACKBONES, BackboneConfig
from percepbench.specs import IMAGENET
from percepbench.training import TrainConfig, hinge_loss, train

from conftest import PYTHON, REPO
from layouts import make_nights, random_nights

TINY = "tiny_test_vit"
TINY_CONFIG = BackboneConfig(TINY, 32, "gelu", 1e-6, False, False, IMAGENET, "checkpoints/tiny_test_vit.pth",
                             "dino_hub", None, width=32, depth=2, heads=2)


def register_tiny() -> None:
    """Register the tiny test backbone (also called in subprocesses)."""
    BACKBONES.setdefault(TINY, TINY_CONFIG)


@pytest.fixture(autouse=True)
def tiny_backbone(monkeypatch):
    monkeypatch.setitem(BACKBONES, TINY, TINY_CONFIG)


@pytest.fixture(autouse=True)
def few_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def write_data(base: Path, n_train: int = 8, n_val: int = 3, seed: int = 1) -> Path:
    """NIGHTS layout under ``base/nights``: ``n_train`` train and ``n_val`` val triplets (16x16 flat colours)."""
    train_rows = random_nights(n_train, seed=seed, split="train")
    val_rows = [dataclasses.replace(t, id=t.id + 500, split="val") for t in random_nights(n_val, seed=seed + 1)]
    make_nights(base, train_rows + val_rows, size=16)
    return base


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_data(tmp_path_factory.mktemp("nights_data"))


def tiny_config(out: Path, data_root: Path, **kw) -> TrainConfig:
    values = {"out": str(out), "data_root": str(data_root), "backbones": [TINY], "pretrained": False,
              "epochs": 2, "batch_size": 3, "lora_r": 4, "lr": 1e-2, "quiet": True, **kw}
    return TrainConfig(**values)


def log_lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def adapter(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


# ------------------------------------------------------------------------------------------- loss


def test_hinge_loss_matches_hand_computed_values_and_label_convention():
    d0 = torch.tensor([0.30, 0.10, 0.20, 0.20, 0.40])
    d1 = torch.tensor([0.10, 0.30, 0.20, 0.25, 0.10])
    p = torch.tensor([1.0, 1.0, 0.5, 0.7, 0.2])
    # y = 2 round(p) - 1 = [1, 1, -1 (round half to even), 1, -1]; terms max(0, 0.05 - y (d0 - d1))
    expected = [0.0, 0.25, 0.05, 0.10, 0.35]
    terms = hinge_loss(d0, d1, p, 0.05, reduction="none")
    np.testing.assert_allclose(terms.numpy(), expected, atol=1e-7)
    assert float(hinge_loss(d0, d1, p)) == pytest.approx(np.mean(expected), abs=1e-7)
    assert float(hinge_loss(d0, d1, p, reduction="sum")) == pytest.approx(sum(expected), abs=1e-6)
    # p = 1: the right image is the closer one; no loss once d1 < d0 - margin, whatever the left/right order
    assert float(hinge_loss(torch.tensor([0.5]), torch.tensor([0.4]), torch.tensor([1.0]))) == 0.0
    assert float(hinge_loss(torch.tensor([0.4]), torch.tensor([0.5]), torch.tensor([0.0]))) == 0.0
    assert float(hinge_loss(torch.tensor([0.4]), torch.tensor([0.5]), torch.tensor([1.0]))) == pytest.approx(0.15)


def test_docstring_examples_run():
    import doctest

    import percepbench.training

    result = doctest.testmod(percepbench.training)
    assert result.attempted > 0 and result.failed == 0


# ------------------------------------------------------------------------------------------- the loop


def _train_set_loss(out: Path, data_root: Path, checkpoint: Path | None, seed: int = 1234) -> float:
    """Mean official hinge loss over the train split, recomputed outside the trainer: images loaded with the
    official preprocessing, the seeded random base model rebuilt, the checkpoint loaded (or none)."""
    import pandas as pd

    from percepbench.dreamsim_checkpoint import apply_checkpoint
    from percepbench.images import load_rgb
    from percepbench.models.dreamsim import DreamSimModel, preprocess, zero_shot_variant

    torch.manual_seed(seed)
    model = DreamSimModel(zero_shot_variant(TINY), normalize_embeds=False).eval()
    if checkpoint is not None:
        apply_checkpoint(model, checkpoint)
        model.eval()
    frame = pd.read_csv(data_root / "nights" / "data.csv")
    frame = frame[frame["split"] == "train"]

    def batch(col):
        return torch.cat([preprocess(load_rgb(data_root / "nights" / r)) for r in frame[col]])

    with torch.no_grad():
        ref, left, right = batch("ref_path"), batch("left_path"), batch("right_path")
        d0, d1 = model(ref, left).numpy(), model(ref, right).numpy()
    y = 2 * np.round(frame["right_vote"].to_numpy()) - 1
    return float(np.maximum(0, 0.05 - y * (d0 - d1)).mean())


def test_training_lowers_the_loss_and_only_lora_trains(data, tmp_path):
    out = tmp_path / "run"
    result = train(tiny_config(out, data, epochs=3))
    assert result.steps == 9 and result.epochs_done == 3 and not result.stopped_early
    before = _train_set_loss(out, data, None)
    after = _train_set_loss(out, data, out / "last")
    assert after < before
    state = torch.load(out / "last" / "training_state.pt", weights_only=False)
    assert state["trainable"] and all(".lora_" in k for k in state["trainable"])  # frozen base
    assert len(state["trainable"]) == 2 * 2  # lora_A and lora_B of the 2 qkv layers
    cfg = json.loads((out / "last" / "adapter_config.json").read_text())
    assert (cfg["r"], cfg["lora_alpha"], cfg["lora_dropout"], cfg["target_modules"]) == (4, 32.0, 0.2, ["qkv"])
    lines = log_lines(out)
    steps = [x for x in lines if x["event"] == "step"]
    epochs = [x for x in lines if x["event"] == "epoch"]
    assert [x["step"] for x in steps] == list(range(1, 10)) and len(epochs) == 3
    assert [e["val_score"] for e in epochs] == result.val_scores
    # the best checkpoint is the epoch with the highest validation score
    best = json.loads((out / "best" / "percepbench_checkpoint.json").read_text())
    assert best["val_score"] == max(result.val_scores) and best["epoch"] == result.best_epoch
    assert json.loads((out / "train_config.json").read_text())["lora_alpha"] == 32.0


def test_validation_is_percepbench_2afc_score(data, tmp_path):
    """The logged validation score equals score_2afc's rule recomputed from the val triplets' distances."""
    import pandas as pd

    from percepbench.dreamsim_checkpoint import apply_checkpoint
    from percepbench.images import load_rgb
    from percepbench.models.dreamsim import DreamSimModel, preprocess, zero_shot_variant

    out = tmp_path / "run"
    result = train(tiny_config(out, data, epochs=1))
    torch.manual_seed(1234)
    model = DreamSimModel(zero_shot_variant(TINY), normalize_embeds=False)
    apply_checkpoint(model, out / "last")
    model.eval()
    frame = pd.read_csv(data / "nights" / "data.csv")
    frame = frame[frame["split"] == "val"]
    with torch.no_grad():
        imgs = {c: torch.cat([preprocess(load_rgb(data / "nights" / r)) for r in frame[c]])
                for c in ("ref_path", "left_path", "right_path")}
        d0 = model(imgs["ref_path"], imgs["left_path"]).numpy()
        d1 = model(imgs["ref_path"], imgs["right_path"]).numpy()
    p = frame["right_vote"].to_numpy()
    expected = np.where(d0 < d1, 1 - p, np.where(d1 < d0, p, 0.5)).mean() * 100
    assert result.val_scores[0] == pytest.approx(expected, abs=1e-9)


# ------------------------------------------------------------------------------------------- resume


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    BACKBONES.setdefault(TINY, TINY_CONFIG)
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    result = train(tiny_config(out, data))
    return out, result


def test_resume_after_stop_gives_the_same_weights(data, uninterrupted, tmp_path):
    ref_out, ref = uninterrupted
    out = tmp_path / "run"
    first = train(tiny_config(out, data, stop_after_steps=4))  # mid epoch 2 (3 steps per epoch)
    assert first.stopped_early and first.steps == 4
    state = torch.load(out / "last" / "training_state.pt", weights_only=False)
    assert (state["next_epoch"], state["next_batch"], state["step"]) == (1, 1, 4)
    second = train(tiny_config(out, data, resume=True))
    assert second.steps == 6 and second.epochs_done == 2
    for k, v in adapter(ref_out / "last").items():
        torch.testing.assert_close(adapter(out / "last")[k], v, rtol=0, atol=1e-6)
    assert first.losses + second.losses == pytest.approx(ref.losses, abs=1e-6)
    assert second.val_scores == pytest.approx(ref.val_scores)
    assert [x["loss"] for x in log_lines(out) if x["event"] == "step"] == pytest.approx(ref.losses, abs=1e-6)


def test_resume_after_kill_9_gives_the_same_weights(data, uninterrupted, tmp_path):
    """The CLI in a subprocess, checkpointing every step, killed with SIGKILL after its second checkpoint,
    then resumed: the final adapter equals the uninterrupted run's."""
    ref_out, ref = uninterrupted
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--data-root", str(data), "--backbones", TINY, "--epochs", "2",
            "--batch-size", "3", "--lora-r", "4", "--lr", "0.01", "--random-weights", "-q"]
    code = (f"import sys; sys.path[:0] = [{str(REPO / 'tests')!r}]; import test_training as t; t.register_tiny(); "
            "import torch; torch.set_num_threads(1); from percepbench.cli import main; sys.exit(main(sys.argv[1:]))")
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests")}
    proc = subprocess.Popen([PYTHON, "-c", code, *args, "--save-every", "1"], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    state_file = out / "last" / "training_state.pt"
    deadline = time.monotonic() + 120
    killed = False
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            meta = json.loads((out / "last" / "percepbench_checkpoint.json").read_text())
        except (OSError, json.JSONDecodeError):
            meta = {}
        if state_file.is_file() and meta.get("step", 0) >= 2:
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.005)
    proc.wait(timeout=60)
    assert killed, proc.stdout.read().decode()[-2000:]
    resumed = subprocess.run([PYTHON, "-c", code, *args, "--resume"], env=env, cwd=REPO, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    for k, v in adapter(ref_out / "last").items():
        torch.testing.assert_close(adapter(out / "last")[k], v, rtol=0, atol=1e-6)
    assert [x["loss"] for x in log_lines(out) if x["event"] == "step"] == pytest.approx(ref.losses, abs=1e-6)


def test_grad_checkpointing_gives_the_same_weights_and_bf16_runs(data, uninterrupted, tmp_path):
    ref_out, ref = uninterrupted
    out = tmp_path / "ckpt"
    result = train(tiny_config(out, data, grad_checkpointing=True))
    assert result.losses == pytest.approx(ref.losses, abs=1e-6)
    for k, v in adapter(ref_out / "last").items():
        torch.testing.assert_close(adapter(out / "last")[k], v, rtol=0, atol=1e-6)
    bf16 = train(tiny_config(tmp_path / "bf16", data, precision="bf16", epochs=1))
    assert bf16.steps == 3 and all(np.isfinite(bf16.losses))
    assert json.loads((tmp_path / "bf16" / "train_config.json").read_text())["precision"] == "bf16"


# ------------------------------------------------------------------------------------------- MLP head


def test_mlp_head_trains_on_cached_features(data, tmp_path, monkeypatch):
    """The backbone runs only while the feature cache is built: 3 epochs cost as many backbone calls as 1."""
    from percepbench.dreamsim_checkpoint import load_head
    from percepbench.models import vit

    calls = []
    real = vit.Backbone.features

    def counting(self, x, kind):
        calls.append(x.shape[0])
        return real(self, x, kind)

    monkeypatch.setattr(vit.Backbone, "features", counting)
    one = train(tiny_config(tmp_path / "one", data, mode="mlp", epochs=1, hidden=16))
    images_one = sum(calls)
    calls.clear()
    three = train(tiny_config(tmp_path / "three", data, mode="mlp", epochs=3, hidden=16))
    assert sum(calls) == images_one
    n_unique = len({p for f in ("ref", "distort") for p in (data / "nights" / f).rglob("*.png")})
    assert images_one == n_unique  # every image of the train and val splits embedded exactly once
    assert three.steps == 9 and one.steps == 3
    head = load_head(tmp_path / "three" / "last", in_features=32)
    state = torch.load(tmp_path / "three" / "last" / "training_state.pt", weights_only=False)
    assert set(state["trainable"]) == {"head.fc1.weight", "head.fc1.bias", "head.fc2.weight", "head.fc2.bias"}
    for k, v in head.state_dict().items():
        torch.testing.assert_close(v, state["trainable"][f"head.{k}"], rtol=0, atol=0)
    x = torch.randn(2, 32)  # the residual form
    expected = head.fc2(torch.relu(head.fc1(x))) + x
    torch.testing.assert_close(head(x), expected)
    cfg = json.loads((tmp_path / "three" / "last" / "mlp_head.json").read_text())
    assert cfg == {"format": "percepbench-dreamsim-mlp-head", "version": 1, "in_features": 32, "hidden": 16}


# ------------------------------------------------------------------------------------------- export


def _random_dino(root: Path, small: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    from dreamsim_official import _randomise, official_vit

    (root / "checkpoints").mkdir(parents=True, exist_ok=True)
    state = _randomise(official_vit(16, small=small).state_dict(), torch.Generator().manual_seed(seed))
    name = "dino_deitsmall16_pretrain.pth" if small else "dino_vitbase16_pretrain.pth"
    torch.save(state, root / "checkpoints" / name)
    return state


@pytest.mark.slow
def test_trained_adapter_loads_in_the_official_package(tmp_path):
    """Train LoRA on the zero-shot ViT-S/16 (random weights in the official file format), then load the
    adapter with peft into the official PerceptualModel on the same base weights: same distances."""
    from peft import PeftModel

    from percepbench.dreamsim_checkpoint import apply_checkpoint
    from percepbench.models.dreamsim import build_dreamsim, zero_shot_variant

    from dreamsim_official import official_zero_shot

    cache = tmp_path / "cache"
    small = _random_dino(cache, small=True)
    data = write_data(tmp_path / "data", n_train=2, n_val=1)
    train(TrainConfig(out=str(tmp_path / "run"), data_root=str(data), backbones=["dino_vits16"],
                      cache_dir=str(cache), epochs=1, batch_size=2, lr=1e-2, quiet=True))
    best = tmp_path / "run" / "best"
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(2, 3, 224, 224, generator=g), torch.rand(2, 3, 224, 224, generator=g)
    ours = build_dreamsim(zero_shot_variant("dino_vits16"), cache_dir=cache, lora=False, normalize_embeds=False)
    plain = build_dreamsim(zero_shot_variant("dino_vits16"), cache_dir=cache, lora=False, normalize_embeds=False)
    apply_checkpoint(ours, best)
    ours.eval()
    base = official_zero_shot(cache, {"dino": None, "dino_vits16": small}, model_type="dino_vits16", feat_type="cls",
                              stride=16)
    theirs = PeftModel.from_pretrained(base, str(best)).eval()
    with torch.no_grad():
        d_ours, d_theirs, d_plain = ours(x, y), theirs(x, y), plain(x, y)
    torch.testing.assert_close(d_ours, d_theirs, rtol=0, atol=1e-5)
    assert (d_ours - d_plain).abs().max() > 1e-4  # the trained adapter is not a no-op


def _dino_head_file(root: Path) -> None:
    """The official package checks that ``dino_vitb16_pretrain.pth`` (a DINO head, key ``student``) exists."""
    from dreamsim.feature_extraction.vision_transformer import DINOHead

    g = torch.Generator().manual_seed(2)
    head = {f"module.head.{k}": torch.randn(v.shape, generator=g) * 0.02
            for k, v in DINOHead(768, 2048).state_dict().items()}
    head["module.head.last_layer.weight"] = torch.randn(2048, 256, generator=g) * 0.02
    torch.save({"student": head}, root / "dino_vitb16_pretrain.pth")


@pytest.fixture(scope="module")
def vitb_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("vitb_cache")
    _dino_head_file(root)
    return root, _random_dino(root, small=False, seed=5)


def _lora_checkpoint(cache: Path, folder: Path) -> Path:
    """A dino_vitb16 LoRA checkpoint folder with non-zero random B (as after training)."""
    from percepbench.dreamsim_checkpoint import write_meta
    from percepbench.models.dreamsim import build_dreamsim

    model = build_dreamsim("dino_vitb16", cache_dir=cache, lora=False)
    model.add_lora({"r": 16, "lora_alpha": 32.0, "lora_dropout": 0.2, "bias": "none", "target_modules": ["qkv"]})
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    model.save_lora(folder)
    write_meta(folder, {"mode": "lora", "variant": "dino_vitb16", "backbones": ["dino_vitb16"], "features": ["cls"],
                        "embed_dim": 768, "normalize_embeds": False, "epoch": 1, "step": 1, "val_score": None})
    return folder


@pytest.mark.slow
def test_lora_checkpoint_as_a_metric_matches_the_official_package(vitb_cache, tmp_path):
    from percepbench import DreamSimMetric

    from dreamsim_official import official_model

    cache, dino = vitb_cache
    ckpt = _lora_checkpoint(cache, tmp_path / "ckpt")
    official_cache = tmp_path / "official"
    (official_cache / "checkpoints").mkdir(parents=True)
    (official_cache / "checkpoints" / "dino_vitbase16_pretrain.pth").symlink_to(
        cache / "checkpoints" / "dino_vitbase16_pretrain.pth")
    _dino_head_file(official_cache)
    (official_cache / "dino_vitb16_single_lora").mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (official_cache / "dino_vitb16_single_lora" / name).symlink_to(ckpt / name)
    theirs, _ = official_model(official_cache, dino, dreamsim_type="dino_vitb16")
    metric = DreamSimMetric(variant="dino_vitb16", cache_dir=cache, checkpoint=str(ckpt), reduction="none")
    g = torch.Generator().manual_seed(4)
    x, y = torch.rand(2, 3, 224, 224, generator=g), torch.rand(2, 3, 224, 224, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(metric.pairwise(x, y), theirs(x, y), rtol=0, atol=1e-5)
    files = {f["filename"]: f for f in metric.extra_weight_files}
    digest = hashlib.sha256((ckpt / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert files["checkpoint/adapter_model.safetensors"]["sha256"] == digest
    assert metric.weight_files_used == ["checkpoints/dino_vitbase16_pretrain.pth"]  # not the released adapter


@pytest.mark.slow
def test_mlp_checkpoint_as_a_metric_matches_the_official_head(vitb_cache, tmp_path):
    """Train the MLP head on dino_vitb16 (random weights), then score it through `percepbench run`; its
    distances equal the official PerceptualModel with the same head tensors in its ``mlp``."""
    from dreamsim.model import PerceptualModel

    from percepbench import DreamSimMetric

    from dreamsim_official import official_hub

    cache, dino = vitb_cache
    data = write_data(tmp_path / "data", n_train=2, n_val=2)
    train(TrainConfig(out=str(tmp_path / "run"), data_root=str(data), variant="dino_vitb16", mode="mlp",
                      cache_dir=str(cache), epochs=1, batch_size=2, lr=1e-2, quiet=True))
    best = tmp_path / "run" / "best"
    metric = DreamSimMetric(variant="dino_vitb16", cache_dir=cache, checkpoint=str(best), reduction="none")
    hub_dir = torch.hub._hub_dir
    with official_hub(dino):
        try:
            theirs = PerceptualModel(model_type="dino_vitb16", feat_type="cls", stride="16", hidden_size=512,
                                     load_dir=str(cache), normalize_embeds=True, device="cpu")
        finally:
            torch.hub._hub_dir = hub_dir
    theirs.mlp.load_state_dict(load_file(str(best / "mlp_head.safetensors")))
    theirs.eval()
    g = torch.Generator().manual_seed(4)
    x, y = torch.rand(2, 3, 224, 224, generator=g), torch.rand(2, 3, 224, 224, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(metric.pairwise(x, y), theirs(x, y), rtol=0, atol=1e-5)
    # and through the runner, by --metric-args
    out = tmp_path / "results"
    code = main(["run", "-m", "dreamsim.dino_vitb16", "-t", "nights", "--task-args", "nights:subset=val",
                 "--data-root", str(data), "--metric-args", f"dreamsim.dino_vitb16:checkpoint={best},cache_dir={cache}",
                 "--out", str(out), "-q", "--no-report", "--no-embed-cache", "--device", "cpu"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["meta"]["config"]["metric_args"]["dreamsim.dino_vitb16"]["checkpoint"] == str(best)
    [record] = [r for r in results["records"] if r["metric"] == "dreamsim.dino_vitb16"]
    assert record["n"] == 2
    # the checkpoint's files are in meta.weights with their sha256 (hashlib as the oracle)
    weights = {w["filename"]: w for w in results["meta"]["weights"]["dreamsim.dino_vitb16"]}
    head = best / "mlp_head.safetensors"
    assert weights["checkpoint/mlp_head.safetensors"]["sha256"] == hashlib.sha256(head.read_bytes()).hexdigest()
    assert "dino_vitb16_single_lora" not in " ".join(weights)  # the released adapter was not read


def test_checkpoint_for_another_variant_is_refused(vitb_cache, tmp_path):
    from percepbench import DreamSimMetric
    from percepbench.errors import WeightsError

    cache, _ = vitb_cache
    ckpt = _lora_checkpoint(cache, tmp_path / "ckpt")
    with pytest.raises(WeightsError, match=r"trained on backbones dino_vitb16.*clip_vitb32"):
        DreamSimMetric(variant="clip_vitb32", pretrained=False, checkpoint=str(ckpt))
    with pytest.raises(WeightsError, match="checkpoint description"):
        DreamSimMetric(variant="dino_vitb16", pretrained=False, checkpoint=str(tmp_path))


# ------------------------------------------------------------------------------------------- bad input


def _cli(capsys, *args) -> tuple[int, str]:
    code = main(["train", *args, "-q"])
    return code, capsys.readouterr().err


def test_bad_input_exits_2_with_a_clear_message(data, tmp_path, capsys, uninterrupted):
    common = ["--backbones", TINY, "--epochs", "1", "--batch-size", "3"]
    code, err = _cli(capsys, "--out", str(tmp_path / "a"), "--data-root", str(tmp_path / "nothing"), *common)
    assert code == 2 and "NIGHTS folder not found" in err
    only_train = write_data(tmp_path / "only_train", n_train=3, n_val=0)
    code, err = _cli(capsys, "--out", str(tmp_path / "b"), "--data-root", str(only_train), *common)
    assert code == 2 and "no rows left for subset 'val'" in err
    ref_out, _ = uninterrupted
    code, err = _cli(capsys, "--out", str(ref_out), "--data-root", str(data), *common)
    assert code == 2 and "already holds a training run" in err
    code, err = _cli(capsys, "--out", str(ref_out), "--data-root", str(data), "--backbones", TINY, "--epochs", "3",
                     "--batch-size", "3", "--lora-r", "4", "--lr", "0.02", "--resume")
    assert code == 2 and "incompatible checkpoint" in err and "lr: 0.01 in the checkpoint, 0.02 now" in err
    code, err = _cli(capsys, "--out", str(tmp_path / "c"), "--data-root", str(data), *common, "--resume")
    assert code == 2 and "nothing to resume" in err
    code, err = _cli(capsys, "--out", str(tmp_path / "d"), "--variant", "dino_vitb16_patch", "--mode", "mlp")
    assert code == 2 and "patch variant" in err
    code, err = _cli(capsys, "--out", str(tmp_path / "e"), "--backbones", "no_such_vit")
    assert code == 2 and "unknown backbone" in err
    code, err = _cli(capsys, "--out", str(tmp_path / "f"), "--task", "bapps_jnd")
    assert code == 2 and "2AFC triplets" in err


def test_trains_on_a_user_csv_with_validation_from_another_csv(tmp_path, capsys):
    from layouts import make_csv_table

    rng = np.random.default_rng(0)

    def table(name: str, n: int) -> Path:
        rows, images = [], {}
        for i in range(n):
            names = [f"{name}/{i}_{s}.png" for s in ("r", "a", "b")]
            images.update({k: int(v) for k, v in zip(names, rng.integers(0, 255, 3), strict=True)})
            rows.append({"ref": names[0], "left": names[1], "right": names[2], "p": float(rng.integers(0, 2))})
        return make_csv_table(tmp_path / f"{name}.csv", rows, images=images, size=16)

    train_csv, val_csv = table("train", 4), table("val", 2)
    out = tmp_path / "run"
    code = main(["train", "--task", "2afc_csv", "--task-args", f"path={train_csv}", "--val-task-args",
                 f"path={val_csv}", "--backbones", TINY, "--random-weights", "--epochs", "1", "--batch-size", "2",
                 "--out", str(out), "-q"])
    assert code == 0, capsys.readouterr().err
    [epoch] = [x for x in log_lines(out) if x["event"] == "epoch"]
    assert epoch["val_score"] in (0.0, 50.0, 100.0)  # 2 hard-labelled val triplets
    assert json.loads((out / "train_config.json").read_text())["val_task_args"] == {"path": str(val_csv)}
    # without --val-task-args a CSV task has no validation: best is the last epoch
    result = train(tiny_config(tmp_path / "noval", tmp_path, task="2afc_csv", task_args={"path": str(train_csv)},
                               epochs=1, batch_size=2))
    assert result.val_scores == [None] and result.best == tmp_path / "noval" / "best"


def test_tensorboard_logging_or_a_clear_message(data, tmp_path, capsys):
    import importlib.util

    args = ["train", "--out", str(tmp_path / "tb"), "--data-root", str(data), "--backbones", TINY, "--random-weights",
            "--epochs", "1", "--batch-size", "4", "--tensorboard", "-q"]
    code = main(args)
    if importlib.util.find_spec("tensorboard") is None:
        assert code == 2 and "pip install tensorboard" in capsys.readouterr().err
        assert not (tmp_path / "tb").exists()  # refused before anything is written
    else:
        assert code == 0 and any((tmp_path / "tb" / "tensorboard").glob("events.out.tfevents.*"))
