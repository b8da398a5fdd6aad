"""ViT backbones of DreamSim, built on timm's ``VisionTransformer``, and converters from each upstream
checkpoint format.

Every released DreamSim backbone is a ViT-Base (width 768, depth 12, 12 heads, MLP 3072, fused ``qkv``
with bias, CLS token at position 0, learned absolute position embeddings, 224-px input); the zero-shot
baselines add DINO ViT-S/8, ViT-S/16 (width 384, 6 heads) and ViT-B/8, OpenAI CLIP and OpenCLIP ViT-L/14
(width 1024, depth 24, 16 heads, MLP 4096, 768-d projection, no patch-embedding bias) and MAE ViT-B/16.
They differ in:

==================  =========  ==========  =========  ======  ===========  ======================
backbone            patch      activation  LN eps     ln_pre  LayerScale   normalisation
==================  =========  ==========  =========  ======  ===========  ======================
dino_vitb16         16         GELU        1e-6       no      no           ImageNet
dinov2_vitb14       14         GELU        1e-6       no      yes          ImageNet
synclr_vitb16       16         GELU        1e-6       no      no           ImageNet
clip_vitb16/32      16 / 32    QuickGELU   1e-5       yes     no           OpenAI CLIP
open_clip_vitb16/32 16 / 32    GELU        1e-5       yes     no           OpenAI CLIP
clip_vitl14         14         QuickGELU   1e-5       yes     no           OpenAI CLIP
open_clip_vitl14    14         GELU        1e-5       yes     no           OpenAI CLIP
mae_vitb16          16         GELU        1e-6       no      no           ImageNet
==================  =========  ==========  =========  ======  ===========  ======================

OpenCLIP uses the *exact* GELU although its weights were trained with QuickGELU: DreamSim's LoRA was
trained that way, so parity needs it. timm's module names (``blocks.<k>.attn.qkv`` ...) are the ones the
official checkpoints use; only ``pos_drop`` (the official name of CLIP's ``ln_pre``) becomes timm's
``norm_pre``, and DINOv2's 37x37 position grid is interpolated to 16x16 once, at load time, with the
DINOv2 hub formula (bicubic, scale factor (16 + 0.1) / 37, no antialiasing).

The ViT-L/14 CLIP and the MAE backbones are not in any DreamSim release: their weights come as safetensors
from the timm Hugging Face repos, in two more layouts (read only with ``safetensors``, see
:func:`read_checkpoint`):

- ``open_clip``: a whole open_clip ``CLIP`` state dict (``open_clip_model.safetensors``). Only the
  ``visual.*`` keys are read (the text tower is ignored); they must be exactly OpenCLIP's ViT names
  (``visual.class_embedding``, ``visual.positional_embedding``, ``visual.conv1.weight``,
  ``visual.ln_pre.*``, ``visual.transformer.resblocks.<k>.{ln_1, attn.in_proj_*, attn.out_proj, ln_2,
  mlp.c_fc, mlp.c_proj}.*``, ``visual.ln_post.*``, ``visual.proj``), renamed to timm's as timm's own
  OpenAI-CLIP converter does (``in_proj`` is timm's fused ``qkv`` in the same q, k, v order).
- ``timm``: a timm ``VisionTransformer`` state dict (``model.safetensors``), loaded as it is.

OpenAI CLIP ViT-L/14 uses QuickGELU (open_clip lists its ``openai`` weights with ``quick_gelu=True``);
OpenCLIP ViT-L/14 ``laion400m_e31`` is an open_clip ``ViT-L-14`` (exact GELU) model, trained that way.

Features (all from the output of block 11):

- ``cls``: the CLS token **before** the final LayerNorm (DINO, DINOv2, SynCLR, MAE);
- ``embedding``: final LayerNorm on the CLS token, then the CLIP projection (768x512, or 1024x768 for
  ViT-L/14) (CLIP, OpenCLIP);
- ``cls_patch``: all tokens, before the final LayerNorm.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from percepbench.models.configs import (  # noqa: F401  (re-exported: the backbones' public names)
    BACKBONES,
    IMAGE_SIZE,
    BackboneConfig,
    CheckpointFormat,
    Feature,
)


def build_vit(cfg: BackboneConfig) -> nn.Module:
    """timm ViT with this backbone's architecture (random weights).

    timm drops the patch-embedding bias when ``pre_norm`` is set (OpenAI CLIP has none); the DINO-style
    CLIP checkpoints DreamSim ships carry one, so the bias is restored (zero unless loaded) unless the
    config says the upstream weights have none (``patch_bias=False``).
    """
    from timm.layers import QuickGELU  # timm is imported only when a network is built
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(
        img_size=IMAGE_SIZE, patch_size=cfg.patch_size, embed_dim=cfg.width, depth=cfg.depth,
        num_heads=cfg.heads, mlp_ratio=4.0, qkv_bias=True, class_token=True, global_pool="token",
        num_classes=0, pre_norm=cfg.ln_pre, final_norm=True,
        init_values=1e-5 if cfg.layer_scale else None,
        norm_layer=partial(nn.LayerNorm, eps=cfg.ln_eps),
        act_layer=QuickGELU if cfg.act == "quick_gelu" else nn.GELU,
    )
    if vit.patch_embed.proj.bias is None and cfg.patch_bias:
        proj = vit.patch_embed.proj
        vit.patch_embed.proj = nn.Conv2d(proj.in_channels, proj.out_channels, proj.kernel_size, proj.stride, bias=True)
        with torch.no_grad():
            vit.patch_embed.proj.weight.copy_(proj.weight)
            vit.patch_embed.proj.bias.zero_()
    return vit


def interpolate_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """DINOv2 hub interpolation of a (1, 1 + M*M, D) position table to a ``grid`` x ``grid`` patch grid."""
    n = pos_embed.shape[1] - 1
    m = math.isqrt(n)
    if m * m != n:
        raise ValueError(f"position table of {n} patches is not a square grid")
    if m == grid:
        return pos_embed
    dtype = pos_embed.dtype
    pe = pos_embed.float()
    patches = pe[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
    scale = (grid + 0.1) / m
    patches = nn.functional.interpolate(patches, scale_factor=(scale, scale), mode="bicubic")
    if patches.shape[-2:] != (grid, grid):
        raise RuntimeError(f"interpolated grid {tuple(patches.shape[-2:])} != {grid}x{grid}")
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)
    return torch.cat([pe[:, :1], patches], dim=1).to(dtype)


OPEN_CLIP_PREFIX = "visual."
#: open_clip ViT names -> timm names, per residual block (``visual.transformer.resblocks.<k>.`` prefix)
_OPEN_CLIP_BLOCK = {
    "ln_1.weight": "norm1.weight", "ln_1.bias": "norm1.bias",
    "attn.in_proj_weight": "attn.qkv.weight", "attn.in_proj_bias": "attn.qkv.bias",
    "attn.out_proj.weight": "attn.proj.weight", "attn.out_proj.bias": "attn.proj.bias",
    "ln_2.weight": "norm2.weight", "ln_2.bias": "norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight", "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight", "mlp.c_proj.bias": "mlp.fc2.bias",
}
_OPEN_CLIP_TOP = {
    "conv1.weight": "patch_embed.proj.weight",
    "ln_pre.weight": "norm_pre.weight", "ln_pre.bias": "norm_pre.bias",
    "ln_post.weight": "norm.weight", "ln_post.bias": "norm.bias",
    "class_embedding": "cls_token", "positional_embedding": "pos_embed", "proj": "proj",
}


def open_clip_visual_keys(cfg: BackboneConfig) -> dict[str, str]:
    """Every ``visual.*`` key an open_clip ViT checkpoint of ``cfg`` holds, mapped to its timm name."""
    keys = {OPEN_CLIP_PREFIX + k: v for k, v in _OPEN_CLIP_TOP.items()}
    for i in range(cfg.depth):
        keys.update({f"{OPEN_CLIP_PREFIX}transformer.resblocks.{i}.{k}": f"blocks.{i}.{v}"
                     for k, v in _OPEN_CLIP_BLOCK.items()})
    return keys


def _from_open_clip(cfg: BackboneConfig, raw: dict[str, Any]) -> dict[str, torch.Tensor]:
    """open_clip ``CLIP`` state dict -> DINO/timm-style names (+ ``proj``); keys outside ``visual.`` ignored.

    Strict on the vision tower: a missing or an extra ``visual.*`` key is an error naming the keys.
    """
    expected = open_clip_visual_keys(cfg)
    visual = {k for k in raw if k.startswith(OPEN_CLIP_PREFIX)}
    missing, unexpected = sorted(set(expected) - visual), sorted(visual - set(expected))
    if missing or unexpected:
        raise ValueError(f"{cfg.name}: open_clip checkpoint does not match a {cfg.depth}-block ViT: "
                         f"{len(missing)} missing {missing[:6]}, {len(unexpected)} unexpected {unexpected[:6]}")
    sd = {expected[k]: raw[k] for k in visual}
    sd["cls_token"] = sd["cls_token"].reshape(1, 1, -1)  # (D,) upstream
    sd["pos_embed"] = sd["pos_embed"].unsqueeze(0)  # (1 + N, D) upstream
    return sd


def read_checkpoint(cfg: BackboneConfig, path: str | Path) -> dict[str, Any]:
    """Read an upstream checkpoint file without unpickling code.

    ``.safetensors`` files: the header is validated first (:func:`percepbench.download.check_safetensors`);
    for the ``open_clip`` layout only the ``visual.*`` tensors are read (the text tower, about 30% of the
    file, is never loaded). Other files: ``torch.load(..., weights_only=True)``.

    Raises:
        ValueError: the file cannot be read this way (the caller names the file).
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(f"cannot load checkpoint with weights_only=True ({exc})") from exc
    from safetensors import safe_open

    from percepbench.download import check_safetensors

    check_safetensors(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            names = f.keys()  # a list: safe_open is not iterable like a dict
            keys = [k for k in names
                    if cfg.checkpoint_format != "open_clip" or k.startswith(OPEN_CLIP_PREFIX)]
            return {k: f.get_tensor(k) for k in keys}
    except Exception as exc:
        raise ValueError(f"unreadable safetensors file ({exc})") from exc


def convert_checkpoint(cfg: BackboneConfig, raw: Any) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Upstream checkpoint object -> (timm state dict, projection or None).

    Formats: ``dino_hub`` (plain DINO state dict), ``dinov2_hub`` (plain, with ``mask_token`` and a 37x37
    grid), ``dino_style`` (``{"state_dict": DINO-style names + "proj"}``, CLIP/OpenCLIP), ``synclr``
    (``{"model": {"module.visual.<name>": ...}}``), ``open_clip`` (a whole open_clip ``CLIP`` state dict;
    only ``visual.*`` is used, see :func:`open_clip_visual_keys`), ``timm`` (timm names as they are).
    """
    if not isinstance(raw, dict):
        raise ValueError(f"{cfg.name}: checkpoint is a {type(raw).__name__}, expected a dict")
    if cfg.checkpoint_format == "open_clip":
        sd = _from_open_clip(cfg, raw)
    elif cfg.checkpoint_format == "dino_style":
        if "state_dict" not in raw:
            raise ValueError(f"{cfg.name}: checkpoint has no 'state_dict' key (keys: {sorted(raw)[:5]})")
        sd = dict(raw["state_dict"])
    elif cfg.checkpoint_format == "synclr":
        if "model" not in raw:
            raise ValueError(f"{cfg.name}: checkpoint has no 'model' key (keys: {sorted(raw)[:5]})")
        prefix = "module.visual."
        bad = [k for k in raw["model"] if not k.startswith(prefix)]
        if bad:
            raise ValueError(f"{cfg.name}: SynCLR keys must start with {prefix!r}, found {bad[:3]}")
        sd = {k[len(prefix):]: v for k, v in raw["model"].items()}
    else:
        sd = dict(raw)
    proj = sd.pop("proj", None)
    sd.pop("mask_token", None)
    if cfg.ln_pre:
        for p in ("weight", "bias"):
            if f"pos_drop.{p}" in sd:
                sd[f"norm_pre.{p}"] = sd.pop(f"pos_drop.{p}")
    if "pos_embed" in sd:
        sd["pos_embed"] = interpolate_pos_embed(sd["pos_embed"], cfg.grid)
    if cfg.proj_dim and proj is None:
        raise ValueError(f"{cfg.name}: checkpoint has no 'proj' (the {cfg.width}x{cfg.proj_dim} projection)")
    return sd, proj


class Backbone(nn.Module):
    """One backbone: per-backbone normalisation of [0, 1] input, timm ViT as ``.model``, CLIP projection.

    The attribute name ``model`` keeps the official LoRA key layout
    (``extractor_list.<i>.model.blocks.<k>.attn.qkv``).
    """

    def __init__(self, cfg: BackboneConfig, *, empty: bool = False) -> None:
        """``empty=True`` allocates no weights (meta device): call :meth:`load_checkpoint` next. It skips
        timm's random initialisation, which costs seconds per ViT-B on a CPU."""
        super().__init__()
        self.cfg = cfg
        if empty:
            with torch.device("meta"):
                self.model = build_vit(cfg)
        else:
            self.model = build_vit(cfg)
        norm = cfg.normalization
        self.register_buffer("mean", torch.tensor(norm.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(norm.std).view(1, 3, 1, 1), persistent=False)
        self._fused_attn: bool | None = None  # set by the first forward (see _choose_attention)
        self.proj = None
        if cfg.proj_dim:  # CLIP's initialisation: normal with std width ** -0.5
            self.proj = nn.Parameter(torch.randn(cfg.width, cfg.proj_dim) * cfg.width**-0.5, requires_grad=False)

    def load_checkpoint(self, raw: Any) -> None:
        """Load an upstream checkpoint object strictly (every key must match)."""
        sd, proj = convert_checkpoint(self.cfg, raw)
        missing, unexpected = self.model.load_state_dict(sd, strict=False, assign=True)
        if missing or unexpected:
            raise ValueError(f"{self.cfg.name}: checkpoint does not match the architecture: "
                             f"missing {missing[:6]}, unexpected {unexpected[:6]}")
        if self.proj is not None:
            if tuple(proj.shape) != tuple(self.proj.shape):
                raise ValueError(f"{self.cfg.name}: projection has shape {tuple(proj.shape)}, "
                                 f"expected {tuple(self.proj.shape)}")
            with torch.no_grad():
                self.proj.copy_(proj)

    def _choose_attention(self, x: torch.Tensor) -> None:
        """timm's fused ``scaled_dot_product_attention``, except on the CPU under bf16/fp16 autocast.

        There PyTorch's CPU flash-attention kernel is slower than the plain matmul-softmax-matmul path
        (ViT-B/16, batch 16, 2 cores: 8.3 vs 9.4 img/s; fp32 and CUDA keep the fused kernel). Both paths
        compute the same attention; only the kernel differs.
        """
        fused = not (x.device.type == "cpu" and torch.is_autocast_enabled("cpu"))
        if fused != self._fused_attn:
            for block in self.model.blocks:
                block.attn.fused_attn = fused
            self._fused_attn = fused

    def _block_input(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        self._choose_attention(x)
        x = (x - self.mean) / self.std
        x = m.patch_embed(x)
        x = m._pos_embed(x)
        return m.norm_pre(x)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens at the output of the last block, before the final LayerNorm: (B, 1 + N, D)."""
        return self.model.blocks(self._block_input(x))

    def cls_token(self, x: torch.Tensor) -> torch.Tensor:
        """The CLS token at the output of the last block, before the final LayerNorm: (B, D); what
        ``tokens(x)[:, 0]`` gives. Without autograd (scoring), with less work: :func:`cls_through_block` for
        the last block. With autograd (training, DreamSim as a loss) every block runs whole, so gradients
        and their rounding are those of the plain forward pass."""
        if torch.is_grad_enabled():
            return self.tokens(x)[:, 0]
        *first, last = self.model.blocks
        h = self._block_input(x)
        for block in first:
            h = block(h)
        return cls_through_block(last, h)[:, 0]

    def features(self, x: torch.Tensor, kind: Feature) -> torch.Tensor:
        if kind == "cls":
            return self.cls_token(x)
        if kind == "cls_patch":
            return self.tokens(x)
        if kind == "embedding":
            if self.proj is None:
                raise ValueError(f"{self.cfg.name} has no projection: 'embedding' is for CLIP backbones")
            return self.model.norm(self.cls_token(x)) @ self.proj
        raise ValueError(f"unknown feature {kind!r}")


def cls_through_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The CLS token (B, 1, D) at the output of a timm ViT ``block`` whose input is ``x`` (B, 1 + N, D).

    A feature read from the CLS token of the last block does not depend on that block's other outputs: the
    fused qkv layer runs on every token (keys and values are needed), but the attention output, projection
    and MLP on the CLS token only (the skipped work is about 6% of a ViT-B/16 forward pass: 2.08 of 35.13
    GFLOP; the same arithmetic per row, so the result matches the full block to float rounding). Blocks of
    another shape run whole.
    """
    attn = getattr(block, "attn", None)
    parts = ("norm1", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")
    if (attn is None or getattr(attn, "gate", None) is not None or not all(hasattr(block, p) for p in parts)
            or not all(hasattr(attn, p) for p in ("qkv", "q_norm", "k_norm", "norm", "proj", "proj_drop"))):
        return block(x)[:, :1]
    b, n, _ = x.shape
    qkv = attn.qkv(block.norm1(x)).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q[:, :, :1]), attn.k_norm(k)
    if attn.fused_attn:
        a = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.0)
    else:
        a = attn.attn_drop(((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)) @ v
    a = attn.proj_drop(attn.proj(attn.norm(a.transpose(1, 2).reshape(b, 1, attn.attn_dim))))
    cls = x[:, :1] + block.drop_path1(block.ls1(a))
    return cls + block.drop_path2(block.ls2(block.mlp(block.norm2(cls))))
