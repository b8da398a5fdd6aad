"""Frozen, typed specs: one per registered metric or task.

A spec couples everything tooling needs to know about an entry without importing its implementation:
the lazy ``"module:attr"`` target, direction, input convention (the one record of a metric's
preprocessing: size, interpolation, value range, mean/std), weight files (downloaded, or shipped inside an
installed package), licence and citation.
Specs are plain data: ``spec.to_dict()`` is what ``results.json`` records for a run.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from percepbench.config import AUTOCAST_PRECISIONS, PRECISIONS

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]*(\.[a-z0-9][a-z0-9_\-]*)?$")


def check_name(name: str) -> None:
    """Names are ``family`` or ``family.variant``: lower-case letters, digits, ``_`` and ``-``."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(
            f"invalid registry name {name!r}: use 'family' or 'family.variant' with lower-case letters, "
            "digits, '_' or '-'"
        )


def _freeze(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


def _shallow_dict(obj: Any) -> dict[str, Any]:
    d = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    d["kwargs"] = dict(d["kwargs"])
    return d


def load_target(target: str) -> Any:
    """Import ``"package.module:attr"`` and return the attribute."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"target {target!r} must look like 'package.module:attr'")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise ImportError(f"{module_name!r} has no attribute {attr!r} (target {target!r})") from exc


WeightCache = Literal["percepbench", "torch_hub", "package"]


@dataclass(frozen=True)
class WeightFile:
    """One file a metric needs: where it comes from and how to check it.

    ``cache`` says where the file lives and how it is obtained:

    - ``"percepbench"`` (default): ``filename`` is relative to the percepbench weights cache, downloaded
      from ``url`` when missing.
    - ``"torch_hub"``: relative to ``<torch hub dir>/checkpoints``, where torchvision keeps its pretrained
      weights (so a file fetched once serves torchvision and percepbench alike); downloaded from ``url``.
    - ``"package"``: shipped inside the installed Python package ``package`` (an import name), with
      ``filename`` relative to that package's directory; never downloaded (``url`` says where the package
      is published, for information). ``sha256`` is required: the hash of the file in
      ``package_version`` of the package, checked on every load; no ``.sha256`` sidecar is written.

    ``sha256`` and ``size`` describe the file as downloaded (for an archive: the archive itself).
    ``extract_to`` marks a zip archive: it is extracted into the cache directory and the file or folder
    named by ``extract_to`` (relative to the cache directory) is what must exist afterwards.
    ``sha256_prefix`` holds the leading hex digits of the sha256 when only those are published
    (torchvision file names embed 8); the full ``sha256``, when known, is always preferred.
    """

    filename: str
    url: str
    sha256: str | None = None
    size: int | None = None
    extract_to: str | None = None
    cache: WeightCache = "percepbench"
    sha256_prefix: str | None = None
    package: str | None = None
    package_version: str | None = None

    def __post_init__(self) -> None:
        if self.cache not in ("percepbench", "torch_hub", "package"):
            raise ValueError(f"WeightFile {self.filename!r}: cache must be 'percepbench', 'torch_hub' or "
                             f"'package', got {self.cache!r}")
        if self.sha256_prefix is not None and not re.fullmatch(r"[0-9a-f]{1,64}", self.sha256_prefix):
            raise ValueError(f"WeightFile {self.filename!r}: sha256_prefix must be lower-case hex digits, "
                             f"got {self.sha256_prefix!r}")
        if self.sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError(f"WeightFile {self.filename!r}: sha256 must be 64 lower-case hex digits, "
                             f"got {self.sha256!r}")
        if self.cache == "package":
            if not self.package or not self.package_version or self.sha256 is None:
                raise ValueError(f"WeightFile {self.filename!r}: a file shipped in a package needs `package`, "
                                 "`package_version` and the full `sha256` of the file in that version")
            if self.extract_to is not None:
                raise ValueError(f"WeightFile {self.filename!r}: a file shipped in a package is not an archive")
        elif self.package is not None or self.package_version is not None:
            raise ValueError(f"WeightFile {self.filename!r}: `package` and `package_version` need "
                             "cache='package'")

    @property
    def source(self) -> str:
        """Where the file comes from, in words: ``"shipped in lpips 0.1.4"`` or ``"from <url>"``."""
        if self.cache == "package":
            return f"shipped in {self.package} {self.package_version}"
        return f"from {self.url}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Normalization:
    """A per-channel ``(x - mean) / std`` a network applies to its RGB input in [0, 1]."""

    name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: ImageNet statistics (torchvision): DINO, DINOv2, SynCLR, MAE, DISTS' VGG16, and LPIPS v0.1, whose
#: ``ScalingLayer`` (shift, scale on [-1, 1] input) is this normalisation on [0, 1] input.
IMAGENET = Normalization("imagenet", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
#: OpenAI CLIP statistics: CLIP and OpenCLIP backbones.
OPENAI_CLIP = Normalization("openai_clip", (0.48145466, 0.4578275, 0.40821073),
                            (0.26862954, 0.26130258, 0.27577711))


@dataclass(frozen=True)
class InputConvention:
    """A metric's preprocessing, in one record: what the runner does to image files before calling the
    metric, and what the metric does inside.

    Tensors handed to a metric are always NCHW RGB, float in ``value_range`` (always [0, 1] for
    percepbench metrics) or uint8 in [0, 255]. ``size``/``interpolation`` describe the resize to
    ``size`` x ``size`` the data layer applies to image files for this metric (``None``: native size);
    a metric that needs a fixed size applies the same resize to tensors of another size itself.
    ``normalization`` lists the ``(x - mean) / std`` steps the metric's network applies inside to its
    [0, 1] input, one per branch in branch order (the DreamSim ensemble has three: DINO, CLIP, OpenCLIP);
    empty: none. ``min_size`` is the smallest image side accepted; ``grayscale`` says whether a
    one-channel input is repeated to RGB or rejected.
    """

    value_range: tuple[float, float] = (0.0, 1.0)
    size: int | None = None
    interpolation: Literal["bilinear", "bicubic", "nearest", "area"] | None = None
    normalization: tuple[Normalization, ...] = ()
    min_size: int = 1
    grayscale: Literal["expand", "reject"] = "expand"

    def __post_init__(self) -> None:
        object.__setattr__(self, "normalization", tuple(self.normalization))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class MetricSpec:
    """Registry entry for a metric.

    ``higher_is_better`` is False for every percepbench metric: all report a distance. ``distance`` says
    how the underlying score became one (``"1 - SSIM"``, ``"-PSNR"``, ``"identity"``).

    ``precisions`` lists the precisions the metric computes in (always including ``"fp32"``). Inside a
    ``bf16``/``fp16`` autocast region (``percepbench run --precision``, or the caller's own
    ``torch.autocast``), a metric whose list lacks that precision computes in fp32: autocast is disabled
    around it and its inputs are cast to float32 (:meth:`DistanceMetric.computes_in
    <percepbench.metrics_registry.base.DistanceMetric.computes_in>`). The classical metrics declare
    ``("fp32",)``: piq's indices and MS-SSIM give NaN in half precision. ``"int8"`` (dynamic int8
    quantisation of the linear layers, ``percepbench run --precision int8`` on the CPU) is never implied: a
    spec lists it where the metric's class supports it (``DistanceMetric.quantizable``) and its scores under
    it were measured (DreamSim: ``docs/performance.md``); other metrics compute in fp32 in an int8 run.
    """

    name: str
    target: str
    description: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    higher_is_better: bool = False
    distance: str = "identity"
    inputs: InputConvention = field(default_factory=InputConvention)
    weights: tuple[WeightFile, ...] = ()
    reference: str = ""
    licence: str = ""
    citation: str = ""
    default: bool = False
    precisions: tuple[str, ...] = AUTOCAST_PRECISIONS
    #: where the metric's gradient is not finite (a loss there gives NaN updates), e.g. ``"identical
    #: images, flat images"``; empty: finite wherever tested (``tests/test_usability.py`` checks both ways)
    nan_gradient: str = ""

    def __post_init__(self) -> None:
        check_name(self.name)
        object.__setattr__(self, "kwargs", _freeze(self.kwargs))
        object.__setattr__(self, "weights", tuple(self.weights))
        object.__setattr__(self, "precisions", tuple(self.precisions))
        unknown = [p for p in self.precisions if p not in PRECISIONS]
        if unknown:
            raise ValueError(f"metric {self.name!r}: unknown precision {unknown[0]!r} in precisions; "
                             f"known: {', '.join(PRECISIONS)}")
        if "fp32" not in self.precisions:
            raise ValueError(f"metric {self.name!r}: precisions must include 'fp32', got {self.precisions}")
        if self.higher_is_better:
            raise ValueError(
                f"metric {self.name!r}: percepbench metrics are distances (lower = more similar); "
                "convert the score and record how in `distance`"
            )

    @property
    def family(self) -> str:
        return self.name.split(".", 1)[0]

    def load(self) -> Any:
        """The implementation (a ``DistanceMetric`` subclass or factory)."""
        return load_target(self.target)

    def create(self, **overrides: Any) -> Any:
        """Instantiate the metric with the spec's kwargs updated by ``overrides``."""
        factory = self.load()
        kwargs = {**self.kwargs, **overrides}
        metric = factory(**kwargs)
        metric.spec = self
        return metric

    def to_dict(self) -> dict[str, Any]:
        d = _shallow_dict(self)
        d["inputs"] = self.inputs.to_dict()
        d["weights"] = [w.to_dict() for w in self.weights]
        return d


@dataclass(frozen=True)
class TaskSpec:
    """Registry entry for a task (a benchmark with its scoring rule)."""

    name: str
    target: str
    description: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    kind: Literal["2afc", "jnd", "odd_one_out", "retrieval", "analysis", "correlation"] = "2afc"
    measure: str = "2afc_accuracy"
    needs_data: bool = False
    #: the dataset source (``percepbench data ...``) the task reads by default, when it has one
    dataset: str = ""
    licence: str = ""
    citation: str = ""
    default: bool = False

    def __post_init__(self) -> None:
        check_name(self.name)
        object.__setattr__(self, "kwargs", _freeze(self.kwargs))

    @property
    def family(self) -> str:
        return self.name.split(".", 1)[0]

    def load(self) -> Any:
        return load_target(self.target)

    def create(self, **overrides: Any) -> Any:
        factory = self.load()
        task = factory(**{**self.kwargs, **overrides})
        task.spec = self
        return task

    def to_dict(self) -> dict[str, Any]:
        return _shallow_dict(self)
