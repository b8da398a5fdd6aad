"""Single-attribute image edits at a strength ``s`` in [0, 1], and foreground masks, for attribute analyses.

Each attribute changes one property of an image (its hue, its sharpness, its position ...) by an amount
set by the strength ``s``: ``s = 0`` returns an exact copy, ``s = 1`` the strongest edit, written in the
attribute's ``description``. Images are float arrays (H, W, 3) in [0, 1]; edits return float64 arrays of
the same shape, clipped to [0, 1]. Masks are bool arrays (H, W), True on the foreground.

Rules every attribute keeps:

- **Deterministic from the seed.** :func:`edit` builds ``numpy.random.default_rng(seed)`` and the
  attribute draws all its random choices (shift direction, rotation and brightness sign, the noise field,
  the crop anchor) from it *before* looking at ``s``, so one seed fixes one direction of edit and ``s``
  only sets how far to go along it.
- **Growing with s.** For one seed, the pixel RMS change :func:`rms_change` of the edit is non-decreasing in
  ``s``: by construction for saturation, brightness, contrast and noise (each pixel moves monotonically,
  clipping included) and blur (every spatial frequency is damped more as sigma grows). The hue edits
  (``hue``, ``fg_colour``, ``bg_colour``) move each pixel monotonically before clipping; clipping a
  saturated colour back into the RGB cube can take a little back. JPEG quality falls with ``s``.
  The **geometric** edits (translation, rotation, scale, crop) are the exception no choice of range
  removes: their RMS grows while the image still resembles its moved self, then levels off near the
  decorrelated value and can wobble there. Measured on 80 random 64 and 96 px crops of the bundled photos
  (``percepbench.tasks.severity.PHOTOS``), three seeds each, ``s = 0, 0.25, ..., 1``, flat crops left out:
  no fall at all for hue, fg_colour, JPEG and the exact ones; bg_colour fell on 1% of the curves, by at
  most 1.3% of the curve's maximum; the RMS fell somewhere along 9% (rotation), 14% (translation, scale)
  and 27% (crop) of the curves, the largest fall below the running maximum being 8% of the curve's
  maximum (rotation), 14-15% (translation, scale) and 26% (crop). :func:`match_strength` copes: it finds
  the *smallest* strength on a coarse scan that reaches the target, then bisects below it.
- **Steps.** ``flip`` is binary (any ``s > 0`` flips); ``jpeg`` changes in steps of one quality level and
  jumps from the exact copy at ``s = 0`` to quality 95 just above it. Every other attribute is continuous.
- **Masks.** ``fg_colour`` / ``bg_colour`` need a mask and leave the pixels on the other side bit-identical;
  the other attributes ignore a mask (but still check its shape).

Geometric edits resample with cubic splines (``scipy.ndimage``, interpolating, so whole-pixel positions
are reproduced) and fill what moves in from outside the frame by mirroring the image at its border.
Lengths scale with the shorter image side, so the same ``s`` means the same relative edit at any size.

Also here: :func:`replace_region` (grey, blurred, noise or swapped foreground/background, for the
foreground/background reliance analysis), :func:`ellipse_mask` (seeded synthetic foreground masks when a
dataset has none), :func:`composite` and :func:`parse_attributes` (the ``attributes`` task option).
"""

from __future__ import annotations

import difflib
import io
import math
import numbers
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from percepbench.errors import UnknownNameError, UsageError

Array = np.ndarray
ApplyFn = Callable[[Array, float, np.random.Generator, Array | None], Array]

#: Rec. 601 luma weights: the grey that ``saturation`` moves towards
LUMA = np.array([0.299, 0.587, 0.114])
BLUR_SIGMA = 0.04  # Gaussian sigma at s = 1, as a fraction of the shorter side
NOISE_SIGMA = 0.25  # noise standard deviation at s = 1
JPEG_QUALITY = (95, 5)  # JPEG quality just above s = 0, and at s = 1
MAX_SHIFT = 0.25  # translation at s = 1, as a fraction of the shorter side
MAX_ANGLE = 30.0  # rotation at s = 1, degrees
MAX_ZOOM = 1.5  # scale: zoom factor at s = 1
CROP_KEEP = 0.5  # crop: the kept window's side at s = 1, as a fraction of the image side
_SCAN = 8  # match_strength: scan points on (0, 1] before bisecting
REGION_BLUR_SIGMA = 0.10  # replace_region(mode="blur"): sigma as a fraction of the shorter side


