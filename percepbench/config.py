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
import difflib
import inspect
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from percepbench.errors import PercepbenchError, UsageError

DEFAULT_TASK = "severity2afc"
#: the one separator of list values in task and metric options (``families=blur+noise``)
LIST_SEPARATOR = "+"
#: ``RunConfig.precision`` values: fp32, autocast to bfloat16 / float16 (``torch.autocast``), or int8 dynamic
#: quantisation of the linear layers of metrics that support it (CPU only)
PRECISIONS = ("fp32", "bf16", "fp16", "int8")
#: the precisions a metric spec lists unless it says otherwise (int8 must be declared: it changes the model)
AUTOCAST_PRECISIONS = ("fp32", "bf16", "fp16")


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
    #: numeric precision of metric computations: ``fp32`` (default), ``bf16`` / ``fp16`` autocast, or ``int8``
    #: (dynamic int8 quantisation of the linear layers of the metrics whose spec lists it; CPU only)
    precision: str = "fp32"
    #: ``torch.compile`` the embedding step of embedding metrics (``--compile``)
    compile: bool = False
    #: continue the run whose results ``out`` holds: skip its finished (task, metric) pairs (``--resume``)
    resume: bool = False
    #: replace the results ``out`` holds (only percepbench's own files are removed; ``--overwrite``)
    overwrite: bool = False
    #: stop before anything runs when a metric's weights or a task's data are missing (``--strict``); by
    #: default the other (task, metric) pairs run and the missing ones are recorded as failed
    strict: bool = False
    #: torch's intra-op CPU threads (``torch.set_num_threads``); None: torch's default (the physical cores).
    #: Fewer threads than cores helps when other processes share the machine (oversubscribed threads spin)
    threads: int | None = None
    #: load size (square, bicubic) for metrics without a fixed input size, so that they run on data of mixed
    #: image sizes (``--resize 256`` or ``256x256``); None: the task's choice or native size
    resize: int | None = None
    #: load sizes for named metrics or tasks, ``{"metric:psnr": 256, "task:kadid10k": 384}`` (names or globs;
    #: ``--resize metric:psnr=256``, or ``psnr=256`` when the name is only a metric or only a task). For a
    #: (task, metric) pair the metric's entry wins over the task's, which wins over ``resize``
    resize_for: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.metrics, str):
            self.metrics = split_list(self.metrics)
        if isinstance(self.tasks, str):
            self.tasks = split_list(self.tasks)
        if self.data_root is None:
            from percepbench.data import env_data_root

            self.data_root = env_data_root()
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise UsageError(f"threads must be a positive integer, got {self.threads!r}")
        self.resize, entries = parse_resize_setting(self.resize)
        self.resize_for = {**resolve_resize_entries({**entries, **dict(self.resize_for or {})})}
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


