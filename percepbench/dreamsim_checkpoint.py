"""Trained DreamSim checkpoints (``percepbench train``): the residual MLP head, the checkpoint folder, loading.

A checkpoint folder (``<out>/best``, ``<out>/last``) holds:

- ``percepbench_checkpoint.json``: what was trained, read first and checked strictly::

      {"format": "percepbench-dreamsim-checkpoint", "version": 1, "mode": "lora" | "mlp",
       "variant": "dino_vitb16" | null, "backbones": ["dino_vitb16"], "features": ["cls"],
       "embed_dim": 768, "normalize_embeds": false, "epoch": 3, "step": 1500, "val_score": 94.1}

  ``variant`` is the official variant name when the backbones and features are one (else null);
  ``normalize_embeds`` is the setting the model was trained with (the official training scripts: false).
- LoRA mode: an **official adapter folder**, ``adapter_config.json`` (peft format, r / lora_alpha /
  lora_dropout / target_modules ``["qkv"]``) + ``adapter_model.safetensors`` (official key names
  ``base_model.model.extractor_list.<i>.model.blocks.<k>.attn.qkv.lora_{A,B}.weight``, float32), written by
  :meth:`~percepbench.models.dreamsim.DreamSimModel.save_lora`. The official ``dreamsim`` package loads it
  when the folder is placed in its cache dir under the variant's LoRA folder name (e.g.
  ``dino_vitb16_single_lora``).
- MLP-head mode: ``mlp_head.safetensors`` with float32 tensors ``fc1.weight`` (H, D), ``fc1.bias`` (H),
  ``fc2.weight`` (D, H), ``fc2.bias`` (D), and ``mlp_head.json`` ``{"format": "percepbench-dreamsim-mlp-head",
  "version": 1, "in_features": D, "hidden": H}``. The head is the official one: ``out = fc2(relu(fc1(x))) + x``
  on the concatenated raw backbone features, before ``normalize_embeds`` (official ``PerceptualModel.embed``);
  the official package names the same tensors ``mlp.fc1.weight`` ... inside its model.
- ``training_state.pt`` (training only: optimizer, RNG states, data order; see :mod:`percepbench.training`).

Loading (:func:`apply_checkpoint`) is strict: the backbones and features must be the model's, every LoRA key
must match, the head's shapes must match; anything else is a :class:`~percepbench.errors.WeightsError`
naming the folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from percepbench.errors import WeightsError
from percepbench.fileio import atomic_write_bytes, atomic_write_text, sha256_file

CHECKPOINT_FORMAT = "percepbench-dreamsim-checkpoint"
HEAD_FORMAT = "percepbench-dreamsim-mlp-head"
META_FILE = "percepbench_checkpoint.json"
HEAD_WEIGHTS = "mlp_head.safetensors"
HEAD_CONFIG = "mlp_head.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
HIDDEN = 512


class MLPHead(nn.Module):
    """DreamSim's residual MLP head: ``fc2(relu(fc1(x))) + x`` (hidden 512 in every official config)."""

    def __init__(self, in_features: int, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.in_features, self.hidden = int(in_features), int(hidden)
        self.fc1 = nn.Linear(self.in_features, self.hidden)
        self.fc2 = nn.Linear(self.hidden, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x))) + x


def save_head(head: MLPHead, folder: str | Path) -> Path:
    """Write ``mlp_head.safetensors`` (weights first) and ``mlp_head.json``, each atomically; return the folder."""
    from safetensors.torch import save

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in head.state_dict().items()}
    atomic_write_bytes(out / HEAD_WEIGHTS, save(tensors, metadata={"format": "pt"}))
    atomic_write_text(out / HEAD_CONFIG, json.dumps({"format": HEAD_FORMAT, "version": 1,
                                                     "in_features": head.in_features, "hidden": head.hidden},
                                                    indent=2) + "\n")
    return out


