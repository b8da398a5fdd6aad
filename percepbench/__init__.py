"""percepbench: an evaluation suite for perceptual image-similarity metrics."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["DreamSimMetric", "__version__", "create_metric", "create_task", "dreamsim", "list_metrics", "list_tasks"]


def __getattr__(name: str) -> Any:
    # heavy objects load on first use, so `import percepbench` stays light
    if name == "dreamsim":
        from percepbench.models.dreamsim import dreamsim

        return dreamsim
    if name == "DreamSimMetric":
        from percepbench.metrics_registry.dreamsim import DreamSimMetric

        return DreamSimMetric
    raise AttributeError(f"module 'percepbench' has no attribute {name!r}")


def list_metrics(pattern: str = "*") -> list[str]:
    """Registered metric names matching a glob (``list_metrics('piq.*')``)."""
    from percepbench.registry import METRICS

    return [s.name for s in METRICS.select(pattern)] if pattern != "*" else METRICS.names()


def list_tasks(pattern: str = "*") -> list[str]:
    """Registered task names matching a glob."""
    from percepbench.registry import TASKS

    return [s.name for s in TASKS.select(pattern)] if pattern != "*" else TASKS.names()


def create_metric(name: str, **kwargs: Any):
    """Build a registered metric (a ``torchmetrics.Metric``); ``kwargs`` override the spec's defaults.

    >>> import percepbench
    >>> m = percepbench.create_metric("ssim", reduction="none")
    >>> type(m).__name__
    'SSIM'
    """
    from percepbench.registry import METRICS

    return METRICS.get(name).create(**kwargs)


def create_task(name: str, **kwargs: Any):
    """Build a registered task; ``kwargs`` override the spec's defaults."""
    from percepbench.registry import TASKS

    return TASKS.get(name).create(**kwargs)
