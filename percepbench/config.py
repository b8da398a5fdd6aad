"""Run configuration: one dataclass, filled from defaults < config file (YAML or TOML) < command-line flags.

Task and metric options (``--task-args`` / ``--metric-args`` / ``task_args`` / ``metric_args``) follow one
rule for lists, whatever the task or metric: an option takes a list when the task's or metric's constructor
annotates it with a list type (``list``, ``tuple``, ``set``, ``Sequence``, ``Iterable``, ``Collection``, alone
or in a union such as ``str | list[str] | None``) or, unannotated, defaults to a list or tuple. Such an
option's value becomes a list: a string is split on :data:`LIST_SEPARATOR` (``+``; commas already separate
options on the command line), each part read like any option value (:func:`parse_scalar`), so
``severity2afc:families=blur+noise`` gives ``["blur", "noise"]`` and ``families=blur`` gives ``["blur"]``; a
list from a config file is kept (as a list); any other single value becomes a one-item list. Every other
option is passed as given, ``+`` included (a path ``root=/data/a+b`` stays one string).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from percepbench.errors import UsageError

DEFAULT_TASK = "severity2afc"
#: the one separator of list values in task and metric options (``families=blur+noise``)
LIST_SEPARATOR = "+"
#: ``RunConfig.precision`` values: fp32, or autocast to bfloat16 / float16 (``torch.autocast``)
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class RunConfig:
    """Everything a run needs. ``metrics=None`` means every metric usable offline."""

    metrics: list[str] | None = None
    tasks: list[str] = field(default_factory=lambda: [DEFAULT_TASK])
    out: str | None = None
    device: str | None = None
    batch_size: int = 32
    #: DataLoader workers for file-based tasks; None: automatic (0 on the CPU, where the metric needs every
    #: core; on CUDA up to 8, leaving one core, so image decoding keeps the GPU busy)
    num_workers: int | None = None
    seed: int = 0
    data_root: str | None = None
    n_boot: int = 1000
    metric_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    task_args: dict[str, dict[str, Any]] = field(default_factory=dict)
    progress: bool = True
    #: embedding cache dir; None: the default (``$PERCEPBENCH_EMBED_CACHE`` or ``<weights cache>/embeddings``);
    #: False: off (each unique image is still embedded only once per run)
    embed_cache: str | bool | None = None
    #: numeric precision of metric computations: ``fp32`` (default), or ``bf16`` / ``fp16`` autocast
    precision: str = "fp32"
    #: continue the run whose results ``out`` holds: skip its finished (task, metric) pairs (``--resume``)
    resume: bool = False
    #: replace the results ``out`` holds (only percepbench's own files are removed; ``--overwrite``)
    overwrite: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.metrics, str):
            self.metrics = split_list(self.metrics)
        if isinstance(self.tasks, str):
            self.tasks = split_list(self.tasks)
        if self.data_root is None:
            from percepbench.data import env_data_root

            self.data_root = env_data_root()
        for name in ("batch_size", "n_boot"):
            if int(getattr(self, name)) < 1:
                raise UsageError(f"{name} must be >= 1, got {getattr(self, name)}")
        if isinstance(self.embed_cache, str) and self.embed_cache.strip().lower() in ("off", "false", "no", "none", ""):
            self.embed_cache = False
        if self.embed_cache is True:
            self.embed_cache = None
        self.precision = str(self.precision).strip().lower()
        if self.precision not in PRECISIONS:
            raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.num_workers is not None and int(self.num_workers) < 0:
            raise UsageError(f"num_workers must be >= 0, got {self.num_workers}")
        self.metric_args = normalise_options("metric", self.metric_args)
        self.task_args = normalise_options("task", self.task_args)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def split_list(value: str | list[str]) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def parse_scalar(text: str) -> Any:
    """``"3"`` -> 3, ``"true"`` -> True, ``"0.5"`` -> 0.5, anything else stays a string."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (int, float, bool, str)) or value is None else text


def parse_name_args(items: list[str], flag: str) -> dict[str, dict[str, Any]]:
    """``["lpips:version=0.0", "severity2afc:per_family=8"]`` -> ``{name: {key: value}}``.

    Values are read with :func:`parse_scalar`; list options are split on ``+`` later, when the
    :class:`RunConfig` is built (:func:`normalise_options`), since only the task or metric says which
    options take lists.
    """
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        name, sep, rest = item.partition(":")
        if not sep or not name or "=" not in rest:
            raise UsageError(f"{flag} expects NAME:KEY=VALUE[,KEY=VALUE...], got {item!r}")
        for pair in rest.split(","):
            key, eq, value = pair.partition("=")
            if not eq or not key.strip():
                raise UsageError(f"{flag} expects NAME:KEY=VALUE[,KEY=VALUE...], got {item!r}")
            out.setdefault(name.strip(), {})[key.strip()] = parse_scalar(value.strip())
    return out


