"""Metric contract and the built-in metric families (installed as ``percepbench.metrics_registry``).

Importing this package registers every built-in metric spec from :mod:`percepbench.metrics_registry.catalog`,
which is plain data: no torch, no implementation module. Implementations (torchmetrics, piq, networks) load
when a metric is created (``MetricSpec.load`` imports ``spec.target``); ``DistanceMetric`` loads on first
access.
"""

from __future__ import annotations

from typing import Any

from percepbench.metrics_registry import catalog  # noqa: F401  (registers the built-in specs)

__all__ = ["DistanceMetric"]


def __getattr__(name: str) -> Any:
    if name == "DistanceMetric":
        from percepbench.metrics_registry.base import DistanceMetric

        return DistanceMetric
    raise AttributeError(f"module 'percepbench.metrics_registry' has no attribute {name!r}")
