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

from percepbench.dreamsim_weights import backbone_weight_files
from percepbench.metrics_registry.base import DistanceMetric, resize_to_convention
from percepbench.models.dreamsim import build_dreamsim, zero_shot_variant
from percepbench.models.vit import BACKBONES
from percepbench.registry import register_metric
from percepbench.specs import MetricSpec


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


_CITATIONS = {
    "dino": "Caron et al. Emerging Properties in Self-Supervised Vision Transformers. ICCV 2021.",
    "dinov2": "Oquab et al. DINOv2: Learning Robust Visual Features without Supervision. TMLR 2024.",
    "clip": "Radford et al. Learning Transferable Visual Models From Natural Language Supervision. ICML 2021.",
    "open_clip": "Cherti et al. Reproducible scaling laws for contrastive language-image learning. CVPR 2023 (OpenCLIP, LAION-400M).",
    "synclr": "Tian et al. Learning Vision from Models Rivals Learning Vision from Data. CVPR 2024 (SynCLR).",
    "mae": "He et al. Masked Autoencoders Are Scalable Vision Learners. CVPR 2022.",
}
# the weights' licences: MAE's pretrained weights are CC-BY-NC 4.0 (non-commercial), as the MAE repo and timm say
_LICENCES = {"dino": "Apache-2.0", "dinov2": "Apache-2.0", "clip": "MIT", "open_clip": "MIT", "synclr": "Apache-2.0",
             "mae": "CC-BY-NC-4.0"}
_DREAMSIM_REFERENCE = "same backbone code as DreamSim (parity with the official dreamsim package in tests)"
#: backbones no DreamSim release ships: tested against an independent implementation on the same weights
_REFERENCES = {
    "clip_vitl14": "matches open_clip 'ViT-L-14-quickgelu' on the same weights (tests); file: timm/open_clip "
                   "copy of OpenAI's ViT-L/14",
    "open_clip_vitl14": "matches open_clip 'ViT-L-14' on the same weights (tests); weights: OpenCLIP "
                        "laion400m_e31, the tag DreamSim's own conversion check names (see docs/baselines.md)",
    "mae_vitb16": "matches timm 'vit_base_patch16_224.mae' on the same weights (tests); MAE feature choice "
                  "of the DreamSim paper unverified (see docs/baselines.md)",
}
_WEIGHTS_NOTE = {"open_clip_vitl14": " (LAION-400M, epoch 31)"}

for _backbone in ("dino_vits8", "dino_vits16", "dino_vitb8", "dino_vitb16", "dinov2_vitb14", "synclr_vitb16",
                  "clip_vitb16", "clip_vitb32", "open_clip_vitb16", "open_clip_vitb32",
                  "clip_vitl14", "open_clip_vitl14", "mae_vitb16"):
    _family, _, _arch = _backbone.rpartition("_")
    _cfg = BACKBONES[_backbone]
    _feat = "projected CLS embedding" if _cfg.proj_dim else "CLS token before the final LayerNorm"
    register_metric(MetricSpec(
        name=f"{_family}.{_arch}",
        target="percepbench.metrics_registry.embedding:ZeroShotEmbeddingMetric",
        kwargs={"backbone": _backbone},
        description=f"zero-shot {_family} ViT-{_arch[3].upper()}/{_arch[4:]}{_WEIGHTS_NOTE.get(_backbone, '')}: "
                    f"{_feat}",
        distance="1 - cosine(features)",
        inputs=zero_shot_variant(_backbone).inputs,
        weights=backbone_weight_files([_backbone]),
        reference=_REFERENCES.get(_backbone, _DREAMSIM_REFERENCE),
        licence=_LICENCES[_family],
        citation=_CITATIONS[_family],
        default=_backbone in ("dino_vitb16", "clip_vitb32", "open_clip_vitb32"),
    ))
