"""JND tasks: ``bapps_jnd`` (BAPPS just-noticeable-difference pairs) and the scoring they share with ``jnd_csv``.

A JND item is a pair of images (``p0``, ``p1``) with label ``same`` = the fraction of raters who answered
"the same". The metric gives ``d = d(p0, p1)``; a good metric puts the pairs people call "same" at small
distances. The measure is the **VOC-style average precision** (``jnd_map``, in %) of "same" ranked by
ascending distance, with soft labels, as in the LPIPS paper's evaluation:

- sort the pairs by distance, ascending; ``TP = cumsum(same)``, ``FP = cumsum(1 - same)``;
  ``precision = TP / (TP + FP)``, ``recall = TP / sum(same)``;
- prepend recall 0 and append recall 1, prepend and append precision 0; make precision non-increasing by
  a running maximum from the right; AP = sum over the points where recall changes of
  ``delta recall x precision``.

Two details the official script leaves to chance are fixed here. Distances of any shape ((N, 1, 1, 1)
from LPIPS) are flattened before sorting. **Tied distances** are one threshold: precision and recall are
taken only after a whole group of tied pairs (the official ``argsort`` order within a tie is arbitrary,
so its AP depends on it). Without ties both give the same number. scikit-learn's
``average_precision_score`` is a different quantity (no precision envelope, hard labels only) and is not
used.

AP is a property of the whole set, not a mean of per-item scores, so the per-item ``score`` column of
``samples.parquet`` is NaN for JND tasks; CIs bootstrap the AP itself (items resampled with replacement),
and paired comparisons between metrics use a paired bootstrap of the AP difference with a per-item swap
permutation test (:func:`percepbench.stats.paired_statistic_comparison`). Scores per subset, plus ``all``
= the AP over the union of the subsets' pairs when there are several.

``bapps_jnd`` data: ``<data_root>/bapps/dataset/jnd/val/<subset>/{p0,p1,same}/<stem>.png|.npy`` (what
``percepbench data download bapps`` writes; the data root defaults as in :func:`percepbench.data.data_root`)
(subsets ``traditional`` and ``cnn``), or ``root=`` pointing at the folder that holds ``jnd/``. Files pair
by stem across the three folders; ``same/<stem>.npy`` holds one number in [0, 1].
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pandas as pd

from percepbench.errors import DataError
from percepbench.registry import register_task
from percepbench.specs import TaskSpec
from percepbench.stats import bootstrap_statistic_ci, jnd_average_precision, paired_ap_comparison
from percepbench.tasks.bapps import bapps_dataset_root, how_to_get, paired_by_stem, read_fraction
from percepbench.tasks.base import ALL_SUBSET, Task
from percepbench.tasks.files import FileTask, split_list

JND_SUBSETS = ("traditional", "cnn")
JND_FOLDERS = ("p0", "p1")


def require_same_pairs(items: pd.DataFrame, what: str) -> None:
    """:class:`DataError` unless every subset of ``items`` has a pair judged "same" (``same`` > 0).

    Recall divides by the sum of ``same``, so without such a pair the average precision is undefined
    (:func:`~percepbench.stats.jnd_average_precision` gives NaN); a task refuses that set instead of
    recording a NaN score. The pooled set has a positive whenever every subset has one.
    """
    positives = items.groupby("subset", sort=False)["same"].sum()
    empty = [str(s) for s, total in positives.items() if not total > 0]
    if not empty:
        return
    where = ("no pair" if len(positives) == 1
             else "no pair in " + ", ".join(f"subset {s!r}" for s in empty))
    raise DataError(f"{what}: {where} is judged 'same' (every 'same' is 0), so the JND average precision is "
                    "undefined there: it ranks the pairs people call the same and needs at least one pair judged "
                    "'same' > 0" + (" in every subset" if len(positives) > 1 else ""))


class JNDTask(Task):
    """Pairs (p0, p1) with label ``same`` = fraction of raters answering "same"; measure: VOC AP in %."""

    slots: ClassVar[tuple[str, ...]] = ("p0", "p1")
    comparisons: ClassVar[tuple[tuple[str, str, str], ...]] = (("d", "p0", "p1"),)
    measure: ClassVar[str] = "jnd_map"

    def item_scores(self, samples: pd.DataFrame) -> np.ndarray:
        """NaN per item: the AP is a property of the whole set (see the module docstring)."""
        return np.full(len(samples), np.nan)

    def score(self, samples: pd.DataFrame, *, seed: int = 0, n_boot: int = 1000) -> list[dict[str, Any]]:
        """AP x 100 per subset and over the union (``all``), each with a bootstrap CI of the AP."""
        require_same_pairs(samples, self.spec.name if self.spec else type(self).__name__)
        d = samples["d"].to_numpy(dtype=np.float64)
        s = samples["same"].to_numpy(dtype=np.float64)
        subsets = samples["subset"].to_numpy()
        groups = [(g, subsets == g) for g in pd.unique(subsets)]
        if len(groups) > 1:
            groups.append((ALL_SUBSET, np.ones(len(d), dtype=bool)))
        records = []
        for subset, mask in groups:
            dm, sm = d[mask], s[mask]
            value = jnd_average_precision(dm, sm) * 100.0
            lo, hi = bootstrap_statistic_ci(lambda idx, dm=dm, sm=sm: jnd_average_precision(dm[idx], sm[idx]) * 100.0,
                                            dm.size, n_boot=n_boot, seed=seed)
            records.append({"subset": str(subset), "measure": self.measure, "value": value,
                            "ci_low": lo, "ci_high": hi, "n": int(mask.sum())})
        return records

    def compare(self, a: pd.DataFrame, b: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
        """AP(a) - AP(b) in points on the same pairs: paired bootstrap CI, per-pair swap permutation p-value."""
        return paired_ap_comparison(a["d"].to_numpy(dtype=np.float64), b["d"].to_numpy(dtype=np.float64),
                                    a["same"].to_numpy(dtype=np.float64), n_boot=n_boot, seed=seed)


class FileJNDTask(FileTask, JNDTask):
    """A JND task whose pairs are image files on disk."""


class BAPPSJND(FileJNDTask):
    """BAPPS JND pairs, paired by stem across ``p0``, ``p1`` and ``same``; see the module docstring."""

    native_load = (64, "bilinear")  # official LPIPS protocol for metrics without a fixed input size

    def __init__(self, subsets: str | list[str] | None = None, root: str | None = None) -> None:
        super().__init__()
        chosen = split_list(subsets) or list(JND_SUBSETS)
        unknown = [s for s in chosen if s not in JND_SUBSETS]
        if unknown:
            raise ValueError(f"unknown BAPPS JND subsets {unknown}; known: {', '.join(JND_SUBSETS)} "
                             "(separate several with '+', e.g. subsets=cnn+traditional)")
        self.subsets = list(dict.fromkeys(chosen))
        self.root = None if root in (None, "") else str(root)

    def prepare(self, *, data_root: str | None = None, num_workers: int = 0, progress: bool = True,
                seed: int = 0) -> None:
        root, data_base, note = bapps_dataset_root(self.root, data_root)
        hint = how_to_get(data_base, ["jnd"])
        base = root / "jnd" / "val"
        if not base.is_dir():
            raise DataError(f"{base}: BAPPS JND folder not found{note}. {hint}")
        rows, paths = [], []
        for subset in self.subsets:
            folder = base / subset
            if not folder.is_dir():
                raise DataError(f"{folder}: BAPPS JND subset folder not found. {hint}")
            found, stems = paired_by_stem(folder, JND_FOLDERS, "same", "pairs")
            for stem in stems:
                rows.append({"item": f"{subset}/{stem}", "subset": subset,
                             "same": read_fraction(found["same"][stem], "JND 'same'"), "stem": stem})
                paths.append(tuple(str(found[name][stem]) for name in JND_FOLDERS))
        items = pd.DataFrame(rows)
        require_same_pairs(items, f"BAPPS JND ({base})")
        self._finish(items, paths, what=f"BAPPS JND ({base})", num_workers=num_workers)
        self._protocol = {
            "dataset": "BAPPS JND (LPIPS, Zhang et al. 2018)",
            "root": str(root),
            "subsets": list(self.subsets),
            "filters": "none; p0/p1/same paired by file stem (stem sets checked equal)",
            "label": "same = same/<stem>.npy (fraction of raters answering 'same')",
            "comparisons": "d = d(p0, p1)",
            "measure": "VOC-style average precision of 'same' ranked by ascending distance, soft labels, "
                       "tied distances as one threshold",
            "pooled": "subset 'all' = AP over the union of the subsets' pairs",
        }


register_task(TaskSpec(
    name="bapps_jnd", dataset="bapps",
    target="percepbench.tasks.jnd:BAPPSJND",
    description="BAPPS JND human judgments (LPIPS paper): VOC average precision of 'same' pairs by "
                "distance, subsets traditional/cnn; options subsets (a+b), root",
    kind="jnd", measure="jnd_map", needs_data=True,
    licence="BAPPS: BSD-2-Clause (richzhang/PerceptualSimilarity)",
    citation="Zhang et al., The Unreasonable Effectiveness of Deep Features as a Perceptual Metric, CVPR 2018",
))
