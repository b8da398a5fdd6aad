"""Zero-shot baselines whose weights no DreamSim release ships: OpenAI CLIP ViT-L/14 (``clip.vitl14``),
OpenCLIP ViT-L/14 LAION-400M e31 (``open_clip.vitl14``) and MAE ViT-B/16 (``mae.vitb16``).

Oracles are independent implementations on the same random weights, written in the upstream file layout:
open_clip's own ``CLIP`` (``ViT-L-14`` / ``ViT-L-14-quickgelu``, chosen from open_clip's pretrained registry)
saves ``open_clip_model.safetensors``; timm's registered ``vit_base_patch16_224.mae`` saves
``model.safetensors``. Mean/std come from those libraries' pretrained configs, not from percepbench.
Every 1-D parameter (LayerNorm weights and biases, linear biases) is perturbed, so a swapped or dropped
LayerNorm or bias would show.
"""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save, save_file

from percepbench import create_metric
from percepbench.errors import OfflineError, WeightsError
from percepbench.metrics_registry.embedding import ZeroShotEmbeddingMetric
from percepbench.models.dreamsim import DreamSimModel, zero_shot_variant
from percepbench.models.vit import BACKBONES, open_clip_visual_keys
from percepbench.registry import METRICS

NEW = {"clip.vitl14": "clip_vitl14", "open_clip.vitl14": "open_clip_vitl14", "mae.vitb16": "mae_vitb16"}
URLS = {
    "clip.vitl14": "https://huggingface.co/timm/vit_large_patch14_clip_224.openai/resolve/main/"
                   "open_clip_model.safetensors",
    "open_clip.vitl14": "https://huggingface.co/timm/vit_large_patch14_clip_224.laion400m_e31/resolve/main/"
                        "open_clip_model.safetensors",
    "mae.vitb16": "https://huggingface.co/timm/vit_base_patch16_224.mae/resolve/main/model.safetensors",
}
OPEN_CLIP_TAGS = {"clip_vitl14": "openai", "open_clip_vitl14": "laion400m_e31"}