@dataclass(frozen=True)
class Attribute:
    """One editable attribute.

    ``apply(image, s, rng, mask)`` does the edit for ``0 < s <= 1`` on a checked image (float64,
    (H, W, 3), values in [0, 1]); call it through :func:`edit`, which checks the arguments, returns the
    exact copy at ``s = 0`` and clips the result. ``description`` says what ``s = 1`` means; ``group`` is
    ``"colour"``, ``"quality"``, ``"geometry"`` or ``"region"``.
    """

    name: str
    description: str
    apply: ApplyFn
    needs_mask: bool = False
    group: str = ""


# ---------------------------------------------------------------------------------------------- helpers


def _side(x: Array) -> int:
    return min(x.shape[0], x.shape[1])


def _sign(rng: np.random.Generator) -> float:
    return -1.0 if rng.random() < 0.5 else 1.0


def _rotate_hue(x: Array, turns: float) -> Array:
    """Colours turned by ``turns`` of a full circle about the grey axis (1, 1, 1) of the RGB cube; unclipped.

    The intensity (R + G + B) / 3 and the chroma (distance from the grey axis) are kept, the direction of
    the chroma turns; half a turn gives the complementary colour ``2 grey - x``. Unlike a shift of HSV hue
    (whose colour wheel is a hexagon, so the RGB distance dips again past about 120 degrees), each pixel
    then moves by ``2 |chroma| sin(angle / 2)``, which grows all the way to 180 degrees; only clipping to
    the cube can take a little of that back.
    """
    theta = 2.0 * np.pi * turns
    grey = x.mean(axis=-1, keepdims=True)
    chroma = x - grey
    u = np.full(3, 1.0 / np.sqrt(3.0))
    turned = np.cos(theta) * chroma + np.sin(theta) * np.cross(u, chroma)  # Rodrigues; chroma is normal to u
    return grey + turned


def _resample(x: Array, matrix: Array, offset: Array) -> Array:
    """Output pixel ``p`` (row, col) takes the input at ``matrix @ p + offset``, mirrored at the border."""
    out = np.empty_like(x)
    for c in range(x.shape[2]):
        out[..., c] = ndimage.affine_transform(x[..., c], matrix, offset=offset, order=3, mode="reflect")
    return out


def _zoom_about(x: Array, factor: float, centre: Array) -> Array:
    """Zoom in by ``factor`` (>= 1) keeping the point ``centre`` (row, col, in pixels) in place."""
    matrix = np.eye(2) / factor
    return _resample(x, matrix, centre - matrix @ centre)


def _centre(x: Array) -> Array:
    return np.array([(x.shape[0] - 1) / 2.0, (x.shape[1] - 1) / 2.0])


def _to_uint8(x: Array) -> Array:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------- attributes


def _hue(x: Array, s: float, rng: np.random.Generator, mask: Array | None) -> Array:
    return _rotate_hue(x, _sign(rng) * 0.5 * s)


def _saturation(x: Array, s: float, rng: np.random.Generator, mask: Array | None) -> Array:
    grey = (x @ LUMA)[..., None]
    return grey + (1.0 - s) * (x - grey)


def _brightness(x: Array, s: float, rng: np.random.Generator, mask: Array | None) -> Array:
    return x + _sign(rng) * 0.5 * s


def _contrast(x: Array, s: float, rng: np.random.Generator, mask: Array | None) -> Array:
    mean = x.mean(axis=(0, 1), keepdims=True)
    return mean + (1.0 - 0.8 * s) * (x - mean)


