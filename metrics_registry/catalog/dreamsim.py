"""DreamSim specs: ``dreamsim`` (= ``dreamsim.ensemble``) and one per official variant; the model is
:mod:`percepbench.metrics_registry.dreamsim`.
"""

from __future__ import annotations

from percepbench.dreamsim_weights import dreamsim_weight_files
from percepbench.models.configs import VARIANTS
from percepbench.registry import register_metric
from percepbench.specs import MetricSpec

CITATION = ("Fu, Tamir, Sundaram, Chai, Zhang, Dekel, Isola. DreamSim: Learning New Dimensions of Human "
            "Visual Similarity using Synthetic Data. NeurIPS 2023.")

_DESCRIPTIONS = {
    "ensemble": "DreamSim ensemble (DINO ViT-B/16 + CLIP ViT-B/16 + OpenCLIP ViT-B/16, LoRA)",
    "dino_vitb16": "DreamSim single-branch DINO ViT-B/16 (LoRA)",
    "clip_vitb32": "DreamSim single-branch CLIP ViT-B/32 (LoRA)",
    "open_clip_vitb32": "DreamSim single-branch OpenCLIP ViT-B/32 (LoRA)",
    "dinov2_vitb14": "DreamSim single-branch DINOv2 ViT-B/14 (LoRA)",
    "synclr_vitb16": "DreamSim single-branch SynCLR ViT-B/16 (LoRA)",
    "dino_vitb16_patch": "DreamSim DINO ViT-B/16, CLS + pooled patch tokens (LoRA)",
    "dinov2_vitb14_patch": "DreamSim DINOv2 ViT-B/14, CLS + pooled patch tokens (LoRA)",
}

for _variant in VARIANTS:
    register_metric(MetricSpec(
        name=f"dreamsim.{_variant}",
        target="percepbench.metrics_registry.dreamsim:DreamSimMetric",
        kwargs={"variant": _variant},
        description=_DESCRIPTIONS[_variant],
        distance="1 - cosine(embeddings), embeddings centred and L2-normalised (normalize_embeds=True)",
        inputs=VARIANTS[_variant].inputs,
        weights=dreamsim_weight_files(_variant),
        reference="official dreamsim 0.2.1 package (parity on random weights in tests/test_dreamsim_parity.py)",
        licence="MIT (code and weights); backbones: DINO/DINOv2 Apache-2.0, CLIP MIT, OpenCLIP MIT, SynCLR Apache-2.0",
        citation=CITATION,
        default=_variant == "ensemble",
        precisions=("fp32", "bf16", "fp16", "int8"),
    ))
