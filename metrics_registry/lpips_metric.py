"""LPIPS (Zhang et al. 2018) as a percepbench metric: ``lpips`` (= ``lpips.alex``), ``lpips.vgg``, ``lpips.squeeze``.

The networks are the ``lpips`` package's own building blocks (its AlexNet / VGG16 / SqueezeNet1.1 trunk
wrappers, ``ScalingLayer``, ``NetLinLayer`` and ``normalize_tensor``); percepbench does the loading itself,
because the package's loading is unsafe in two ways:

- **Linear heads** are the ``.pth`` files shipped inside the installed ``lpips`` wheel
  (``lpips/weights/v<version>/<net>.pth``), declared as :class:`~percepbench.specs.WeightFile` entries
  with ``cache="package"`` (:data:`HEAD_WEIGHTS`, full sha256 of lpips 0.1.4): verified through
  :func:`percepbench.weights.ensure_files`, then loaded with ``torch.load(..., weights_only=True)`` and
  ``load_state_dict(strict=True)``: a missing or unexpected key is a
  :class:`~percepbench.errors.WeightsError` naming the file. (The package loads them with
  ``strict=False``, so a mismatch silently leaves random heads.)
- **Trunks** (torchvision's ImageNet weights) are never downloaded by torchvision itself: they are declared
  as :class:`~percepbench.specs.WeightFile` entries living in torchvision's own cache
  (``<torch hub dir>/checkpoints/<torchvision file name>``) and fetched, verified and reported offline
  through :func:`percepbench.weights.ensure_files`. Only the ``features.*`` tensors are used; every one of
  them must be present and consumed.

The spec records the input normalisation as ImageNet mean/std (:data:`percepbench.specs.IMAGENET`): the
package's v0.1 ``ScalingLayer`` (shift and scale on [-1, 1] input), applied here, is exactly that on [0, 1]
input (checked against the package in the tests; v0.0 has no scaling). The spec of ``lpips.<net>`` lists
the trunk and the v0.1 head, so ``percepbench weights list|verify`` and ``meta.weights`` of a run show
both; with ``version="0.0"`` the metric loads the v0.0 head, verified the same way. The same loading
helpers serve DISTS (:mod:`percepbench.metrics_registry.dists`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from percepbench.download import check_torch_file
from percepbench.errors import WeightsError
from percepbench.metrics_registry.base import DistanceMetric
from percepbench.metrics_registry.catalog.lpips import (  # noqa: F401  (re-exported)
    CHANNELS,
    CITATION,
    HEAD_WEIGHTS,
    LPIPS_VERSION,
    MIN_SIZE,
    NETS,
    TRUNK_WEIGHTS,
    VERSIONS,
)
from percepbench.specs import WeightFile

# ------------------------------------------------------------------------------------------- shared loading


def strict_load(module: nn.Module, state: Mapping[str, torch.Tensor], path: Path | str, what: str) -> None:
    """``module.load_state_dict(state, strict=True)`` with every failure a WeightsError naming ``path``."""
    expected = set(module.state_dict())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected}")
        raise WeightsError(f"{path}: not a valid {what} file: {'; '.join(parts)}")
    try:
        module.load_state_dict(dict(state), strict=True)
    except RuntimeError as exc:  # shape mismatches
        detail = " ".join(str(exc).split())
        raise WeightsError(f"{path}: not a valid {what} file: {detail}") from exc


def load_state_file(path: Path | str) -> dict[str, torch.Tensor]:
    """A ``{name: tensor}`` state dict from a torch file (``weights_only=True``), else a WeightsError."""
    state = check_torch_file(path)
    if not isinstance(state, Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise WeightsError(f"{path}: expected a state dict of named tensors, got {type(state).__name__}")
    return dict(state)


def load_weight_file(weight: WeightFile) -> tuple[dict[str, torch.Tensor], Path]:
    """Fetch or find ``weight`` through percepbench's weights manager, verify it, and return its state dict
    (read with ``weights_only=True``) and the file's path.

    Raises:
        OfflineError: offline mode (or no network) and a downloadable file is not in its cache.
        WeightsError: the file fails verification (a tampered file shipped in a package included), its
            package is not installed, or it is not a state dict of named tensors.
    """
    from percepbench.weights import ensure_file

    path = ensure_file(weight)
    return load_state_file(path), path


def load_trunk_features(weight: WeightFile) -> tuple[dict[str, torch.Tensor], Path]:
    """Fetch a torchvision checkpoint through percepbench's weights manager; return its ``features.*``
    tensors (prefix removed) and the file's path.

    Raises:
        OfflineError: offline mode (or no network) and the file is not in ``<torch hub>/checkpoints``.
        WeightsError: the file fails verification or holds no ``features.*`` tensors.
    """
    state, path = load_weight_file(weight)
    features = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    if not features:
        raise WeightsError(f"{path}: no 'features.*' tensors; not a torchvision checkpoint of the expected "
                           f"network (from {weight.url})")
    return features, path


# -------------------------------------------------------------------------------------------------- network


class _Heads(nn.Module):
    """The linear heads ``lin0 .. lin{L-1}``, named as in the shipped files (``lin0.model.1.weight``)."""

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        from lpips import NetLinLayer

        for k, c in enumerate(channels):
            # use_dropout=True gives the module layout of the shipped files (dropout is off in eval mode)
            self.add_module(f"lin{k}", NetLinLayer(c, use_dropout=True))

    def __getitem__(self, k: int) -> nn.Module:
        return getattr(self, f"lin{k}")


class LPIPSNetwork(nn.Module):
    """LPIPS from the ``lpips`` package's blocks, random-initialised; load weights with the methods below.

    ``forward(x, y)`` takes images in [-1, 1] and returns one map (N, 1, h_k, w_k) per compared layer: the
    head-weighted squared difference of unit-normalised features.
    """

    def __init__(self, net: str = "alex", version: str = "0.1") -> None:
        super().__init__()
        import lpips
        from lpips import pretrained_networks as pn

        if net not in NETS:
            raise ValueError(f"unknown LPIPS network {net!r}; choose one of {', '.join(NETS)}")
        if version not in VERSIONS:
            raise ValueError(f"unknown LPIPS version {version!r}; choose '0.1' or '0.0'")
        self.net, self.version = net, version
        trunk_cls = {"alex": pn.alexnet, "vgg": pn.vgg16, "squeeze": pn.squeezenet}[net]
        with warnings.catch_warnings():  # the package still passes torchvision's deprecated `pretrained=`
            warnings.simplefilter("ignore", UserWarning)
            self.trunk = trunk_cls(requires_grad=False, pretrained=False)  # random; never downloads
        self.scaling = lpips.ScalingLayer()
        self.heads = _Heads(CHANNELS[net])
        self._normalize = lpips.normalize_tensor

    # -- weights -----------------------------------------------------------------------------------------
    def randomize_heads(self, generator: torch.Generator | None = None) -> None:
        """Random non-negative heads (trained LPIPS heads are non-negative, so distances stay >= 0)."""
        with torch.no_grad():
            for k in range(len(CHANNELS[self.net])):
                w = self.heads[k].model[-1].weight
                w.copy_(torch.rand(w.shape, generator=generator) / w.shape[1] ** 0.5)

    def load_heads(self, path: Path | str, state: Mapping[str, torch.Tensor] | None = None) -> None:
        """Load the linear heads strictly: from ``state`` (read from ``path``) when given, else from the file
        ``path`` (``weights_only=True``; no checksum: verify official heads with :data:`HEAD_WEIGHTS`)."""
        path = Path(path)
        if state is None:
            if not path.is_file():
                raise WeightsError(f"LPIPS head file {path} does not exist")
            state = load_state_file(path)
        strict_load(self.heads, state, path, f"LPIPS {self.net} v{self.version} head")

    def load_trunk(self, features: Mapping[str, torch.Tensor], path: Path | str) -> None:
        """Load torchvision ``features.*`` tensors (prefix removed) strictly into the trunk."""
        # the package's trunk is torchvision's `features` cut into slices: sliceK.<index>.<param>
        mapped: dict[str, torch.Tensor] = {}
        used: set[str] = set()
        for key in self.trunk.state_dict():
            source = key.split(".", 1)[1]
            if source in features:
                mapped[key] = features[source]
                used.add(source)
        unused = {f"features.{k}": v for k, v in features.items() if k not in used}
        strict_load(self.trunk, {**mapped, **unused}, path, f"torchvision {self.net} trunk")

    # -- computation -------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        if self.version == "0.1":  # v0.0 had no input scaling (a bug kept for reproducibility)
            x, y = self.scaling(x), self.scaling(y)
        maps = []
        for k, (fx, fy) in enumerate(zip(self.trunk(x), self.trunk(y), strict=True)):
            diff = (self._normalize(fx) - self._normalize(fy)) ** 2
            maps.append(self.heads[k](diff))
        return maps


# --------------------------------------------------------------------------------------------------- metric


class LayerMapsDistance(DistanceMetric):
    """The distance of LPIPS-style networks (LPIPS, ST-LPIPS): ``self.network(2x - 1, 2y - 1)`` returns one
    head-weighted difference map (N, 1, h, w) per layer; the per-pair value is the sum over layers of each
    map's spatial mean, and :meth:`spatial_map` sums the maps upsampled (bilinear) to the input size.
    Subclasses set ``network``, ``spatial`` and ``last_spatial_map`` in ``__init__``."""

    network: nn.Module
    spatial: bool
    last_spatial_map: torch.Tensor | None

    def _maps(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        return self.network(2.0 * x - 1.0, 2.0 * y - 1.0)

    @staticmethod
    def _upsampled_sum(maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        total = 0
        for m in maps:
            total = total + F.interpolate(m, size=size, mode="bilinear", align_corners=False)
        return total

    def distance(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        maps = self._maps(preds, target)
        if self.spatial:
            self.last_spatial_map = self._upsampled_sum(maps, tuple(preds.shape[-2:])).detach()
        total = 0
        for m in maps:
            total = total + m.mean(dim=(2, 3), keepdim=True)
        return total.reshape(preds.shape[0])

    def spatial_map(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-pixel map (N, 1, H, W) of a validated pair of batches (state untouched)."""
        x, y = self.prepare(preds, target)
        return self._upsampled_sum(self._maps(x, y), tuple(x.shape[-2:]))


