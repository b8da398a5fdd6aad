"""DreamSim parity with the official ``dreamsim`` package 0.2.1 on identical random weights (fp32, CPU)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from percepbench import dreamsim
from percepbench.images import load_rgb
from percepbench.models.dreamsim import build_dreamsim, preprocess

from conftest import SHARED_FIXTURES
from dreamsim_official import official_model, official_zero_shot, write_official_cache

pytestmark = pytest.mark.slow
ATOL = 1e-5


@pytest.fixture(scope="module")
def official_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("dreamsim_cache")
    states = write_official_cache(root)
    return root, states


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, 224, 224, generator=g), torch.rand(2, 3, 224, 224, generator=g)


CASES = [
    ("ensemble", False),
    ("dino_vitb16", False),
    ("clip_vitb32", False),
    ("open_clip_vitb32", False),
    ("synclr_vitb16", False),
    ("dino_vitb16", True),
]


@pytest.mark.parametrize(("dreamsim_type", "patch"), CASES)
def test_embeddings_and_distances_match_official(official_cache, images, dreamsim_type, patch):
    root, states = official_cache
    x, y = images
    theirs, _ = official_model(root, states["dino"], dreamsim_type=dreamsim_type, use_patch_model=patch)
    variant = f"{dreamsim_type}_patch" if patch else dreamsim_type
    # the drop-in API on the official cache layout, used as it is
    ours, _ = dreamsim(pretrained=True, cache_dir=root, dreamsim_type=dreamsim_type, use_patch_model=patch)
    for normalize_embeds in (True, False):  # the dreamsim() default, and the training/eval scripts' setting
        theirs.base_model.model.normalize_embeds = normalize_embeds
        ours.normalize_embeds = normalize_embeds
        with torch.no_grad():
            e_theirs, e_ours = theirs.embed(x), ours.embed(x)
            d_theirs, d_ours = theirs(x, y), ours(x, y)
        assert e_ours.shape == e_theirs.shape
        scale = max(1.0, float(e_theirs.abs().max()))
        torch.testing.assert_close(e_ours, e_theirs, rtol=0, atol=ATOL * scale)
        assert d_ours.shape == (2,)
        torch.testing.assert_close(d_ours, d_theirs, rtol=0, atol=ATOL)
    # the random LoRA is not a no-op: distances differ from the zero-shot backbone
    zero_shot = build_dreamsim(variant, cache_dir=root, normalize_embeds=False, lora=False)
    with torch.no_grad():
        assert (zero_shot(x, y) - d_ours).abs().max() > 1e-4


def test_dinov2_matches_timm_with_official_position_interpolation(official_cache, images):
    """DINOv2: timm's DINOv2 ViT-B/14 with the 37x37 grid interpolated as the DINO/DINOv2 hub code does."""
    import timm
    from dreamsim.feature_extraction.vision_transformer import VisionTransformer as OfficialViT

    root, states = official_cache
    hub = dict(states["dinov2"])
    hub.pop("mask_token")
    x, _ = images
    ref = timm.create_model("vit_base_patch14_dinov2", pretrained=False, num_classes=0, img_size=224)

    class _PosHolder:  # the official DINO code's interpolation, applied to the 37x37 table
        pos_embed = hub["pos_embed"]

        class patch_embed:
            patch_size = 14

    tokens = torch.zeros(1, 1 + 16 * 16, 768)
    hub["pos_embed"] = OfficialViT.interpolate_pos_encoding(_PosHolder, tokens, 224, 224)
    ref.load_state_dict(hub)
    ref.eval()
    ours = build_dreamsim("dinov2_vitb14", cache_dir=root, normalize_embeds=False, lora=False)
    backbone = ours.extractor_list[0]
    mean = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = ref.forward_features((x - mean) / std)  # final norm applied
        got = backbone.model.norm(backbone.tokens(x))
        torch.testing.assert_close(got, expected, rtol=0, atol=ATOL)
        # and the DreamSim 'cls' feature is the CLS token *before* that norm
        torch.testing.assert_close(ours.embed(x), backbone.tokens(x)[:, 0])
    # the LoRA variant and the patch variant load their (random) adapters with matching keys
    lora = build_dreamsim("dinov2_vitb14", cache_dir=root)
    patch = build_dreamsim("dinov2_vitb14_patch", cache_dir=root)
    with torch.no_grad():
        assert lora.embed(x).shape == (2, 768)
        assert patch.embed(x).shape == (2, 257, 768) and patch.embed_pooled(x).shape == (2, 1536)


