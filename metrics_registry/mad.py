"""MAD, Most Apparent Distortion (Larson & Chandler 2010), metric ``mad``.

A reimplementation in torch (batched, differentiable, any device) of the paper, following the authors'
MATLAB code where the paper leaves details open (``MAD_index_april_2010.m`` and its ``ical_stat.c``, read
from a copy of the authors' release in a public repository, hanwei0912/SmoothAdversarialExamples ``mad/``;
``ical_std.c`` is not in it). The fixed factor 200 of ``d_detect`` is that of the 2011-10-07 release as ported
by vIQA (BSD-3) and pyiqa. Argument order: ``distance(reference, distorted)`` (``preds`` = reference), the order
percepbench's tasks use (``d(ref, dist)``), as for PieAPP; MAD is not symmetric. (pyiqa's ``MAD`` takes the
distorted image first.)

All computations use the luma ``Y = 255 (0.299 R + 0.587 G + 0.114 B)`` (the MATLAB code calls ``rgb2gray``
on 8-bit images and works on 0..255 values; percepbench does not round Y to integers).

**Detection strategy** (``d_detect``, high quality):

1. Perceived lightness ``L = 0.02874 Y^(2.2 / 3)``, filtered with the contrast sensitivity function of the
   code's ``make_csf`` (Nyquist at 32 cycles per degree, i.e. 64 px per degree of visual angle; oblique
   effect ``w = 0.7``; flat 0.9809 below 7.8909 c/deg) in the Fourier domain.
2. On 16x16 blocks at a stride of 4 px: the mean ``mu`` of the filtered reference, the standard deviation
   ``s_err`` (n - 1) of the filtered error, and ``s_ref``, the smallest standard deviation (n - 1) of the four
   8x8 quadrants of the filtered reference block (the paper's modified RMS contrast; the unavailable
   ``ical_std.c`` is not verified, and vIQA's port of it takes sub-blocks at offsets 0 and 4 instead).
3. Visibility ``xi = max(0, ln(s_err / mu) - max(ln(s_ref / mu), -5))``, and 0 where ``mu < 0.5``.
4. Each block's value covers its top-left 4x4 px (as ``ical_stat.c`` writes it); times the local MSE of Y
   (16x16 mean of the squared difference, 'symmetric' border); the border (16 px top/left, 17 px
   bottom/right) is dropped; ``d_detect = 200 * RMS``.

**Appearance strategy** (``d_appear``, low quality): Y is filtered with Kovesi's log-Gabor bank as altered by
Larson (5 scales of wavelength 3, 9, 27, 81, 243 px, 4 orientations, sigmaOnf 0.55, dThetaOnSigma 1.5);
on the magnitude of each band, per 16x16 block at a stride of 4: standard deviation (n - 1), skewness and
kurtosis (population moments; 0 for a constant block); the map ``sum_scales w_s sum_orient (|ds| + 2 |dskew|
+ |dkurt|)`` with scale weights ``(0.5, 0.75, 1, 5, 6) / 13.25``, painted, cropped and RMS-pooled as above.

**Blend**: ``alpha = 1 / (1 + 0.467 * d_detect^0.130)`` (exactly ``beta1 = exp(-2.55 / 3.35)``, ``beta2 =
1 / (3.35 ln 10)``), ``MAD = d_detect^alpha * d_appear^(1 - alpha)``.

**Numerics.** The RMS poolings take ``sqrt(mean + 1e-20)`` and standard deviations are floored at 1e-15, so
that gradients are finite at identical images (MAD there is ~1.6e-8 instead of 0). Block moments are exact
central moments, combined from 4x4-px cells (:func:`block_sums`), so float32 agrees with float64 to ~1e-6
relative on the test images. As in the reference code, blocks where a log-Gabor band is nearly flat have
skewness and kurtosis dominated by rounding noise. The log-Gabor bank and the CSF are cached per image size.

**No visible distortion, MAD 0.** When no block passes the detection threshold, ``d_detect`` is 0, so
``alpha`` is 1 and MAD is 0 whatever ``d_appear`` says (the reference code does the same): e.g. mild noise on
a busy reference is masked. Such pairs score ~1e-8 here.

fp32 only (``precisions=("fp32",)``): no network, and the log-contrast and moment ratios need the range.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from percepbench.metrics_registry.base import DistanceMetric
from percepbench.metrics_registry.catalog.mad import BLOCK, MIN_SIZE
from percepbench.metrics_registry.nlpd import cached_constants, luma, symmetric_pad

STRIDE = BLOCK // 4
LIGHTNESS_K, LIGHTNESS_EXPONENT = 0.02874, 2.2 / 3
CSF_CYCLES = 32  # cycles per degree across the image (the code's nfreq)
MEAN_THRESHOLD = 0.5  # G: blocks darker than this have no visible distortion
CONTRAST_FLOOR = -5.0  # Ci_thrsh = Cd_thrsh of the code (log contrast)
DETECT_SCALE = 200.0
GABOR_WAVELENGTHS = (3.0, 9.0, 27.0, 81.0, 243.0)
GABOR_ORIENTATIONS = 4
GABOR_SIGMA_ON_F = 0.55
GABOR_D_THETA_ON_SIGMA = 1.5
SCALE_WEIGHTS = tuple(w / 13.25 for w in (0.5, 0.75, 1.0, 5.0, 6.0))
BLEND_T1, BLEND_T2 = 2.55, 3.35
SQRT_FLOOR = 1e-20
STD_FLOOR = 1e-15


@cached_constants
def csf_filter(h: int, w: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The code's ``make_csf(h, w, 32)'``, centred (row/column coordinates at half-integer offsets), shape (h, w)."""
    rows = torch.arange(h, dtype=dtype, device=device) - h / 2 + 0.5
    cols = torch.arange(w, dtype=dtype, device=device) - w / 2 + 0.5
    u, v = torch.meshgrid(rows, cols, indexing="ij")
    scale = 2 * CSF_CYCLES / w
    radfreq = torch.sqrt(u**2 + v**2) * scale
    theta = torch.atan2(v, u)  # cos(4 theta) is the same whichever axis comes first
    s = (1 - 0.7) / 2 * torch.cos(4 * theta) + (1 + 0.7) / 2
    radfreq = radfreq / s
    csf = 2.6 * (0.0192 + 0.114 * radfreq) * torch.exp(-((0.114 * radfreq) ** 1.1))
    return torch.where(radfreq < 7.8909, torch.full_like(csf, 0.9809), csf)


