"""The contract every percepbench metric follows.

A :class:`DistanceMetric` is a ``torchmetrics.Metric`` whose per-pair value is a **distance: lower means
more similar**, for every metric in percepbench. Similarity indices (SSIM, FSIM, ...) are converted and
the registry spec records how (``MetricSpec.distance``).

Inputs to ``update(preds, target)`` / ``forward``: two NCHW RGB batches of equal shape, either
``torch.uint8`` in [0, 255] or floating point in [0, 1]. Grayscale (C=1) is repeated to RGB unless the
metric's ``grayscale`` convention is ``"reject"``. Anything else raises ``ValueError`` naming the problem.

Output: ``compute()`` returns the mean (``reduction="mean"``), sum (``"sum"``) or the per-pair vector of
shape (N,) (``"none"``) over everything seen since the last ``reset()``. With ``"none"`` the per-pair
distances are kept in a list state reduced with ``cat``; mean and sum keep only a running sum and a count
(constant memory in a training loop). Both sync across DDP processes.

Subclasses implement :meth:`distance` on validated float [0, 1] tensors and return shape (N,). Networks
are built once in ``__init__`` and handed to :meth:`freeze`, which keeps them in eval mode with no
gradients into their weights, even when a parent module calls ``.train()``.

Embedding metrics (``embeds = True``) also implement :meth:`embed` (validated [0, 1] images -> (N, D))
and :meth:`embedding_distance`, with ``distance(x, y) == embedding_distance(embed(x), embed(y))``. The
runner then embeds each unique image of a file-based task once and serves repeats from the on-disk
embedding cache (:mod:`percepbench.embed_cache`).

Precision: inside a ``torch.autocast`` region (``percepbench run --precision bf16|fp16``, or the caller's
own), a metric computes in the autocast precision only when its spec lists it in ``MetricSpec.precisions``;
otherwise :meth:`DistanceMetric.pairwise` and :meth:`DistanceMetric.embed_images` disable autocast around
``distance``/``embed`` and cast half-precision inputs to float32, so the metric computes in fp32
(:meth:`DistanceMetric.computes_in` says which). A metric built without a spec may use every precision.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from percepbench.config import PRECISIONS
from percepbench.metrics_registry.validation import check_pair, to_unit_range
from percepbench.specs import InputConvention

Reduction = Literal["none", "mean", "sum"]

_AUTOCAST_PRECISIONS = {torch.bfloat16: "bf16", torch.float16: "fp16"}


def autocast_precision(device_type: str) -> str:
    """The precision ``torch.autocast`` imposes on ``device_type`` here: ``"bf16"``, ``"fp16"``, or ``"fp32"``
    when autocast is off (or set to another dtype)."""
    if not torch.amp.is_autocast_available(device_type) or not torch.is_autocast_enabled(device_type):
        return "fp32"
    return _AUTOCAST_PRECISIONS.get(torch.get_autocast_dtype(device_type), "fp32")


def resize_to_convention(x: torch.Tensor, inputs: InputConvention) -> torch.Tensor:
    """Resize [0, 1] tensors (N, C, H, W) to ``inputs.size`` x ``inputs.size`` with ``inputs.interpolation``.

    Bilinear and bicubic are antialiased (``align_corners=False``), the tensor counterpart of PIL's resize
    of image files; the result is clamped to [0, 1] (bicubic overshoots). Returned unchanged when
    ``inputs.size`` is None or the tensor already has that size.
    """
    if inputs.size is None or tuple(x.shape[-2:]) == (inputs.size, inputs.size):
        return x
    mode = inputs.interpolation or "bicubic"
    smooth = mode in ("bilinear", "bicubic")
    x = F.interpolate(x, size=(inputs.size, inputs.size), mode=mode, antialias=smooth,
                      align_corners=False if smooth else None)
    return x.clamp(0.0, 1.0)


class DistanceMetric(Metric):
    """Base class: per-pair distances with ``reduction`` none/mean/sum."""

    higher_is_better: ClassVar[bool] = False
    is_differentiable: ClassVar[bool] = True
    full_state_update: ClassVar[bool] = False
    plot_lower_bound: ClassVar[float | None] = None

    #: input convention checked by ``update`` (the registry spec documents the same values)
    min_size: ClassVar[int] = 1
    grayscale: ClassVar[str] = "expand"
    input_range: tuple[float, float] = (0.0, 1.0)  #: range of float inputs (uint8 is always [0, 255])

    spec: Any = None  # set by ``MetricSpec.create``
    #: True when distances are a function of per-image embeddings (see the module docstring)
    embeds: ClassVar[bool] = False
    #: bump when a code change alters the embeddings (invalidates the on-disk embedding cache)
    embedding_version: ClassVar[int] = 1
    #: how ``embedding_distance`` maps onto a nearest-neighbour index (retrieval search,
    #: :mod:`percepbench.search`): ``"cosine"`` (1 - cosine similarity, the default ``embedding_distance``),
    #: ``"l2"`` (Euclidean), or None: a metric that overrides ``embedding_distance`` without saying is
    #: searched by brute force over its own distance
    embedding_space: ClassVar[str | None] = None
    #: file names of the spec's weight files this instance loaded (``meta.weights`` lists only those); None:
    #: all of them. Metrics built with ``pretrained=false`` set it (none, or only the files they still read)
    weight_files_used: list[str] | None = None
    #: whether :meth:`quantize_int8` works for this class (a run uses it where the spec also lists ``"int8"``)
    quantizable: ClassVar[bool] = False

    def __init__(self, reduction: Reduction = "mean", validate_args: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if reduction not in ("none", "mean", "sum"):
            raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
        self.reduction = reduction
        self.validate_args = validate_args
        self._frozen: list[nn.Module] = []
        if reduction == "none":
            self.add_state("distances", default=[], dist_reduce_fx="cat")
        else:
            # mean/sum need only a running sum and a count: constant memory however long a training loop
            # calls the metric, and a two-number DDP sync. The sum has the default dtype (float32), like
            # torchmetrics' MeanMetric: float64 would be more exact but does not exist on Apple's MPS.
            self.add_state("distance_sum", default=torch.tensor(0.0), dist_reduce_fx="sum")
            self.add_state("pairs", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    # -- for subclasses ---------------------------------------------------------------------------
    def distance(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-pair distance, shape (N,), for float inputs in [0, 1] of shape (N, 3, H, W)."""
        raise NotImplementedError

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Embedding metrics: per-image embeddings (N, D) of validated float [0, 1] images (N, 3, H, W)."""
        raise NotImplementedError(f"{type(self).__name__} is not an embedding metric")

    def embedding_distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Embedding metrics: per-pair distance (N,) between embeddings; default ``1 - cosine``."""
        return 1.0 - torch.nn.functional.cosine_similarity(a, b, dim=-1)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """Validated embeddings (N, D) of one image batch (uint8 or float, as for ``update``)."""
        check_pair(images, images)
        x = to_unit_range(images, name="images", grayscale=self.grayscale, min_size=self.min_size,
                          check_values=self.validate_args, input_range=self.input_range)
        return self._in_own_precision(self.embed, x.to(self.device))

    def freeze(self, module: nn.Module) -> nn.Module:
        """Register ``module`` as a frozen feature network: eval mode, no weight gradients."""
        module.requires_grad_(False)
        module.eval()
        self._frozen.append(module)
        return module

    def train(self, mode: bool = True) -> DistanceMetric:
        super().train(mode)
        for module in self._frozen:
            module.eval()
        return self

    # -- precision --------------------------------------------------------------------------------
    def computes_in(self, precision: str) -> str:
        """The precision this metric computes in when a run asks for ``precision``: ``precision`` itself when
        the spec's ``precisions`` lists it (every precision without a spec), else ``"fp32"``."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        supported = getattr(self.spec, "precisions", PRECISIONS) if self.spec is not None else PRECISIONS
        if precision == "int8" and not self.quantizable:
            return "fp32"
        return precision if precision in supported else "fp32"

    def quantize_int8(self) -> DistanceMetric:
        """Int8 quantisation, in place, of every ``nn.Linear`` of this metric (CPU only; returns self).

        :class:`percepbench.int8.Int8Linear`: int8 weights per output channel, activations quantised per row
        (token) at run time, exact int32 products (VNNI or AMX where the CPU has them), so an image's result
        does not depend on the batch it is in. Attention products, LayerNorm and GELU stay fp32. For scoring
        only: the quantised layers carry no gradient. ``percepbench run --precision int8`` calls it for
        metrics whose spec lists ``"int8"``; what it costs in agreement with fp32 is measured in
        ``docs/performance.md``.
        """
        from percepbench.int8 import quantize_linears

        if not self.quantizable:
            raise TypeError(f"{type(self).__name__} does not support int8 dynamic quantisation")
        if self.device.type != "cpu":
            raise ValueError(f"int8 dynamic quantisation runs on the CPU only; this metric is on {self.device}")
        if not quantize_linears(self):
            raise TypeError(f"{type(self).__name__} has no nn.Linear layer to quantise")
        return self

    def compile_embedding(self, **options: Any) -> DistanceMetric:
        """``torch.compile`` :meth:`embed` (the step the runner repeats per batch), in place; returns self.
        ``percepbench run --compile`` calls it for embedding metrics. The first calls pay the compile time
        (again for a new batch size)."""
        if not self.embeds:
            raise TypeError(f"{type(self).__name__} is not an embedding metric")
        self.embed = torch.compile(self.embed, **options)  # type: ignore[method-assign]
        return self

    def _in_own_precision(self, fn: Any, *tensors: torch.Tensor) -> torch.Tensor:
        """``fn(*tensors)``, with autocast disabled and half inputs cast to float32 when the autocast
        precision active on the tensors' device is not one this metric computes in."""
        device_type = tensors[0].device.type
        asked = autocast_precision(device_type)
        if self.computes_in(asked) == asked:
            return fn(*tensors)
        with torch.autocast(device_type, enabled=False):
            return fn(*(t.float() if t.dtype in _AUTOCAST_PRECISIONS else t for t in tensors))

    # -- the contract -----------------------------------------------------------------------------
    def prepare(self, preds: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Validate a pair of batches and convert both to float [0, 1] on the metric's device."""
        check_pair(preds, target)
        kw = {"grayscale": self.grayscale, "min_size": self.min_size, "check_values": self.validate_args,
              "input_range": self.input_range}
        x = to_unit_range(preds, name="preds", **kw)
        y = to_unit_range(target, name="target", **kw)
        x, y = x.to(self.device), y.to(self.device)
        dtype = self._network_dtype()
        if dtype is not None and x.dtype != dtype and not torch.is_autocast_enabled(x.device.type):
            # float64 (numpy's default) or half inputs to a float32 network: computed in the network's dtype
            x, y = x.to(dtype), y.to(dtype)
        return x, y

    def _network_dtype(self) -> torch.dtype | None:
        """The floating dtype of the metric's parameters and buffers, when it has a network (else None)."""
        memo = getattr(self, "_percepbench_dtype", False)
        if memo is not False:
            return memo
        dtype = next((t.dtype for t in [*self.parameters(), *self.buffers()] if t.is_floating_point()), None)
        self._percepbench_dtype = dtype
        return dtype

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        self._percepbench_dtype = False  # .to(dtype) / .half() / .double() change it: look again
        return super()._apply(fn, *args, **kwargs)

    def pairwise(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Validated per-pair distances, shape (N,), without touching the metric's state."""
        x, y = self.prepare(preds, target)
        d = self._in_own_precision(self.distance, x, y)
        if d.shape != (x.shape[0],):
            raise RuntimeError(
                f"{type(self).__name__}.distance returned shape {tuple(d.shape)}, expected ({x.shape[0]},)"
            )
        return d

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        d = self.pairwise(preds, target)
        if self.reduction == "none":
            self.distances.append(d)
        else:
            self.distance_sum = self.distance_sum + d.sum(dtype=self.distance_sum.dtype)
            self.pairs = self.pairs + d.numel()

    def _wrap_compute(self, compute: Any) -> Any:
        """torchmetrics squeezes one-element results to 0-d; with ``reduction="none"`` keep shape (N,) = (1,)."""
        wrapped = super()._wrap_compute(compute)

        @functools.wraps(compute)
        def keep_per_pair_shape(*args: Any, **kwargs: Any) -> Any:
            value = wrapped(*args, **kwargs)
            if self.reduction == "none" and isinstance(value, torch.Tensor) and value.ndim == 0:
                return value.reshape(1)
            return value

        return keep_per_pair_shape

    def compute(self) -> torch.Tensor:
        if self.reduction == "none":
            return dim_zero_cat(self.distances)
        return self.distance_sum if self.reduction == "sum" else self.distance_sum / self.pairs
