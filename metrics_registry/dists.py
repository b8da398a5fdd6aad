"""DISTS (Ding et al. 2020) as a percepbench metric: ``dists``.

VGG16 with its max-pooling layers replaced by L2 pooling (a 3x3 Hann window, stride 2), compared at six
stages: the image itself and relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (3 + 64 + 128 + 256 + 512 + 512 =
1475 channels). Per channel, a structure term (means) and a texture term (variances and covariance) are
weighted by the learned ``alpha`` / ``beta`` (normalised by their joint sum);
``DISTS = 1 - sum(alpha * S1 + beta * S2)``.

Weights: ``alpha``/``beta`` are read from the copy shipped inside torchmetrics
(``torchmetrics/functional/image/dists_models/weights.pt``), declared as a
:class:`~percepbench.specs.WeightFile` with ``cache="package"`` (:data:`ALPHA_BETA_WEIGHTS`): verified
against its full sha256 through :func:`percepbench.weights.ensure_files`, then read with
``weights_only=True`` and loaded strictly (exactly the keys ``alpha`` and ``beta`` of shape
(1, 1475, 1, 1)); the VGG16 trunk is torchvision's ImageNet checkpoint in ``<torch hub dir>/checkpoints``,
fetched through the same function (never by torchvision itself). Both are in the spec's ``weights``. The network is built once, in ``__init__`` (torchmetrics' ``DISTS`` class
rebuilds it on every update).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from percepbench.errors import WeightsError
from percepbench.metrics_registry.base import DistanceMetric
from percepbench.metrics_registry.catalog.dists import ALPHA_BETA_WEIGHTS, CITATION, MIN_SIZE, VGG16_WEIGHTS  # noqa: F401
from percepbench.metrics_registry.lpips_metric import (
    load_state_file,
    load_trunk_features,
    load_weight_file,
    strict_load,
)
from percepbench.specs import IMAGENET

CHANNELS = (3, 64, 128, 256, 512, 512)
#: indices of torchvision's VGG16 ``features`` after which a stage ends (relu1_2 ... relu5_3)
STAGE_ENDS = (3, 8, 15, 22, 29)
#: indices of VGG16's max-pooling layers, replaced by L2 pooling
POOLS = (4, 9, 16, 23)
OFFICIAL_SIZE = 256
C1 = C2 = 1e-6


class L2Pool(nn.Module):
    """``sqrt(hann3x3 * x**2 + 1e-12)`` per channel with stride 2 and padding 1 (DISTS' L2 pooling)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        taps = torch.tensor([0.5, 1.0, 0.5], dtype=torch.float64)  # numpy.hanning(5) without its zero ends
        window = torch.outer(taps, taps)
        window = (window / window.sum()).float()
        # not persistent: the state dict holds only VGG's convolutions, keyed as in torchvision
        self.register_buffer("window", window.expand(channels, 1, 3, 3).contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x * x, self.window, stride=2, padding=1, groups=x.shape[1])
        return (out + 1e-12).sqrt()


def _vgg16_features() -> nn.Sequential:
    """VGG16's ``features`` (torchvision layout and init, no classifier) with L2 pooling; 30 layers."""
    from torchvision.models.vgg import cfgs, make_layers

    features = make_layers(cfgs["D"], batch_norm=False)[:30]  # drop the last max-pool (after relu5_3)
    for m in features.modules():
        if isinstance(m, nn.Conv2d):  # torchvision's VGG init, for a realistic random trunk
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    layers = list(features)
    for i in POOLS:
        if not isinstance(layers[i], nn.MaxPool2d):
            raise RuntimeError(f"torchvision's VGG16 layout changed: layer {i} is {layers[i]!r}")
        layers[i] = L2Pool(layers[i - 2].out_channels)
    return nn.Sequential(*layers)


class DISTSNetwork(nn.Module):
    """DISTS on [0, 1] images: ``forward(x, y)`` returns the distance per pair, shape (N,)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = _vgg16_features()
        self.register_buffer("mean", torch.tensor(IMAGENET.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET.std).view(1, 3, 1, 1))
        self.register_buffer("alpha", torch.full((1, sum(CHANNELS), 1, 1), 0.1))
        self.register_buffer("beta", torch.full((1, sum(CHANNELS), 1, 1), 0.1))

    def load_alpha_beta(self, path: Path | str, state: dict[str, torch.Tensor] | None = None) -> None:
        """Load ``alpha``/``beta`` strictly: from ``state`` (read from ``path``) when given, else from the file
        ``path`` (``weights_only=True``; no checksum: the shipped file is verified through
        :data:`ALPHA_BETA_WEIGHTS`)."""
        path = Path(path)
        if state is None:
            if not path.is_file():
                raise WeightsError(f"DISTS alpha/beta file {path} does not exist")
            state = load_state_file(path)
        holder = nn.Module()
        holder.register_buffer("alpha", torch.empty_like(self.alpha))
        holder.register_buffer("beta", torch.empty_like(self.beta))
        strict_load(holder, state, path, "DISTS alpha/beta")
        self.alpha.copy_(holder.alpha)
        self.beta.copy_(holder.beta)

    def load_trunk(self, features: dict[str, torch.Tensor], path: Path | str) -> None:
        strict_load(self.features, features, path, "torchvision VGG16 trunk")

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = [x]
        h = (x - self.mean) / self.std
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in STAGE_ENDS:
                out.append(h)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = self.alpha.sum() + self.beta.sum()
        alphas = torch.split(self.alpha / total, CHANNELS, dim=1)
        betas = torch.split(self.beta / total, CHANNELS, dim=1)
        structure = texture = 0
        for fx, fy, a, b in zip(self.stages(x), self.stages(y), alphas, betas, strict=True):
            mx, my = fx.mean(dim=(2, 3), keepdim=True), fy.mean(dim=(2, 3), keepdim=True)
            vx = ((fx - mx) ** 2).mean(dim=(2, 3), keepdim=True)
            vy = ((fy - my) ** 2).mean(dim=(2, 3), keepdim=True)
            cov = (fx * fy).mean(dim=(2, 3), keepdim=True) - mx * my
            s1 = (2 * mx * my + C1) / (mx**2 + my**2 + C1)
            s2 = (2 * cov + C2) / (vx + vy + C2)
            structure = structure + (a * s1).sum(1, keepdim=True)
            texture = texture + (b * s2).sum(1, keepdim=True)
        return 1 - (structure + texture).reshape(x.shape[0])


def official_resize(x: torch.Tensor) -> torch.Tensor:
    """The official DISTS preprocessing on tensors: if min(H, W) > 256, resize so the shorter side is 256
    (the longer one ``int(256 * long / short)``, torchvision's rule), bilinear with antialiasing; smaller
    images are returned unchanged."""
    h, w = x.shape[-2:]
    short, long = min(h, w), max(h, w)
    if short <= OFFICIAL_SIZE:
        return x
    other = int(OFFICIAL_SIZE * long / short)
    size = (OFFICIAL_SIZE, other) if h <= w else (other, OFFICIAL_SIZE)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


class DISTSMetric(DistanceMetric):
    """DISTS distance per pair (lower = more similar), as a torchmetrics ``Metric``.

    Inputs are NCHW RGB batches, float in [0, 1] or uint8, at least 16 px per side (relu5_3 is then at
    least 1x1 after four stride-2 poolings); ImageNet normalisation happens inside. Output: the DISTS value
    of torchmetrics' ``deep_image_structure_and_texture_similarity`` (which, despite its name, returns the
    distance ``1 - similarity``), per pair, shape (N,). Differentiable with respect to the inputs; the
    network is built once and frozen.

    Args:
        resize: ``None`` (default): images are compared at their size. ``"official"``: the preprocessing
            of the official DISTS code: when min(H, W) > 256 both images are resized (bilinear,
            antialiased) so the shorter side is 256. The official code resizes PIL images
            (PIL bilinear); antialiased bilinear interpolation on tensors approximates it.
        pretrained: load torchvision's ImageNet VGG16 (``<torch hub>/checkpoints/vgg16-397923af.pth``,
            downloaded through percepbench when missing). False: a random VGG16 and no network access.
            alpha/beta always come from torchmetrics' installed copy, sha256-verified.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per pair).

    Raises:
        WeightsError: the alpha/beta or trunk file fails its sha256 or has missing/unexpected keys.
        OfflineError: the trunk must be downloaded but offline mode is on or the network fails.

    Example:
        >>> import torch
        >>> from percepbench.metrics_registry.dists import DISTSMetric
        >>> _ = torch.manual_seed(0)
        >>> metric = DISTSMetric(pretrained=False, reduction="none")
        >>> metric(torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)).shape
        torch.Size([2])
    """

    is_differentiable = True
    min_size = MIN_SIZE

    def __init__(self, resize: str | None = None, pretrained: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if resize not in (None, "official"):
            raise ValueError(f"resize must be None or 'official', got {resize!r}")
        self.resize = resize
        trunk = load_trunk_features(VGG16_WEIGHTS) if pretrained else None  # a missing file fails fast
        network = DISTSNetwork()
        state, path = load_weight_file(ALPHA_BETA_WEIGHTS)  # sha256-verified in torchmetrics' installed copy
        network.load_alpha_beta(path, state)
        if trunk is not None:
            network.load_trunk(*trunk)
        self.network = self.freeze(network)
        if not pretrained:  # a random trunk; the shipped alpha/beta are still read
            self.weight_files_used = [ALPHA_BETA_WEIGHTS.filename]

    def distance(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.resize == "official":
            preds, target = official_resize(preds), official_resize(target)
        return self.network(preds, target)
