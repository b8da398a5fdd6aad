"""Where weight files live, and whether a metric's files are present.

Cache directory, resolved at call time: the ``cache_dir`` argument, else ``$PERCEPBENCH_CACHE``, else
``<torch hub dir>/percepbench`` (torch's hub dir honours ``$TORCH_HOME``).
"""

from __future__ import annotations

import os
from pathlib import Path

from percepbench.specs import MetricSpec


def cache_dir(cache_dir: str | Path | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("PERCEPBENCH_CACHE")
    if env:
        return Path(env).expanduser()
    import torch.hub

    return Path(torch.hub.get_dir()) / "percepbench"


def missing_weights(spec: MetricSpec, cache: str | Path | None = None) -> list[str]:
    """Filenames of ``spec.weights`` not present in the cache directory."""
    root = cache_dir(cache)
    return [w.filename for w in spec.weights if not (root / w.filename).is_file()]


def usable_offline(spec: MetricSpec, cache: str | Path | None = None) -> bool:
    """True when the metric needs no weights or all of them are in the cache."""
    return not missing_weights(spec, cache)