def _blur(x: Array, s: float, rng: np.random.Generator, mask: Array | None) -> Array:
    sigma = BLUR_SIGMA * _side(x) * s
    return ndimage.gaussian_filter(x, sigma=(sigma, sigma, 0.0), mode="reflect")


def _noise(x: Array, s: float, rng: np.random.Generator, mask: Array | None) -> Array:
    field = rng.standard_normal(x.shape)  # the same field for every s: larger s scales it
    return x + NOISE_SIGMA * s * field


def jpeg_quality(s: float) -> int:
    """JPEG quality used by the ``jpeg`` attribute at strength ``0 < s <= 1``: 95 falling linearly to 5."""
    hi, lo = JPEG_QUALITY
    return round(hi - (hi - lo) * s)


def _jpeg(x: Array, s: float, rng: np.random.Generator, mask: Array | None) -> Array:
    buf = io.BytesIO()
    Image.fromarray(_to_uint8(x), mode="RGB").save(buf, format="JPEG", quality=jpeg_quality(s),
                                                   subsampling="4:2:0")
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0


def _translation(x: Array, s: float, rng: np.random.Generator, mask: Array | None) -> Array:
    angle = rng.uniform(0.0, 2.0 * np.pi)
    shift = MAX_SHIFT * _side(x) * s * np.array([np.sin(angle), np.cos(angle)])  # (rows, cols)
    return _resample(x, np.eye(2), -shift)  # content moves by +shift


def _rotation(x: Array, s: float, rng: np.random.Generator, mask: Array | None) -> Array:
    theta = np.deg2rad(_sign(rng) * MAX_ANGLE * s)
    c, si = np.cos(theta), np.sin(theta)
    matrix = np.array([[c, -si], [si, c]])
    centre = _centre(x)
    return _resample(x, matrix, centre - matrix @ centre)


def _scale(x: Array, s: float, rng: np.random.Generator, mask: Array | None) -> Array:
    return _zoom_about(x, 1.0 + (MAX_ZOOM - 1.0) * s, _centre(x))


def _flip(x: Array, s: float, rng: np.random.Generator, mask: Array | None) -> Array:
    return x[:, ::-1].copy()


def _crop(x: Array, s: float, rng: np.random.Generator, mask: Array | None) -> Array:
    # The anchor is the point the window shrinks towards: each coordinate 25-50% of the side away from the
    # centre, towards a seeded corner. A window of side w anchored at fraction u spans [u(1-w), u(1-w)+w].
    u = 0.5 + np.array([_sign(rng), _sign(rng)]) * rng.uniform(0.25, 0.5, size=2)
    anchor = u * (np.array(x.shape[:2]) - 1.0)
    return _zoom_about(x, 1.0 / (1.0 - CROP_KEEP * s), anchor)


def _fg_colour(x: Array, s: float, rng: np.random.Generator, mask: Array | None) -> Array:
    return np.where(mask[..., None], _hue(x, s, rng, None), x)


def _bg_colour(x: Array, s: float, rng: np.random.Generator, mask: Array | None) -> Array:
    return np.where(mask[..., None], x, _hue(x, s, rng, None))


