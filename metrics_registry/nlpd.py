"""NLPD, the normalized Laplacian pyramid distance (Laparra, Berardino, Balle, Simoncelli 2016), metric ``nlpd``.

A reimplementation in torch (batched, differentiable, any device) of the authors' MATLAB reference
``NLP_dist.m`` (Laboratory for Computational Vision, NYU; read from a verbatim copy in a public repository,
SMBU-MM/OF_BIQA ``FR-IQAs/NLP_dist.m``, since the NYU page was out of reach):

1. Luma ``Y = 0.299 R + 0.587 G + 0.114 B`` of the [0, 1] RGB input (the authors' code takes a grey image
   "between 0 and 1"; MATLAB's ``rgb2gray`` uses 0.2989/0.5870/0.1140, pyiqa the same weights as here).
2. Laplacian pyramid of 6 levels (Burt & Adelson): low-pass with the separable 5-tap filter
   ``[.05 .25 .4 .25 .05]`` under MATLAB *symmetric* padding (mirrored, edge sample included), decimation keeping the even samples,
   expansion by zero insertion times 4 after a one-pixel *replicate* padding, the same filter with zero
   padding, and a crop; band ``k`` = level minus its expanded low-pass; the 6th level is the low-pass residual.
3. Divisive normalisation of each level: ``z = b / (sigma_k + conv2(|b|, P_k, 'same'))`` with the constants
   the authors fitted on McGill images (:data:`SIGMAS`, :data:`DN_FILTERS`; ``conv2`` flips the filter).
4. ``NLPD = mean over levels of sqrt(mean over pixels of (z_ref - z_dist)^2)``.

**Difference from pyiqa 0.1.16.** The authors' first-level normalisation filter is 5x5, with a small tap
0.0072 two pixels to the side; pyiqa (after IQA-optimization) keeps only its 3x3 centre. percepbench uses the
authors' filter. With pyiqa's filter the two implementations agree to 1.1e-7 relative (tested by swapping
:data:`DN_FILTERS`); with the authors' filter values differ by up to 0.9% on the test images.

**Gradients.** ``sqrt`` is taken of ``mse + 1e-20`` so that the gradient at identical images is 0 instead of
NaN (the value changes by at most 1e-10).

**Precision.** fp32 only (``precisions=("fp32",)``): the metric has no network; half precision would only
lose the small band-pass values the normalisation divides.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from percepbench.metrics_registry.base import DistanceMetric
from percepbench.metrics_registry.catalog.nlpd import LEVELS, MIN_SIZE

#: ITU-R BT.601 luma weights (R, G, B)
LUMA = (0.299, 0.587, 0.114)
#: Burt & Adelson's 5-tap generating kernel, as in ``NLP_dist.m``
BURT_ADELSON = (0.05, 0.25, 0.4, 0.25, 0.05)
#: per-level additive constants of the divisive normalisation (``NLP_dist.m``, fitted on McGill)
SIGMAS = (0.0248, 0.0185, 0.0179, 0.0191, 0.0220, 0.2782)
#: per-level 5x5 normalisation filters ``P_k`` as written in ``NLP_dist.m`` (rows top to bottom), applied
#: with MATLAB's ``conv2(..., 'same')`` (a true convolution: the filter is flipped)
DN_FILTERS: tuple[tuple[tuple[float, ...], ...], ...] = tuple(
    ((0, 0, 0, 0, 0), (0, 0, top, 0, 0), (0, left, 0, right, extra), (0, 0, bottom, 0, 0), (0, 0, 0, 0, 0))
    for top, left, right, extra, bottom in (
        (0.1011, 0.1493, 0.1460, 0.0072, 0.1015),
        (0.0757, 0.1986, 0.1846, 0.0, 0.0837),
        (0.0477, 0.2138, 0.2243, 0.0, 0.0467),
        (0.0, 0.2503, 0.2616, 0.0, 0.0),
        (0.0, 0.2598, 0.2552, 0.0, 0.0),
        (0.0, 0.2215, 0.0717, 0.0, 0.0),
    )
)
SQRT_FLOOR = 1e-20  # added under the square root: finite gradients at identical images


def cached_constants(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Memoise a builder of constant tensors (filters, masks) keyed by its hashable arguments (size, dtype,
    device). The tensors are built with autograd off and outside inference mode, so that a first call under
    the runner's ``torch.inference_mode`` does not cache inference tensors that a later differentiable call
    could not use. (Shared with :mod:`~percepbench.metrics_registry.cw_ssim` and
    :mod:`~percepbench.metrics_registry.mad`.)"""
    cached = functools.lru_cache(maxsize=8)(fn)

    @functools.wraps(fn)
    def build(*args: Any) -> Any:
        with torch.inference_mode(False), torch.no_grad():
            return cached(*args)

    return build


