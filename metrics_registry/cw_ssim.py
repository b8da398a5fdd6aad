"""CW-SSIM, complex wavelet structural similarity (Sampat, Wang, Gupta, Bovik, Markey 2009), metric ``cw_ssim``.

A reimplementation in torch (batched, differentiable, any device) of the reference definition
(``cwssim_index.m`` by Wang and Sampat on top of matlabPyrTools' ``buildSCFpyr``), as configured by the
common implementations (pyiqa: level 4, 8 orientations, K = 0, no guard band):

1. Luma ``Y = 0.299 R + 0.587 G + 0.114 B`` of the [0, 1] RGB input. With K = 0 the index does not depend on
   the scale of Y. pyiqa multiplies by 255 and *rounds* Y (as MATLAB's ``uint8`` ``rgb2gray`` does);
   percepbench does not round (rounding has no gradient; it changes CW-SSIM by up to 3e-4 on colour images).
2. Complex steerable pyramid in the frequency domain (matlabPyrTools ``buildSCFpyr`` with ``twidth = 1``):
   radial masks are the square-rooted raised cosine of ``rcosFn`` (259-sample table, linearly interpolated
   like ``pointOp``) over log2 radius, one octave per level; the first low-pass mask is applied at full
   size, then each level crops the centre of the spectrum to half size (``ceil(n / 2)``) and applies the
   low-pass mask again. At level 4 the 8 oriented bands are ``ifft2((-i)^7 * lowpass * anglemask_b *
   highmask)``, with the one-sided angular mask ``2 sqrt(c) cos(theta - pi b / 8)^7`` (analytic bands).
3. Per orientation: ``c = b1 * conj(b2)``, ``e = |b1|^2 + |b2|^2``, both averaged in 7x7 windows ('valid');
   map ``(2 |c| + K) / (e + K)``; pooled with a Gaussian weight over the map (``fspecial('gaussian',
   size, rows / 4)``, normalised to sum 1). CW-SSIM = mean over orientations. Distance: ``1 - CW-SSIM``.

The frequency masks depend only on the image size and are cached per size, dtype and device.
Where both windowed energies are 0 (flat images) the map is 1 (two zero bands are identical) instead of
MATLAB's 0/0 = NaN. Gradients are finite there and at identical images.

Verified: against pyiqa 0.1.16 (a port of the same MATLAB code): 1.5e-8 abs. on 8-bit grey images, where
its rounding of luma is exact; up to 3e-4 on colour images (tests/test_fr_weight_free.py). Not verified: the
MATLAB code itself (not run here).

**Precision.** fp32 only: spectra and the energy ratio lose their meaning in half precision.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from percepbench.errors import UsageError
from percepbench.metrics_registry.base import DistanceMetric
from percepbench.metrics_registry.catalog.cw_ssim import LEVEL, MIN_SIZE, ORIENTATIONS, K
from percepbench.metrics_registry.nlpd import cached_constants, luma

RCOS_SAMPLES = 256  # rcosFn's table size ("arbitrary")
ANGLE_LUT = 1024  # buildSCFpyrLevs' angular table size
WINDOW = 7  # the 7x7 averaging window of cwssim_index.m


def _raised_cosine(log_rad: torch.Tensor, position: float, high: bool) -> torch.Tensor:
    """matlabPyrTools ``pointOp(log_rad, Yrcos or YIrcos, ...)`` for ``rcosFn(1, position)``: the table
    sqrt(cos^2) (``high``) or sqrt(1 - cos^2) (low-pass), linearly interpolated; flat beyond its ends."""
    sz = RCOS_SAMPLES
    origin = position - 0.5 - 1.0 / sz  # X(1) of rcosFn after its mapping; the step is 1 / sz
    pos = (log_rad - origin) * sz
    i0 = pos.floor().clamp(0, sz + 1)
    frac = pos - i0

    def table(i: torch.Tensor) -> torch.Tensor:
        # rcosFn: X = pi (k - sz - 1) / (2 sz), Y = cos(X)^2, with Y(1) = Y(2) and Y(end) = Y(end - 1)
        x = math.pi * (i.clamp(1, sz + 1) - sz - 1) / (2 * sz)
        y = torch.cos(x) ** 2
        return y.sqrt() if high else (1.0 - y).clamp_min(0).sqrt()

    lo, hi = table(i0), table(i0 + 1)
    return lo + (hi - lo) * frac


def _angle_mask(angle: torch.Tensor, band: int, bands: int) -> torch.Tensor:
    """matlabPyrTools' one-sided angular mask of orientation ``band``: ``pointOp(angle, Ycosn, Xcosn(1) +
    pi * band / bands, pi / lutsize)`` with ``Ycosn = 2 sqrt(const) cos(X)^order (|alpha| < pi / 2)``."""
    n, order = ANGLE_LUT, bands - 1
    const = 2.0 ** (2 * order) * math.factorial(order) ** 2 / (bands * math.factorial(2 * order))
    origin = -math.pi * (2 * n + 1) / n + math.pi * band / bands
    pos = (angle - origin) * (n / math.pi)
    i0 = pos.floor().clamp(0, 3 * n + 1)
    frac = pos - i0

    def table(i: torch.Tensor) -> torch.Tensor:
        x = math.pi * (i - 2 * n - 1) / n
        alpha = torch.remainder(math.pi + x, 2 * math.pi) - math.pi
        return 2 * math.sqrt(const) * torch.cos(x) ** order * (alpha.abs() < math.pi / 2)

    lo, hi = table(i0), table(i0 + 1)
    return lo + (hi - lo) * frac


def _polar_grid(h: int, w: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``log2`` radius and angle of the centred frequency grid of ``buildSCFpyr`` (Nyquist at radius 1; the
    centre takes its left neighbour's radius so that log2 stays finite)."""
    ys = (torch.arange(h, dtype=dtype, device=device) - h // 2) / (h / 2)
    xs = (torch.arange(w, dtype=dtype, device=device) - w // 2) / (w / 2)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    angle = torch.atan2(yy, xx)
    rad = torch.sqrt(xx**2 + yy**2)
    rad[h // 2, w // 2] = rad[h // 2, w // 2 - 1]
    return torch.log2(rad), angle


@cached_constants
def _pyramid_masks(h: int, w: int, level: int, orientations: int, dtype: torch.dtype, device: torch.device
                   ) -> tuple[torch.Tensor, tuple[tuple[tuple[slice, slice], torch.Tensor], ...], torch.Tensor]:
    """The frequency masks of :func:`steerable_bands` for an h x w image (cached: they depend on the size only):
    the first low-pass mask, per level below the first its crop and low-pass mask, and the complex band masks
    of level ``level`` (orientations, h_level, w_level), the factor (-i)^(orientations - 1) included."""
    log_rad, angle = _polar_grid(h, w, dtype, device)
    lo0 = _raised_cosine(log_rad, -0.5, high=False)
    steps = []
    position = -0.5
    for _ in range(level - 1):
        position -= 1.0  # Xrcos - log2(2): one octave down per level
        sizes, starts = [], []
        for n in log_rad.shape:
            half = math.ceil((n - 0.5) / 2)
            sizes.append(half)
            starts.append(math.ceil((n + 0.5) / 2) - math.ceil((half + 0.5) / 2))
        crop = (slice(starts[0], starts[0] + sizes[0]), slice(starts[1], starts[1] + sizes[1]))
        log_rad, angle = log_rad[crop], angle[crop]
        steps.append((crop, _raised_cosine(log_rad, position, high=False)))
    highmask = _raised_cosine(log_rad, position - 1.0, high=True)
    angular = torch.stack([_angle_mask(angle, b, orientations) for b in range(orientations)])
    bands = (-1j) ** (orientations - 1) * (angular * highmask)
    return lo0, tuple(steps), bands


def steerable_bands(y: torch.Tensor, level: int = LEVEL, orientations: int = ORIENTATIONS) -> torch.Tensor:
    """The complex oriented bands of level ``level`` (1 = finest) of the complex steerable pyramid of grey
    images ``y`` (N, 1, H, W): shape (N, orientations, h, w), h = H halved (rounding up) ``level - 1`` times."""
    if level < 1:
        raise UsageError(f"level must be >= 1, got {level}")
    real = torch.float64 if y.dtype == torch.float64 else torch.float32
    lo0, steps, bands = _pyramid_masks(*y.shape[-2:], level, orientations, real, y.device)
    lodft = torch.fft.fftshift(torch.fft.fft2(y.to(real)), dim=(-2, -1)) * lo0
    for crop, lomask in steps:
        lodft = lodft[(..., *crop)] * lomask
    return torch.fft.ifft2(torch.fft.ifftshift(lodft * bands, dim=(-2, -1)))


def gaussian_weights(rows: int, cols: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """MATLAB ``fspecial('gaussian', [rows cols], sigma)``: centred, values below eps * max set to 0, sum 1."""
    ys = torch.arange(rows, dtype=dtype, device=device) - (rows - 1) / 2
    xs = torch.arange(cols, dtype=dtype, device=device) - (cols - 1) / 2
    g = torch.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * sigma**2))
    g = torch.where(g < torch.finfo(torch.float64).eps * g.max(), torch.zeros_like(g), g)
    return g / g.sum()


class CWSSIM(DistanceMetric):
    """``1 - CW-SSIM`` per image pair (module docstring): 0 for identical images, at most 1; symmetric.

    Inputs: two (N, 3, H, W) RGB batches, float in [0, 1] or uint8, at least 64 px a side. Output: (N,).

    Args:
        level: pyramid level whose bands are compared (default 4); images need 2**(level + 2) px a side.
        orientations: number of oriented bands (default 8).
        k: the stabilising constant K of the index (default 0, as in the reference code).

    Example:
        >>> import torch
        >>> from percepbench.metrics_registry.cw_ssim import CWSSIM
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.rand(2, 3, 64, 64, generator=g)
        >>> CWSSIM(reduction="none")(x, (x + 0.05).clamp(0, 1)).shape
        torch.Size([2])
    """

    min_size = MIN_SIZE

    def __init__(self, level: int = LEVEL, orientations: int = ORIENTATIONS, k: float = K, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not (isinstance(level, int) and level >= 1):
            raise UsageError(f"level must be an integer >= 1, got {level!r}")
        if not (isinstance(orientations, int) and orientations >= 1):
            raise UsageError(f"orientations must be an integer >= 1, got {orientations!r}")
        if k < 0:
            raise UsageError(f"k must be >= 0, got {k!r}")
        self.level, self.orientations, self.k = level, orientations, float(k)
        self.min_size = 2 ** (level + 2)

    def similarity(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """CW-SSIM per pair, shape (N,), for RGB inputs in [0, 1]."""
        b1 = steerable_bands(luma(preds), self.level, self.orientations)
        b2 = steerable_bands(luma(target), self.level, self.orientations)
        n, o, h, w = b1.shape
        real = b1.real.dtype
        window = torch.full((1, 1, WINDOW, WINDOW), 1.0 / WINDOW**2, dtype=real, device=b1.device)

        def local_mean(t: torch.Tensor) -> torch.Tensor:
            return F.conv2d(t.reshape(n * o, 1, h, w), window).reshape(n, o, h - WINDOW + 1, w - WINDOW + 1)

        corr = b1 * b2.conj()
        corr_band = torch.complex(local_mean(corr.real), local_mean(corr.imag))
        energy = local_mean(b1.real**2 + b1.imag**2 + b2.real**2 + b2.imag**2)
        num, den = 2 * corr_band.abs() + self.k, energy + self.k
        flat = den <= 0
        cssim = torch.where(flat, torch.ones_like(den), num / torch.where(flat, torch.ones_like(den), den))
        weights = gaussian_weights(h - WINDOW + 1, w - WINDOW + 1, h / 4, real, b1.device)
        return (cssim * weights).sum((-2, -1)).mean(1).to(preds.dtype)

    def distance(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return 1.0 - self.similarity(preds, target)
