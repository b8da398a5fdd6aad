"""NVIDIA FLIP for LDR images (``flip``), in PyTorch: batched, on any device, differentiable.

FLIP (Andersson et al., HPG 2020) models what a viewer sees when flipping between a reference and a test
image at a given viewing distance. Per pixel, it combines a colour difference and a feature difference:

1. **Colour pipeline.** sRGB -> linear RGB (the sRGB transfer curve) -> CIE XYZ (D65) -> YCxCz (the
   linearised opponent space: ``Y = 116 y - 16``, ``Cx = 500 (x - y)``, ``Cz = 200 (y - z)`` with x, y, z
   the XYZ values divided by the D65 white). Each channel is filtered by a contrast sensitivity function,
   a 2-D Gaussian in visual degrees ``a sqrt(pi/b) exp(-pi^2 r^2 / b)`` with (a, b) = (1, 0.0047) for Y,
   (1, 0.0053) for Cx and the sum of two Gaussians (34.1, 0.04) + (13.5, 0.025) for Cz; the filters span
   ``ceil(3 sqrt(0.04 / (2 pi^2)) ppd)`` pixels on each side and are normalised to sum 1. The filtered
   image goes back to linear RGB, is clamped to [0, 1], and is taken to CIELAB, where a and b are scaled by
   ``0.01 L`` (the Hunt adjustment). The colour difference is HyAB (``|dL| + sqrt(da^2 + db^2)``) raised to
   ``qc = 0.7``, then remapped to [0, 1]: values below ``pc * cmax`` linearly onto [0, pt], the rest linearly
   onto [pt, 1], with pc = 0.4, pt = 0.95 and cmax the Hunt-adjusted HyAB distance between pure green
   and pure blue, raised to qc.
2. **Feature pipeline.** On the *unfiltered* luminance (XYZ y, in [0, 1]), edges are the magnitude of the
   first derivatives of a Gaussian and points the magnitude of its second derivatives; the Gaussian has
   standard deviation ``0.5 * 0.082 * ppd`` pixels and spans ``ceil(3 sigma)`` pixels on each side. Its
   taps sum to 1; the positive and the negative taps of each derivative sum to +1 and -1. The feature
   difference is ``(max(|d edge|, |d point|) / sqrt(2)) ** qf`` with ``qf = 0.5``.
3. **FLIP error** per pixel: ``colour ** (1 - feature)``, in [0, 1]. The metric's distance is the mean of
   this map over the image, the number the official tool prints as "Mean". FLIP is symmetric in its two
   images, so ``preds``/``target`` order does not matter.

Filters are applied separably (the product of two 1-D filters; the Cz filter as the sum of two separable
terms), as the official C++ code does, with edge pixels repeated beyond the border (replicate padding), so
any image size works, down to 1x1. Viewing conditions: ``ppd`` (pixels per degree), default the official
67.02 = 0.7 m from a 0.7 m wide monitor of 3840 px (:func:`~percepbench.metrics_registry.catalog.flip.
pixels_per_degree` computes it for other set-ups).

**Gradients.** FLIP is differentiable almost everywhere, but its square roots and powers below 1 have
infinite slopes at 0, which autograd turns into NaN for identical images and flat regions. Here those
operations take their exact value forward and use a zero slope where their argument is below 1e-12
(:func:`_root`, :func:`_power`), so gradients are finite everywhere (identical and flat images included)
and the values are unchanged. Half precision is not offered (the spec lists fp32 only): 1e-12 underflows
in fp16, and the 0.7 and 0.5 powers near zero lose all their digits.

**Sources and what was verified.** Everything above was read from the official code, NVlabs/flip at commit
1eb247c (2025-09), ``src/cpp/FLIP.h`` (constants in ``FLIPConstants`` and ``GaussianConstants``, the
separated filters, the colour and feature passes, the default viewing conditions), and
``src/nanobindFLIP.cpp`` (sRGB inputs are linearised before FLIP; LDR inputs are clamped to [0, 1]). The
formulas were written anew for torch; no code was copied. ``tests/test_flip.py`` compares this
implementation against the official ``flip-evaluator`` 1.7 wheel from PyPI (the same C++ core) on the LPIPS
example images and on seeded random and smooth images (1x1 to 96x80 px), both the per-image mean and the
error map, at ppd 20, 67.02 and 150: maps agree within 1.1e-5 per pixel (1.7e-5 on the 768x768 DreamSim demo
images), means within 5e-6 up to 96x80 px. Part of the mean difference is the official tool's: it sums the map in float32
(0.5801817 against the map's exact mean 0.5801957 at 768x768, where this module gives 0.5801956). Flat-colour
pairs are also checked by hand against scikit-image's CIELAB. **Not verified against the paper**: the
constants were taken from the code, not re-derived from the paper. **Not implemented**: HDR-FLIP (exposure
bracketing and tone mapping); inputs must be LDR sRGB in [0, 1].
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.nn.functional as F

from percepbench.metrics_registry.base import DistanceMetric
from percepbench.metrics_registry.catalog.flip import (  # noqa: F401  (re-exported)
    CITATION,
    DEFAULT_PPD,
    MIN_SIZE,
    pixels_per_degree,
)

# FLIP's constants (official code: ``FLIPConstants`` in src/cpp/FLIP.h)
QC = 0.7  # exponent of the colour difference
PC = 0.4  # fraction of cmax where the colour remapping changes slope
PT = 0.95  # remapped value at pc * cmax
GW = 0.082  # feature detector width, in degrees
QF = 0.5  # exponent of the feature difference

#: contrast sensitivity of each YCxCz channel: a1, b1, a2, b2 of ``sum_k a_k sqrt(pi/b_k) exp(-pi^2 r^2/b_k)``
#: (the second Gaussian only in the blue-yellow channel; the official code gives the others b2 = 1e-5)
CSF = {"Y": (1.0, 0.0047, 0.0, 1e-5), "Cx": (1.0, 0.0053, 0.0, 1e-5), "Cz": (34.1, 0.04, 13.5, 0.025)}

#: linear sRGB -> CIE XYZ under D65, in the exact rational form the official code uses
RGB_TO_XYZ = (
    (10135552 / 24577794, 8788810 / 24577794, 4435075 / 24577794),
    (2613072 / 12288897, 8788810 / 12288897, 887015 / 12288897),
    (1425312 / 73733382, 8788810 / 73733382, 70074185 / 73733382),
)
#: CIE XYZ -> linear sRGB (D65), the nine-digit inverse the official code uses
XYZ_TO_RGB = (
    (3.241003275, -1.537398934, -0.498615861),
    (-0.969224334, 1.875930071, 0.041554224),
    (0.055639423, -0.204011202, 1.057148933),
)
#: the D65 white point (X, Y, Z) and its reciprocal, as in the official code
D65 = (0.950428545, 1.0, 1.088900371)
INV_D65 = (1.052156925, 1.0, 0.918357670)

_TINY = 1e-12  # below this, roots and fractional powers get a zero slope (module docstring, "Gradients")


# -- smooth-where-it-matters elementary functions ------------------------------------------------------
def _root(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(x)`` for x >= 0, with a zero gradient where x <= 1e-12 instead of an infinite one."""
    if not x.requires_grad:
        return x.clamp_min(0.0).sqrt()
    return torch.where(x > _TINY, x.clamp_min(_TINY).sqrt(), x.detach().clamp_min(0.0).sqrt())