def luma(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB -> (N, 1, H, W) luma with the BT.601 weights :data:`LUMA`."""
    w = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def symmetric_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad the last two dims by ``pad`` with MATLAB's ``'symmetric'`` rule (mirror including the edge sample),
    for any size, also smaller than ``pad`` (the mirror then repeats periodically, as in MATLAB)."""

    def index(n: int) -> torch.Tensor:
        i = torch.arange(-pad, n + pad, device=x.device) % (2 * n)
        return torch.where(i >= n, 2 * n - 1 - i, i)

    return x.index_select(-2, index(x.shape[-2])).index_select(-1, index(x.shape[-1]))


def laplacian_pyramid(x: torch.Tensor, kernel: torch.Tensor, levels: int = LEVELS) -> list[torch.Tensor]:
    """The Laplacian pyramid of ``NLP_dist.m`` (module docstring, step 2): ``levels - 1`` band-pass images and
    the low-pass residual, finest first. ``x``: (N, 1, H, W); ``kernel``: the 5x5 low-pass filter (1, 1, 5, 5)."""
    bands = []
    current = x
    for _ in range(levels - 1):
        low = F.conv2d(symmetric_pad(current, 2), kernel)[..., ::2, ::2]
        odd_h = 2 * low.shape[-2] - current.shape[-2]
        odd_w = 2 * low.shape[-1] - current.shape[-1]
        padded = F.pad(low, (1, 1, 1, 1), mode="replicate")
        # zero insertion (x4) then a zero-padded 'same' filtering == a transposed convolution with stride 2;
        # the 'same' output starts 2 samples into the full one, and the MATLAB crop drops 2 more
        full = F.conv_transpose2d(4.0 * padded, kernel, stride=2)
        rows, cols = 2 * padded.shape[-2], 2 * padded.shape[-1]
        expanded = full[..., 4:rows - odd_h, 4:cols - odd_w]
        bands.append(current - expanded)
        current = low
    bands.append(current)
    return bands


class NLPD(DistanceMetric):
    """Normalized Laplacian pyramid distance per image pair (module docstring): 0 for identical images,
    larger = more different; symmetric in its two arguments.

    Inputs: two (N, 3, H, W) RGB batches, float in [0, 1] or uint8, at least 32 px a side. Output: (N,).

    Example:
        >>> import torch
        >>> from percepbench.metrics_registry.nlpd import NLPD
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.rand(2, 3, 64, 64, generator=g)
        >>> NLPD(reduction="none")(x, (x + 0.05).clamp(0, 1)).shape
        torch.Size([2])
    """

    min_size = MIN_SIZE

    def transform(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The normalized Laplacian pyramid of RGB images ``x`` (N, 3, H, W) in [0, 1]: LEVELS maps, finest first.

        The constants are built in ``x``'s dtype on its device (no buffers): float64 inputs compute in float64.
        """
        f = torch.tensor(BURT_ADELSON, dtype=x.dtype, device=x.device)
        lowpass = torch.outer(f, f).view(1, 1, 5, 5)
        # conv2 (a convolution) == conv2d (a correlation) with the filter flipped
        filters = torch.tensor(DN_FILTERS, dtype=x.dtype, device=x.device).flip(-1, -2).unsqueeze(1)
        bands = laplacian_pyramid(luma(x), lowpass)
        return [b / (SIGMAS[k] + F.conv2d(b.abs(), filters[k:k + 1], padding=2)) for k, b in enumerate(bands)]

    def distance(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        per_level = [((a - b) ** 2).flatten(1).mean(1).add(SQRT_FLOOR).sqrt()
                     for a, b in zip(self.transform(preds), self.transform(target), strict=True)]
        return torch.stack(per_level, 1).mean(1)
