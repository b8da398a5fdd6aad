"""ST-LPIPS (Ghildyal & Liu, ECCV 2022) as a percepbench metric: ``stlpips`` (= ``stlpips.alex``), ``stlpips.vgg``.

ST-LPIPS is LPIPS v0.1 (input scaling, unit-normalised features of five trunk layers, squared differences,
non-negative 1x1 linear heads, spatial mean, sum over layers) on a *shift-tolerant* trunk trained from
scratch together with the heads. The trunk differs from torchvision's AlexNet / VGG16 in three ways, all
read from the authors' ``invariant_networks.py`` (variant ``"shift_tolerant"``) and rebuilt here:

- **Blur pooling** (Zhang's anti-aliased CNNs): every stride-2 step is a fixed depthwise 3x3 binomial
  filter ``[1, 2, 1]^T [1, 2, 1] / 16`` applied with stride 2, after **reflection padding of 2 pixels**
  on each side (the authors' ``pad_more=True``: ``filter size - 1``, not the usual ``(size - 1) / 2``).
  Max pools keep their window but run with stride 1 before such a blur.
- AlexNet's first convolution has stride 1 (11x11, padding 2), followed by a blur pool *before* its ReLU.
- The compared layers are the ReLU outputs of AlexNet's five convolutions (``relu1`` .. ``relu5``) and
  VGG16's ``relu1_2, relu2_2, relu3_3, relu4_3, relu5_3``; the pooling after the last compared layer is
  never used and not built.

Module indices inside each ``slice<k>`` follow the authors' ``nn.Sequential`` numbering, so the released
files load with ``load_state_dict(strict=True)``. Each file holds the whole network: ``scaling_layer``
(LPIPS' shift/scale buffers), ``net.slice<k>.<i>.{weight,bias,filt}`` and ``lin<k>.model.1.weight``; it is
fetched through percepbench's weights manager (:data:`~percepbench.metrics_registry.catalog.stlpips.WEIGHTS`,
full sha256), read with ``weights_only=True`` and loaded strictly; a missing or unexpected key, a shape
mismatch, or blur filters / scaling constants other than the fixed ones are a
:class:`~percepbench.errors.WeightsError` naming the file.

The authors' package evaluates the metric on [-1, 1] input (``normalize=True`` maps [0, 1] to it), as LPIPS
does; percepbench takes [0, 1] input and maps it the same way. The distance is symmetric.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from percepbench.errors import WeightsError
from percepbench.metrics_registry.catalog.stlpips import CHANNELS, CITATION, MIN_SIZE, NETS, WEIGHTS  # noqa: F401
from percepbench.metrics_registry.lpips_metric import (
    LayerMapsDistance,
    load_state_file,
    load_weight_file,
    strict_load,
)

#: LPIPS v0.1's input scaling on [-1, 1] input (``(x - shift) / scale``), stored in every ST-LPIPS file
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


def binomial_filter() -> torch.Tensor:
    """The fixed 3x3 blur ``[1, 2, 1]^T [1, 2, 1] / 16``."""
    a = torch.tensor([1.0, 2.0, 1.0])
    k = a[:, None] * a[None, :]
    return k / k.sum()


class BlurPool(nn.Module):
    """Anti-aliased stride-2 downsampling: reflection pad 2 px, depthwise binomial 3x3 blur, stride 2.

    The filter is a buffer named ``filt`` (C, 1, 3, 3), as in the released files.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("filt", binomial_filter().expand(channels, 1, 3, 3).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (2, 2, 2, 2), mode="reflect")
        return F.conv2d(x, self.filt, stride=2, groups=x.shape[1])


def _slices(layers: list[nn.Module], bounds: tuple[int, ...]) -> nn.Module:
    """``slice1 .. slice5`` holding ``layers[bounds[k]:bounds[k+1]]`` under their global indices."""
    trunk = nn.Module()
    for k in range(len(bounds) - 1):
        part = nn.Sequential()
        for i in range(bounds[k], bounds[k + 1]):
            part.add_module(str(i), layers[i])
        trunk.add_module(f"slice{k + 1}", part)
    return trunk


def alex_trunk() -> nn.Module:
    """The shift-tolerant AlexNet: outputs relu1 .. relu5 from ``slice1`` .. ``slice5``."""
    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 11, stride=1, padding=2), BlurPool(64), nn.ReLU(),                 # 0-2 -> relu1
        nn.MaxPool2d(3, stride=1), BlurPool(64), nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(),  # 3-6 -> relu2
        nn.MaxPool2d(3, stride=1), BlurPool(192), nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),  # 7-10
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),                                        # 11-12 -> relu4
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),                                        # 13-14 -> relu5
    ]
    return _slices(layers, (0, 3, 7, 11, 13, 15))


def vgg_trunk() -> nn.Module:
    """The shift-tolerant VGG16 (each 2x2 max pool: stride 1, then a blur pool)."""
    layers: list[nn.Module] = []
    channels = 3
    bounds = [0]
    for stage, (width, convs) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))):
        if stage:
            layers += [nn.MaxPool2d(2, stride=1), BlurPool(channels)]
        for _ in range(convs):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
            channels = width
        bounds.append(len(layers))
    return _slices(layers, tuple(bounds))


