"""``things``: THINGS odd-one-out triplets, scored as in DreamSim's evaluation harness.

Layout: a triplet file (``things_valset.txt`` by default; the OSF project b2a4j distributes it) with three
image names per line, separated by spaces, tabs or commas, and the images at ``<root>/<name>.png`` (a name
that already has an extension is used as is). ``root`` defaults to ``<data_root>/things`` (the data root
defaults as in :func:`percepbench.data.data_root`; THINGS is placed there by hand); ``triplets=``
points at another triplet file. Per triplet the metric gives d12 = d(1, 2), d13 = d(1, 3), d23 = d(2, 3);
the triplet counts as correct when d12 <= d13 and d12 <= d23 — the third image is the odd one out, and ties
count as correct. The score is the mean x 100 with a bootstrap CI.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from percepbench.data import data_root as default_data_root
from percepbench.data import download_command
from percepbench.errors import DataError
from percepbench.registry import register_task
from percepbench.specs import TaskSpec
from percepbench.tasks.files import FileTwoAFCTask, listed

SOURCE = ("THINGS odd-one-out validation triplets (OSF b2a4j): things_valset.txt + the THINGS images as "
          "<name>.png; percepbench cannot download them (no direct file URL is verified): `percepbench data "
          "download things --root <data root>` says what to fetch by hand and where to put it")


def _source_for(data_root: Path | None) -> str:
    if data_root is None:
        return SOURCE
    return (f"{SOURCE}. For this data root: `{download_command('things', data_root)}`, then "
            f"`{download_command('things', data_root, action='verify')}`")


def score_odd_one_out(d12: np.ndarray, d13: np.ndarray, d23: np.ndarray) -> np.ndarray:
    """1 where the third image is judged the odd one out (d12 <= d13 and d12 <= d23), else 0.

    >>> score_odd_one_out(np.array([0.1, 0.5, 0.2]), np.array([0.2, 0.4, 0.2]), np.array([0.3, 0.9, 0.1])).tolist()
    [1.0, 0.0, 0.0]
    """
    d12, d13, d23 = (np.asarray(d, dtype=np.float64).reshape(-1) for d in (d12, d13, d23))
    return ((d12 <= d13) & (d12 <= d23)).astype(np.float64)


class ThingsOddOneOut(FileTwoAFCTask):
    """Odd-one-out triplets on files (image 3 is the odd one in every line of the triplet file)."""

    slots: ClassVar[tuple[str, ...]] = ("img1", "img2", "img3")
    comparisons: ClassVar[tuple[tuple[str, str, str], ...]] = (
        ("d12", "img1", "img2"), ("d13", "img1", "img3"), ("d23", "img2", "img3"))
    measure: ClassVar[str] = "odd_one_out_accuracy"

    def __init__(self, root: str | None = None, triplets: str | None = None) -> None:
        super().__init__()
        self.root, self.triplets = root, triplets

    def item_scores(self, samples: pd.DataFrame) -> np.ndarray:
        return score_odd_one_out(samples["d12"].to_numpy(), samples["d13"].to_numpy(), samples["d23"].to_numpy())

    def _resolve_root(self, data_root: str | None) -> tuple[Path, Path | None, str]:
        """(things folder, data root it sits in or None, note on where it came from)."""
        if self.root:
            root = Path(self.root).expanduser()
            return root, root.parent if root.name == "things" else None, ""
        base = default_data_root(data_root)
        note = "" if data_root else f" (no data root given, so the default data root {base} was used)"
        return base / "things", base, note

    def prepare(self, *, data_root: str | None = None, num_workers: int = 0, progress: bool = True,
                seed: int = 0) -> None:
        root, base, note = self._resolve_root(data_root)
        triplet_file = Path(self.triplets).expanduser() if self.triplets else root / "things_valset.txt"
        if not triplet_file.is_file():
            raise DataError(f"{triplet_file}: THINGS triplet file not found{note}. Expected: {_source_for(base)}")
        rows, paths, bad = [], [], []
        for lineno, line in enumerate(triplet_file.read_text(encoding="utf-8").splitlines(), start=1):
            names = [n for n in re.split(r"[\s,]+", line.strip()) if n]
            if not names:
                continue
            if len(names) != 3:
                bad.append(f"line {lineno} ({len(names)} names)")
                continue
            files = tuple(str(root / (n if Path(n).suffix else f"{n}.png")) for n in names)
            rows.append({"item": f"line{lineno}", "subset": "val", "img1": names[0], "img2": names[1],
                         "img3": names[2]})
            paths.append(files)
        if bad:
            raise DataError(f"{triplet_file}: every line must hold exactly 3 image names; bad: {listed(bad)}")
        self._finish(pd.DataFrame(rows), paths, what=f"things ({triplet_file})",
                     hint=f"images are read from {root}/<name>.png", num_workers=num_workers)
        self._protocol = {"dataset": "THINGS odd-one-out", "root": str(root), "triplets": str(triplet_file),
                          "rule": "correct when d(1,2) <= d(1,3) and d(1,2) <= d(2,3); ties count correct"}


register_task(TaskSpec(
    name="things",
    target="percepbench.tasks.things:ThingsOddOneOut",
    description="THINGS odd-one-out triplets (image 3 is the odd one); options root, triplets",
    kind="odd_one_out", measure="odd_one_out_accuracy", needs_data=True, offline=True,
))