def parse_resize(value: Any) -> int | None:
    """``256``, ``"256"`` or ``"256x256"`` -> 256 (square only: metrics take square inputs); None stays None."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 8):
        return value
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX×]\s*(\d+)\s*)?", str(value))
    if not m or (m.group(2) and m.group(2) != m.group(1)) or int(m.group(1)) < 8:
        raise UsageError(f"resize must be a square size in pixels, at least 8, such as 256 or 256x256; got {value!r}")
    return int(m.group(1))


def parse_resize_setting(value: Any) -> tuple[int | None, dict[str, int]]:
    """The ``resize`` setting -> (run-wide size or None, ``{name: size}``).

    ``value``: None, a size (``256``, ``"256x256"``), an entry ``"NAME=SIZE"`` (``NAME`` a metric or task
    name or glob, optionally prefixed ``metric:`` or ``task:``), or a list of these (``--resize`` given
    several times). Two run-wide sizes, or a name given twice, are a :class:`UsageError`.
    """
    items = value if isinstance(value, (list, tuple)) else [value]
    size: int | None = None
    entries: dict[str, int] = {}
    for item in items:
        if item is None:
            continue
        if isinstance(item, str) and "=" in item:
            name, _, text = item.partition("=")
            name = name.strip()
            if not name:
                raise UsageError(f"resize entry {item!r}: say which metric or task, e.g. psnr=256 or task:bapps=64")
            if name in entries:
                raise UsageError(f"resize: {name!r} is given twice")
            entries[name] = parse_resize(text)
            continue
        if size is not None:
            raise UsageError(f"resize: two sizes for the whole run ({size} and {item!r}); name the metric or task "
                             "of the second, e.g. psnr=256")
        size = parse_resize(item)
    return size, entries


def resolve_resize_entries(entries: dict[str, int]) -> dict[str, int]:
    """``{"psnr": 256, "task:bapps": 64}`` -> ``{"metric:psnr": 256, "task:bapps": 64}``: every key prefixed with
    the registry it names. An unprefixed name known to both registries (``pieapp`` is a metric and a task)
    asks for the prefix; an unknown one raises UnknownNameError with "did you mean" (checked fully by
    :func:`check_names`)."""
    if not entries:
        return {}
    from percepbench.registry import METRICS, TASKS

    out: dict[str, int] = {}
    for name, size in entries.items():
        kind, sep, pattern = name.partition(":")
        if sep and kind in ("metric", "task"):
            key = f"{kind}:{pattern.strip()}"
        elif sep:
            raise UsageError(f"resize entry {name!r}: the prefix must be metric: or task:")
        else:
            is_metric, is_task = _matches(METRICS, name), _matches(TASKS, name)
            if is_metric and is_task:
                raise UsageError(f"resize entry {name!r}: {name!r} is both a metric and a task; write "
                                 f"metric:{name}={size} or task:{name}={size}")
            if not is_metric and not is_task:
                METRICS.select(name)  # raises "unknown metric ..., did you mean ..."
            key = f"{'metric' if is_metric else 'task'}:{name}"
        if key in out:
            raise UsageError(f"resize: {key!r} is given twice")
        out[key] = int(size)
    return out


def _matches(registry: Any, pattern: str) -> bool:
    try:
        registry.select(pattern)
    except PercepbenchError:
        return False
    return True


def resize_for_pair(config: RunConfig, task: str, metric: str) -> tuple[int | None, str]:
    """The load size ``config`` asks for the (``task``, ``metric``) pair and which setting asked for it
    (``"--resize metric:psnr"``, ``"--resize"``), or (None, "") when none does. Full registered names in."""
    for kind, name in (("metric", metric), ("task", task)):
        for key, size in config.resize_for.items():
            k, _, pattern = key.partition(":")
            if k == kind and _name_matches(name, pattern):
                return size, f"--resize {key}"
    if config.resize is not None:
        return config.resize, "--resize"
    return None, ""


def _name_matches(name: str, pattern: str) -> bool:
    """``name`` (full, ``lpips.alex``) is selected by ``pattern``: equal, its family, or a shell glob."""
    import fnmatch

    return name == pattern or name.split(".", 1)[0] == pattern or fnmatch.fnmatchcase(name, pattern)


def split_list(value: str | list[str]) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


#: a number as people write it, including what YAML 1.1 reads as text (``1e-3``, ``5E+2``, ``.5e1``)
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def parse_scalar(text: str) -> Any:
    """``"3"`` -> 3, ``"true"`` -> True, ``"0.5"`` -> 0.5, ``"1e-3"`` -> 0.001, anything else stays a string.

    >>> [parse_scalar(t) for t in ("3", "1e-3", "true", "dino")]
    [3, 0.001, True, 'dino']
    """
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
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


#: keyword options ``torchmetrics.Metric.__init__`` takes through ``**kwargs`` (torchmetrics 1.x); a metric
#: class whose constructors forward ``**kwargs`` up to it accepts these too
TORCHMETRICS_OPTIONS = frozenset({"compute_on_cpu", "dist_sync_on_step", "process_group", "dist_sync_fn",
                                  "distributed_available_fn", "sync_on_compute", "compute_with_cache"})


def accepted_options(factory: Any) -> list[str] | None:
    """The keyword options ``factory`` accepts, in signature order, or None when it cannot be known.

    A class is read constructor by constructor along its MRO while each forwards ``**kwargs`` to the next
    (``RetrievalFolder(path, **options)`` -> ``RetrievalTask(ks, queries, ...)``); ``torchmetrics.Metric``
    ends the walk with :data:`TORCHMETRICS_OPTIONS`. A function, or a chain that ends open (``**kwargs``
    going nowhere known), gives None.
    """
    chain = [c for c in factory.__mro__ if c is not object] if isinstance(factory, type) else [factory]
    names: list[str] = []
    for item in chain:
        init = item.__dict__.get("__init__") if isinstance(factory, type) else item
        if init is None:
            continue
        if f"{getattr(item, '__module__', '')}.{getattr(item, '__name__', '')}" == "torchmetrics.metric.Metric":
            return names + sorted(TORCHMETRICS_OPTIONS - set(names))
        try:
            params = list(inspect.signature(init).parameters.values())
        except (TypeError, ValueError):
            return None
        names += [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                  and p.name != "self" and p.name not in names]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return names
    return None


def describe_options(factory: Any, *, hidden: Iterable[str] = (), fixed: dict[str, Any] | None = None) -> str:
    """``"per_family: int = 32, size: int = 128, ..."``: the options of ``factory`` with their types and
    defaults (``fixed``: the values a spec sets, shown as defaults), for ``percepbench list``."""
    accepted = accepted_options(factory)
    if accepted is None:
        return "(not introspectable)"
    hidden = set(hidden)
    chain = [c.__dict__.get("__init__") for c in factory.__mro__] if isinstance(factory, type) else [factory]
    params: dict[str, inspect.Parameter] = {}
    for init in chain:
        if init is None:
            continue
        try:
            for p in inspect.signature(init).parameters.values():
                params.setdefault(p.name, p)
        except (TypeError, ValueError):
            break
    parts = []
    for name in accepted:
        if name in hidden:
            continue
        p = params.get(name)
        text = name
        if p is not None and p.annotation is not p.empty:
            text += f": {_annotation_text(p.annotation)}"
        default = (fixed or {}).get(name, p.default if p is not None else inspect.Parameter.empty)
        if default is not inspect.Parameter.empty:
            text += f" = {default!r}"
        parts.append(text)
    return ", ".join(parts) or "(none)"


def check_options(kind: str, name: str, factory: Any, options: dict[str, Any], *, hidden: Iterable[str] = ()) -> None:
    """:class:`UsageError` for an option ``factory`` does not take: the name, "did you mean", the valid options
    (``hidden`` ones, such as torchmetrics' distributed settings, accepted but not listed)."""
    accepted = accepted_options(factory)
    if accepted is None:
        return
    unknown = [k for k in options if k not in accepted]
    if not unknown:
        return
    shown = [a for a in accepted if a not in set(hidden)]
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(key, shown, n=1, cutoff=0.6)
        parts.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise UsageError(f"{kind} {name!r}: unknown option{'s' if len(unknown) > 1 else ''} {', '.join(parts)}; "
                     f"its options: {', '.join(shown) or '(none)'}")


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


def check_names(config: RunConfig) -> None:
    """:class:`~percepbench.errors.UnknownNameError` (with "did you mean") for a metric or task name, in the
    selection or in ``metric_args``/``task_args``, that the registries do not know. Reads only the specs
    (no torch), so a misspelt name fails in a fraction of a second."""
    from percepbench.registry import METRICS, TASKS

    if config.metrics is not None:
        METRICS.select(config.metrics)
    TASKS.select(config.tasks)
    for name in config.metric_args:
        METRICS.resolve(name)
    for name in config.task_args:
        TASKS.resolve(name)
    for key in config.resize_for:
        kind, _, pattern = key.partition(":")
        registry = METRICS if kind == "metric" else TASKS
        specs = registry.select(pattern)
        fixed = [s.name for s in specs if kind == "metric" and s.inputs.size is not None]
        if fixed:
            raise UsageError(f"resize {key}: {', '.join(fixed)} resize images to their own fixed input size "
                             "(see `percepbench list metrics`); --resize is for metrics without one")


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
        hints = [f"{k} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(k, sorted(known), n=1))
                 else k for k in unknown]
        raise UsageError(f"{p}: unknown settings {', '.join(hints)}; known: {', '.join(sorted(known))}")
    values = {k.replace("-", "_"): v for k, v in data.items()}
    for key, value in values.items():
        problem = setting_type_problem(key, value)
        if problem:
            raise UsageError(f"{p}: setting {key!r} {problem}")
    return values


#: what each setting of a config file must be: (python types, in words); None is always allowed
_SETTING_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "metrics": ((list, str), "a list of metric names or a comma-separated string"),
    "tasks": ((list, str), "a list of task names or a comma-separated string"),
    "out": ((str,), "a path (text)"), "device": ((str,), "a device name such as cpu or cuda:0"),
    "batch_size": ((int,), "an integer"), "num_workers": ((int,), "an integer"), "seed": ((int,), "an integer"),
    "data_root": ((str,), "a path (text)"), "n_boot": ((int,), "an integer"),
    "metric_args": ((dict,), "a mapping {metric: {option: value}}"),
    "task_args": ((dict,), "a mapping {task: {option: value}}"),
    "progress": ((bool,), "true or false"), "embed_cache": ((str, bool), "a path, or false"),
    "precision": ((str,), "fp32, bf16, fp16 or int8"), "resume": ((bool,), "true or false"),
    "overwrite": ((bool,), "true or false"), "strict": ((bool,), "true or false"),
    "threads": ((int,), "an integer"), "compile": ((bool,), "true or false"),
    "resize": ((int, str, list), "a size such as 256 or 256x256, or a list of them and NAME=SIZE entries"),
    "resize_for": ((dict,), "a mapping {'metric:NAME' or 'task:NAME': size}"),
}


def setting_type_problem(key: str, value: Any) -> str | None:
    """Why ``value`` cannot be the run setting ``key`` (``"must be an integer, got 'abc'"``), or None."""
    if value is None or key not in _SETTING_TYPES:
        return None
    types, words = _SETTING_TYPES[key]
    if isinstance(value, bool) and bool not in types:
        return f"must be {words}, got {value!r}"
    if not isinstance(value, types):
        return f"must be {words}, got {value!r} ({type(value).__name__})"
    return None


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
