"""The typed ``meta`` of ``results.json``: what the runner writes and what ``load_results`` returns.

``meta`` is one flat JSON object (schema version 1). Its keys are grouped here by what they describe —
:class:`Environment` (where the run ran), :class:`Timings` (when), :class:`RunMeta` (how and what: precision,
seed, resolved config, metric and task specs, weight files, protocol, failures) — and :class:`RunMeta`
holds them all. The types are ``TypedDict``: at run time ``meta`` stays a plain ``dict`` (what JSON, pandas
and every reader already use), and a type checker sees its keys.

:func:`read_meta` is the reader's side: it checks every documented key against its type (a wrong type is a
:class:`~percepbench.errors.DataError` naming the file and the key path, e.g.
``meta.failed[0].kind``) and fills a documented key that is absent with its empty value (``None``, ``{}``
or ``[]``; ``precision`` reads as ``"fp32"``, the only precision before the key existed). Files written
before a key was added therefore still load, and keys this version does not know (written by a newer
one) are kept as they are: new fields are additive within schema version 1.
"""

# No ``from __future__ import annotations`` here: TypedDict reads ``NotRequired`` from evaluated annotations
# (with string annotations Python 3.11 counts a NotRequired key as required).
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, NotRequired, TypedDict, Union

from percepbench.errors import DataError

Precision = Literal["fp32", "bf16", "fp16", "int8"]
FailureKind = Literal["data", "weights", "failure"]


class Environment(TypedDict):
    """Where the run ran. A scalar key is None only where the file lacks it (see :func:`read_meta`)."""

    percepbench_version: str | None
    #: commit of the percepbench checkout (``-dirty`` suffix with uncommitted changes); None outside git
    git_sha: str | None
    torch_version: str | None
    #: Python version, e.g. ``"3.11.7"``
    python: str | None
    #: ``platform.platform()``
    platform: str | None
    #: torch device the metrics ran on: ``"cpu"``, ``"cuda:0"``, ``"mps"``
    device: str | None
    #: the GPU name on CUDA, the CPU model on the CPU, None on other devices
    device_name: str | None
    #: the host's CPU model name (``model name`` in ``/proc/cpuinfo``; ``platform.processor()`` elsewhere)
    cpu_model: str | None
    #: the host CPU's features that decide which precisions are fast (``percepbench.cpu_info.SPEED_FLAGS``
    #: present, e.g. ``["avx2", "avx512f", "avx512_bf16", "amx_tile"]``); empty where unknown or not recorded
    cpu_flags: list[str]
    #: processes that computed the run (``torchrun`` ranks; 1 for a plain run); None in older files
    world_size: int | None


class Timings(TypedDict):
    """When the run ran (UTC, ISO 8601 to the second). Seconds per (task, metric) are in the protocol."""

    started: str | None
    #: None while the run is going on, or when it was interrupted
    finished: str | None


class WeightRecord(TypedDict):
    """One weight file of a metric, with the sha256 it was verified against (known or recorded)."""

    filename: str
    path: str
    url: str
    sha256: str | None


class EmbeddingStats(TypedDict):
    """How an embedding metric met a file-based task: each unique image embedded once, or read from cache."""

    unique_images: int
    image_references: int
    from_cache: int
    embedded: int
    #: the embedding-cache folder of this metric configuration; None with the cache off
    cache: str | None
    #: damaged cache entries that were recomputed (only with the cache on)
    corrupt_entries_replaced: NotRequired[int]


class ProtocolEntry(TypedDict):
    """How one (task, metric) pair was run: its images' loading convention, and how long it took."""

    task: str
    metric: str
    #: the input convention the task loaded images with (``InputConvention.to_dict()``)
    inputs: dict[str, Any]
    #: ``"native size"`` or ``"<size>x<size> <interpolation>"``, with a note when the task's protocol chose it
    resize: str
    #: the scales a multi-scale metric used (its ``last_scales``), else None
    scales_used: Any
    #: the precision the metric computed in: the run's, or ``fp32`` for a metric whose spec does not list the
    #: run's (``MetricSpec.precisions``); absent in files written before the key existed
    precision: NotRequired[Precision]
    #: None when the metric computed distances pair by pair
    embedding: EmbeddingStats | None
    #: wall-clock seconds of the distances and scoring
    seconds: float
    #: set-level tasks (retrieval): how the gallery was ranked (backend, index, candidates, queries that
    #: needed brute force, timings; for an approximate index its recall against exact search)
    search: NotRequired[dict[str, Any]]