def _power(base: torch.Tensor, exponent: float | torch.Tensor) -> torch.Tensor:
    """``base ** exponent`` for base >= 0 and exponent >= 0, with no NaN or infinite gradient at base 0."""
    if not (base.requires_grad or (isinstance(exponent, torch.Tensor) and exponent.requires_grad)):
        return base.clamp_min(0.0) ** exponent
    safe = base.clamp_min(_TINY) ** exponent
    exact = base.detach().clamp_min(0.0) ** (exponent.detach() if isinstance(exponent, torch.Tensor) else exponent)
    return torch.where(base > _TINY, safe, exact)


# -- colour spaces (channel dimension 1) ----------------------------------------------------------------
def _matrix(x: torch.Tensor, m: tuple[tuple[float, ...], ...]) -> torch.Tensor:
    return torch.einsum("ij,nj...->ni...", torch.tensor(m, dtype=x.dtype, device=x.device), x)


def _per_channel(values: tuple[float, ...], x: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    """The sRGB transfer curve inverted (IEC 61966-2-1): ``x / 12.92`` up to 0.04045, else
    ``((x + 0.055) / 1.055) ** 2.4``."""
    curve = ((x.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4
    return torch.where(x <= 0.04045, x / 12.92, curve)


def linear_rgb_to_xyz(x: torch.Tensor) -> torch.Tensor:
    return _matrix(x, RGB_TO_XYZ)


def xyz_to_linear_rgb(x: torch.Tensor) -> torch.Tensor:
    return _matrix(x, XYZ_TO_RGB)


def xyz_to_ycxcz(xyz: torch.Tensor) -> torch.Tensor:
    """CIE XYZ -> YCxCz (``Y = 116 y - 16``, ``Cx = 500 (x - y)``, ``Cz = 200 (y - z)``, white-normalised)."""
    x, y, z = (xyz * _per_channel(INV_D65, xyz)).unbind(1)
    return torch.stack((116.0 * y - 16.0, 500.0 * (x - y), 200.0 * (y - z)), 1)


def ycxcz_to_xyz(ycxcz: torch.Tensor) -> torch.Tensor:
    big_y, cx, cz = ycxcz.unbind(1)
    y = (big_y + 16.0) / 116.0
    return torch.stack((y + cx / 500.0, y, y - cz / 200.0), 1) * _per_channel(D65, ycxcz)


def xyz_to_lab(xyz: torch.Tensor) -> torch.Tensor:
    """CIE XYZ -> CIELAB under D65 (the cube root above (6/29)^3, the linear segment below it)."""
    delta = 6.0 / 29.0
    t = xyz * _per_channel(INV_D65, xyz)
    f = torch.where(t > delta**3, t.clamp_min(delta**3) ** (1.0 / 3.0), t / (3.0 * delta**2) + 4.0 / 29.0)
    fx, fy, fz = f.unbind(1)
    return torch.stack((116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)), 1)


def _hunt(lab: torch.Tensor) -> torch.Tensor:
    """Hunt adjustment: a and b scaled by 0.01 L."""
    lightness = lab[:, :1]
    return torch.cat((lightness, 0.01 * lightness * lab[:, 1:]), 1)


def _hyab(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """HyAB distance ``|dL| + sqrt(da^2 + db^2)`` between two Lab-like images (N, 3, H, W) -> (N, H, W)."""
    d = p - q
    return d[:, 0].abs() + _root(d[:, 1] ** 2 + d[:, 2] ** 2)


def _cmax() -> float:
    """The largest colour difference FLIP expects: Hunt-adjusted HyAB between linear green and blue, to qc."""
    rgb = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64).view(2, 3, 1, 1)
    lab = _hunt(xyz_to_lab(linear_rgb_to_xyz(rgb)))
    return float(_hyab(lab[:1], lab[1:]).item() ** QC)


CMAX = _cmax()


# -- filters ------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=16)
def spatial_filters(ppd: float) -> tuple[tuple[float, ...], ...]:
    """The four 1-D CSF taps (Y, Cx, Cz first Gaussian, Cz second Gaussian) at ``ppd``, each of width
    ``2 r + 1``; the 2-D filter of a channel is the outer product of its taps with themselves (for Cz, the
    sum of both products). Y and Cx taps sum to 1, and the two Cz products together sum to 1."""
    b_max = max(b for a1, b1, a2, b2 in CSF.values() for b in (b1, b2))
    radius = math.ceil(3.0 * math.sqrt(b_max / (2.0 * math.pi**2)) * ppd)
    xs = [(i - radius) / ppd for i in range(2 * radius + 1)]  # offsets in degrees

    def gauss(a: float, b: float, x: float) -> float:
        return a * math.sqrt(math.pi / b) * math.exp(-(math.pi**2) * x * x / b)

    taps = []
    for channel in ("Y", "Cx"):
        a1, b1, _, _ = CSF[channel]
        g = [gauss(a1, b1, x) for x in xs]
        taps.append(tuple(v / sum(g) for v in g))
    a1, b1, a2, b2 = CSF["Cz"]
    # a 2-D term a sqrt(pi/b) exp(-pi^2 (x^2 + y^2) / b) is the product of two 1-D factors
    # sqrt(a sqrt(pi/b)) exp(-pi^2 x^2 / b); both terms are scaled so that the 2-D sum is 1
    g1 = [math.sqrt(gauss(a1, b1, 0.0)) * math.exp(-(math.pi**2) * x * x / b1) for x in xs]
    g2 = [math.sqrt(gauss(a2, b2, 0.0)) * math.exp(-(math.pi**2) * x * x / b2) for x in xs]
    norm = math.sqrt(sum(g1) ** 2 + sum(g2) ** 2)
    taps += [tuple(v / norm for v in g1), tuple(v / norm for v in g2)]
    return tuple(taps)


@functools.lru_cache(maxsize=16)
def feature_filters(ppd: float) -> tuple[tuple[float, ...], ...]:
    """The 1-D taps (Gaussian, first derivative, second derivative) of FLIP's edge and point detectors at
    ``ppd``: sigma = 0.5 * 0.082 * ppd px, radius ceil(3 sigma); the Gaussian sums to 1, and each derivative's
    positive taps sum to 1 and its negative taps to -1."""
    sigma = 0.5 * GW * ppd
    radius = math.ceil(3.0 * sigma)
    offsets = range(-radius, radius + 1)
    g = [math.exp(-x * x / (2.0 * sigma * sigma)) for x in offsets]
    dg = [-x * v for x, v in zip(offsets, g, strict=True)]
    ddg = [(x * x / (sigma * sigma) - 1.0) * v for x, v in zip(offsets, g, strict=True)]

    def balanced(taps: list[float]) -> tuple[float, ...]:
        pos = sum(v for v in taps if v > 0)
        neg = -sum(v for v in taps if v < 0)
        return tuple(v / pos if v > 0 else v / neg if v < 0 else 0.0 for v in taps)

    return tuple(v / sum(g) for v in g), balanced(dg), balanced(ddg)


def _separable(x: torch.Tensor, taps_x: list[tuple[float, ...]], taps_y: list[tuple[float, ...]]) -> torch.Tensor:
    """Filter channel c of ``x`` (N, C, H, W) along x with ``taps_x[c]``, then along y with ``taps_y[c]``
    (cross-correlation, edge pixels repeated beyond the border)."""
    channels, width = x.shape[1], len(taps_x[0])
    r = width // 2
    wx = torch.tensor(taps_x, dtype=x.dtype, device=x.device).view(channels, 1, 1, width)
    wy = torch.tensor(taps_y, dtype=x.dtype, device=x.device).view(channels, 1, width, 1)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), wx, groups=channels)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), wy, groups=channels)


