"""One generic registry, used for metrics, tasks and dataset sources.

- Built-in specs register when their module is imported (``percepbench.metrics_registry`` /
  ``percepbench.tasks``, which registers the tasks and the dataset sources of its benchmark modules), the
  first time the registry is used. A broken built-in is an error.
- Third-party plugins come from the entry-point groups ``percepbench.metrics``, ``percepbench.tasks`` and
  ``percepbench.datasets``.
  An entry point may point at a spec, an iterable of specs, or a callable ``register(registry)``.
  A plugin that fails to load warns with its name and leaves the rest of the registry working.
- Names are ``family`` or ``family.variant``. A family name resolves to its default variant
  (``lpips`` -> ``lpips.alex``). Selection takes comma lists and shell globs (``'piq.*'``).
  Unknown names raise :class:`~percepbench.errors.UnknownNameError` with "did you mean ...".
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import threading
import warnings
from collections.abc import Iterable, Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from percepbench.datasets import DatasetSource
from percepbench.errors import UnknownNameError, UsageError
from percepbench.specs import MetricSpec, TaskSpec

S = TypeVar("S", MetricSpec, TaskSpec, DatasetSource)


class PluginWarning(UserWarning):
    """A third-party plugin could not be loaded."""


class Registry(Generic[S]):
    """Name -> frozen spec, with family defaults, globs, plugins and did-you-mean errors."""

    def __init__(self, kind: str, spec_type: type[S], builtin_module: str, entry_point_group: str, *,
                 list_command: str | None = None) -> None:
        self.kind = kind
        #: the command that lists every name, quoted in "unknown name" errors
        self.list_command = list_command or f"percepbench list {kind}s"
        self.spec_type = spec_type
        self.builtin_module = builtin_module
        self.entry_point_group = entry_point_group
        self._specs: dict[str, S] = {}
        self._sources: dict[str, str] = {}
        self._defaults: dict[str, str] = {}
        self._loaded = False
        self._loading = False
        self._lock = threading.RLock()

    # -- registration -------------------------------------------------------------------------
    def register(self, spec: S, *, source: str = "builtin") -> S:
        if not isinstance(spec, self.spec_type):
            raise TypeError(f"{self.kind} registry takes {self.spec_type.__name__}, got {type(spec).__name__}")
        with self._lock:
            name = spec.name
            if name in self._specs:
                raise UsageError(
                    f"duplicate {self.kind} name {name!r} (from {source}; already registered by "
                    f"{self._sources[name]})"
                )
            family = spec.family
            if "." in name and family in self._specs:
                raise UsageError(f"{self.kind} {name!r}: {family!r} is already a plain {self.kind} name")
            if "." not in name and any(n.startswith(name + ".") for n in self._specs):
                raise UsageError(f"{self.kind} {name!r}: a family of that name already has variants")
            if spec.default:
                if "." not in name:
                    raise UsageError(f"{self.kind} {name!r}: only a 'family.variant' name can be a default")
                if family in self._defaults:
                    raise UsageError(
                        f"{self.kind} family {family!r} has two defaults: {self._defaults[family]!r} and {name!r}"
                    )
                self._defaults[family] = name
            self._specs[name] = spec
            self._sources[name] = source
            return spec

    def unregister(self, name: str) -> None:
        """Remove an entry (for tests and interactive use)."""
        with self._lock:
            spec = self._specs.pop(name)
            self._sources.pop(name)
            if self._defaults.get(spec.family) == name:
                del self._defaults[spec.family]

    # -- loading ------------------------------------------------------------------------------
    def _ensure_loaded(self) -> None:
        if self._loaded or self._loading:
            return
        with self._lock:
            if self._loaded or self._loading:
                return
            self._loading = True
            try:
                importlib.import_module(self.builtin_module)  # a broken built-in must raise
                self._load_plugins()
                self._loaded = True
            finally:
                self._loading = False

    def _load_plugins(self) -> None:
        for ep in entry_points(group=self.entry_point_group):
            source = f"plugin {ep.name!r} ({ep.value})"
            try:
                obj = ep.load()
                self._register_plugin_object(obj, source)
            except Exception as exc:  # a plugin must never break the registry
                warnings.warn(
                    f"percepbench {self.kind} plugin {ep.name!r} ({ep.value}) failed to load and was "
                    f"skipped: {type(exc).__name__}: {exc}",
                    PluginWarning,
                    stacklevel=3,
                )

    def _register_plugin_object(self, obj: object, source: str) -> None:
        if isinstance(obj, self.spec_type):
            self.register(obj, source=source)
        elif callable(obj) and not isinstance(obj, type):
            obj(self)
        elif isinstance(obj, Iterable):
            for spec in list(obj):
                self.register(spec, source=source)
        else:
            raise TypeError(f"entry point must give a {self.spec_type.__name__}, a list of them or a callable")

    # -- lookup -------------------------------------------------------------------------------
    def names(self) -> list[str]:
        self._ensure_loaded()
        return sorted(self._specs)

    def specs(self) -> list[S]:
        return [self._specs[n] for n in self.names()]

    def source(self, name: str) -> str:
        return self._sources[self.resolve(name)]

    def defaults(self) -> dict[str, str]:
        self._ensure_loaded()
        return dict(self._defaults)

    def resolve(self, name: str) -> str:
        """Full registered name for ``name`` (a family resolves to its default variant)."""
        self._ensure_loaded()
        if name in self._specs:
            return name
        if name in self._defaults:
            return self._defaults[name]
        variants = [n for n in self._specs if n.startswith(name + ".")]
        if variants:
            raise UnknownNameError(
                f"{self.kind} family {name!r} has no default variant; choose one of: {', '.join(sorted(variants))}"
            )
        raise UnknownNameError(self._unknown_message(name))

    def _unknown_message(self, name: str) -> str:
        candidates = sorted(set(self._specs) | set(self._defaults))
        close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
        msg = f"unknown {self.kind} {name!r}"
        if close:
            msg += f"; did you mean {' or '.join(repr(c) for c in close)}?"
        msg += f" (`{self.list_command}` shows all {len(candidates)})"
        return msg

    def get(self, name: str) -> S:
        return self._specs[self.resolve(name)]

    def __contains__(self, name: object) -> bool:
        try:
            self.resolve(str(name))
        except UnknownNameError:
            return False
        return True

    def __iter__(self) -> Iterator[S]:
        return iter(self.specs())

    def __len__(self) -> int:
        return len(self.names())

    def select(self, patterns: str | Iterable[str]) -> list[S]:
        """Specs matching comma-separated names or globs, in the order given, without repeats.

        A glob that matches nothing and an unknown plain name both raise ``UnknownNameError``.
        """
        if isinstance(patterns, str):
            patterns = [patterns]
        items = [p.strip() for chunk in patterns for p in chunk.split(",") if p.strip()]
        if not items:
            raise UsageError(f"no {self.kind} names given")
        chosen: dict[str, S] = {}
        for item in items:
            if any(ch in item for ch in "*?["):
                matched = [n for n in self.names() if fnmatch.fnmatchcase(n, item)]
                if not matched:
                    raise UnknownNameError(f"{self.kind} pattern {item!r} matches nothing")
                for n in matched:
                    chosen.setdefault(n, self._specs[n])
            else:
                spec = self.get(item)
                chosen.setdefault(spec.name, spec)
        return list(chosen.values())


METRICS: Registry[MetricSpec] = Registry("metric", MetricSpec, "percepbench.metrics_registry", "percepbench.metrics")
TASKS: Registry[TaskSpec] = Registry("task", TaskSpec, "percepbench.tasks", "percepbench.tasks")
DATASETS: Registry[DatasetSource] = Registry("dataset", DatasetSource, "percepbench.tasks", "percepbench.datasets",
                                             list_command="percepbench data list")


def register_metric(spec: MetricSpec) -> MetricSpec:
    return METRICS.register(spec)


def register_task(spec: TaskSpec) -> TaskSpec:
    return TASKS.register(spec)


def register_dataset(source: DatasetSource) -> DatasetSource:
    return DATASETS.register(source)