#: every attribute by name, in this order: colour, quality, geometry, region
ATTRIBUTES: dict[str, Attribute] = {a.name: a for a in (
    Attribute("hue", "hue rotated by 180 degrees (180 s; direction from the seed) about the grey axis of "
              "the RGB cube: complementary colours, intensity and chroma kept, clipped", _hue,
              group="colour"),
    Attribute("saturation", "fully desaturated: every pixel moved towards its Rec. 601 luma grey by the "
              "factor (1 - s)", _saturation, group="colour"),
    Attribute("brightness", "0.5 added to (or subtracted from: sign from the seed) every channel, clipped; "
              "0.5 s at strength s", _brightness, group="colour"),
    Attribute("contrast", "deviations from the image's per-channel mean scaled by 0.2 (by 1 - 0.8 s at "
              "strength s)", _contrast, group="colour"),
    Attribute("blur", f"Gaussian blur with sigma {BLUR_SIGMA:.0%} of the shorter side (scaled by s; "
              "mirrored border)", _blur, group="quality"),
    Attribute("noise", f"additive Gaussian noise, sigma {NOISE_SIGMA} (0.25 s; one noise field per seed, "
              "scaled by s), clipped", _noise, group="quality"),
    Attribute("jpeg", f"JPEG compression at quality {JPEG_QUALITY[1]} (quality round(95 - 90 s) for s > 0, "
              "4:2:0 chroma; steps of one quality level)", _jpeg, group="quality"),
    Attribute("translation", f"shifted by {MAX_SHIFT:.0%} of the shorter side (s times that) in a seeded "
              "direction; the vacated area mirrors the image", _translation, group="geometry"),
    Attribute("rotation", f"rotated by {MAX_ANGLE:g} degrees (30 s; sign from the seed) about the centre; "
              "the corners mirror the image", _rotation, group="geometry"),
    Attribute("scale", f"zoomed in {MAX_ZOOM:g}x about the centre (1 + 0.5 s), cropped back to the same size",
              _scale, group="geometry"),
    Attribute("flip", "mirrored left-right; a binary edit: every s > 0 flips, s = 0 does not", _flip,
              group="geometry"),
    Attribute("crop", f"an off-centre window of side {CROP_KEEP:g} of the image (1 - 0.5 s) resized back to "
              "the full size: a zoom towards a seeded point 25-50% of the side from the centre",
              _crop, group="geometry"),
    Attribute("fg_colour", "hue rotated by 180 degrees (as 'hue') inside the mask only; pixels outside "
              "unchanged", _fg_colour, needs_mask=True, group="region"),
    Attribute("bg_colour", "hue rotated by 180 degrees (as 'hue') outside the mask only; pixels inside "
              "unchanged", _bg_colour, needs_mask=True, group="region"),
)}


# ------------------------------------------------------------------------------------------- checks


def _known(names: Iterable[str]) -> str:
    return ", ".join(names)


def _unknown(names: Sequence[str]) -> UnknownNameError:
    hints = []
    for n in names:
        close = difflib.get_close_matches(str(n), ATTRIBUTES, n=1)
        hints.append(f"{n!r} (did you mean {close[0]!r}?)" if close else repr(n))
    return UnknownNameError(f"unknown attribute{'s' if len(names) > 1 else ''} {', '.join(hints)}; "
                            f"known attributes: {_known(ATTRIBUTES)}")


def _attribute(name: str) -> Attribute:
    try:
        return ATTRIBUTES[name]
    except (KeyError, TypeError):
        raise _unknown([name]) from None


def _check_image(image, what: str = "image") -> Array:
    x = np.asarray(image)
    if x.ndim != 3 or x.shape[2] != 3 or x.shape[0] < 1 or x.shape[1] < 1:
        raise UsageError(f"{what} must be an (H, W, 3) array, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        raise UsageError(f"{what} must be a float array with values in [0, 1], got dtype {x.dtype} "
                         "(divide uint8 images by 255)")
    x = x.astype(np.float64, copy=False)
    if not np.isfinite(x).all() or x.min() < 0.0 or x.max() > 1.0:
        raise UsageError(f"{what} values must be finite and lie in [0, 1] "
                         f"(found {np.nanmin(x):.4g} .. {np.nanmax(x):.4g})")
    return x


def _check_mask(mask, shape: tuple[int, ...], what: str = "mask") -> Array:
    m = np.asarray(mask)
    if m.shape != tuple(shape[:2]):
        raise UsageError(f"{what} must have the image's shape (H, W) = {tuple(shape[:2])}, got {m.shape}")
    if m.dtype != bool:
        if not (np.issubdtype(m.dtype, np.number) and np.isin(m, (0, 1)).all()):
            raise UsageError(f"{what} must be a bool array (True = foreground) or hold only 0 and 1, "
                             f"got dtype {m.dtype}")
        m = m.astype(bool)
    return m


