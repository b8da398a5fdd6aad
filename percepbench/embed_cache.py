"""On-disk embedding cache: a re-run, or another task over the same images, costs no model time.

An entry is the embedding of one image under one metric configuration, stored as a ``.npy`` file::

    <cache root>/<fingerprint>/<h[:2]>/<h>.npy     h = sha256 of the image file's bytes
    <cache root>/<fingerprint>/fingerprint.json    what the fingerprint was made from (for people)

The **fingerprint** (:func:`metric_fingerprint`) hashes everything that changes an embedding: the metric
spec name and class, the options it was built with, the preprocessing (input size and interpolation of
the file loader), a hash of every parameter and buffer of the metric's networks (so different weights,
LoRA merged or not, random test weights... never share entries), the device type and dtype, the run's
autocast precision (``--precision bf16``/``fp16``), and the metric's ``embedding_version``. The **image key** is the sha256 of the file's bytes, so a renamed or
copied file hits the cache and an edited one does not.

Concurrency and interruptions: an entry is written with :func:`percepbench.fileio.atomic_write` (a
temporary file in its folder moved into place with ``os.replace``, atomic on POSIX and Windows), so readers
see a whole entry or none, two runs writing the same entry both write the same bytes, and a run killed
mid-write leaves at most a stray ``.tmp`` file, never a corrupt entry. An entry that still fails to load (disk damage, a hand-edited file) or has the
wrong shape is treated as a miss and rewritten.

Root: ``--embed-cache DIR`` / ``RunConfig.embed_cache``, else ``$PERCEPBENCH_EMBED_CACHE``, else
``<weights cache>/embeddings`` (see :func:`percepbench.weights.cache_dir`). ``--no-embed-cache`` turns it
off; the runner still embeds each unique image once per run.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

import percepbench
from percepbench.fileio import atomic_write, atomic_write_bytes, sha256_file

#: bump when the entry format changes
CACHE_FORMAT = 1


def default_root() -> Path:
    """``$PERCEPBENCH_EMBED_CACHE``, else ``<weights cache dir>/embeddings``."""
    env = os.environ.get("PERCEPBENCH_EMBED_CACHE")
    if env:
        return Path(env).expanduser()
    from percepbench.weights import cache_dir

    return cache_dir() / "embeddings"


def hash_files(paths: Sequence[str], *, workers: int = 8) -> list[str]:
    """sha256 of each file's bytes (threads: hashing releases the GIL). Errors propagate per file."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(sha256_file, paths))


def state_hash(modules: Iterable[torch.nn.Module]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of every parameter and buffer of ``modules``."""
    h = hashlib.sha256()
    for i, module in enumerate(modules):
        for name, t in sorted(module.state_dict().items()):
            if not isinstance(t, torch.Tensor):
                continue
            t = t.detach().to("cpu").contiguous()
            h.update(f"{i}:{name}:{t.dtype}:{tuple(t.shape)};".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def metric_fingerprint(metric: Any, spec: Any, options: dict[str, Any], *,
                       precision: str = "fp32") -> tuple[str, dict[str, Any]]:
    """``(fingerprint hex, description)`` of a metric's embedding function (see the module docstring).

    ``precision`` is the run's autocast setting; it enters the description only when it is not fp32, so
    fp32 entries written before the setting existed stay valid.
    """
    params = [p for p in metric.parameters()]
    description = {
        "cache_format": CACHE_FORMAT,
        "percepbench": percepbench.__version__,
        "metric": spec.name if spec is not None else type(metric).__name__,
        "class": f"{type(metric).__module__}.{type(metric).__qualname__}",
        "embedding_version": getattr(metric, "embedding_version", 1),
        "options": {k: repr(v) for k, v in sorted({**(spec.kwargs if spec is not None else {}), **options}.items())},
        "inputs": spec.inputs.to_dict() if spec is not None else None,
        "device_type": metric.device.type,
        "dtype": str(params[0].dtype) if params else None,
        "state_sha256": state_hash([metric]),
    }
    if precision != "fp32":
        description["precision"] = precision
    if precision == "int8":  # how the int8 layers compute is part of what an embedding is
        from percepbench.int8 import SCHEME

        description["int8_scheme"] = SCHEME
    digest = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()
    return digest[:32], description


class EmbeddingCache:
    """Entries for one metric fingerprint under ``root``; ``get``/``put`` by image content hash."""

    def __init__(self, root: str | Path, fingerprint: str, description: dict[str, Any] | None = None) -> None:
        self.root = Path(root).expanduser()
        self.dir = self.root / fingerprint
        self.fingerprint = fingerprint
        self.corrupt = 0
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "fingerprint.json"
        if description is not None and not meta.exists():
            atomic_write_bytes(meta, json.dumps(description, indent=2, sort_keys=True).encode())

    def path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.npy"

    def get(self, key: str, dim: int | None = None) -> np.ndarray | None:
        """The stored embedding, or None when absent or unusable (a damaged entry counts in ``corrupt``)."""
        p = self.path(key)
        try:
            arr = np.load(p, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError):
            self.corrupt += 1
            return None
        if arr.ndim != 1 or (dim is not None and arr.shape[0] != dim) or not np.all(np.isfinite(arr)):
            self.corrupt += 1
            return None
        return arr

    def put(self, key: str, embedding: np.ndarray) -> None:
        arr = np.ascontiguousarray(embedding, dtype=np.float32)
        atomic_write(self.path(key), lambda f: np.save(f, arr, allow_pickle=False))


