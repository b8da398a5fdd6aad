"""Which files each DreamSim variant needs and where they come from (the official release URLs).

The cache keeps the official layout, so a directory filled by ``pip install dreamsim`` works as it is:
each variant's release zip (saved as ``dreamsim_<variant>_checkpoint.zip``) is extracted into the cache
directory (its LoRA folder and, for CLIP/OpenCLIP/SynCLR, the backbone file); DINO and DINOv2 backbones
come from Meta's servers into ``checkpoints/``, where ``torch.hub`` puts them for the official package.
The zero-shot-only backbones that no DreamSim release ships (OpenAI CLIP and OpenCLIP ViT-L/14, MAE
ViT-B/16) come as safetensors from timm's Hugging Face repos (``main`` branch) into
``timm/<repo>/<file>`` (see ``BACKBONES`` in :mod:`percepbench.models.vit`).
Upstream publishes no checksums (the ``dreamsim`` package embeds none either), so no ``sha256`` is declared
here: the sha256 of each file is recorded at first download and checked on every later load (trust on
first use, which :func:`percepbench.download.trust_level` reports); before that, each download's format
(zip, torch, safetensors) is checked from its content.
"""

from __future__ import annotations

from collections.abc import Sequence

from percepbench.models.configs import BACKBONE_ZIPS, BACKBONES, VARIANTS
from percepbench.specs import WeightFile


def backbone_weight_files(backbones: Sequence[str], *, lora_variant: str | None = None) -> tuple[WeightFile, ...]:
    """Files for ``backbones``: direct downloads (torch-hub and Hugging Face files), and the release zips
    that carry the others.

    With ``lora_variant``, that variant's zip is included too, and must yield its LoRA folder.
    """
    zips: dict[str, str] = {}  # zip variant -> what must exist after extraction
    if lora_variant is not None:
        zips[lora_variant] = VARIANTS[lora_variant].lora_dir
    hub: list[WeightFile] = []
    for b in dict.fromkeys(backbones):
        cfg = BACKBONES[b]
        if cfg.checkpoint_url is not None:
            hub.append(WeightFile(filename=cfg.checkpoint, url=cfg.checkpoint_url))
        else:
            zips.setdefault(BACKBONE_ZIPS[b], cfg.checkpoint)
    files = [WeightFile(filename=f"dreamsim_{v}_checkpoint.zip", url=VARIANTS[v].zip_url, extract_to=target)
             for v, target in zips.items()]
    return tuple(files + hub)


def dreamsim_weight_files(variant: str, *, lora: bool = True) -> tuple[WeightFile, ...]:
    """The files of an official variant: its release zip (LoRA, and CLIP/OpenCLIP/SynCLR backbones) and
    torch-hub backbones; without LoRA, only the files of its backbones."""
    return backbone_weight_files(VARIANTS[variant].backbones, lora_variant=variant if lora else None)