def _perturbed(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in state.items():
        v = v.detach().clone().contiguous()
        if v.is_floating_point() and v.ndim == 1:
            v += 0.1 * torch.randn(v.shape, generator=g)
        out[k] = v
    return out


def _images(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def _normalise(x: torch.Tensor, mean, std) -> torch.Tensor:
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("large_backbones_cache")


# ---------------------------------------------------------------------------------------------
# OpenAI CLIP / OpenCLIP ViT-L/14 against open_clip
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def open_clip_state():
    """Random ViT-L/14 CLIP weights in open_clip's own state-dict layout (text tower included)."""
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-L-14", pretrained=None)
    return _perturbed(model.state_dict(), seed=1)


@pytest.fixture(scope="module")
def open_clip_files(cache, open_clip_state):
    """The same weights as both upstream files, at the cache paths the metrics download to."""
    first = None
    for backbone in OPEN_CLIP_TAGS:
        path = cache / BACKBONES[backbone].checkpoint
        path.parent.mkdir(parents=True, exist_ok=True)
        if first is None:
            save_file(open_clip_state, str(path))
            first = path
        else:
            os.link(first, path)  # same bytes, no second 1.7 GB write
    return cache


def _open_clip_oracle(backbone: str, state: dict[str, torch.Tensor]):
    """open_clip's CLIP for this backbone's pretrained tag: QuickGELU iff open_clip's registry says so (on
    random weights GELU and QuickGELU give features far apart, so a wrong activation fails the comparison)."""
    import open_clip

    tag = OPEN_CLIP_TAGS[backbone]
    pcfg = open_clip.get_pretrained_cfg("ViT-L-14", tag)
    name = "ViT-L-14-quickgelu" if pcfg.get("quick_gelu", False) else "ViT-L-14"
    model = open_clip.create_model(name, pretrained=None, device="meta")  # no random init: weights come next
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval(), pcfg


@pytest.mark.slow
@pytest.mark.parametrize("backbone", list(OPEN_CLIP_TAGS))
def test_vitl14_matches_open_clip_on_the_same_weights(open_clip_files, open_clip_state, backbone, monkeypatch):
    monkeypatch.setenv("PERCEPBENCH_CACHE", str(open_clip_files))
    monkeypatch.setenv("PERCEPBENCH_OFFLINE", "1")  # the file is in place: no network
    metric = ZeroShotEmbeddingMetric(backbone=backbone, pretrained=True, reduction="none")
    oracle, pcfg = _open_clip_oracle(backbone, open_clip_state)
    assert tuple(pcfg["mean"]) == BACKBONES[backbone].mean and tuple(pcfg["std"]) == BACKBONES[backbone].std
    x = _images(1)  # one image: a ViT-L/14 forward takes seconds on a CPU
    with torch.no_grad():
        ours = metric.embed(x)
        theirs = oracle.encode_image(_normalise(x, pcfg["mean"], pcfg["std"]))
    assert ours.shape == (1, 768) and theirs.abs().max() > 0.1
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_open_clip_visual_key_list_is_open_clips():
    """The keys we read are exactly the ``visual.*`` keys of open_clip's ViT-L-14 (built on the meta device)."""
    import open_clip

    with torch.device("meta"):
        model = open_clip.create_model("ViT-L-14", pretrained=None, device="meta")
    theirs = {k for k in model.state_dict() if k.startswith("visual.")}
    assert set(open_clip_visual_keys(BACKBONES["clip_vitl14"])) == theirs


def _write_keys(path, keys, *, drop=(), extra=()):
    """A small safetensors file holding ``keys`` (minus ``drop``, plus ``extra``) with dummy tensors."""
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [k for k in keys if k not in drop] + list(extra)
    save_file({k: torch.zeros(1) for k in names}, str(path))


@pytest.mark.parametrize("backbone", list(OPEN_CLIP_TAGS))
def test_open_clip_layout_is_loaded_strictly(tmp_path, backbone):
    cfg = BACKBONES[backbone]
    path = tmp_path / cfg.checkpoint
    keys = [*open_clip_visual_keys(cfg), "token_embedding.weight", "ln_final.weight", "logit_scale"]
    _write_keys(path, keys, drop=["visual.ln_post.bias"], extra=["visual.transformer.resblocks.24.ln_1.weight"])
    model = DreamSimModel(zero_shot_variant(backbone), normalize_embeds=False, empty=True)
    with pytest.raises(WeightsError) as exc:
        model.load_backbones(tmp_path)
    msg = str(exc.value)
    assert str(path) in msg
    assert "1 missing ['visual.ln_post.bias']" in msg
    assert "1 unexpected ['visual.transformer.resblocks.24.ln_1.weight']" in msg


def test_not_a_safetensors_file_names_the_file(tmp_path):
    cfg = BACKBONES["clip_vitl14"]
    path = tmp_path / cfg.checkpoint
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x80\x02pickle, not safetensors")
    model = DreamSimModel(zero_shot_variant("clip_vitl14"), normalize_embeds=False, empty=True)
    with pytest.raises(WeightsError, match="is not a valid safetensors file") as exc:
        model.load_backbones(tmp_path)
    assert str(path) in str(exc.value)


# ---------------------------------------------------------------------------------------------
# MAE ViT-B/16 against timm
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mae():
    """timm's registered MAE ViT-B/16 with random (perturbed) weights, and those weights."""
    import timm

    torch.manual_seed(2)
    model = timm.create_model("vit_base_patch16_224.mae", pretrained=False)
    state = _perturbed(model.state_dict(), seed=3)
    model.load_state_dict(state, strict=True)
    return model.eval(), state


@pytest.fixture(scope="module")
def mae_file(cache, mae):
    path = cache / BACKBONES["mae_vitb16"].checkpoint
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(mae[1], str(path))
    return cache


@pytest.mark.slow
def test_mae_matches_timm_on_the_same_weights(mae_file, mae, monkeypatch):
    """The metric's feature (CLS at the last block, before the final LayerNorm) and every token, before and
    after the final LayerNorm, against timm's own forward."""
    timm_model, _ = mae
    monkeypatch.setenv("PERCEPBENCH_OFFLINE", "1")
    metric = ZeroShotEmbeddingMetric(backbone="mae_vitb16", pretrained=True, cache_dir=mae_file, reduction="none")
    cfg = timm_model.pretrained_cfg
    assert tuple(cfg["mean"]) == BACKBONES["mae_vitb16"].mean and tuple(cfg["std"]) == BACKBONES["mae_vitb16"].std
    x = _images(seed=1)
    backbone = metric.model.extractor_list[0]
    with torch.no_grad():
        ours, tokens = metric.embed(x), backbone.tokens(x)
        xn = _normalise(x, cfg["mean"], cfg["std"])
        _, ((patches, prefix),) = timm_model.forward_intermediates(xn, indices=1, norm=False, output_fmt="NLC",
                                                                   return_prefix_tokens=True)
        post_norm = timm_model.forward_features(xn)
    assert ours.shape == (2, 768)
    torch.testing.assert_close(ours, prefix[:, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tokens, torch.cat([prefix, patches], dim=1), atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # the final LayerNorm is loaded too (the 'cls' feature does not use it)
        torch.testing.assert_close(backbone.model.norm(tokens), post_norm, atol=1e-5, rtol=1e-5)
    assert (ours[0] - ours[1]).abs().max() > 1e-3


def test_mae_layout_is_loaded_strictly(tmp_path, mae):
    _, state = mae
    path = tmp_path / BACKBONES["mae_vitb16"].checkpoint
    path.parent.mkdir(parents=True)
    broken = {k: v for k, v in state.items() if k != "norm.bias"}
    broken["head.weight"] = torch.zeros(1000, 768)
    save_file(broken, str(path))
    model = DreamSimModel(zero_shot_variant("mae_vitb16"), normalize_embeds=False, empty=True)
    with pytest.raises(WeightsError) as exc:
        model.load_backbones(tmp_path)
    msg = str(exc.value)
    assert str(path) in msg and "missing ['norm.bias']" in msg and "unexpected ['head.weight']" in msg


@pytest.mark.slow
def test_mae_download_round_trip_then_offline(server, weights_env, mae, monkeypatch):
    """The real weights manager fetches the file over HTTP into ``timm/<repo>/``, records its sha256, and
    the next build is served from the cache with the network off."""
    import percepbench.dreamsim_weights as dw

    _, state = mae
    url = server.add("model.safetensors", save(state))
    real = dw.backbone_weight_files

    def local(backbones, **kwargs):
        return tuple(type(w)(**{**w.to_dict(), "url": url}) for w in real(backbones, **kwargs))

    monkeypatch.setattr(dw, "backbone_weight_files", local)
    first = create_metric("mae.vitb16", reduction="none")
    target = weights_env / "timm" / "vit_base_patch16_224.mae" / "model.safetensors"
    assert target.is_file() and (target.parent / "model.safetensors.sha256").is_file()
    assert len(server.requests) == 1
    monkeypatch.setenv("PERCEPBENCH_OFFLINE", "1")
    again = create_metric("mae.vitb16", reduction="none")
    assert len(server.requests) == 1
    x = _images(1, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(again.embed(x), first.embed(x))


# ---------------------------------------------------------------------------------------------
# Registry, CLI, offline mode
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(NEW))
def test_registry_entries(name):
    spec = METRICS.get(name)
    assert spec.load().embeds and spec.kwargs["backbone"] == NEW[name]
    assert spec.inputs.size == 224 and spec.inputs.interpolation == "bicubic"
    assert [w.url for w in spec.weights] == [URLS[name]]
    (w,) = spec.weights
    assert w.filename == BACKBONES[NEW[name]].checkpoint and w.filename.startswith("timm/")
    assert w.sha256 is None and w.extract_to is None  # recorded at first download
    assert spec.licence and spec.citation and not spec.default
    expected = {"clip.vitl14": ("MIT", "Radford"), "open_clip.vitl14": ("MIT", "Cherti"),
                "mae.vitb16": ("CC-BY-NC-4.0", "He et al.")}[name]
    assert spec.licence == expected[0] and expected[1] in spec.citation


def test_architectures():
    for b in ("clip_vitl14", "open_clip_vitl14"):
        cfg = BACKBONES[b]
        assert (cfg.width, cfg.depth, cfg.heads, cfg.patch_size, cfg.proj_dim) == (1024, 24, 16, 14, 768)
        assert cfg.ln_pre and cfg.ln_eps == 1e-5 and not cfg.patch_bias and cfg.features == ("embedding",)
    assert BACKBONES["clip_vitl14"].act == "quick_gelu" and BACKBONES["open_clip_vitl14"].act == "gelu"
    mae = BACKBONES["mae_vitb16"]
    assert (mae.width, mae.depth, mae.heads, mae.patch_size, mae.act, mae.ln_eps, mae.ln_pre) == \
        (768, 12, 12, 16, "gelu", 1e-6, False)
    assert mae.features == ("cls", "cls_patch")
    model = DreamSimModel(zero_shot_variant("clip_vitl14"), empty=True)
    vit = model.extractor_list[0].model
    assert vit.patch_embed.proj.bias is None and len(vit.blocks) == 24
    assert model.variant.embed_dim == 768 and DreamSimModel(zero_shot_variant("mae_vitb16"), empty=True) \
        .variant.embed_dim == 768


def test_cli_list_and_weights_list(capsys, weights_env):
    from percepbench.cli import main

    assert main(["list", "metrics"]) == 0
    out = capsys.readouterr().out
    for name in NEW:
        assert f"  {name} " in out
    assert main(["weights", "list", *NEW]) == 0
    out = capsys.readouterr().out
    for name in NEW:
        w = METRICS.get(name).weights[0]
        assert f"[MISSING] {weights_env / w.filename}" in out and f"from {URLS[name]};" in out


@pytest.mark.parametrize("name", list(NEW))
def test_offline_fails_fast_naming_file_and_url(name, weights_env, monkeypatch):
    monkeypatch.setenv("PERCEPBENCH_OFFLINE", "1")
    with pytest.raises(OfflineError) as exc:
        create_metric(name)
    msg = str(exc.value)
    assert str(weights_env / METRICS.get(name).weights[0].filename) in msg and URLS[name] in msg
