"""DreamSim (Fu, Tamir, Sundaram et al., NeurIPS 2023): a reimplementation compatible with the official
``dreamsim`` package 0.2.1 — same variants, same checkpoints, same numbers.

The model concatenates per-backbone features (raw, in the official order), optionally centres and
L2-normalises the embedding (``normalize_embeds``), and returns ``1 - cosine`` between two embeddings.
LoRA adapters (peft, on every ``qkv`` projection) are configured from the official
``adapter_config.json`` and loaded from ``adapter_model.safetensors`` with strict key checking.

Checkpoints are read from a cache directory in the **official layout** (what ``pip install dreamsim``
creates), so an existing official cache dir works as it is::

    <cache>/ensemble_lora/{adapter_config.json, adapter_model.safetensors}   (and <type>_single_lora/...)
    <cache>/clip_vitb16_pretrain.pth.tar, open_clip_vitb16_pretrain.pth.tar, synclr_vit_b_16.pth, ...
    <cache>/checkpoints/dino_vitbase16_pretrain.pth, dinov2_vitb14_pretrain.pth   (torch-hub downloads)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from percepbench.errors import WeightsError
from percepbench.images import to_rgb
from percepbench.models.configs import (  # noqa: F401  (re-exported: the model's public names)
    BACKBONE_ZIPS,
    BACKBONES,
    IMAGE_SIZE,
    RELEASES,
    VARIANTS,
    Feature,
    Variant,
    variant_name,
    zero_shot_variant,
)
from percepbench.models.vit import Backbone, read_checkpoint


def normalize_embedding(embed: torch.Tensor) -> torch.Tensor:
    """Centre each vector over its last dimension, then L2-normalise it (cosine becomes Pearson's r)."""
    centred = embed - embed.mean(dim=-1, keepdim=True)
    return centred / centred.norm(dim=-1, keepdim=True)


# -------------------------------------------------------------------------------------------------
# LoRA (peft)
# -------------------------------------------------------------------------------------------------
LORA_CONFIG_KEYS = ("r", "lora_alpha", "lora_dropout", "bias", "target_modules")
OFFICIAL_PREFIX = "base_model.model."


def read_adapter_config(lora_dir: str | Path) -> dict[str, Any]:
    """The LoRA settings of an official ``adapter_config.json`` (alpha comes from the file, never a default)."""
    path = Path(lora_dir) / "adapter_config.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise WeightsError(f"{path}: LoRA adapter config not found") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{path}: unreadable LoRA adapter config ({exc})") from exc
    missing = [k for k in LORA_CONFIG_KEYS if k not in raw]
    if missing:
        raise WeightsError(f"{path}: adapter config lacks {missing}")
    return {k: raw[k] for k in LORA_CONFIG_KEYS}


def _lora_state_keys(module: nn.Module) -> set[str]:
    return {k for k in module.state_dict() if ".lora_" in k}


def _to_official_key(key: str, adapter: str = "default") -> str:
    return OFFICIAL_PREFIX + key.replace(f".{adapter}.", ".")