def test_preprocess_matches_official(official_cache):
    root, states = official_cache
    _, official_preprocess = official_model(root, states["dino"], dreamsim_type="dino_vitb16")
    for name in ("ref_1.png", "img_a_1.png", "img_b_1.png"):
        im = load_rgb(SHARED_FIXTURES / "dreamsim" / "images" / name)
        ours, theirs = preprocess(im), official_preprocess(im)
        assert ours.shape == theirs.shape == (1, 3, 224, 224)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_lora_merge_keeps_outputs_and_folds_weights(official_cache, images):
    root, _ = official_cache
    x, y = images
    model = build_dreamsim("dino_vitb16", cache_dir=root, normalize_embeds=False)
    qkv = model.extractor_list[0].model.blocks[3].attn.qkv
    w0 = qkv.base_layer.weight.detach().clone()
    a, b = qkv.lora_A["default"].weight.detach(), qkv.lora_B["default"].weight.detach()
    alpha, r = model.lora_config["lora_alpha"], model.lora_config["r"]
    with torch.no_grad():
        before = model(x, y)
    model.merge_lora()
    merged = model.extractor_list[0].model.blocks[3].attn.qkv
    assert isinstance(merged, torch.nn.Linear) and not hasattr(merged, "lora_A")
    torch.testing.assert_close(merged.weight, w0 + (alpha / r) * b @ a, rtol=0, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(model(x, y), before, rtol=0, atol=ATOL)
    assert math.isclose(alpha / r, 2.0)


def test_metric_with_merged_lora_matches_official(official_cache, images):
    """DreamSimMetric (LoRA merged into qkv by default) against the official model on the same weights."""
    from percepbench import DreamSimMetric

    root, states = official_cache
    x, y = images
    theirs, _ = official_model(root, states["dino"], dreamsim_type="dino_vitb16")
    metric = DreamSimMetric(variant="dino_vitb16", cache_dir=root, reduction="none")
    assert metric.model.lora_config is None  # merged
    with torch.no_grad():
        torch.testing.assert_close(metric.pairwise(x, y), theirs(x, y), rtol=0, atol=ATOL)


@pytest.mark.parametrize(("name", "backbone", "feat", "stride"), [
    ("dino.vits16", "dino_vits16", "cls", 16),
    ("clip.vitb16", "clip_vitb16", "embedding", 16),
    ("synclr.vitb16", "synclr_vitb16", "cls", 16),
])
def test_zero_shot_metrics_match_official_baselines(official_cache, images, name, backbone, feat, stride):
    """Zero-shot embedding metrics against the official PerceptualModel(baseline=True) on the same weights."""
    from percepbench import create_metric

    root, states = official_cache
    x, y = images
    theirs = official_zero_shot(root, states, model_type=backbone, feat_type=feat, stride=stride)
    ours = create_metric(name, cache_dir=root, reduction="none")
    with torch.no_grad():
        torch.testing.assert_close(ours.pairwise(x, y), theirs(x, y), rtol=0, atol=ATOL)
        torch.testing.assert_close(ours.embed(x), theirs.embed(x), rtol=0, atol=ATOL * 10)


def test_trained_lora_saves_as_an_official_adapter(official_cache, images, tmp_path):
    """Fine-tune the LoRA of ``dino_vitb16`` with DreamSim's hinge loss, save it, load it back into
    percepbench and into the official package: the same embeddings; the frozen backbone is untouched."""
    root, states = official_cache
    work = tmp_path / "cache"
    work.mkdir()
    for entry in root.iterdir():  # the backbone files as they are; the adapter folder is what we rewrite
        if entry.name != "dino_vitb16_single_lora":
            (work / entry.name).symlink_to(entry)
    import shutil

    shutil.copytree(root / "dino_vitb16_single_lora", work / "dino_vitb16_single_lora")
    model = build_dreamsim("dino_vitb16", cache_dir=work, normalize_embeds=True)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if ".lora_" not in k}
    params = model.lora_parameters()
    assert len(params) == 24  # A and B of 12 qkv layers
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=1e-3)
    g = torch.Generator().manual_seed(5)
    ref, img0, img1 = (torch.rand(2, 3, 224, 224, generator=g) for _ in range(3))
    human = torch.tensor([1.0, -1.0])  # +1: img1 is closer to ref, -1: img0 is

    def hinge() -> torch.Tensor:  # the margin loss of DreamSim's training on 2AFC triplets
        return torch.relu(0.05 - human * (model(ref, img0) - model(ref, img1))).mean()

    with torch.no_grad():
        start = hinge().item()
    for _ in range(4):
        opt.zero_grad()
        loss = hinge()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert hinge().item() < start
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in frozen.items())

    saved = model.save_lora(work / "dino_vitb16_single_lora")
    assert json.loads((saved / "adapter_config.json").read_text())["lora_alpha"] == 32.0
    x, _ = images
    with torch.no_grad():
        trained = model.embed(x)
        reloaded = build_dreamsim("dino_vitb16", cache_dir=work).embed(x)
        theirs, _ = official_model(work, states["dino"], dreamsim_type="dino_vitb16")
        official = theirs.embed(x)
    torch.testing.assert_close(reloaded, trained, rtol=0, atol=1e-6)
    torch.testing.assert_close(official, trained, rtol=0, atol=ATOL)
    with torch.no_grad():  # and the training moved the embeddings away from the adapter it started from
        before = build_dreamsim("dino_vitb16", cache_dir=root).embed(x)
    assert (before - trained).abs().max() > 1e-4


def test_save_lora_needs_an_attached_adapter(official_cache, tmp_path):
    root, _ = official_cache
    model = build_dreamsim("dino_vitb16", cache_dir=root, merge=True)
    with pytest.raises(RuntimeError, match="no LoRA attached"):
        model.save_lora(tmp_path / "out")