#: a list type in an annotation's text (``str | list[str] | None``, ``typing.Sequence[str]``); not inside quotes
_LIST_TYPE = re.compile(r"(?<![\w'\"])(list|tuple|set|frozenset|Sequence|MutableSequence|Iterable|Collection"
                        r"|List|Tuple|Set)\b")


def _annotation_text(annotation: Any) -> str:
    if isinstance(annotation, str):  # ``from __future__ import annotations``: the source text
        return annotation
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation)  # list[str], int | list[int], typing.Sequence[str] ...


def list_options(factory: Any) -> set[str]:
    """Names of the keyword options of ``factory`` (a class or function) that take a list: annotated with a
    list type, alone or in a union (``list``, ``tuple``, ``set``, ``frozenset``, ``Sequence``, ``Iterable``,
    ``Collection``), or unannotated with a list or tuple default."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # no introspectable signature: no option is known to take a list
        return set()
    out = set()
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.annotation is not p.empty:
            if _LIST_TYPE.search(_annotation_text(p.annotation)):
                out.add(p.name)
        elif isinstance(p.default, (list, tuple)):
            out.add(p.name)
    return out


def as_list_value(value: Any) -> list[Any]:
    """The value of a list option as a list: a string split on ``+`` (each part read by
    :func:`parse_scalar`, empty parts dropped), a list/tuple/set kept, any other value a one-item list."""
    if isinstance(value, str):
        return [parse_scalar(part.strip()) for part in value.split(LIST_SEPARATOR) if part.strip()]
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    return [value]


def normalise_options(kind: str, args: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """``{name: {option: value}}`` with the values of list options made lists (:func:`as_list_value`).

    ``kind`` is ``"task"`` or ``"metric"``; each name is resolved in that registry as the runner does, and
    the options that take lists are read off the constructor of the registered target
    (:func:`list_options`). A name that does not resolve, or a target that cannot be imported, is left as
    it is: the runner reports it with its own message.
    """
    if not args:
        return {}
    if not isinstance(args, dict) or not all(isinstance(v, dict) for v in args.values()):
        raise UsageError(f"{kind}_args must map {kind} names to {{option: value}} mappings, got {args!r}")
    from percepbench.registry import METRICS, TASKS

    registry = METRICS if kind == "metric" else TASKS
    out: dict[str, dict[str, Any]] = {}
    for name, options in args.items():
        try:
            listed = list_options(registry.get(name).load())
        except (UsageError, ImportError, ValueError):  # unknown name or broken target: the runner names it
            listed = set()
        out[name] = {key: as_list_value(value) if key in listed else value for key, value in options.items()}
    return out


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) run config into a dict of RunConfig fields."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{p}: cannot read config file ({exc.strerror or exc})") from exc
    try:
        data = tomllib.loads(text) if p.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise UsageError(f"{p}: not valid {'TOML' if p.suffix == '.toml' else 'YAML'}: {exc}") from exc
    data = data or {}
    if not isinstance(data, dict):
        raise UsageError(f"{p}: expected a mapping of settings at the top level")
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(k.replace("-", "_") for k in data if k.replace("-", "_") not in known)
    if unknown:
        raise UsageError(f"{p}: unknown settings {unknown}; known: {sorted(known)}")
    return {k.replace("-", "_"): v for k, v in data.items()}


def build_config(file_values: dict[str, Any], flag_values: dict[str, Any]) -> RunConfig:
    """Defaults < file < flags (flags that were not given are ``None`` and do not override)."""
    merged = dict(file_values)
    for key, value in flag_values.items():
        if value is None:
            continue
        if key in ("metric_args", "task_args"):
            base = {k: dict(v) for k, v in (merged.get(key) or {}).items()}
            for name, kv in value.items():
                base.setdefault(name, {}).update(kv)
            merged[key] = base
        else:
            merged[key] = value
    try:
        return RunConfig(**merged)
    except TypeError as exc:
        raise UsageError(f"bad run configuration: {exc}") from exc
