"""Architecture and checkpoint facts of DreamSim's backbones and variants: plain data, no torch.

The metric specs (:mod:`percepbench.metrics_registry.catalog`) read these to describe a metric without
building it, so that ``percepbench list`` and usage errors never import torch; the networks that use them
are in :mod:`percepbench.models.vit` (backbones, with the table of how they differ) and
:mod:`percepbench.models.dreamsim` (the model, LoRA), which re-export these names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from percepbench.specs import IMAGENET, OPENAI_CLIP, InputConvention, Normalization

#: input side of every backbone (position grids are 224 / patch)
IMAGE_SIZE = 224

Feature = Literal["cls", "embedding", "cls_patch"]
CheckpointFormat = Literal["dino_hub", "dinov2_hub", "dino_style", "synclr", "open_clip", "timm"]


@dataclass(frozen=True)
class BackboneConfig:
    """Architecture and checkpoint facts of one backbone."""

    name: str
    patch_size: int
    act: Literal["gelu", "quick_gelu"]
    ln_eps: float
    ln_pre: bool
    layer_scale: bool
    normalization: Normalization  # applied inside, on [0, 1] input (see percepbench.specs)
    checkpoint: str  # path of the weights file inside the (official-layout) cache dir
    checkpoint_format: CheckpointFormat
    checkpoint_url: str | None = None  # direct URL (torch-hub files); None: comes inside a DreamSim zip
    checkpoint_grid: int | None = None  # position grid stored in the checkpoint, when not 224 / patch
    proj_dim: int | None = None  # CLIP projection width ('embedding' feature)
    width: int = 768
    depth: int = 12
    heads: int = 12
    patch_bias: bool = True  # DreamSim's DINO-style CLIP files carry one; OpenAI/OpenCLIP originals have none

    @property
    def grid(self) -> int:
        return IMAGE_SIZE // self.patch_size

    @property
    def mean(self) -> tuple[float, float, float]:
        """``normalization.mean``."""
        return self.normalization.mean

    @property
    def std(self) -> tuple[float, float, float]:
        """``normalization.std``."""
        return self.normalization.std

    @property
    def features(self) -> tuple[Feature, ...]:
        return ("embedding",) if self.proj_dim else ("cls", "cls_patch")


_FB = "https://dl.fbaipublicfiles.com"
_HF = "https://huggingface.co"


def _timm_hub(repo: str, filename: str, fmt: CheckpointFormat) -> dict[str, str]:
    """Checkpoint fields for a file of a timm Hugging Face repo: cached as ``timm/<repo>/<filename>``,
    fetched from the repo's ``main`` branch (no revision is pinned: none is published for these files)."""
    return {"checkpoint": f"timm/{repo}/{filename}", "checkpoint_format": fmt,
            "checkpoint_url": f"{_HF}/timm/{repo}/resolve/main/{filename}"}


BACKBONES: dict[str, BackboneConfig] = {c.name: c for c in (
    BackboneConfig("dino_vitb16", 16, "gelu", 1e-6, False, False, IMAGENET,
                   "checkpoints/dino_vitbase16_pretrain.pth", "dino_hub",
                   f"{_FB}/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"),
    BackboneConfig("dino_vits8", 8, "gelu", 1e-6, False, False, IMAGENET,
                   "checkpoints/dino_deitsmall8_pretrain.pth", "dino_hub",
                   f"{_FB}/dino/dino_deitsmall8_pretrain/dino_deitsmall8_pretrain.pth", width=384, heads=6),
    BackboneConfig("dino_vits16", 16, "gelu", 1e-6, False, False, IMAGENET,
                   "checkpoints/dino_deitsmall16_pretrain.pth", "dino_hub",
                   f"{_FB}/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth", width=384, heads=6),
    BackboneConfig("dino_vitb8", 8, "gelu", 1e-6, False, False, IMAGENET,
                   "checkpoints/dino_vitbase8_pretrain.pth", "dino_hub",
                   f"{_FB}/dino/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth"),
    BackboneConfig("dinov2_vitb14", 14, "gelu", 1e-6, False, True, IMAGENET,
                   "checkpoints/dinov2_vitb14_pretrain.pth", "dinov2_hub",
                   f"{_FB}/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth", checkpoint_grid=37),
    BackboneConfig("synclr_vitb16", 16, "gelu", 1e-6, False, False, IMAGENET,
                   "synclr_vit_b_16.pth", "synclr"),
    BackboneConfig("clip_vitb16", 16, "quick_gelu", 1e-5, True, False, OPENAI_CLIP,
                   "clip_vitb16_pretrain.pth.tar", "dino_style", proj_dim=512),
    BackboneConfig("clip_vitb32", 32, "quick_gelu", 1e-5, True, False, OPENAI_CLIP,
                   "clip_vitb32_pretrain.pth.tar", "dino_style", proj_dim=512),
    BackboneConfig("open_clip_vitb16", 16, "gelu", 1e-5, True, False, OPENAI_CLIP,
                   "open_clip_vitb16_pretrain.pth.tar", "dino_style", proj_dim=512),
    BackboneConfig("open_clip_vitb32", 32, "gelu", 1e-5, True, False, OPENAI_CLIP,
                   "open_clip_vitb32_pretrain.pth.tar", "dino_style", proj_dim=512),
    # Not in any DreamSim release: the original weights, as safetensors from timm's Hugging Face repos.
    BackboneConfig("clip_vitl14", 14, "quick_gelu", 1e-5, True, False, OPENAI_CLIP,
                   **_timm_hub("vit_large_patch14_clip_224.openai", "open_clip_model.safetensors", "open_clip"),
                   proj_dim=768, width=1024, depth=24, heads=16, patch_bias=False),
    BackboneConfig("open_clip_vitl14", 14, "gelu", 1e-5, True, False, OPENAI_CLIP,
                   **_timm_hub("vit_large_patch14_clip_224.laion400m_e31", "open_clip_model.safetensors",
                               "open_clip"),
                   proj_dim=768, width=1024, depth=24, heads=16, patch_bias=False),
    BackboneConfig("mae_vitb16", 16, "gelu", 1e-6, False, False, IMAGENET,
                   **_timm_hub("vit_base_patch16_224.mae", "model.safetensors", "timm")),
)}