# -------------------------------------------------------------------------------------------------
# The model
# -------------------------------------------------------------------------------------------------
class DreamSimModel(nn.Module):
    """DreamSim with the official API: ``embed(img)`` and ``forward(img_a, img_b)``.

    Inputs are RGB batches (B, 3, 224, 224) in [0, 1]; per-backbone mean/std normalisation happens inside.
    ``embed`` returns (B, D) — or (B, 1 + N, 768) tokens for the patch variants, as the official model
    does; :meth:`embed_pooled` always returns the (B, D) vector the distance is computed on.
    """

    def __init__(self, variant: str | Variant = "ensemble", normalize_embeds: bool = True, *,
                 empty: bool = False) -> None:
        """``variant``: an official variant name or a :class:`Variant` (e.g. a zero-shot backbone from
        :func:`zero_shot_variant`). ``empty=True``: no weights allocated; :meth:`load_backbones` must follow."""
        super().__init__()
        self.variant = VARIANTS[variant] if isinstance(variant, str) else variant
        self.normalize_embeds = normalize_embeds
        self.extractor_list = nn.ModuleList(Backbone(BACKBONES[b], empty=empty) for b in self.variant.backbones)
        self.lora_config: dict[str, Any] | None = None

    # -- weights --------------------------------------------------------------------------------
    def load_backbones(self, cache_dir: str | Path) -> None:
        """Load every backbone from its official file in ``cache_dir`` (``weights_only=True`` or safetensors).

        Files that came out of a release zip are checked against the sha256 recorded at their first load
        (torch-hub files are verified by the weights manager when fetched).
        """
        from percepbench.download import verify_file

        for backbone in self.extractor_list:
            path = Path(cache_dir) / backbone.cfg.checkpoint
            if not path.is_file():
                raise WeightsError(f"{path}: backbone checkpoint of {backbone.cfg.name} not found")
            if backbone.cfg.checkpoint_url is None:
                verify_file(path)
            try:
                raw = read_checkpoint(backbone.cfg, path)
            except ValueError as exc:
                raise WeightsError(f"{path}: {exc}") from exc
            try:
                backbone.load_checkpoint(raw)
            except ValueError as exc:
                raise WeightsError(f"{path}: {exc}") from exc

    def add_lora(self, config: dict[str, Any]) -> None:
        """Inject peft LoRA layers on every ``qkv`` projection, configured exactly as ``config``."""
        from peft import LoraConfig, inject_adapter_in_model

        if self.lora_config is not None:
            raise RuntimeError("LoRA is already attached")
        inject_adapter_in_model(LoraConfig(**config), self, adapter_name="default")
        self.lora_config = dict(config)

    def load_lora(self, lora_dir: str | Path) -> None:
        """Attach and load an official adapter directory; every LoRA key must match (none missing or extra)."""
        from safetensors.torch import load_file

        lora_dir = Path(lora_dir)
        self.add_lora(read_adapter_config(lora_dir))
        path = lora_dir / "adapter_model.safetensors"
        if not path.is_file():
            raise WeightsError(f"{path}: LoRA adapter weights not found")
        from percepbench.download import check_safetensors, verify_file

        check_safetensors(path)
        verify_file(path)  # sha256 recorded at first load, checked on every later one
        try:
            official = load_file(str(path))
        except Exception as exc:
            raise WeightsError(f"{path}: unreadable safetensors file ({exc})") from exc
        expected = {_to_official_key(k): k for k in _lora_state_keys(self)}
        missing = sorted(set(expected) - set(official))
        unexpected = sorted(set(official) - set(expected))
        if missing or unexpected:
            raise WeightsError(f"{path}: LoRA keys do not match the {self.variant.name} model: "
                               f"{len(missing)} missing (e.g. {missing[:2]}), "
                               f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})")
        ours = {expected[k]: v for k, v in official.items()}
        result = self.load_state_dict(ours, strict=False)
        if result.unexpected_keys:
            raise WeightsError(f"{path}: unexpected keys {result.unexpected_keys[:3]}")

    def lora_parameters(self) -> list[nn.Parameter]:
        """The LoRA matrices, the only weights DreamSim's training updates.

        Example (fine-tuning; everything else stays frozen)::

            model = build_dreamsim("dino_vitb16")           # LoRA attached, not merged
            params = model.lora_parameters()
            for p in params:
                p.requires_grad_(True)
            opt = torch.optim.Adam(params, lr=3e-4)
        """
        return [p for name, p in self.named_parameters() if ".lora_" in name]

    def save_lora(self, lora_dir: str | Path) -> Path:
        """Write the attached LoRA as an official adapter folder and return it.

        ``adapter_config.json`` is in peft's format, with the attached settings. ``adapter_model.safetensors``
        uses the official key names (``base_model.model.extractor_list.<i>.model.blocks.<k>.attn.qkv.lora_A.weight``).
        :meth:`load_lora` reads the folder back, and so does the official ``dreamsim`` package when the folder
        sits in its cache dir under the variant's name (e.g. ``dino_vitb16_single_lora``). Both files are
        written to temporary names first and then moved into place, weights before config
        (:func:`percepbench.fileio.atomic_write`), so an interrupted save never leaves a half-written file;
        the weights' sha256 is recorded beside them (``load_lora`` checks it).
        """
        import hashlib

        from peft import LoraConfig
        from safetensors.torch import save

        from percepbench.download import record_sha256
        from percepbench.fileio import atomic_write, atomic_write_bytes

        if self.lora_config is None:
            raise RuntimeError("no LoRA attached (never added, or merged into the weights): nothing to save")
        out = Path(lora_dir)
        out.mkdir(parents=True, exist_ok=True)
        config = LoraConfig(**self.lora_config, inference_mode=True).to_dict()
        config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
        tensors = {_to_official_key(k): v.detach().to("cpu", torch.float32).contiguous()
                   for k, v in self.state_dict().items() if ".lora_" in k}
        weights = save(tensors, metadata={"format": "pt"})
        config_text = json.dumps(config, indent=2, sort_keys=True, default=str) + "\n"

        def write_config(fh: Any) -> None:
            fh.write(config_text)  # the config waits in its temporary file while the weights move into place
            atomic_write_bytes(out / "adapter_model.safetensors", weights)

        atomic_write(out / "adapter_config.json", write_config, mode="w", encoding="utf-8")
        # the sidecar that load_lora checks: the new weights' hash replaces any older one
        record_sha256(out / "adapter_model.safetensors", hashlib.sha256(weights).hexdigest())
        return out

    def merge_lora(self) -> None:
        """Fold LoRA into the ``qkv`` weights (W += alpha / r * B @ A) and drop the adapter layers."""
        from peft.tuners.lora import LoraLayer

        for name, module in list(self.named_modules()):
            if isinstance(module, LoraLayer):
                module.merge(safe_merge=True)
                parent_name, _, child = name.rpartition(".")
                setattr(self.get_submodule(parent_name), child, module.get_base_layer())
        self.lora_config = None

    # -- forward ------------------------------------------------------------------------------------
    def _check(self, img: torch.Tensor) -> None:
        if img.ndim != 4 or img.shape[1] != 3 or tuple(img.shape[-2:]) != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"DreamSim expects (B, 3, {IMAGE_SIZE}, {IMAGE_SIZE}) images in [0, 1], got "
                             f"{tuple(img.shape)} (use `preprocess` or DreamSimMetric, which resize)")

    def embed(self, img: torch.Tensor) -> torch.Tensor:
        """Official ``embed``: (B, D), or (B, 1 + N, 768) tokens for patch variants."""
        self._check(img)
        feats = [b.features(img, f) for b, f in zip(self.extractor_list, self.variant.feature, strict=True)]
        embed = torch.cat(feats, dim=-1)
        return normalize_embedding(embed) if self.normalize_embeds else embed

    def pool(self, embed: torch.Tensor) -> torch.Tensor:
        """(B, D) vector compared by the distance: patch variants concatenate [CLS, mean of patch tokens]."""
        if not self.variant.is_patch:
            return embed
        return torch.cat([embed[:, 0], embed[:, 1:].mean(dim=1)], dim=-1)

    def embed_pooled(self, img: torch.Tensor) -> torch.Tensor:
        return self.pool(self.embed(img))

    def distance_from_embeddings(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return 1.0 - F.cosine_similarity(self.pool(a), self.pool(b), dim=-1)

    def forward(self, img_a: torch.Tensor, img_b: torch.Tensor) -> torch.Tensor:
        """Distance ``1 - cos(embed(a), embed(b))``, shape (B,), in [0, 2]."""
        return self.distance_from_embeddings(self.embed(img_a), self.embed(img_b))


# -------------------------------------------------------------------------------------------------
# Building, with the official cache layout
# -------------------------------------------------------------------------------------------------
def build_dreamsim(variant: str | Variant = "ensemble", *, cache_dir: str | Path | None = None,
                   pretrained: bool = True, lora: bool = True, normalize_embeds: bool = True, merge: bool = False,
                   device: str | torch.device | None = None, progress: bool = True) -> DreamSimModel:
    """A ready DreamSim model: backbones and LoRA loaded from ``cache_dir``, frozen, in eval mode.

    ``variant`` is an official variant name, or a :class:`Variant` such as :func:`zero_shot_variant`
    (never with LoRA). ``pretrained=False`` builds the architecture with random weights and no LoRA,
    without touching the network or the cache. ``lora=False`` gives the zero-shot backbone(s).
    ``merge=True`` folds LoRA into the weights. Missing files are downloaded (see ``percepbench.weights``).
    """
    from percepbench.dreamsim_weights import backbone_weight_files, dreamsim_weight_files
    from percepbench.weights import cache_dir as resolve_cache
    from percepbench.weights import ensure_files

    official = isinstance(variant, str)
    lora = lora and official
    model = DreamSimModel(variant, normalize_embeds=normalize_embeds, empty=pretrained)
    root = resolve_cache(cache_dir)
    if pretrained:
        files = (dreamsim_weight_files(variant, lora=lora) if official
                 else backbone_weight_files(model.variant.backbones))
        ensure_files(files, root, progress=progress)
        model.load_backbones(root)
        if lora:
            model.load_lora(root / model.variant.lora_dir)
    if merge and model.lora_config is not None:
        model.merge_lora()
    model.requires_grad_(False).eval()
    if device is not None:
        model.to(device)
    return model


def preprocess(pil_image: Image.Image) -> torch.Tensor:
    """Official preprocessing: RGB, PIL bicubic resize to exactly 224x224 (aspect squashed), [0, 1], (1, 3, 224, 224).

    RGB comes from :func:`percepbench.images.to_rgb`: PIL's ``convert("RGB")`` for 8-bit modes, as the official
    preprocess; 16-bit and float images scaled to 8 bits (the official ``convert`` clips them to 0..255,
    so a 16-bit image turns white and a float one black); :class:`~percepbench.errors.DataError` for
    images it refuses.
    """
    im = to_rgb(pil_image).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
    t = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE, 3)
    return (t.permute(2, 0, 1).float() / 255.0).unsqueeze(0)


def dreamsim(pretrained: bool = True, device: str | torch.device | None = None,
             cache_dir: str | Path | None = None, normalize_embeds: bool = True,
             dreamsim_type: str = "ensemble", use_patch_model: bool = False,
             ) -> tuple[DreamSimModel, Callable[[Image.Image], torch.Tensor]]:
    """Drop-in for the official ``dreamsim.dreamsim``: returns ``(model, preprocess)``.

    ``device`` defaults to CUDA when available, else CPU; ``cache_dir`` to the percepbench cache (an
    official ``./models`` dir works as is). ``pretrained=False`` builds the architecture without touching
    the network.

    Example:
        >>> from percepbench import dreamsim
        >>> model, preprocess = dreamsim(pretrained=False, dreamsim_type="dino_vitb16", device="cpu")
        >>> import torch
        >>> model.embed(torch.rand(2, 3, 224, 224)).shape
        torch.Size([2, 768])
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    variant = variant_name(dreamsim_type, use_patch_model)
    model = build_dreamsim(variant, cache_dir=cache_dir, pretrained=pretrained, normalize_embeds=normalize_embeds,
                           lora=pretrained, device=device)
    return model, preprocess
