"""Run configuration: one dataclass, filled from defaults < config file (YAML or TOML) < command-line flags."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from percepbench.errors import UsageError

DEFAULT_TASK = "severity2afc"
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

    def __post_init__(self) -> None:
        if isinstance(self.metrics, str):
            self.metrics = split_list(self.metrics)
        if isinstance(self.tasks, str):
            self.tasks = split_list(self.tasks)
        if self.data_root is None:
            self.data_root = os.environ.get("PERCEPBENCH_DATA") or None
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
    """``["lpips:version=0.0", "severity2afc:per_family=8"]`` -> ``{name: {key: value}}``."""
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