def load_head(folder: str | Path, in_features: int | None = None) -> MLPHead:
    """Read a head written by :func:`save_head`; ``in_features`` (the model's embedding size) must match."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config = _read_json(folder / HEAD_CONFIG, "MLP head config")
    if config.get("format") != HEAD_FORMAT:
        raise WeightsError(f"{folder / HEAD_CONFIG}: not a percepbench MLP head (format {config.get('format')!r})")
    try:
        head = MLPHead(int(config["in_features"]), int(config["hidden"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightsError(f"{folder / HEAD_CONFIG}: needs integer in_features and hidden ({exc})") from exc
    if in_features is not None and head.in_features != in_features:
        raise WeightsError(f"{folder}: the MLP head takes {head.in_features}-d features but the model's embedding "
                           f"is {in_features}-d (trained for another variant?)")
    path = folder / HEAD_WEIGHTS
    if not path.is_file():
        raise WeightsError(f"{path}: MLP head weights not found")
    try:
        tensors = load_file(str(path))
    except Exception as exc:
        raise WeightsError(f"{path}: unreadable safetensors file ({exc})") from exc
    try:
        head.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{path}: does not match the head in {HEAD_CONFIG}: {exc}") from exc
    return head


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise WeightsError(f"{path}: {what} not found") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{path}: unreadable {what} ({exc})") from exc
    if not isinstance(value, dict):
        raise WeightsError(f"{path}: {what} must be a JSON object")
    return value


def write_meta(folder: str | Path, meta: dict[str, Any]) -> Path:
    """Write ``percepbench_checkpoint.json`` (``format`` and ``version`` added)."""
    body = {"format": CHECKPOINT_FORMAT, "version": 1, **meta}
    return atomic_write_text(Path(folder) / META_FILE, json.dumps(body, indent=2, sort_keys=True) + "\n")


def read_meta(folder: str | Path) -> dict[str, Any]:
    """The checkpoint description of ``folder``; :class:`WeightsError` when it is not a percepbench checkpoint."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsError(f"{folder}: checkpoint folder not found")
    meta = _read_json(folder / META_FILE, "checkpoint description (is this a `percepbench train` output folder?)")
    if meta.get("format") != CHECKPOINT_FORMAT or meta.get("mode") not in ("lora", "mlp"):
        raise WeightsError(f"{folder / META_FILE}: not a percepbench DreamSim checkpoint "
                           f"(format {meta.get('format')!r}, mode {meta.get('mode')!r})")
    return meta


def checkpoint_files(folder: str | Path) -> list[Path]:
    """The weight files of a checkpoint folder (what ``results.json`` lists with their sha256)."""
    folder = Path(folder)
    meta = read_meta(folder)
    names = ADAPTER_FILES if meta["mode"] == "lora" else (HEAD_CONFIG, HEAD_WEIGHTS)
    return [folder / META_FILE, *(folder / n for n in names)]


def checkpoint_hashes(folder: str | Path) -> list[dict[str, Any]]:
    """``[{filename, path, url, sha256}]`` of :func:`checkpoint_files`, in the shape of ``meta.weights``."""
    return [{"filename": f"checkpoint/{p.name}", "path": str(p.resolve()), "url": "", "sha256": sha256_file(p)}
            for p in checkpoint_files(folder)]


def apply_checkpoint(model: Any, folder: str | Path) -> MLPHead | None:
    """Load a checkpoint into a DreamSim ``model`` built **without** LoRA; return the MLP head (or None).

    LoRA mode attaches the adapter (:meth:`~percepbench.models.dreamsim.DreamSimModel.load_lora`, strict
    keys); MLP mode returns the head for the caller to apply to ``model.embed_pooled`` output before any
    normalisation. Raises :class:`WeightsError` when the checkpoint was trained on other backbones or
    features than ``model``'s, or its files do not match.
    """
    folder = Path(folder)
    meta = read_meta(folder)
    variant = model.variant
    trained = (list(meta.get("backbones") or []), list(meta.get("features") or []))
    if trained != (list(variant.backbones), list(variant.feature)):
        raise WeightsError(f"{folder}: checkpoint trained on backbones {'+'.join(trained[0]) or '?'} "
                           f"(features {'+'.join(trained[1]) or '?'}), but the model is {variant.name} "
                           f"({'+'.join(variant.backbones)}, features {'+'.join(variant.feature)}); "
                           "use the variant it was trained for")
    if meta["mode"] == "lora":
        if model.lora_config is not None:
            raise WeightsError(f"{folder}: the model already has a LoRA adapter; build it with lora=False")
        try:
            model.load_lora(folder)
        except ValueError as exc:  # peft refuses the config
            raise WeightsError(f"{folder}: cannot attach this LoRA adapter ({exc})") from exc
        return None
    if variant.is_patch:
        raise WeightsError(f"{folder}: MLP heads on patch variants are not supported")
    return load_head(folder, in_features=variant.embed_dim)