class Failure(TypedDict):
    """A (task, metric) pair that produced no records."""

    task: str
    metric: str
    #: ``"data"``: the task's data is missing or unreadable; ``"weights"``: the metric's weight files are
    #: missing and could not be downloaded (the pair never ran); ``"failure"``: anything else
    kind: FailureKind
    #: ``"<exception type>: <message>"``
    error: str


class RunMeta(Environment, Timings):
    """The whole ``meta`` object: :class:`Environment` and :class:`Timings` keys, plus these."""

    #: ``fp32``, or the ``torch.autocast`` dtype the metrics ran under
    precision: Precision
    seed: int | None
    #: the resolved run configuration (``RunConfig.to_dict()``, ``out`` made explicit)
    config: dict[str, Any]
    #: ``MetricSpec.to_dict()`` of every selected metric, by name
    metrics: dict[str, dict[str, Any]]
    #: ``TaskSpec.to_dict()`` of every selected task, by name
    tasks: dict[str, dict[str, Any]]
    #: the weight files of every metric that has some, by metric name
    weights: dict[str, list[WeightRecord]]
    #: metrics built with ``pretrained=false`` (random weights: not the published metric); absent in files
    #: written before the key existed
    random_weights: NotRequired[list[str]]
    #: what each task's ``protocol()`` says about its data (source, generation, labels), by task name
    task_protocols: dict[str, dict[str, Any]]
    #: one entry per (task, metric) pair that produced records, in run order
    protocol: list[ProtocolEntry]
    #: one entry per (task, metric) pair that failed
    failed: list[Failure]


#: Every top-level key of ``meta``, in the order the runner writes them.
META_KEYS: tuple[str, ...] = tuple(typing.get_type_hints(RunMeta))

_DEFAULTS: dict[str, Any] = {"precision": "fp32"}


def _empty(hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is dict or (isinstance(hint, type) and typing.is_typeddict(hint)):
        return {}
    if origin is list:
        return []
    return None


def _kind(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return " or ".join(repr(v) for v in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return " or ".join(_kind(h) for h in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if origin is dict or typing.is_typeddict(hint):
        return "an object"
    if origin is list:
        return "a list"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(hint, str(hint))


def _matches(value: Any, hint: Any) -> bool:
    """Shallow check of ``value`` against ``hint`` (containers checked for their own type only)."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is dict or typing.is_typeddict(hint):
        return isinstance(value, dict)
    if origin is list:
        return isinstance(value, list)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _check(value: Any, hint: Any, where: str, path: str) -> Any:
    """``value`` checked against ``hint`` (recursively); TypedDict keys that are absent get their empty value."""
    if not _matches(value, hint):
        raise DataError(f"{where}: {path} must be {_kind(hint)}, got {value!r:.80}")
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):  # X | None: check against the member that matched
        member = next(h for h in typing.get_args(hint) if _matches(value, h))
        return _check(value, member, where, path)
    if typing.is_typeddict(hint):
        out = dict(value)
        optional = getattr(hint, "__optional_keys__", frozenset())
        for key, sub in typing.get_type_hints(hint).items():
            if key in out:
                out[key] = _check(out[key], sub, where, f"{path}.{key}")
            elif key not in optional:
                if _empty(sub) is None and not _matches(None, sub):
                    raise DataError(f"{where}: {path} lacks {key!r}")
                out[key] = _empty(sub)
        return out
    if origin is list:
        (item,) = typing.get_args(hint)
        return [_check(v, item, where, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _, item = typing.get_args(hint)
        return {k: _check(v, item, where, f"{path}[{k!r}]") for k, v in value.items()}
    return value


def read_meta(raw: Mapping[str, Any] | None, where: str) -> RunMeta:
    """``meta`` of a results file as :class:`RunMeta`: types checked, absent keys filled (module docstring).

    ``where`` names the file in error messages. Raises :class:`~percepbench.errors.DataError`.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise DataError(f"{where}: meta must be a JSON object, got {type(raw).__name__}")
    meta = dict(raw)
    hints = typing.get_type_hints(RunMeta)
    for key, hint in hints.items():
        if key not in meta:
            meta[key] = _DEFAULTS.get(key, _empty(hint))
        else:
            meta[key] = _check(meta[key], hint, where, f"meta.{key}")
    return typing.cast(RunMeta, meta)
