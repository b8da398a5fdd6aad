"""Image I/O for the data layer: files and arrays to uint8 CHW tensors, and the per-metric resize."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from percepbench.errors import DataError
from percepbench.specs import InputConvention

_PIL_INTERPOLATION = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "area": Image.Resampling.BOX,
}


def load_rgb(path: str | Path) -> Image.Image:
    """Open an image file as RGB. Raises :class:`DataError` naming the file if it is missing or unreadable."""
    p = Path(path)
    try:
        with Image.open(p) as im:
            return im.convert("RGB")
    except FileNotFoundError as exc:
        raise DataError(f"{p}: image file not found") from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{p}: cannot read image ({exc})") from exc


def pil_to_tensor(im: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 tensor (3, H, W)."""
    arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
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
