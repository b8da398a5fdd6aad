"""The built-in metric specs, one module per metric family (installed as ``percepbench.metrics_registry.catalog``).

These modules are plain data: they import neither torch nor the metric implementations, so that
``percepbench list``, ``--help`` and usage errors read every spec without loading a network library. A
spec names its implementation lazily (``MetricSpec.target = "module:Class"``); the implementation module
imports the constants it shares with its spec from here, never the other way round.

Importing this package imports every module in it (sorted by name), which registers their specs.
"""

from __future__ import annotations

import importlib
import pkgutil

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")
