"""DreamSim as a percepbench metric: ``dreamsim`` (= ``dreamsim.ensemble``) and ``dreamsim.<variant>``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from percepbench.metrics_registry.base import DistanceMetric, resize_to_convention
from percepbench.metrics_registry.catalog.dreamsim import CITATION  # noqa: F401  (re-exported)
from percepbench.models.dreamsim import VARIANTS, build_dreamsim


class DreamSimMetric(DistanceMetric):
    """DreamSim distance ``1 - cos(embed(preds), embed(target))`` per pair, as a torchmetrics ``Metric``.

    Inputs: float image batches (N, 3, H, W) of any size in [0, 1] (or [-1, 1] with
    ``input_range=(-1, 1)``), or uint8. They are resized to 224x224 inside with antialiased bicubic
    interpolation (``percepbench run`` instead resizes image files with PIL bicubic, as the official
    ``preprocess`` does). Size, interpolation and per-backbone mean/std come from one record, the
    variant's :attr:`~percepbench.models.dreamsim.Variant.inputs`, which is also the spec's ``inputs``. Differentiable with respect to the inputs, so it works as a loss; the weights
    are frozen (no gradients, eval mode). Runs on CUDA and under autocast.

    Args:
        variant: one of ``ensemble`` (default), ``dino_vitb16``, ``clip_vitb32``, ``open_clip_vitb32``,
            ``dinov2_vitb14``, ``synclr_vitb16``, ``dino_vitb16_patch``, ``dinov2_vitb14_patch``.
        normalize_embeds: centre and L2-normalise embeddings (the ``dreamsim()`` default).
        lora: load the released LoRA (False: zero-shot backbones).
        pretrained: load weights (False: random weights, no network; for tests and shape checks).
        cache_dir: weights cache (default ``$PERCEPBENCH_CACHE`` or ``<torch hub>/percepbench``).
        merge_lora: fold LoRA into the ``qkv`` weights (default: the metric never trains them, and the
            merged model skips the adapter's extra matmuls). Use ``build_dreamsim`` to train LoRA.
        input_range: ``(0, 1)`` or ``(-1, 1)`` for float inputs.
        checkpoint: a folder written by ``percepbench train`` (``<out>/best`` or ``<out>/last``,
            :mod:`percepbench.dreamsim_checkpoint`): a LoRA checkpoint replaces the released adapter, an
            MLP-head checkpoint adds its head on the zero-shot backbones (``lora`` is then ignored). It must
            have been trained for this variant's backbones and features (else
            :class:`~percepbench.errors.WeightsError`). Its files and their sha256 are listed in
            ``extra_weight_files``, in the shape of ``results.json``'s ``meta.weights`` entries. The model was
            trained with the ``normalize_embeds`` its ``percepbench_checkpoint.json`` records (the official
            recipe: false); this option still decides how it is scored.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per pair).

    Example:
        >>> import torch
        >>> from percepbench import DreamSimMetric
        >>> metric = DreamSimMetric(variant="dino_vitb16", pretrained=False, reduction="none")
        >>> metric(torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)).shape
        torch.Size([2])
    """

    is_differentiable = True
    embeds = True
    quantizable = True

    def __init__(self, variant: str = "ensemble", normalize_embeds: bool = True, lora: bool = True,
                 pretrained: bool = True, cache_dir: str | Path | None = None, merge_lora: bool = True,
                 input_range: tuple[float, float] = (0.0, 1.0), checkpoint: str | Path | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if variant not in VARIANTS:
            raise ValueError(f"unknown DreamSim variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        if tuple(input_range) not in ((0.0, 1.0), (-1.0, 1.0)):
            raise ValueError(f"input_range must be (0, 1) or (-1, 1), got {input_range!r}")
        self.variant = variant
        self.input_range = (float(input_range[0]), float(input_range[1]))
        if not pretrained:  # random weights: no file of the spec is read
            self.weight_files_used = []
        self.head: torch.nn.Module | None = None
        self.checkpoint = None if checkpoint in (None, "") else str(checkpoint)
        self.extra_weight_files: list[dict[str, Any]] = []
        if self.checkpoint is None:
            model = build_dreamsim(variant, cache_dir=cache_dir, pretrained=pretrained, lora=lora,
                                   normalize_embeds=normalize_embeds, merge=merge_lora)
        else:
            from percepbench.dreamsim_checkpoint import apply_checkpoint, checkpoint_hashes
            from percepbench.dreamsim_weights import dreamsim_weight_files

            model = build_dreamsim(variant, cache_dir=cache_dir, pretrained=pretrained, lora=False,
                                   normalize_embeds=normalize_embeds)
            self.head = apply_checkpoint(model, self.checkpoint)
            if self.head is not None:  # the head comes before normalisation (official PerceptualModel.embed)
                model.normalize_embeds = False
                self.head = self.freeze(self.head)
            elif merge_lora:
                model.merge_lora()
            if pretrained:  # the backbones only: the released adapter is not read
                self.weight_files_used = [w.filename for w in dreamsim_weight_files(variant, lora=False)]
            self.extra_weight_files = checkpoint_hashes(self.checkpoint)
        self.normalize_embeds = normalize_embeds
        self.model = self.freeze(model)
        self.input_convention = VARIANTS[variant].inputs

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] images at the variant's input size (see :func:`resize_to_convention`)."""
        return resize_to_convention(x, self.input_convention)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled embeddings (N, D) of validated [0, 1] images (what the distance compares)."""
        e = self.model.embed_pooled(self.resize(x))
        if self.head is None:
            return e
        from percepbench.models.dreamsim import normalize_embedding

        e = self.head(e)
        return normalize_embedding(e) if self.normalize_embeds else e

    def distance(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.head is not None:
            return self.embedding_distance(self.embed(preds), self.embed(target))
        return self.model(self.resize(preds), self.resize(target))