class _Scaling(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor(SHIFT).reshape(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).reshape(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale


class _Head(nn.Module):
    """A non-negative 1x1 convolution to one channel, keyed ``model.1.weight`` (dropout at index 0, off in
    eval mode) as in the released files."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _unit(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Features divided by their channel-wise L2 norm (LPIPS' ``normalize_tensor``)."""
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class STLPIPSNetwork(nn.Module):
    """ST-LPIPS, random-initialised; load the authors' file with :meth:`load_file`.

    ``forward(x, y)`` takes images in [-1, 1] and returns one map (N, 1, h_k, w_k) per compared layer.
    """

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        if net not in NETS:
            raise ValueError(f"unknown ST-LPIPS network {net!r}; choose one of {', '.join(NETS)}")
        self.net_name = net
        self.scaling_layer = _Scaling()
        self.net = alex_trunk() if net == "alex" else vgg_trunk()
        for k, c in enumerate(CHANNELS[net]):
            self.add_module(f"lin{k}", _Head(c))

    def heads(self) -> list[_Head]:
        return [getattr(self, f"lin{k}") for k in range(len(CHANNELS[self.net_name]))]

    def randomize_heads(self, generator: torch.Generator | None = None) -> None:
        """Random non-negative heads (trained heads are non-negative, so distances stay >= 0)."""
        with torch.no_grad():
            for head in self.heads():
                w = head.model[1].weight
                w.copy_(torch.rand(w.shape, generator=generator) / w.shape[1] ** 0.5)

    def load_file(self, path: Path | str, state: Mapping[str, torch.Tensor] | None = None) -> None:
        """Load a whole-network file strictly (from ``state`` read from ``path`` when given); the fixed blur
        filters and scaling constants must be the architecture's, else a WeightsError naming ``path``."""
        path = Path(path)
        if state is None:
            if not path.is_file():
                raise WeightsError(f"ST-LPIPS weight file {path} does not exist")
            state = load_state_file(path)
        what = f"ST-LPIPS {self.net_name} (shift_tolerant)"
        strict_load(self, state, path, what)
        fixed = {name: buf for name, buf in self.named_buffers()}
        for name, buf in fixed.items():
            if name.endswith(".filt"):
                expected = binomial_filter().expand_as(buf)
            else:
                expected = torch.tensor(SHIFT if name.endswith("shift") else SCALE).reshape(buf.shape)
            if not torch.allclose(buf.float(), expected, rtol=0, atol=1e-6):
                raise WeightsError(f"{path}: not a valid {what} file: {name} holds other values than the fixed "
                                   f"{'binomial blur filter' if name.endswith('.filt') else 'LPIPS input scaling'}")

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        h = self.scaling_layer(x)
        for k in range(1, 6):
            h = getattr(self.net, f"slice{k}")(h)
            out.append(h)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for head, fx, fy in zip(self.heads(), self.features(x), self.features(y), strict=True):
            maps.append(head((_unit(fx) - _unit(fy)) ** 2))
        return maps


class STLPIPSMetric(LayerMapsDistance):
    """ST-LPIPS distance per pair (lower = more similar), as a torchmetrics ``Metric``.

    Inputs are NCHW RGB batches, float in [0, 1] or uint8, at their native size (at least
    ``MIN_SIZE[net]`` px); they are mapped to [-1, 1] inside. The per-pair value is the authors'
    ``stlpips.LPIPS(net, variant="shift_tolerant")(2x-1, 2y-1)`` flattened to shape (N,). Symmetric and
    differentiable with respect to the inputs; the network is frozen.

    :meth:`spatial_map` returns the per-pixel map (N, 1, H, W): each layer's map upsampled bilinearly to
    the input size and summed (the authors' ``spatial=True``). With ``spatial=True`` every
    ``update``/``pairwise`` keeps the map of its batch in ``last_spatial_map``.

    Args:
        net: ``"alex"`` (default) or ``"vgg"``.
        spatial: keep the last batch's spatial map in ``last_spatial_map``.
        pretrained: load the authors' released file (downloaded through percepbench, sha256-checked).
            False: random trunk and random non-negative heads, no file or network access (tests, shapes).
        weights_file: load this whole-network file instead (strictly, same key layout; e.g. the authors'
            KADID-10k-trained ``vgg_shift_tolerant_kadid.pth``).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per pair).

    Raises:
        ValueError: unknown ``net``.
        WeightsError: the file fails its sha256, has missing/unexpected keys or other fixed filters.
        OfflineError: the file must be downloaded but offline mode is on or the network fails.

    Example:
        >>> import torch
        >>> from percepbench.metrics_registry.stlpips import STLPIPSMetric
        >>> _ = torch.manual_seed(0)
        >>> metric = STLPIPSMetric(pretrained=False, reduction="none")
        >>> metric(torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)).shape
        torch.Size([2])
    """

    is_differentiable = True

    def __init__(self, net: str = "alex", spatial: bool = False, pretrained: bool = True,
                 weights_file: str | Path | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if net not in NETS:
            raise ValueError(f"unknown ST-LPIPS network {net!r}; choose one of {', '.join(NETS)}")
        self.net, self.spatial = net, bool(spatial)
        self.min_size = MIN_SIZE[net]
        loaded = load_weight_file(WEIGHTS[net]) if pretrained and weights_file is None else None
        network = STLPIPSNetwork(net)
        if weights_file is not None:
            network.load_file(weights_file)
        elif loaded is not None:
            state, path = loaded
            network.load_file(path, state)
        else:
            network.randomize_heads()
        self.network = self.freeze(network)
        self.last_spatial_map: torch.Tensor | None = None
        if loaded is None:  # random weights, or the user's own file: none of the spec's files was read
            self.weight_files_used = []
