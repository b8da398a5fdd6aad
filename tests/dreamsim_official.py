"""Random DreamSim weights written in the official on-disk formats, and the official model built on them.

The official ``dreamsim`` package (0.2.1, MIT) is a test-only dependency: it is the oracle. Its DINO
backbones come from ``torch.hub.load('facebookresearch/dino:main', ...)``, which needs the network; tests
replace that call by the package's own DINO-style ViT loaded with the same random weights.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file

from conftest import SHARED_FIXTURES

ADAPTER_TEMPLATE = SHARED_FIXTURES / "dreamsim" / "ensemble_lora" / "adapter_config.json"
LORA_DIRS = {
    "ensemble": ("ensemble_lora", 3, 1.0),
    "dino_vitb16": ("dino_vitb16_single_lora", 1, 32.0),
    "clip_vitb32": ("clip_vitb32_single_lora", 1, 32.0),
    "open_clip_vitb32": ("open_clip_vitb32_single_lora", 1, 32.0),
    "synclr_vitb16": ("synclr_vitb16_single_lora", 1, 32.0),
    "dinov2_vitb14": ("dinov2_vitb14_single_lora", 1, 32.0),
    "dino_vitb16_patch": ("dino_vitb16_patch_lora", 1, 32.0),
    "dinov2_vitb14_patch": ("dinov2_vitb14_patch_lora", 1, 32.0),
}


def _randomise(sd: dict[str, torch.Tensor], g: torch.Generator) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        if k.endswith(("norm1.weight", "norm2.weight", "norm.weight", "pos_drop.weight")):
            out[k] = 1.0 + 0.1 * torch.randn(v.shape, generator=g)
        elif k.endswith("gamma"):  # LayerScale
            out[k] = 0.1 + 0.05 * torch.randn(v.shape, generator=g)
        else:
            out[k] = torch.randn(v.shape, generator=g) * (0.02 if v.ndim > 1 else 0.1)
    return out


def official_vit(patch: int, ln_pre: bool = False, small: bool = False):
    from dreamsim.feature_extraction import vision_transformer as ovt

    m = (ovt.vit_small if small else ovt.vit_base)(patch_size=patch)
    if ln_pre:
        m.pos_drop = torch.nn.LayerNorm(768)
    return m


def write_lora(root: Path, variant: str, g: torch.Generator, scale: float = 0.05) -> Path:
    """A random, non-zero adapter in the official key layout, with the official config format."""
    dirname, n_backbones, alpha = LORA_DIRS[variant]
    d = root / dirname
    d.mkdir(parents=True, exist_ok=True)
    cfg = json.loads(ADAPTER_TEMPLATE.read_text())
    cfg["lora_alpha"] = alpha
    (d / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    tensors = {}
    for i in range(n_backbones):
        for k in range(12):
            p = f"base_model.model.extractor_list.{i}.model.blocks.{k}.attn.qkv."
            tensors[p + "lora_A.weight"] = torch.randn(16, 768, generator=g) * scale
            tensors[p + "lora_B.weight"] = torch.randn(2304, 16, generator=g) * scale
    save_file(tensors, str(d / "adapter_model.safetensors"))
    return d


def write_official_cache(root: Path, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Every backbone file of every variant, plus random LoRA adapters, in the official layout.

    Returns the raw state dicts needed to stand in for torch.hub: ``"dino"`` (ViT-B/16), ``"dino_vits16"``,
    and ``"dinov2"``.
    """
    from dreamsim.feature_extraction.vision_transformer import DINOHead

    g = torch.Generator().manual_seed(seed)
    (root / "checkpoints").mkdir(parents=True, exist_ok=True)
    dino = _randomise(official_vit(16).state_dict(), g)
    torch.save(dino, root / "checkpoints" / "dino_vitbase16_pretrain.pth")
    dino_s16 = _randomise(official_vit(16, small=True).state_dict(), g)
    torch.save(dino_s16, root / "checkpoints" / "dino_deitsmall16_pretrain.pth")
    head = {f"module.head.{k}": torch.randn(v.shape, generator=g) * 0.02 for k, v in DINOHead(768, 2048).state_dict().items()}
    head["module.head.last_layer.weight"] = torch.randn(2048, 256, generator=g) * 0.02
    torch.save({"student": head}, root / "dino_vitb16_pretrain.pth")
    for patch in (16, 32):
        sd = _randomise(official_vit(patch, ln_pre=True).state_dict(), g)
        sd["proj"] = torch.randn(768, 512, generator=g) * 0.03
        torch.save({"state_dict": sd}, root / f"clip_vitb{patch}_pretrain.pth.tar")
        # OpenCLIP files differ only by the activation the model applies: same tensors, linked
        os.link(root / f"clip_vitb{patch}_pretrain.pth.tar", root / f"open_clip_vitb{patch}_pretrain.pth.tar")
    synclr = _randomise(official_vit(16).state_dict(), g)
    torch.save({"model": {f"module.visual.{k}": v for k, v in synclr.items()}}, root / "synclr_vit_b_16.pth")
    dinov2 = dinov2_hub_state_dict(g)
    torch.save(dinov2, root / "checkpoints" / "dinov2_vitb14_pretrain.pth")
    for variant in LORA_DIRS:
        write_lora(root, variant, g)
    return {"dino": dino, "dinov2": dinov2, "dino_vits16": dino_s16}


