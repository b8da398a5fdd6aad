"""What every task provides to the runner, and the scoring kinds shared by benchmarks.

A task knows items and scoring, not networks. For the runner it exposes:

- ``slots``: the image slots of one item (``("ref", "left", "right")`` for 2AFC);
- ``comparisons``: ``(column, slot_a, slot_b)`` distances the runner computes per item
  (``("d0", "ref", "left")``, ``("d1", "ref", "right")``);
- ``prepare(...)``: load or build the items (called once per run);
- ``items``: a DataFrame, one row per item, with at least ``item`` and ``subset`` plus label columns;
- ``dataset(inputs)``: a ``torch.utils.data.Dataset`` whose element ``i`` is a dict slot -> uint8 (3, H, W)
  tensor for row ``i`` of ``items``, prepared with the metric's input convention;
- ``score(samples)``: per-item scores and long-format records from ``items`` + distance columns;
- ``compare(a, b)``: paired comparison of two metrics' samples on the same items.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from percepbench.results import ALL
from percepbench.specs import InputConvention
from percepbench.stats import bootstrap_ci, paired_comparison, require_finite_distances

if TYPE_CHECKING:  # torch loads when the runner reads a dataset, so `percepbench list` stays light
    from torch.utils.data import Dataset

#: The pooled subset's name (the one constant :data:`percepbench.results.ALL`, under the name tasks use).
ALL_SUBSET = ALL


class Task:
    """Base class for tasks."""

    slots: ClassVar[tuple[str, ...]] = ()
    comparisons: ClassVar[tuple[tuple[str, str, str], ...]] = ()
    measure: ClassVar[str] = ""
    #: True when ``dataset`` serves tensors held in memory (the runner then loads without workers)
    in_memory: ClassVar[bool] = False
    spec: Any = None  # set by ``TaskSpec.create``

    def prepare(self, *, data_root: str | None = None, num_workers: int = 0, progress: bool = True,
                seed: int = 0) -> None:
        raise NotImplementedError

    #: the items ``prepare`` builds (subclasses set it)
    _items: pd.DataFrame | None = None

    @property
    def items(self) -> pd.DataFrame:
        """The items built by ``prepare`` (a ``RuntimeError`` before it)."""
        if self._items is None:
            raise RuntimeError("call prepare() first")
        return self._items

    def dataset(self, inputs: InputConvention) -> Dataset:
        raise NotImplementedError

    def protocol(self) -> dict[str, Any]:
        """How this task's images are produced and loaded (recorded in results.json)."""
        return {}

    def inputs_for(self, inputs: InputConvention) -> InputConvention:
        """The loading convention this task uses for a metric with convention ``inputs`` (default: as is).

        A benchmark whose official protocol fixes a load size for metrics that take native-size images
        (BAPPS: 64x64 bilinear, as in the LPIPS evaluation) returns that here; the runner records it.
        """
        return inputs

    def image_paths(self) -> list[tuple[str, ...]] | None:
        """Per item, the image file of each slot (file-based tasks), else None.

        With files, the runner embeds each unique image once for embedding metrics (and uses the
        on-disk embedding cache); tasks that generate images in memory return None.
        """
        return None

    def image_dataset(self, paths: list[str], inputs: InputConvention) -> Dataset:
        """One element per path: the file as uint8 (3, H, W), resized for ``inputs`` (file-based tasks)."""
        raise NotImplementedError

    def item_scores(self, samples: pd.DataFrame) -> np.ndarray:
        """Per-item score (1 = correct) from the item table joined with the distance columns."""
        raise NotImplementedError

    def score(self, samples: pd.DataFrame, *, seed: int = 0, n_boot: int = 1000) -> list[dict[str, Any]]:
        """Records per subset and pooled (``subset == "all"``): mean item score x 100 with bootstrap CI."""
        scores = self.item_scores(samples) * 100.0
        subsets = samples["subset"].to_numpy()
        records = []
        groups = [(s, subsets == s) for s in pd.unique(subsets)]
        if len(groups) > 1:
            groups.append((ALL_SUBSET, np.ones(len(scores), dtype=bool)))
        for subset, mask in groups:
            vals = scores[mask]
            lo, hi = bootstrap_ci(vals, seed=seed, n_boot=n_boot)
            records.append({
                "subset": str(subset), "measure": self.measure, "value": float(vals.mean()),
                "ci_low": lo, "ci_high": hi, "n": int(mask.sum()),
            })
        return records

    def compare(self, a: pd.DataFrame, b: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
        """Score of metric ``a`` minus metric ``b`` on the same items (rows aligned), in the measure's units.

        Default: paired bootstrap CI of the mean per-item score difference (x 100) and a sign-flip
        permutation p-value (:func:`percepbench.stats.paired_comparison`). Tasks whose measure is not a
        mean of item scores (JND average precision) override this.
        """
        return paired_comparison(a["score"].to_numpy() * 100, b["score"].to_numpy() * 100, n_boot=n_boot, seed=seed)


def score_2afc(d0: np.ndarray, d1: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Per-triplet 2AFC score: ``1 - p`` if d0 < d1, ``p`` if d1 < d0, 0.5 on an exact tie.

    ``d0 = d(ref, left)``, ``d1 = d(ref, right)``, ``p`` = fraction of judges who found the **right**
    image more similar (soft labels allowed). Distances of any shape (N, 1, 1, 1) are flattened first.
    A NaN or infinite distance is a ``ValueError``, never a tie (:func:`~percepbench.stats.require_finite_distances`).

    >>> score_2afc(np.array([0.1, 0.5, 0.3]), np.array([0.2, 0.4, 0.3]), np.array([0.0, 0.8, 1.0])).tolist()
    [1.0, 0.8, 0.5]
    """
    d0 = np.asarray(d0, dtype=np.float64).reshape(-1)
    d1 = np.asarray(d1, dtype=np.float64).reshape(-1)
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    if not (d0.shape == d1.shape == p.shape):
        raise ValueError(f"d0, d1 and p must have the same length, got {d0.size}, {d1.size}, {p.size}")
    require_finite_distances("2AFC", d0=d0, d1=d1)
    if np.any((p < 0) | (p > 1)) or np.any(np.isnan(p)):
        raise ValueError("2AFC labels p must lie in [0, 1]")
    return np.where(d0 < d1, 1.0 - p, np.where(d1 < d0, p, 0.5))


class TwoAFCTask(Task):
    """Triplets (ref, left, right) with label ``p`` = fraction preferring the right image."""

    slots = ("ref", "left", "right")
    comparisons = (("d0", "ref", "left"), ("d1", "ref", "right"))
    measure = "2afc_accuracy"

    def item_scores(self, samples: pd.DataFrame) -> np.ndarray:
        return score_2afc(samples["d0"].to_numpy(), samples["d1"].to_numpy(), samples["p"].to_numpy())