RELEASES = "https://github.com/ssundaram21/dreamsim/releases/download"


@dataclass(frozen=True)
class Variant:
    """One official ``dreamsim_type`` (with ``use_patch_model``)."""

    name: str
    backbones: tuple[str, ...]
    feature: tuple[Feature, ...]
    lora_dir: str
    zip_url: str

    @property
    def is_patch(self) -> bool:
        return "cls_patch" in self.feature

    @property
    def embed_dim(self) -> int:
        return sum(BACKBONES[b].proj_dim or BACKBONES[b].width for b in self.backbones)

    @property
    def inputs(self) -> InputConvention:
        """This variant's preprocessing (the metric spec records it): images resized to 224x224 bicubic
        (the official ``preprocess``: PIL bicubic on files), values in [0, 1], and inside the model each
        backbone's own mean/std (from its :class:`~percepbench.models.vit.BackboneConfig`), in branch order.
        """
        return InputConvention(size=IMAGE_SIZE, interpolation="bicubic",
                               normalization=tuple(BACKBONES[b].normalization for b in self.backbones))


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("ensemble", ("dino_vitb16", "clip_vitb16", "open_clip_vitb16"), ("cls", "embedding", "embedding"),
            "ensemble_lora", f"{RELEASES}/v0.2.0-checkpoints/dreamsim_ensemble_checkpoint.zip"),
    Variant("dino_vitb16", ("dino_vitb16",), ("cls",), "dino_vitb16_single_lora",
            f"{RELEASES}/v0.2.0-checkpoints/dreamsim_dino_vitb16_checkpoint.zip"),
    Variant("clip_vitb32", ("clip_vitb32",), ("embedding",), "clip_vitb32_single_lora",
            f"{RELEASES}/v0.2.0-checkpoints/dreamsim_clip_vitb32_checkpoint.zip"),
    Variant("open_clip_vitb32", ("open_clip_vitb32",), ("embedding",), "open_clip_vitb32_single_lora",
            f"{RELEASES}/v0.2.0-checkpoints/dreamsim_open_clip_vitb32_checkpoint.zip"),
    Variant("dinov2_vitb14", ("dinov2_vitb14",), ("cls",), "dinov2_vitb14_single_lora",
            f"{RELEASES}/v0.2.1-checkpoints/dreamsim_dinov2_vitb14_checkpoint.zip"),
    Variant("synclr_vitb16", ("synclr_vitb16",), ("cls",), "synclr_vitb16_single_lora",
            f"{RELEASES}/v0.2.1-checkpoints/dreamsim_synclr_vitb16_checkpoint.zip"),
    Variant("dino_vitb16_patch", ("dino_vitb16",), ("cls_patch",), "dino_vitb16_patch_lora",
            f"{RELEASES}/v0.2.1-checkpoints/dreamsim_dino_vitb16_patch_checkpoint.zip"),
    Variant("dinov2_vitb14_patch", ("dinov2_vitb14",), ("cls_patch",), "dinov2_vitb14_patch_lora",
            f"{RELEASES}/v0.2.1-checkpoints/dreamsim_dinov2_vitb14_patch_checkpoint.zip"),
)}


#: the release zip that carries each backbone whose weights do not come from torch hub
BACKBONE_ZIPS = {"clip_vitb16": "ensemble", "open_clip_vitb16": "ensemble", "clip_vitb32": "clip_vitb32",
                 "open_clip_vitb32": "open_clip_vitb32", "synclr_vitb16": "synclr_vitb16"}


def zero_shot_variant(backbone: str, feature: Feature | None = None) -> Variant:
    """A single backbone without LoRA, as the DreamSim paper's zero-shot baselines: CLS for DINO/DINOv2/
    SynCLR, the projected CLS embedding for CLIP/OpenCLIP (``feature`` overrides)."""
    cfg = BACKBONES[backbone]
    feature = feature or ("embedding" if cfg.proj_dim else "cls")
    if feature not in cfg.features:
        raise ValueError(f"{backbone} has no {feature!r} feature; choose one of {cfg.features}")
    zip_variant = BACKBONE_ZIPS.get(backbone)
    return Variant(f"zero_shot_{backbone}", (backbone,), (feature,), lora_dir="",
                   zip_url=VARIANTS[zip_variant].zip_url if zip_variant else "")


def variant_name(dreamsim_type: str = "ensemble", use_patch_model: bool = False) -> str:
    name = f"{dreamsim_type}_patch" if use_patch_model else dreamsim_type
    if name not in VARIANTS:
        if use_patch_model and dreamsim_type in VARIANTS:
            raise ValueError(f"no patch model for dreamsim_type {dreamsim_type!r}; "
                             "use_patch_model=True exists for dino_vitb16 and dinov2_vitb14")
        raise ValueError(f"unknown dreamsim_type {dreamsim_type!r}; choose one of "
                         f"{', '.join(n for n in VARIANTS if not n.endswith('_patch'))}")
    return name