# -- FLIP ---------------------------------------------------------------------------------------------
def _colour_difference(ycxcz: torch.Tensor, n: int, ppd: float) -> torch.Tensor:
    """Remapped colour difference (n, H, W) between the first n and the last n images of ``ycxcz`` (2n, 3, H, W)."""
    t_y, t_cx, t_cz1, t_cz2 = spatial_filters(ppd)
    four = torch.cat((ycxcz, ycxcz[:, 2:]), 1)  # Y, Cx, Cz, Cz: the Cz filter is a sum of two separable terms
    taps = [t_y, t_cx, t_cz1, t_cz2]
    f = _separable(four, taps, taps)
    filtered = torch.cat((f[:, :2], f[:, 2:3] + f[:, 3:4]), 1)
    rgb = xyz_to_linear_rgb(ycxcz_to_xyz(filtered)).clamp(0.0, 1.0)
    lab = _hunt(xyz_to_lab(linear_rgb_to_xyz(rgb)))
    c = _power(_hyab(lab[:n], lab[n:]), QC)
    knee = PC * CMAX
    return torch.where(c < knee, c * (PT / knee), PT + (c - knee) / (CMAX - knee) * (1.0 - PT))


def _feature_difference(ycxcz: torch.Tensor, n: int, ppd: float) -> torch.Tensor:
    """Feature difference (n, H, W) between the first n and the last n images of ``ycxcz`` (2n, 3, H, W)."""
    g, dg, ddg = feature_filters(ppd)
    y = ycxcz[:, :1] / 116.0 + 16.0 / 116.0  # the luminance, back in [0, 1]
    d = _separable(y.expand(-1, 4, -1, -1), [dg, ddg, g, g], [g, g, dg, ddg])  # dx, ddx, dy, ddy
    edges = _root(d[:, 0] ** 2 + d[:, 2] ** 2)
    points = _root(d[:, 1] ** 2 + d[:, 3] ** 2)
    diff = torch.maximum((edges[:n] - edges[n:]).abs(), (points[:n] - points[n:]).abs())
    return _power(diff / math.sqrt(2.0), QF)


