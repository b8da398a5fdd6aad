"""Parameterised distortion families for the offline severity benchmark.

Each family maps a float RGB image (H, W, 3) in [0, 1] and a severity ``s`` in (0, 1] to a distorted
image of the same size. Families work on a *context* crop larger than the final crop, so blurs, shifts
and rotations have real pixels at the border; the caller cuts the centre (shifted for ``translate``).
``params`` (direction, sign) are drawn by the caller for each distorted image.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

Array = np.ndarray


def _to_pil(x: Array) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8), mode="RGB")


def _from_pil(im: Image.Image) -> Array:
    return np.asarray(im, dtype=np.float64) / 255.0


def blur(x: Array, s: float, params: dict[str, Any], rng: np.random.Generator) -> Array:
    return _from_pil(_to_pil(x).filter(ImageFilter.GaussianBlur(radius=0.3 + 3.7 * s)))


def noise(x: Array, s: float, params: dict[str, Any], rng: np.random.Generator) -> Array:
    return np.clip(x + rng.normal(0.0, 0.01 + 0.19 * s, size=x.shape), 0.0, 1.0)


def jpeg(x: Array, s: float, params: dict[str, Any], rng: np.random.Generator) -> Array:
    quality = round(75 - 70 * s)  # 75 (mild) .. 5 (severe)
    buf = io.BytesIO()
    _to_pil(x).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as im:
        return _from_pil(im.convert("RGB"))


def color_shift(x: Array, s: float, params: dict[str, Any], rng: np.random.Generator) -> Array:
    return np.clip(x + params["direction"] * (0.02 + 0.23 * s), 0.0, 1.0)


def brightness_contrast(x: Array, s: float, params: dict[str, Any], rng: np.random.Generator) -> Array:
    m = 0.04 + 0.46 * s
    mean = x.mean()
    gain = 1.0 + params["sign_c"] * m
    y = (x - mean) * gain + mean + params["sign_b"] * m * 0.5
    return np.clip(y, 0.0, 1.0)


def resample(x: Array, s: float, params: dict[str, Any], rng: np.random.Generator) -> Array:
    factor = 1.2 + 4.8 * s  # downscale by 1.2x .. 6x, then back up
    im = _to_pil(x)
    w, h = im.size
    small = im.resize((max(1, round(w / factor)), max(1, round(h / factor))), Image.Resampling.BILINEAR)
    return _from_pil(small.resize((w, h), Image.Resampling.BICUBIC))


def translate(x: Array, s: float, params: dict[str, Any], rng: np.random.Generator) -> Array:
    return x  # the shift is applied when cropping: see ``crop_offset``


def rotate(x: Array, s: float, params: dict[str, Any], rng: np.random.Generator) -> Array:
    angle = params["sign"] * (0.5 + 14.5 * s)  # degrees
    return _from_pil(_to_pil(x).rotate(angle, resample=Image.Resampling.BICUBIC))


@dataclass(frozen=True)
class Family:
    name: str
    apply: Callable[[Array, float, dict[str, Any], np.random.Generator], Array]
    description: str


def draw_params(family: str, rng: np.random.Generator) -> dict[str, Any]:
    """Random parameters of one distorted image (direction, sign)."""
    if family == "color_shift":
        d = rng.normal(size=3)
        return {"direction": d / np.linalg.norm(d)}
    if family == "brightness_contrast":
        return {"sign_b": float(rng.choice([-1.0, 1.0])), "sign_c": float(rng.choice([-1.0, 1.0]))}
    if family == "rotate":
        return {"sign": float(rng.choice([-1.0, 1.0]))}
    if family == "translate":
        angle = rng.uniform(0, 2 * np.pi)
        return {"direction": (float(np.cos(angle)), float(np.sin(angle)))}
    return {}


MAX_SHIFT = 16  # pixels, at severity 1


def crop_offset(family: str, s: float, params: dict[str, Any]) -> tuple[int, int]:
    """(dy, dx) of the final crop relative to the centre: non-zero for ``translate`` only."""
    if family != "translate":
        return 0, 0
    r = 1.0 + (MAX_SHIFT - 1.0) * s
    dx, dy = params["direction"]
    return round(r * dy), round(r * dx)


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("blur", blur, "Gaussian blur, radius 0.3..4 px"),
    Family("noise", noise, "additive Gaussian noise, sigma 0.01..0.2"),
    Family("jpeg", jpeg, "JPEG compression, quality 75..5"),
    Family("color_shift", color_shift, "constant RGB offset along a random direction, 0.02..0.25"),
    Family("brightness_contrast", brightness_contrast, "contrast gain and brightness offset, 4..50%"),
    Family("resample", resample, "bilinear downscale by 1.2..6x, bicubic upscale back"),
    Family("translate", translate, "shift by 1..16 px in a random direction"),
    Family("rotate", rotate, "rotation by 0.5..15 degrees about the centre"),
)}
