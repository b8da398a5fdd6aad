"""Metric contract and the built-in metric families (installed as ``percepbench.metrics_registry``).

Importing this package registers every built-in metric spec; implementations (networks, piq) load
lazily when a metric is created.
"""

from percepbench.metrics_registry import classical, dists, dreamsim, embedding, lpips_metric  # noqa: F401  (register their specs)
from percepbench.metrics_registry.base import DistanceMetric

__all__ = ["DistanceMetric"]
