"""Zero-shot backbone specs (``dino.vitb16``, ``clip.vitb32``, ``open_clip.vitl14``, ``mae.vitb16``, ...):
``1 - cosine`` of a pretrained feature, implemented by
:class:`percepbench.metrics_registry.embedding.ZeroShotEmbeddingMetric`.
"""

from __future__ import annotations

from percepbench.dreamsim_weights import backbone_weight_files
from percepbench.models.configs import BACKBONES, zero_shot_variant
from percepbench.registry import register_metric
from percepbench.specs import MetricSpec

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
        precisions=("fp32", "bf16", "fp16", "int8"),
    ))
