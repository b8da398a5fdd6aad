"""Input validation shared by every metric: one place, one set of messages."""

from __future__ import annotations

import math

import torch

FLOAT_TOLERANCE = 1e-4  # float inputs may overshoot [0, 1] by rounding (resize, colour conversion)


def to_unit_range(
    x: torch.Tensor,
    *,
    name: str,
    grayscale: str = "expand",
    min_size: int = 1,
    input_range: tuple[float, float] = (0.0, 1.0),
    check_values: bool = True,
) -> torch.Tensor:
    """Validate one NCHW image batch and return it as float in [0, 1].

    Accepts uint8 in [0, 255] or floating point in ``input_range`` (default [0, 1]; ``(-1, 1)`` for
    metrics used with a ``[-1, 1]`` flag). Grayscale (C=1) is repeated to RGB when ``grayscale ==
    "expand"``. Raises ``ValueError`` naming the problem otherwise.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        hint = " (add a batch dimension with x.unsqueeze(0))" if x.ndim == 3 else ""
        raise ValueError(f"{name}: expected a 4-D NCHW batch, got shape {tuple(x.shape)}{hint}")
    n, c, h, w = x.shape
    if n == 0:
        raise ValueError(f"{name}: empty batch (N=0)")
    if c == 1:
        if grayscale != "expand":
            raise ValueError(f"{name}: grayscale input (C=1) is not accepted by this metric; pass RGB (C=3)")
        x = x.expand(n, 3, h, w)
    elif c != 3:
        hint = " (channels-last? use x.permute(0, 3, 1, 2))" if w in (1, 3) else ""
        raise ValueError(f"{name}: expected 3 RGB channels in dim 1 (NCHW), got {c}{hint}")
    if h < min_size or w < min_size:
        raise ValueError(f"{name}: images are {h}x{w}, this metric needs at least {min_size}x{min_size}")
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected uint8 in [0, 255] or floating point in [0, 1], got dtype {x.dtype}")
    lo, hi = input_range
    if check_values:
        xmin, xmax = torch.aminmax(x.detach())  # min/max propagate NaN: one device sync
        xmin, xmax = float(xmin), float(xmax)
        if not (math.isfinite(xmin) and math.isfinite(xmax)):
            raise ValueError(f"{name}: contains NaN or Inf values")
        if xmin < lo - FLOAT_TOLERANCE or xmax > hi + FLOAT_TOLERANCE:
            raise ValueError(
                f"{name}: float values must lie in [{lo:g}, {hi:g}], found [{xmin:.4g}, {xmax:.4g}] "
                "(pass uint8 for [0, 255] images)"
            )
    if (lo, hi) != (0.0, 1.0):
        x = (x - lo) / (hi - lo)
    return x.clamp(0.0, 1.0)


def check_pair(preds: torch.Tensor, target: torch.Tensor) -> None:
    """Both inputs are tensors of the same shape."""
    for name, t in (("preds", preds), ("target", target)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if preds.shape != target.shape:
        raise ValueError(
            f"preds and target must have the same shape, got {tuple(preds.shape)} and {tuple(target.shape)}"
        )