def _check_strength(s) -> float:
    if isinstance(s, bool) or not isinstance(s, numbers.Real) or not math.isfinite(s) or not 0.0 <= s <= 1.0:
        raise UsageError(f"strength s must be a number in [0, 1], got {s!r}")
    return float(s)


# ---------------------------------------------------------------------------------------------- API


def edit(image, name: str, s: float, *, seed: int | Sequence[int], mask=None) -> Array:
    """Image ``image`` with attribute ``name`` edited at strength ``s``.

    Args:
        image: float array (H, W, 3) with values in [0, 1].
        name: a key of :data:`ATTRIBUTES`.
        s: strength in [0, 1]; ``0`` returns an exact copy (float64), ``1`` the ``description``.
        seed: int or sequence of ints for ``numpy.random.default_rng``: fixes every random choice of the
            edit (direction, sign, noise field), whatever ``s``.
        mask: bool (H, W), True = foreground; needed by attributes with ``needs_mask``, ignored (but
            checked) by the others.

    Returns:
        float64 array (H, W, 3) clipped to [0, 1].

    Raises:
        UsageError (a ValueError): unknown attribute (the message lists the known ones), ``s`` outside
            [0, 1], a bad image, a missing mask where one is needed, a mask of another shape.
    """
    attribute = _attribute(name)
    s = _check_strength(s)
    x = _check_image(image)
    if mask is not None:
        mask = _check_mask(mask, x.shape)
    elif attribute.needs_mask:
        raise UsageError(f"attribute {name!r} edits one region of the image: a mask is needed "
                         "(bool (H, W), True = foreground)")
    if s == 0.0:
        return x.copy()
    out = attribute.apply(x, s, np.random.default_rng(seed), mask)
    return np.clip(out, 0.0, 1.0)