class LPIPSMetric(LayerMapsDistance):
    """LPIPS distance per pair (lower = more similar), as a torchmetrics ``Metric``.

    Inputs are NCHW RGB batches, float in [0, 1] or uint8, at their native size (at least
    ``MIN_SIZE[net]`` px: alex 31, vgg 16, squeeze 17); they are mapped to [-1, 1] inside. The per-pair
    value is the lpips package's ``LPIPS(net, version)(2x-1, 2y-1)`` flattened to shape (N,): the sum over
    layers of the spatial mean of each head's map. Differentiable with respect to the inputs; the network
    is frozen.

    **Spatial maps.** :meth:`spatial_map` returns the per-pixel map (N, 1, H, W): each layer's map
    upsampled bilinearly to the input size and summed, as ``LPIPS(spatial=True)`` does. Its mean is close
    to, but not exactly, the per-pair value (the upsampling is not mean-preserving). With ``spatial=True``
    every ``update``/``pairwise`` also keeps the map of its batch in ``last_spatial_map``.

    Args:
        net: trunk, ``"alex"`` (default), ``"vgg"`` or ``"squeeze"``.
        version: ``"0.1"`` (default) or ``"0.0"`` (the first release: no input scaling, other heads).
        spatial: keep the last batch's spatial map in ``last_spatial_map``.
        pretrained: load the ImageNet trunk (``<torch hub>/checkpoints``, downloaded through percepbench
            when missing) and the shipped heads. False: random trunk and random non-negative heads, no
            file or network access (for tests and shape checks).
        heads_file: load the linear heads from this file instead (strictly; e.g. retrained heads).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per pair).

    Raises:
        ValueError: unknown ``net`` or ``version``.
        WeightsError: a head or trunk file fails its sha256 or has missing/unexpected keys (names the file).
        OfflineError: the trunk must be downloaded but offline mode is on or the network fails.

    Example:
        >>> import torch
        >>> from percepbench.metrics_registry.lpips_metric import LPIPSMetric
        >>> _ = torch.manual_seed(0)
        >>> metric = LPIPSMetric(net="squeeze", pretrained=False, reduction="none")
        >>> metric(torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)).shape
        torch.Size([2])
        >>> metric.spatial_map(torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 1, 32, 32])
    """

    is_differentiable = True

    def __init__(self, net: str = "alex", version: str = "0.1", spatial: bool = False, pretrained: bool = True,
                 heads_file: str | Path | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if net not in NETS:
            raise ValueError(f"unknown LPIPS network {net!r}; choose one of {', '.join(NETS)}")
        self.net, self.version, self.spatial = net, version, bool(spatial)
        self.min_size = MIN_SIZE[net]
        # fetch the trunk first: a missing file fails fast, before seconds of network construction
        trunk = load_trunk_features(TRUNK_WEIGHTS[net]) if pretrained else None
        network = LPIPSNetwork(net, version)
        if heads_file is not None:
            network.load_heads(heads_file)
        elif pretrained:
            state, path = load_weight_file(HEAD_WEIGHTS[(version, net)])  # sha256-verified in lpips' wheel
            network.load_heads(path, state)
        else:
            network.randomize_heads()
        if trunk is not None:
            network.load_trunk(*trunk)
        self.network = self.freeze(network)
        self.last_spatial_map: torch.Tensor | None = None
        if not pretrained or heads_file is not None:  # random trunk and heads, or the user's own heads file
            self.weight_files_used = [TRUNK_WEIGHTS[net].filename] if pretrained else []
