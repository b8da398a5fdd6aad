"""Weight-free full-reference metrics: PSNR, SSIM, MS-SSIM (torchmetrics) and every weight-free FR
metric of piq, each turned into a distance (lower = more similar).

Computation is delegated to the reference libraries (torchmetrics' functional API, piq); percepbench
adds the contract (validation, per-pair values, reductions, DDP states), the distance conversion, and
a reduced-scale rule for the multi-scale SSIMs so that they also run on small patches:

**Reduced-scale multi-scale SSIM.** MS-SSIM uses 5 scales with weights
(0.0448, 0.2856, 0.3001, 0.2363, 0.1333) and needs images of at least 161 px (piq) or 176 px
(torchmetrics). With ``scales="auto"`` (the default) percepbench uses the largest number of scales L <= 5
that the image size allows, with the first L official weights renormalised to sum to 1. At >= 176 px
this is exactly the standard metric; at 64x64 (BAPPS patches) it is 3 scales (torchmetrics rule) or
3 scales (piq rule). The number of scales used is recorded in ``metric.last_scales``.

**Always fp32.** Every spec here declares ``precisions=("fp32",)``: under autocast piq's indices return NaN
for many images (on the CPU, 32 severity2afc triplets at 128 px: IW-SSIM 21 NaN under bf16 and a failed
eigendecomposition under fp16, VIF 31 and FSIM 22 NaN under fp16; MS-SSIM was reported on a GPU), so
inside a ``--precision bf16|fp16`` run (or the caller's ``torch.autocast``) these metrics compute in fp32
with autocast disabled (:meth:`~percepbench.metrics_registry.base.DistanceMetric.computes_in`); the run's
protocol records ``precision: fp32`` for them. They have no network, so half precision would gain nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torchmetrics.functional.image as tmf

from percepbench.metrics_registry.base import DistanceMetric
from percepbench.metrics_registry.catalog.classical import FP32_ONLY, PIQ_INDICES  # noqa: F401  (re-exported)

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
PSNR_MSE_FLOOR = 1e-10  # identical images: PSNR 100 dB instead of +inf
def scale_weights(levels: int) -> tuple[float, ...]:
    """The first ``levels`` official MS-SSIM weights, renormalised to sum to 1 (all 5: the official ones)."""
    if levels == len(MS_SSIM_WEIGHTS):
        return MS_SSIM_WEIGHTS
    w = MS_SSIM_WEIGHTS[:levels]
    total = sum(w)
    return tuple(float(v / total) for v in w)


def torchmetrics_ms_ssim_levels(size: int, kernel_size: int = 11) -> int:
    """Largest L <= 5 torchmetrics can compute: its own checks (size >= 2**L and
    size // max(1, L-1)**2 > kernel_size - 1) plus a coarsest scale of at least ``kernel_size`` px
    (its reflection padding fails below that, which its checks miss)."""
    for levels in range(5, 0, -1):
        if (size >= 2**levels and size // max(1, levels - 1) ** 2 > kernel_size - 1
                and size // 2 ** (levels - 1) >= kernel_size):
            return levels
    raise ValueError(f"images of {size} px are too small for MS-SSIM with an {kernel_size}-px window")


def piq_ms_ssim_levels(size: int, kernel_size: int = 11) -> int:
    """Largest L <= 5 piq accepts: size >= (kernel_size - 1) * 2**(L-1) + 1."""
    for levels in range(5, 0, -1):
        if size >= (kernel_size - 1) * 2 ** (levels - 1) + 1:
            return levels
    raise ValueError(f"images of {size} px are too small for MS-SSIM with an {kernel_size}-px window")


class PSNR(DistanceMetric):
    """Peak signal-to-noise ratio as a distance: ``-PSNR`` in dB, per image (torchmetrics, ``dim=(1,2,3)``).

    The MSE is floored at 1e-10, so identical images give -100 instead of -inf.

    Example:
        >>> import torch
        >>> from percepbench.metrics_registry.classical import PSNR
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.rand(2, 3, 32, 32, generator=g)
        >>> PSNR(reduction="none")(x, (x + 0.1).clamp(0, 1)).shape
        torch.Size([2])
    """

    def distance(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        mse = ((preds - target) ** 2).flatten(1).mean(1).clamp_min(PSNR_MSE_FLOOR)
        return -10.0 * torch.log10(1.0 / mse)


class SSIM(DistanceMetric):
    """``1 - SSIM`` per image: Gaussian window (sigma 1.5, 11 taps), data range 1, mean over RGB channels.

    The SSIM map comes from torchmetrics; its mean is taken over the *valid* region (a border of 5 px
    dropped), as in Wang et al.'s reference code and scikit-image. torchmetrics 1.9 instead averages the
    map over the whole reflect-padded image, which differs by up to ~0.02 on smooth images.
    """

    def __init__(self, sigma: float = 1.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sigma = sigma
        self.pad = int(3.5 * sigma + 0.5)  # the window torchmetrics (and skimage) use: 2 * pad + 1 taps
        self.min_size = 2 * self.pad + 1

    def distance(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _, ssim_map = tmf.structural_similarity_index_measure(
            preds, target, gaussian_kernel=True, sigma=self.sigma, data_range=1.0, reduction="none",
            return_full_image=True,
        )
        p = self.pad
        return 1.0 - ssim_map[..., p:-p, p:-p].flatten(1).mean(1)


class MSSSIM(DistanceMetric):
    """``1 - MS-SSIM`` per image (torchmetrics), with the reduced-scale rule of this module's docstring.

    The value is torchmetrics' (its last-scale luminance term averages over the padded image, unlike
    ``piq.ms_ssim``, which uses valid convolutions throughout).
    """

    def __init__(self, scales: int | str = "auto", kernel_size: int = 11, sigma: float = 1.5, **kwargs: Any):
        super().__init__(**kwargs)
        if scales != "auto" and not (isinstance(scales, int) and 1 <= scales <= 5):
            raise ValueError(f"scales must be 'auto' or an integer 1..5, got {scales!r}")
        self.scales = scales
        self.kernel_size = kernel_size
        self.sigma = sigma
        self.min_size = kernel_size  # one scale needs size > kernel_size - 1 and size >= 2
        self.last_scales: int | None = None

    def distance(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        size = min(preds.shape[-2:])
        levels = torchmetrics_ms_ssim_levels(size, self.kernel_size) if self.scales == "auto" else self.scales
        self.last_scales = levels
        s = tmf.multiscale_structural_similarity_index_measure(
            preds, target, gaussian_kernel=True, sigma=self.sigma, kernel_size=self.kernel_size,
            data_range=1.0, reduction="none", betas=scale_weights(levels),
        )
        return 1.0 - s


class PiqDistance(DistanceMetric):
    """A weight-free piq full-reference index as a per-image distance.

    Similarity indices become ``1 - index`` (``-PSNR`` for piq's PSNR); GMSD, MS-GMSD and MDSI are
    distances already. ``piq.ms_ssim`` and ``piq.iw_ssim`` use the reduced-scale rule of this module.

    piq 0.8's SR-SIM min-max normalises the saliency maps over the *whole batch*, so an image's score
    depends on the other images in its batch; percepbench calls it one image at a time, which gives
    the per-image value of the original (MATLAB) definition whatever the batch.
    """

    def __init__(self, index: str, scales: int | str = "auto", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if index not in PIQ_INDICES:
            raise ValueError(f"unknown piq index {index!r}; known: {', '.join(PIQ_INDICES)}")
        self.index = index
        self.scales = scales
        self.info = PIQ_INDICES[index]
        self.min_size = self.info.min_size
        self.last_scales: int | None = None
        import piq  # imported here: only piq metrics need it

        self._fn: Callable[..., torch.Tensor] = getattr(piq, self.info.function)

    def distance(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        kwargs: dict[str, Any] = dict(self.info.kwargs)
        if self.index in ("ms_ssim", "iw_ssim"):
            size = min(preds.shape[-2:])
            levels = piq_ms_ssim_levels(size) if self.scales == "auto" else int(self.scales)
            self.last_scales = levels
            kwargs["scale_weights"] = torch.tensor(scale_weights(levels), dtype=preds.dtype, device=preds.device)
        try:
            if self.info.per_image:
                value = torch.cat([self._fn(p[None], t[None], data_range=1.0, reduction="none", **kwargs)
                                   for p, t in zip(preds, target, strict=True)])
            else:
                value = self._fn(preds, target, data_range=1.0, reduction="none", **kwargs)
        except torch.linalg.LinAlgError as exc:  # piq's IW-SSIM inverts local covariances
            raise ValueError(
                f"piq.{self.index} cannot score this batch: an image has a perfectly flat region, so piq's "
                f"covariance matrix is singular ({exc})"
            ) from exc
        if self.index == "psnr":
            return -value
        return 1.0 - value if self.info.similarity else value
