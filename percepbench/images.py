"""Image I/O for the data layer: files and arrays to uint8 CHW tensors, and the per-metric resize.

Every image becomes 8-bit RGB through :func:`to_rgb`, which decodes by PIL mode:

- 8-bit modes (``1``, ``L``, ``LA``, ``P`` with or without transparency, ``PA``, ``RGB``, ``RGBA``, ``RGBX``,
  ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``): PIL's ``convert("RGB")``, exactly what the official DreamSim
  preprocess does. Alpha and palette transparency are dropped, not composited: a pixel keeps its stored
  colour whatever its alpha. ``LAB`` converts through LittleCMS where Pillow supports it.
- 16-bit greyscale (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``: 16-bit PNG and TIFF files) and 32-bit
  integers (``I``: what Pillow gives for 16-bit PGM files, and integer TIFFs): values are 16-bit
  intensities, 0..65535, mapped to the nearest 8-bit level, ``round(v / 257)`` (65535 -> 255,
  32768 -> 128). An ``I`` image with a value outside [0, 65535] is refused.
- 32-bit float (``F``, e.g. float TIFFs): values are intensities in [0, 1], mapped to ``round(255 f)``
  (0.5 -> 128). A value outside [0, 1], NaN or infinite, is refused (no clipping, no guessing a 0..255 scale).
- Any mode PIL cannot convert to RGB (``La``, ...) is refused.

Refusals are :class:`~percepbench.errors.DataError` naming the file (or the image's ``filename``), the mode
and the problem. 16-bit RGB(A) PNGs never reach these rules: Pillow's decoder itself keeps the high byte of
each 16-bit sample and hands over an 8-bit ``RGB``/``RGBA`` image.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from percepbench.errors import DataError
from percepbench.specs import InputConvention

if TYPE_CHECKING:  # torch loads when a tensor is made, so task modules stay light to import
    import torch

_PIL_INTERPOLATION = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "area": Image.Resampling.BOX,
}


#: PIL modes holding unsigned 16-bit greyscale samples
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
#: 8-bit modes PIL always converts to RGB (other modes are checked with a 1x1 image first)
EIGHT_BIT_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "HSV"})
_SIXTEEN_BIT_MAX = 65535


#: the largest image percepbench decodes, in pixels (width x height): 8000 x 8000 decodes to 192 MB of RGB, and
#: every metric resizes or batches far smaller images; ``$PERCEPBENCH_MAX_PIXELS`` raises it
DEFAULT_MAX_PIXELS = 64_000_000


def max_pixels() -> int:
    """:data:`DEFAULT_MAX_PIXELS`, or ``$PERCEPBENCH_MAX_PIXELS`` when set to a positive integer."""
    text = os.environ.get("PERCEPBENCH_MAX_PIXELS", "").strip()
    if text.isdigit() and int(text) > 0:
        return int(text)
    return DEFAULT_MAX_PIXELS


def file_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be opened as an image file before any byte is read, or None: not a regular file
    (a FIFO or a device would block or never end)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None  # the caller reports a missing file as such
    except OSError as exc:
        return str(exc)
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode) or
                stat.S_ISBLK(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else "a directory"
                if stat.S_ISDIR(st.st_mode) else "not a regular file")
        return f"{kind}, not a regular image file"
    return None


def size_problem(im: Image.Image) -> str | None:
    """Why an opened image is too large to decode (above :func:`max_pixels`), or None."""
    w, h = im.size
    if w * h > max_pixels():
        return (f"{w}x{h} = {w * h:,} pixels is above percepbench's limit of {max_pixels():,} "
                "($PERCEPBENCH_MAX_PIXELS raises it)")
    return None


def decode_problem(im: Image.Image) -> str | None:
    """Why :func:`to_rgb` refuses ``im`` (its values or its mode), or None when it decodes it.

    Reads the pixels of ``I`` and ``F`` images only (their values decide); other modes by name.
    """
    mode = im.mode
    if mode == "I":
        values = np.asarray(im)
        if values.size and (values.min() < 0 or values.max() > _SIXTEEN_BIT_MAX):
            return (f"32-bit integer image (PIL mode I) holds values from {values.min()} to {values.max()}; "
                    f"percepbench reads integer images as 16-bit intensities in [0, {_SIXTEEN_BIT_MAX}]: "
                    "rescale it, or save it as 8- or 16-bit")
    elif mode == "F":
        values = np.asarray(im, dtype=np.float64)
        finite = np.isfinite(values)
        if not finite.all() or values.min() < 0.0 or values.max() > 1.0:
            shown = values[finite]
            span = f"from {shown.min():g} to {shown.max():g}" if shown.size else "no finite value"
            extra = f" and {int((~finite).sum())} NaN or infinite value(s)" if not finite.all() else ""
            return (f"float image (PIL mode F) holds values {span}{extra}; percepbench reads float images as "
                    "intensities in [0, 1]: rescale it to [0, 1] (a 0..255 image: divide by 255), or save it "
                    "as 8- or 16-bit")
    elif mode not in EIGHT_BIT_MODES and mode not in SIXTEEN_BIT_MODES:
        try:
            Image.new(mode, (1, 1)).convert("RGB")
        except ValueError as exc:
            return f"PIL mode {mode} cannot be converted to RGB ({exc}); save the image as 8-bit RGB or greyscale"
    return None


def _grey_to_rgb(levels: np.ndarray) -> Image.Image:
    """Float array of 8-bit levels (already in [0, 255]) -> RGB image, rounding half up."""
    eight = np.floor(levels + 0.5).astype(np.uint8)
    return Image.fromarray(np.repeat(eight[..., None], 3, axis=2))


def to_rgb(im: Image.Image, source: str | Path | None = None) -> Image.Image:
    """A new 8-bit RGB image holding ``im``, decoded by its PIL mode (the rules in the module docstring).

    ``source`` names the image in error messages (default: ``im.filename`` when PIL opened it from a file).
    Raises :class:`DataError` for a float image outside [0, 1], an ``I`` image outside [0, 65535], or a
    mode PIL cannot convert (:func:`decode_problem` says which).
    """
    name = str(source) if source is not None else (getattr(im, "filename", "") or "image")
    problem = decode_problem(im)
    if problem is not None:
        raise DataError(f"{name}: {problem}")
    mode = im.mode
    if mode in SIXTEEN_BIT_MODES or mode == "I":
        return _grey_to_rgb(np.asarray(im).astype(np.float64) / (_SIXTEEN_BIT_MAX / 255.0))
    if mode == "F":
        return _grey_to_rgb(np.asarray(im, dtype=np.float64) * 255.0)
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # the same colours as convert("RGB"), without PIL's transparency warning
    try:
        return im.convert("RGB")
    except ValueError as exc:
        raise DataError(f"{name}: PIL mode {mode} cannot be converted to RGB ({exc})") from exc


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image file as 8-bit RGB (:func:`to_rgb`).

    Raises :class:`DataError` naming the file if it is missing, unreadable, or refused by :func:`to_rgb`.
    """
    p = Path(path)
    problem = file_problem(p)
    if problem:
        raise DataError(f"{p}: cannot read image ({problem})")
    try:
        with Image.open(p) as im:
            too_big = size_problem(im)
            if too_big:
                raise DataError(f"{p}: image too large: {too_big}")
            return to_rgb(im, p)
    except DataError:
        raise
    except FileNotFoundError as exc:
        raise DataError(f"{p}: image file not found") from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{p}: cannot read image ({exc})") from exc


def pil_to_tensor(im: Image.Image) -> torch.Tensor:
    """PIL image of any mode -> uint8 tensor (3, H, W), decoded by :func:`to_rgb`."""
    arr = np.asarray(to_rgb(im), dtype=np.uint8)
    import torch

    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def tensor_to_pil(t: torch.Tensor) -> Image.Image:
    """uint8 tensor (3, H, W) -> RGB PIL image."""
    return Image.fromarray(t.permute(1, 2, 0).cpu().numpy(), mode="RGB")


def apply_convention(im: Image.Image, inputs: InputConvention) -> Image.Image:
    """Resize a file image as the metric's spec asks (square ``size`` with its interpolation)."""
    if inputs.size is None or im.size == (inputs.size, inputs.size):
        return im
    method = _PIL_INTERPOLATION[inputs.interpolation or "bicubic"]
    return im.resize((inputs.size, inputs.size), method)