def check_ppd(ppd: Any) -> float:
    """``ppd`` as a float; ValueError unless it is a finite positive number (not a bool or a string)."""
    if isinstance(ppd, (bool, str)) or not hasattr(ppd, "__float__"):
        raise ValueError(f"ppd (pixels per degree) must be a positive number, got {ppd!r}")
    value = float(ppd)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"ppd (pixels per degree) must be a positive number, got {ppd!r}")
    return value


def flip_error_map(reference: torch.Tensor, test: torch.Tensor, ppd: float = DEFAULT_PPD) -> torch.Tensor:
    """The LDR-FLIP error map (N, H, W), values in [0, 1], of sRGB images (N, 3, H, W) in [0, 1].

    Inputs are clamped to [0, 1], as the official tool does for LDR images. ``ppd``: pixels per degree of
    visual angle (default: FLIP's default viewing conditions). Identical pairs give exactly 0.

    Raises:
        ValueError: the shapes differ or are not (N, 3, H, W), or ``ppd`` is not a positive number.
    """
    if reference.shape != test.shape or reference.ndim != 4 or reference.shape[1] != 3:
        raise ValueError(f"FLIP needs two (N, 3, H, W) batches of one shape, got {tuple(reference.shape)} "
                         f"and {tuple(test.shape)}")
    ppd = check_ppd(ppd)
    n = reference.shape[0]
    both = torch.cat((reference, test), 0).clamp(0.0, 1.0)  # one pass: identical inputs give identical values
    ycxcz = xyz_to_ycxcz(linear_rgb_to_xyz(srgb_to_linear(both)))
    colour = _colour_difference(ycxcz, n, ppd)
    feature = _feature_difference(ycxcz, n, ppd)
    error = _power(colour, 1.0 - feature)
    # identical pairs: exactly 0, FLIP's value, instead of rounding noise (vectorised and scalar code paths
    # of torch's elementwise kernels can round one pixel differently in the two copies, up to ~1e-7)
    identical = (reference == test).flatten(1).all(1)
    return torch.where(identical[:, None, None], torch.zeros((), dtype=error.dtype, device=error.device), error)


