"""PieAPP v0.1 (Prashnani et al., CVPR 2018) as a percepbench metric: ``pieapp``.

PieAPP predicts the perceptual error of a distorted image A with respect to a reference R. Both images
are cut into 64x64 patches on the same grid; an 11-convolution network (3x3 convolutions, five 2x2 max
pools) gives each patch a multi-scale feature vector (the ReLU outputs after conv3, conv5, conv7, conv9 and
conv11, flattened channel-major and concatenated: 120,832 values) and a coarse one (conv11 alone: 2,048).
With ``d_ms = f_ms(R) - f_ms(A)`` and ``d_c = f_c(R) - f_c(A)``, per patch:

- error ``e = ref_score_subtract(0.01 * fc2_score(relu(fc1_score(d_ms))))`` (a 1 -> 1 linear layer that
  moves the origin of the error scale to the reference's own value),
- weight ``w = fc2_weight(relu(fc1_weight(d_c))) + 1e-6``,

and the image's PieAPP value is ``sum(w * e) / sum(w)``. Higher = more different; percepbench reports it
as it is (no sign change). Built from the authors' ``model/PieAPPv0pt1_PT.py`` and demo script (read, not
copied); the module names (``conv1`` .. ``conv11``, ``fc1_score``, ...) are the weight file's keys.

**Conventions** (the spec records them):

- Argument order: ``distance(reference, distorted)``, the order percepbench's tasks use (``d(ref, dist)``);
  PieAPP is not symmetric.
- Input: the authors' network was run on OpenCV images (BGR, float 0..255); percepbench's [0, 1] RGB input
  is flipped to BGR and scaled by 255 inside. (piq 0.8.0 feeds RGB; pyiqa flips to BGR as here.)
- Patch grid: top-left corners at ``0, s, 2s, ...`` up to ``H - 64`` (and likewise for W), the grid of
  the authors' ``sample_patches`` and of piq's and pyiqa's unfold; pixels past the last patch are not
  seen. ``stride`` defaults to 27 (the authors' "sparse" mode, piq's and pyiqa's default, under which
  their published correlations were computed); ``stride=6`` is the authors' "dense" mode, which their
  README recommends for accuracy (about (27/6)^2 = 20x the patches). Images need at least 64x64 px.
- Patches go through the network in chunks of ``chunk`` patches, so memory stays bounded on large images.

**Weights**: ``PieAPPv0.1.pth`` through percepbench's weights manager
(:data:`~percepbench.metrics_registry.catalog.pieapp.WEIGHTS`: piq's GitHub release, sha256 from public
sources), read with ``weights_only=True`` and loaded strictly. One documented quirk of the released file
is accepted: ``ref_score_subtract.weight`` stored with shape (1,) is used as (1, 1) (piq does the same);
any other missing/unexpected key or shape is a :class:`~percepbench.errors.WeightsError` naming the file.
Licence: non-commercial use only (see the spec).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from percepbench.errors import UsageError, WeightsError
from percepbench.metrics_registry.base import DistanceMetric
from percepbench.metrics_registry.catalog.pieapp import CITATION, DEFAULT_STRIDE, PATCH, WEIGHTS  # noqa: F401
from percepbench.metrics_registry.lpips_metric import load_state_file, load_weight_file, strict_load

#: (in, out) channels of conv1 .. conv11
CONVS = ((3, 64), (64, 64), (64, 64), (64, 128), (128, 128), (128, 128), (128, 256), (256, 256), (256, 256),
         (256, 512), (512, 512))
#: length of the multi-scale feature vector of one 64x64 patch: conv3, conv5, conv7, conv9, conv11 outputs
MULTISCALE = 64 * 32 * 32 + 128 * 16 * 16 + 256 * 8 * 8 + 256 * 4 * 4 + 512 * 2 * 2  # 120,832
COARSE = 512 * 2 * 2  # 2,048
EPS = 1e-6


class PieAPPNetwork(nn.Module):
    """The PieAPP v0.1 network, random-initialised; load the released file with :meth:`load_file`."""

    def __init__(self) -> None:
        super().__init__()
        for k, (cin, cout) in enumerate(CONVS, start=1):
            self.add_module(f"conv{k}", nn.Conv2d(cin, cout, 3, padding=1))
        self.fc1_score = nn.Linear(MULTISCALE, 512)
        self.fc2_score = nn.Linear(512, 1)
        self.fc1_weight = nn.Linear(COARSE, 512)
        self.fc2_weight = nn.Linear(512, 1)
        self.ref_score_subtract = nn.Linear(1, 1)

    # -- weights -----------------------------------------------------------------------------------------
    def randomize(self, generator: torch.Generator | None = None) -> None:
        """Random weights under which PieAPP behaves like a distance: identical images score exactly 0
        (``fc1_score`` without bias, ``ref_score_subtract`` cancelling ``fc2_score``'s bias), other images
        score >= 0 (non-negative ``fc2_score``), and patch weights are positive."""
        with torch.no_grad():
            self.fc1_score.bias.zero_()
            self.fc2_score.weight.abs_()
            self.fc2_weight.weight.abs_()
            self.fc2_weight.bias.fill_(1.0)
            self.ref_score_subtract.weight.fill_(1.0)
            self.ref_score_subtract.bias.copy_(-0.01 * self.fc2_score.bias)

    def load_file(self, path: Path | str, state: Mapping[str, torch.Tensor] | None = None) -> None:
        """Load the released file strictly (from ``state`` read from ``path`` when given)."""
        path = Path(path)
        if state is None:
            if not path.is_file():
                raise WeightsError(f"PieAPP weight file {path} does not exist")
            state = load_state_file(path)
        state = dict(state)
        w = state.get("ref_score_subtract.weight")
        if isinstance(w, torch.Tensor) and tuple(w.shape) == (1,):  # the released file's shape (piq fixes it too)
            state["ref_score_subtract.weight"] = w.reshape(1, 1)
        strict_load(self, state, path, "PieAPP v0.1")

    # -- computation -------------------------------------------------------------------------------------
    def features(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Multi-scale (P, 120832) and coarse (P, 2048) features of BGR [0, 255] patches (P, 3, 64, 64)."""
        c = [getattr(self, f"conv{k}") for k in range(1, 12)]
        h = F.relu(c[1](F.relu(c[0](patches))))
        x3 = F.relu(c[2](F.max_pool2d(h, 2)))
        x5 = F.relu(c[4](F.max_pool2d(F.relu(c[3](x3)), 2)))
        x7 = F.relu(c[6](F.max_pool2d(F.relu(c[5](x5)), 2)))
        x9 = F.relu(c[8](F.max_pool2d(F.relu(c[7](x7)), 2)))
        x11 = F.relu(c[10](F.max_pool2d(F.relu(c[9](x9)), 2))).flatten(1)
        multiscale = torch.cat([x3.flatten(1), x5.flatten(1), x7.flatten(1), x9.flatten(1), x11], dim=1)
        return multiscale, x11

    def patch_scores(self, ref: torch.Tensor, dist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-patch errors and weights, each (P,), of matching BGR [0, 255] patches."""
        ref_ms, ref_c = self.features(ref)
        dist_ms, dist_c = self.features(dist)
        error = self.ref_score_subtract(0.01 * self.fc2_score(F.relu(self.fc1_score(ref_ms - dist_ms))))
        weight = self.fc2_weight(F.relu(self.fc1_weight(ref_c - dist_c))) + EPS
        return error.reshape(-1), weight.reshape(-1)


def patches(x: torch.Tensor, stride: int) -> torch.Tensor:
    """64x64 patches (N * P, C, 64, 64) of a batch (N, C, H, W), row by row, corners at multiples of
    ``stride`` up to ``H - 64`` / ``W - 64``."""
    c = x.shape[1]
    p = x.unfold(2, PATCH, stride).unfold(3, PATCH, stride)  # N, C, nh, nw, 64, 64
    return p.permute(0, 2, 3, 1, 4, 5).reshape(-1, c, PATCH, PATCH)


class PieAPPMetric(DistanceMetric):
    """PieAPP error per pair (higher = more different), as a torchmetrics ``Metric``.

    ``update(reference, distorted)``: NCHW RGB batches, float in [0, 1] or uint8, at least 64x64 px, at
    their native size. The per-pair value is the PieAPP v0.1 error of ``distorted`` with respect to
    ``reference`` (see the module docstring for the patch grid and the BGR/255 input conversion), shape
    (N,). Differentiable with respect to the inputs; the network is frozen.

    Args:
        stride: patch stride in pixels (default 27, piq's and pyiqa's; 6 is the authors' dense mode).
        chunk: patches per forward pass (memory bound; the result does not depend on it).
        pretrained: load ``PieAPPv0.1.pth`` (downloaded through percepbench, sha256-checked). False:
            random weights (identical images score 0, others >= 0), no file or network access.
        weights_file: load this file instead (strictly, the released key layout).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per pair).

    Raises:
        UsageError: ``stride`` or ``chunk`` is not a positive integer.
        WeightsError: the file fails its sha256 or has missing/unexpected keys or other shapes.
        OfflineError: the file must be downloaded but offline mode is on or the network fails.

    Example:
        >>> import torch
        >>> from percepbench.metrics_registry.pieapp import PieAPPMetric
        >>> _ = torch.manual_seed(0)
        >>> metric = PieAPPMetric(pretrained=False, reduction="none")
        >>> ref = torch.rand(2, 3, 64, 64)
        >>> metric(ref, ref).tolist()
        [0.0, 0.0]
    """

    is_differentiable = True
    min_size = PATCH

    def __init__(self, stride: int = DEFAULT_STRIDE, chunk: int = 128, pretrained: bool = True,
                 weights_file: str | Path | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name, value in (("stride", stride), ("chunk", chunk)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"PieAPP {name} must be a positive integer, got {value!r}")
        self.stride, self.chunk = stride, chunk
        loaded = load_weight_file(WEIGHTS) if pretrained and weights_file is None else None
        network = PieAPPNetwork()
        if weights_file is not None:
            network.load_file(weights_file)
        elif loaded is not None:
            state, path = loaded
            network.load_file(path, state)
        else:
            network.randomize()
        self.network = self.freeze(network)
        if loaded is None:  # random weights, or the user's own file: the spec's file was not read
            self.weight_files_used = []

    def distance(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n = preds.shape[0]
        bgr = [2, 1, 0]
        ref = patches(preds[:, bgr] * 255.0, self.stride)
        dist = patches(target[:, bgr] * 255.0, self.stride)
        errors, weights = [], []
        for start in range(0, ref.shape[0], self.chunk):
            e, w = self.network.patch_scores(ref[start:start + self.chunk], dist[start:start + self.chunk])
            errors.append(e)
            weights.append(w)
        e = torch.cat(errors).reshape(n, -1)
        w = torch.cat(weights).reshape(n, -1)
        return (e * w).sum(dim=1) / w.sum(dim=1)