def dinov2_hub_state_dict(g: torch.Generator) -> dict[str, torch.Tensor]:
    """Random weights with the key names and shapes of the torch-hub DINOv2 ViT-B/14 (518 px, 37x37 grid)."""
    import timm

    ref = timm.create_model("vit_base_patch14_dinov2", pretrained=False, num_classes=0)
    sd = _randomise(ref.state_dict(), g)
    assert sd["pos_embed"].shape == (1, 1370, 768)
    sd["mask_token"] = torch.zeros(1, 768)
    return sd


@contextmanager
def official_hub(dino_state: dict[str, torch.Tensor], small_state: dict[str, torch.Tensor] | None = None):
    """Make ``torch.hub.load('facebookresearch/dino:main', 'dino_vitb16' | 'dino_vits16')`` return the
    official package's DINO ViT with the given weights, without the network."""
    real = torch.hub.load

    def fake(repo, model, *args, **kwargs):
        states = {"dino_vitb16": (dino_state, False), "dino_vits16": (small_state, True)}
        if repo != "facebookresearch/dino:main" or states.get(model, (None,))[0] is None:
            raise RuntimeError(f"unexpected torch.hub.load({repo!r}, {model!r}) in tests")
        state, small = states[model]
        m = official_vit(16, small=small)
        m.load_state_dict(state)
        return m

    torch.hub.load = fake
    try:
        yield
    finally:
        torch.hub.load = real


def official_model(root: Path, dino_state, *, dreamsim_type: str, use_patch_model: bool = False,
                   normalize_embeds: bool = True):
    import dreamsim

    hub_dir = torch.hub._hub_dir  # the official code calls torch.hub.set_dir(cache_dir): undo it after
    with official_hub(dino_state):
        try:
            model, preprocess = dreamsim.dreamsim(pretrained=True, device="cpu", cache_dir=str(root),
                                                  normalize_embeds=normalize_embeds, dreamsim_type=dreamsim_type,
                                                  use_patch_model=use_patch_model)
        finally:
            torch.hub._hub_dir = hub_dir
    return model.eval(), preprocess


def official_zero_shot(root: Path, states, *, model_type: str, feat_type: str, stride: int):
    """The official ``PerceptualModel`` as a zero-shot baseline (``baseline=True``: no MLP, no LoRA)."""
    from dreamsim.model import PerceptualModel

    hub_dir = torch.hub._hub_dir
    with official_hub(states["dino"], states["dino_vits16"]):
        try:
            model = PerceptualModel(model_type=model_type, feat_type=feat_type, stride=str(stride), baseline=True,
                                    load_dir=str(root), normalize_embeds=False, device="cpu")
        finally:
            torch.hub._hub_dir = hub_dir
    return model.eval()
