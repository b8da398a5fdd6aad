"""Which files each DreamSim variant needs and where they come from (the official release URLs).

The cache keeps the official layout, so a directory filled by ``pip install dreamsim`` works as it is:
each variant's release zip (saved as ``dreamsim_<variant>_checkpoint.zip``) is extracted into the cache
directory (its LoRA folder and, for CLIP/OpenCLIP/SynCLR, the backbone file); DINO and DINOv2 backbones
come from Meta's servers into ``checkpoints/``, where ``torch.hub`` puts them for the official package.
Upstream publishes no checksums: the sha256 of each file is recorded at first download and checked on
every later load.
"""

from __future__ import annotations

from pathlib import Path

from percepbench.models.dreamsim import VARIANTS
from percepbench.models.vit import BACKBONES
from percepbench.specs import WeightFile


def dreamsim_weight_files(variant: str, *, lora: bool = True) -> tuple[WeightFile, ...]:
    """The files of a variant: its release zip (unless nothing in it is needed) and torch-hub backbones."""
    v = VARIANTS[variant]
    in_zip = [BACKBONES[b].checkpoint for b in v.backbones if BACKBONES[b].checkpoint_url is None]
    files: list[WeightFile] = []
    if lora or in_zip:
        files.append(WeightFile(filename=f"dreamsim_{variant}_checkpoint.zip", url=v.zip_url,
                                extract_to=v.lora_dir if lora else in_zip[0]))
    for b in v.backbones:
        cfg = BACKBONES[b]
        if cfg.checkpoint_url is not None:
            files.append(WeightFile(filename=cfg.checkpoint, url=cfg.checkpoint_url))
    return tuple(files)


def ensure_dreamsim_files(variant: str, root: Path, *, lora: bool = True, progress: bool = True) -> Path:
    """Download (or verify) everything ``variant`` needs into ``root``; offline mode lists what to place."""
    from percepbench.weights import ensure_files

    return ensure_files(dreamsim_weight_files(variant, lora=lora), root, progress=progress)
