"""Frozen, typed specs: one per registered metric or task.

A spec couples everything tooling needs to know about an entry without importing its implementation:
the lazy ``"module:attr"`` target, direction, input convention, weight files, licence and citation.
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


@dataclass(frozen=True)
class WeightFile:
    """One file a metric needs: where it comes from and how to check it.

    ``filename`` is relative to the weights cache directory (it may contain ``/``); ``sha256`` and ``size``
    describe the file as downloaded (for an archive: the archive itself). ``extract_to`` marks a zip
    archive: it is extracted into the cache directory and the file or folder named by ``extract_to``
    (relative to the cache directory) is what must exist afterwards.

    ``cache`` says which directory ``filename`` is relative to: ``"percepbench"`` (default), the percepbench
    weights cache; ``"torch_hub"``, ``<torch hub dir>/checkpoints``, where torchvision keeps its pretrained
    weights (so a file fetched once serves torchvision and percepbench alike). ``sha256_prefix`` holds the
    leading hex digits of the sha256 when only those are published (torchvision file names embed 8);
    the full ``sha256``, when known, is always preferred.
    """

    filename: str
    url: str
    sha256: str | None = None
    size: int | None = None
    extract_to: str | None = None
    cache: Literal["percepbench", "torch_hub"] = "percepbench"
    sha256_prefix: str | None = None

    def __post_init__(self) -> None:
        if self.cache not in ("percepbench", "torch_hub"):
            raise ValueError(f"WeightFile {self.filename!r}: cache must be 'percepbench' or 'torch_hub', "
                             f"got {self.cache!r}")
        if self.sha256_prefix is not None and not re.fullmatch(r"[0-9a-f]{1,64}", self.sha256_prefix):
            raise ValueError(f"WeightFile {self.filename!r}: sha256_prefix must be lower-case hex digits, "
                             f"got {self.sha256_prefix!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class InputConvention:
    """What a metric expects and what the runner does to file inputs before calling it.

    Tensors handed to a metric are always NCHW RGB, float in [0, 1] or uint8 in [0, 255]; the metric
    converts to its internal range (``value_range``) itself. ``size``/``interpolation`` describe the
    resize the data layer applies to image files for this metric (``None``: native size).
    """

    value_range: tuple[float, float] = (0.0, 1.0)
    size: int | None = None
    interpolation: Literal["bilinear", "bicubic", "nearest", "area"] | None = None
    min_size: int = 1
    grayscale: Literal["expand", "reject"] = "expand"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class MetricSpec:
    """Registry entry for a metric.

    ``higher_is_better`` is False for every percepbench metric: all report a distance. ``distance`` says
    how the underlying score became one (``"1 - SSIM"``, ``"-PSNR"``, ``"identity"``).
    """

    name: str
    target: str
    description: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    higher_is_better: bool = False
    distance: str = "identity"
    kind: Literal["pairwise", "embedding"] = "pairwise"
    inputs: InputConvention = field(default_factory=InputConvention)
    weights: tuple[WeightFile, ...] = ()
    reference: str = ""
    licence: str = ""
    citation: str = ""
    default: bool = False

    def __post_init__(self) -> None:
        check_name(self.name)
        object.__setattr__(self, "kwargs", _freeze(self.kwargs))
        object.__setattr__(self, "weights", tuple(self.weights))
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
    kind: Literal["2afc", "jnd", "odd_one_out", "retrieval", "analysis"] = "2afc"
    measure: str = "2afc_accuracy"
    needs_data: bool = False
    offline: bool = True
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