def rms_change(a, b) -> float:
    """Root-mean-square difference ``sqrt(mean((a - b)^2))`` over all pixels and channels."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise UsageError(f"rms_change needs two arrays of one shape, got {a.shape} and {b.shape}")
    return float(np.sqrt(np.mean((a - b) ** 2)))


def match_strength(image, name: str, target_rms: float, *, seed: int | Sequence[int], mask=None,
                   tol: float = 1e-3, max_iter: int = 40,
                   change: Callable[[Array, Array], float] | None = None) -> float | None:
    """The strength ``s`` at which :func:`edit` changes ``image`` by ``target_rms`` (pixel RMS).

    ``change(edited, image)`` replaces the pixel RMS by another measure of change (a metric's distance:
    ``attr_contests`` with ``match_by=<metric>``); ``target_rms`` and ``tol`` are then in its units.

    Used to match edits of different attributes in pixel L2 (attribute contests). The RMS change at
    ``s = 1/8, 2/8, ..., 1`` is computed in turn until one reaches ``target_rms - tol``; then bisection on
    ``s`` between that point and the one before (which stays below) runs until ``|rms - target_rms| <=
    tol``. For attributes whose RMS grows with ``s`` this is plain bisection on [0, 1]; for the geometric
    ones, whose RMS can level off and wobble, it returns a crossing in the first bracket that reaches the
    target (the RMS is continuous in ``s`` there, so one exists).

    Returns:
        ``s``; ``0.0`` when ``target_rms <= tol``; ``None`` when the target is out of reach: the RMS
        at every scan point, ``s = 1`` included, stays below ``target_rms - tol`` (for an attribute whose
        RMS grows with ``s``: when even ``s = 1`` stays below). For attributes that change in steps
        (``flip``; ``jpeg`` between quality levels) the target can fall inside a step: then, after
        ``max_iter`` halvings, the end of the final bracket whose RMS is nearer the target is returned,
        and its RMS can miss the target by more than ``tol`` (compare :func:`rms_change` of the result
        if that matters).

    Raises:
        UsageError: as :func:`edit`, and for a negative ``target_rms``, a non-positive ``tol`` or a
            negative ``max_iter``.
    """
    x = _check_image(image)
    if not (isinstance(target_rms, numbers.Real) and math.isfinite(target_rms) and target_rms >= 0):
        raise UsageError(f"target_rms must be a finite number >= 0, got {target_rms!r}")
    if not (isinstance(tol, numbers.Real) and tol > 0):
        raise UsageError(f"tol must be > 0, got {tol!r}")
    if not (isinstance(max_iter, numbers.Integral) and max_iter >= 0):
        raise UsageError(f"max_iter must be an integer >= 0, got {max_iter!r}")

    measure = change or rms_change

    def rms(s: float) -> float:
        return float(measure(edit(x, name, s, seed=seed, mask=mask), x))

    edit(x, name, 0.0, seed=seed, mask=mask)  # the argument checks, before any work
    if target_rms <= tol:
        return 0.0
    lo, r_lo = 0.0, 0.0
    for k in range(1, _SCAN + 1):
        hi = k / _SCAN
        r_hi = rms(hi)
        if abs(r_hi - target_rms) <= tol:
            return hi
        if r_hi > target_rms:
            break
        lo, r_lo = hi, r_hi
    else:
        return None  # every scan point, s = 1 included, stays below target_rms - tol
    for _ in range(max_iter):
        mid = 0.5 * (lo + hi)
        r = rms(mid)
        if abs(r - target_rms) <= tol:
            return mid
        if r < target_rms:
            lo, r_lo = mid, r
        else:
            hi, r_hi = mid, r
    return lo if abs(r_lo - target_rms) < abs(r_hi - target_rms) else hi


def replace_region(image, mask, region: str, mode: str, *, other=None,
                   seed: int | Sequence[int] = 0) -> Array:
    """``image`` with the pixels of one region replaced; the other region is bit-identical.

    Args:
        image: float (H, W, 3) in [0, 1].
        mask: bool (H, W), True = foreground.
        region: ``"foreground"`` (the True pixels) or ``"background"`` (the False pixels).
        mode: ``"grey"`` (0.5 everywhere), ``"blur"`` (the image under a Gaussian blur of sigma 10% of the
            shorter side: shapes gone, the region's average colours kept), ``"noise"`` (uniform noise in
            [0, 1] drawn from ``seed``) or ``"swap"`` (the same pixels of ``other``).
        other: float (H, W, 3) in [0, 1], the image to take pixels from in ``"swap"`` mode.
        seed: the noise of ``"noise"`` mode (``numpy.random.default_rng``); the other modes ignore it.

    Raises:
        UsageError: a bad region or mode, a mask of another shape, ``"swap"`` without ``other`` or with an
            ``other`` of another shape.
    """
    x = _check_image(image)
    m = _check_mask(mask, x.shape)
    if region not in ("foreground", "background"):
        raise UsageError(f"region must be 'foreground' or 'background', got {region!r}")
    if mode == "grey":
        fill = np.full_like(x, 0.5)
    elif mode == "blur":
        sigma = REGION_BLUR_SIGMA * _side(x)
        fill = ndimage.gaussian_filter(x, sigma=(sigma, sigma, 0.0), mode="reflect")
    elif mode == "noise":
        fill = np.random.default_rng(seed).random(x.shape)
    elif mode == "swap":
        if other is None:
            raise UsageError("replace_region(mode='swap') needs other=, the image to take the pixels from")
        fill = _check_image(other, "other")
        if fill.shape != x.shape:
            raise UsageError(f"other must have the image's shape {x.shape}, got {fill.shape}")
    else:
        raise UsageError(f"mode must be one of grey, blur, noise, swap; got {mode!r}")
    inside = m if region == "foreground" else ~m
    return np.where(inside[..., None], fill, x)


def ellipse_mask(height: int, width: int, *, seed: int | Sequence[int],
                 area: tuple[float, float] = (0.35, 0.55)) -> Array:
    """A seeded elliptical foreground mask, bool (height, width), covering a fraction of it within ``area``.

    The fraction is drawn uniformly in ``area``, the axes (aligned with the image) with a random aspect
    ratio so that the ellipse fits inside the image, the centre uniformly among the places where it fits.
    The axes are then adjusted (bisection on a common scale) until the pixel count, pixel centres inside
    the ellipse, is the nearest to the drawn fraction; the result's fraction always lies in ``area``.

    Raises:
        UsageError: ``area`` not within ``0 < low <= high <= 0.75`` (an ellipse inside a rectangle covers at
            most pi/4 of it), or an image too small to hold a fraction in ``area``.
    """
    if not (isinstance(height, numbers.Integral) and isinstance(width, numbers.Integral)
            and height > 0 and width > 0):
        raise UsageError(f"ellipse_mask needs positive integer height and width, got {height!r}, {width!r}")
    try:
        low, high = (float(v) for v in area)
    except (TypeError, ValueError):
        raise UsageError(f"area must be a pair (low, high), got {area!r}") from None
    if not 0.0 < low <= high <= 0.75:
        raise UsageError(f"area must satisfy 0 < low <= high <= 0.75, got {area!r}")
    rng = np.random.default_rng(seed)
    frac = rng.uniform(low, high)
    # semi-axes as fractions (alpha, beta) of the half-width and half-height: pi/4 alpha beta = frac
    prod = 4.0 * frac / np.pi
    alpha = float(np.exp(rng.uniform(np.log(prod), 0.0)))
    beta = prod / alpha
    a, b = alpha * width / 2.0, beta * height / 2.0
    cx = rng.uniform(a, width - a)
    cy = rng.uniform(b, height - b)
    yy = (np.arange(height) + 0.5)[:, None] - cy
    xx = (np.arange(width) + 0.5)[None, :] - cx

    def mask_at(k: float) -> Array:
        return (xx / (k * a)) ** 2 + (yy / (k * b)) ** 2 <= 1.0

    target = frac * height * width
    lo, hi = 0.5, 1.5
    for _ in range(40):  # the count is non-decreasing in the scale k: nested ellipses about one centre
        mid = 0.5 * (lo + hi)
        if mask_at(mid).sum() < target:
            lo = mid
        else:
            hi = mid
    best = min((mask_at(lo), mask_at(hi)), key=lambda m: abs(m.sum() - target))
    got = best.sum() / (height * width)
    if not low <= got <= high:
        for m in (mask_at(lo), mask_at(hi)):
            if low <= m.sum() / (height * width) <= high:
                return m
        raise UsageError(f"a {height}x{width} image is too small for an ellipse covering {low:g}-{high:g} "
                         f"of it (nearest: {got:.3f})")
    return best


def composite(foreground, background, mask) -> Array:
    """``foreground`` inside the mask (True pixels), ``background`` outside; both float (H, W, 3)."""
    fg = _check_image(foreground, "foreground")
    bg = _check_image(background, "background")
    if fg.shape != bg.shape:
        raise UsageError(f"foreground and background must have one shape, got {fg.shape} and {bg.shape}")
    m = _check_mask(mask, fg.shape)
    return np.where(m[..., None], fg, bg)


def parse_attributes(value) -> list[str]:
    """Attribute names from an option value: ``"hue+blur"`` (``+`` or ``,`` between names), a list of
    names, or None for every attribute that needs no mask. Order kept, repeats dropped.

    Raises:
        UsageError: unknown names (the message lists the known attributes), or an empty selection.
    """
    if value is None:
        return [n for n, a in ATTRIBUTES.items() if not a.needs_mask]
    if isinstance(value, str):
        names = [p.strip() for p in value.replace(",", "+").split("+")]
    elif isinstance(value, Iterable):
        names = []
        for v in value:
            if not isinstance(v, str):
                raise UsageError(f"attribute names must be strings, got {v!r}")
            names.append(v.strip())
    else:
        raise UsageError(f"attributes must be a string such as 'hue+blur', a list of names or None; "
                         f"got {value!r}")
    names = [n for n in names if n]
    if not names:
        raise UsageError(f"no attribute named in {value!r}; known attributes: {_known(ATTRIBUTES)}")
    unknown = [n for n in names if n not in ATTRIBUTES]
    if unknown:
        raise _unknown(unknown)
    return list(dict.fromkeys(names))
