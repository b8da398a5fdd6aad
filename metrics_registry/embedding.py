"""Zero-shot embedding baselines of the DreamSim paper: ``1 - cosine`` of pretrained backbone features.

They reuse DreamSim's backbones and weight files without LoRA: DINO ViT-S/8, S/16, B/8, B/16, DINOv2
ViT-B/14, SynCLR ViT-B/16 and MAE ViT-B/16 compare the CLS token (before the final LayerNorm); OpenAI CLIP
and OpenCLIP ViT-B/16, B/32 and L/14 compare the projected CLS embedding. Preprocessing is DreamSim's:
224x224 bicubic, the backbone's own mean/std inside. Weights: Meta's DINO/DINOv2 files via torch-hub URLs;
CLIP, OpenCLIP ViT-B and SynCLR from the DreamSim release zips (which ship them converted to the DINO-style
layout); CLIP/OpenCLIP ViT-L/14 and MAE ViT-B/16, which no DreamSim release ships, as safetensors from
timm's Hugging Face repos. Sources, verified facts and assumptions: ``docs/baselines.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from percepbench.metrics_registry.base import DistanceMetric, resize_to_convention
from percepbench.models.configs import BACKBONES
from percepbench.models.dreamsim import build_dreamsim, zero_shot_variant


class ZeroShotEmbeddingMetric(DistanceMetric):
    """``1 - cos(f(preds), f(target))`` for a pretrained backbone feature ``f`` (no fine-tuning).

    Inputs as every percepbench metric (NCHW RGB, [0, 1] floats or uint8, any size: resized to 224 inside
    with antialiased bicubic). ``normalize_embeds=True`` centres the features first (Pearson instead of
    cosine), as DreamSim's ``normalize_embeds``; default off, as in the paper's baselines.

    Example:
        >>> import torch
        >>> from percepbench.metrics_registry.embedding import ZeroShotEmbeddingMetric
        >>> m = ZeroShotEmbeddingMetric(backbone="dino_vits16", pretrained=False, reduction="none")
        >>> m(torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)).shape
        torch.Size([2])
    """

    embeds = True
    quantizable = True  # the same ViT code as DreamSim (nn.Linear layers): int8 dynamic quantisation applies

    def __init__(self, backbone: str, feature: str | None = None, normalize_embeds: bool = False,
                 pretrained: bool = True, cache_dir: str | Path | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
        self.backbone = backbone
        variant = zero_shot_variant(backbone, feature)
        self.input_convention = variant.inputs
        if not pretrained:  # random weights: no file of the spec is read
            self.weight_files_used = []
        self.model = self.freeze(build_dreamsim(variant, cache_dir=cache_dir, pretrained=pretrained,
                                                normalize_embeds=normalize_embeds))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.embed_pooled(resize_to_convention(x, self.input_convention))

    def distance(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.embedding_distance(self.embed(preds), self.embed(target))