class FLIP(DistanceMetric):
    """NVIDIA FLIP (LDR) as a distance: the mean of the per-pixel FLIP error map, in [0, 1].

    See the module docstring for the definition, the sources and what was checked against the official
    ``flip-evaluator``. FLIP is symmetric: ``target`` is the reference, ``preds`` the test image.

    Inputs: (N, 3, H, W) sRGB images, float in [0, 1] or uint8; any size (edge pixels are repeated).
    Output: per-pair distances of shape (N,) with ``reduction="none"``.

    Args:
        ppd: pixels per degree of visual angle; default 67.02 (0.7 m from a 0.7 m wide, 3840 px monitor).
            :func:`~percepbench.metrics_registry.catalog.flip.pixels_per_degree` converts other set-ups.

    Raises:
        ValueError: ``ppd`` is not a positive number (and the base class's input checks).

    Example:
        >>> import torch
        >>> from percepbench.metrics_registry.flip import FLIP
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.rand(2, 3, 32, 32, generator=g)
        >>> d = FLIP(reduction="none")(x, (x + 0.1).clamp(0, 1))
        >>> d.shape, bool((d > 0).all()), FLIP(reduction="none")(x, x).tolist()
        (torch.Size([2]), True, [0.0, 0.0])
    """

    min_size = MIN_SIZE

    def __init__(self, ppd: float = DEFAULT_PPD, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ppd = check_ppd(ppd)

    def error_map(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The FLIP error maps (N, H, W) of validated inputs (uint8 or float in [0, 1], as for ``update``)."""
        x, y = self.prepare(preds, target)
        return self._in_own_precision(lambda a, b: flip_error_map(b, a, self.ppd), x, y)

    def distance(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return flip_error_map(target, preds, self.ppd).mean(dim=(1, 2))