@cached_constants
def log_gabor_filters(h: int, w: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Larson's log-Gabor bank in the layout ``fft2`` expects: (scales, orientations, h, w), real."""
    x = (torch.arange(w, dtype=dtype, device=device) - w / 2) / (w / 2)
    y = (torch.arange(h, dtype=dtype, device=device) - h / 2) / (h / 2)
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    radius = torch.sqrt(xx**2 + yy**2)
    cy, cx = math.floor(h / 2 + 0.5), math.floor(w / 2 + 0.5)  # MATLAB round(n / 2 + 1), 0-based
    radius[cy, cx] = 1.0
    theta = torch.atan2(-yy, xx)
    sin_t, cos_t = torch.sin(theta), torch.cos(theta)
    theta_sigma = math.pi / GABOR_ORIENTATIONS / GABOR_D_THETA_ON_SIGMA
    bank = []
    for wavelength in GABOR_WAVELENGTHS:
        rfo = (1.0 / wavelength) / 0.5
        radial = torch.exp(-(torch.log(radius / rfo) ** 2) / (2 * math.log(GABOR_SIGMA_ON_F) ** 2))
        radial[cy, cx] = 0.0
        row = []
        for o in range(GABOR_ORIENTATIONS):
            angle = o * math.pi / GABOR_ORIENTATIONS
            ds = sin_t * math.cos(angle) - cos_t * math.sin(angle)
            dc = cos_t * math.cos(angle) + sin_t * math.sin(angle)
            spread = torch.exp(-torch.atan2(ds, dc) ** 2 / (2 * theta_sigma**2))
            row.append(torch.fft.fftshift(radial * spread, dim=(-2, -1)))  # fftshift, as the code does
        bank.append(torch.stack(row))
    return torch.stack(bank)


def block_sums(x: torch.Tensor, size: int, order: int = 2) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Means and centred power sums ``sum (x - mean)^p`` (p = 2..``order``) of (B, H, W) on size x size
    blocks at a stride of 4 px (``size`` a multiple of 4), each (B, gh, gw).

    Each block is a union of 4x4-px cells: cell sums about the cell mean are exact, and the cells combine
    about the block mean with the parallel-axis rule (Chan et al.), so that nothing cancels catastrophically
    in float32 and memory stays at about the image size (a per-block unfold of pixels would take 16x).
    """
    b, h, w = x.shape
    k = size // STRIDE
    gh, gw = (h - size) // STRIDE + 1, (w - size) // STRIDE + 1
    hc, wc = gh + k - 1, gw + k - 1  # cells the blocks cover
    cells = x[:, :STRIDE * hc, :STRIDE * wc].reshape(b, hc, STRIDE, wc, STRIDE).transpose(2, 3)
    cells = cells.reshape(b, hc, wc, STRIDE * STRIDE)
    n = STRIDE * STRIDE  # pixels per cell
    cell_mean = cells.mean(-1)
    d = cells - cell_mean.unsqueeze(-1)
    d2 = d * d
    cell_sums = [d2.sum(-1)]
    if order >= 3:
        cell_sums.append((d2 * d).sum(-1))
    if order >= 4:
        cell_sums.append((d2 * d2).sum(-1))

    def per_block(t: torch.Tensor) -> torch.Tensor:  # (B, hc, wc) -> (B, k*k, gh, gw): each block's cells
        return torch.stack([t[:, a:a + gh, c:c + gw] for a in range(k) for c in range(k)], 1)

    means = per_block(cell_mean)
    block_mean = means.mean(1, keepdim=True)
    delta = means - block_mean
    s = [per_block(t) for t in cell_sums]
    sums = [(s[0] + n * delta**2).sum(1)]
    if order >= 3:
        sums.append((s[1] + 3 * delta * s[0] + n * delta**3).sum(1))
    if order >= 4:
        sums.append((s[2] + 4 * delta * s[1] + 6 * delta**2 * s[0] + n * delta**4).sum(1))
    return block_mean.squeeze(1), sums


def block_std(x: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Block means and standard deviations (n - 1) of (B, H, W) on size x size blocks at stride 4: (B, gh, gw)."""
    mean, (m2,) = block_sums(x, size)
    return mean, (m2 / (size * size - 1)).clamp_min(STD_FLOOR**2).sqrt()


def block_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``ical_stat.c``: per 16x16 block at stride 4, the standard deviation (n - 1), skewness and kurtosis
    (population moments; both 0 when the block is constant). Each (B, gh, gw)."""
    n = BLOCK * BLOCK
    _, (s2, s3, s4) = block_sums(x, BLOCK, order=4)
    m2, m3, m4 = s2 / n, s3 / n, s4 / n
    std = (s2 / (n - 1)).clamp_min(STD_FLOOR**2).sqrt()
    flat = m2 <= 0
    safe = torch.where(flat, torch.ones_like(m2), m2)
    skew = torch.where(flat, torch.zeros_like(m2), m3 / safe**1.5)
    kurt = torch.where(flat, torch.zeros_like(m2), m4 / safe**2)
    return std, skew, kurt


def pooled(block_map: torch.Tensor, h: int, w: int, pixel_map: torch.Tensor | None = None) -> torch.Tensor:
    """Paint each block value on its top-left STRIDE x STRIDE px, multiply by ``pixel_map`` if given, drop the
    border (BLOCK px top/left, BLOCK + 1 px bottom/right) and return the RMS per image, (B,)."""
    painted = block_map.repeat_interleave(STRIDE, -2).repeat_interleave(STRIDE, -1)
    painted = painted[..., BLOCK:h - BLOCK - 1, BLOCK:w - BLOCK - 1]
    if pixel_map is not None:
        painted = painted * pixel_map[..., BLOCK:h - BLOCK - 1, BLOCK:w - BLOCK - 1]
    return (painted**2).flatten(1).mean(1).add(SQRT_FLOOR).sqrt()


def symmetric_box_mean(x: torch.Tensor) -> torch.Tensor:
    """MATLAB ``imfilter(x, ones(16) / 256, 'symmetric', 'same', 'conv')`` of (B, H, W): window rows i-7..i+8."""
    # symmetric padding of 8 px on each side, minus the first row and column: 7 before, 8 after
    padded = symmetric_pad(x.unsqueeze(1), BLOCK // 2)[..., 1:, 1:]
    return F.avg_pool2d(padded, BLOCK, stride=1).squeeze(1)


def detection(ref: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """``d_detect`` (module docstring) for luma batches (B, H, W) on the 0..255 scale, shape (B,)."""
    h, w = ref.shape[-2:]
    csf = torch.fft.ifftshift(csf_filter(h, w, ref.dtype, ref.device), dim=(-2, -1))

    def lightness(y: torch.Tensor) -> torch.Tensor:
        lum = LIGHTNESS_K * y.clamp_min(1e-8) ** LIGHTNESS_EXPONENT
        return torch.fft.ifft2(torch.fft.fft2(lum) * csf).real

    ref_f, dst_f = lightness(ref), lightness(dst)
    mean, _ = block_std(ref_f, BLOCK)
    _, s_err = block_std(dst_f - ref_f, BLOCK)
    _, s8 = block_std(ref_f, BLOCK // 2)
    gh, gw = mean.shape[-2:]
    q = BLOCK // 2 // STRIDE  # quadrant offset in block positions
    s_ref = torch.minimum(torch.minimum(s8[:, :gh, :gw], s8[:, q:q + gh, :gw]),
                          torch.minimum(s8[:, :gh, q:q + gw], s8[:, q:q + gh, q:q + gw]))
    visible = mean >= MEAN_THRESHOLD
    safe_mean = torch.where(visible, mean, torch.ones_like(mean))
    c_ref = torch.log(s_ref / safe_mean).clamp_min(CONTRAST_FLOOR)
    c_err = torch.log(s_err / safe_mean)
    xi = torch.where(visible, (c_err - c_ref).clamp_min(0), torch.zeros_like(mean))
    local_mse = symmetric_box_mean((ref - dst) ** 2)
    return DETECT_SCALE * pooled(xi, h, w, local_mse)


def appearance(ref: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """``d_appear`` (module docstring) for luma batches (B, H, W) on the 0..255 scale, shape (B,)."""
    h, w = ref.shape[-2:]
    bank = log_gabor_filters(h, w, ref.dtype, ref.device)
    f_ref, f_dst = torch.fft.fft2(ref), torch.fft.fft2(dst)
    terms = []
    for s, weight in enumerate(SCALE_WEIGHTS):
        for o in range(GABOR_ORIENTATIONS):
            a = block_moments(torch.fft.ifft2(f_ref * bank[s, o]).abs())
            b = block_moments(torch.fft.ifft2(f_dst * bank[s, o]).abs())
            terms.append(weight * ((a[0] - b[0]).abs() + 2 * (a[1] - b[1]).abs() + (a[2] - b[2]).abs()))
    return pooled(torch.stack(terms).sum(0), h, w)


def mad_components(reference: torch.Tensor, distorted: torch.Tensor) -> dict[str, torch.Tensor]:
    """``d_detect``, ``d_appear``, ``alpha`` and ``mad`` of ``distorted`` against ``reference`` (N, 3, H, W) RGB
    in [0, 1]; each (N,)."""
    ref = 255.0 * luma(reference).squeeze(1)
    dst = 255.0 * luma(distorted).squeeze(1)
    d_detect, d_appear = detection(ref, dst), appearance(ref, dst)
    beta1, beta2 = math.exp(-BLEND_T1 / BLEND_T2), 1.0 / (math.log(10) * BLEND_T2)
    alpha = 1.0 / (1.0 + beta1 * d_detect**beta2)
    mad = d_detect**alpha * d_appear ** (1 - alpha)
    return {"d_detect": d_detect, "d_appear": d_appear, "alpha": alpha, "mad": mad}


class MAD(DistanceMetric):
    """Most Apparent Distortion per pair (module docstring): ~0 for identical images, larger = more
    distorted; not symmetric.

    ``update(reference, distorted)`` (``preds`` = reference, ``target`` = distorted, as percepbench's tasks
    call ``d(ref, dist)``): two (N, 3, H, W) RGB batches, float in [0, 1] or uint8, at least 34 px a side.
    Output: (N,).

    Example:
        >>> import torch
        >>> from percepbench.metrics_registry.mad import MAD
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.rand(2, 3, 64, 64, generator=g)
        >>> MAD(reduction="none")(x, (x + 0.05).clamp(0, 1)).shape
        torch.Size([2])
    """

    min_size = MIN_SIZE

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def distance(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return mad_components(preds, target)["mad"]
