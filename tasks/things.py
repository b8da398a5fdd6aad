"""``things``: THINGS odd-one-out triplets, scored as in DreamSim's evaluation harness.

Layout: a triplet file (``things_valset.txt`` by default; the OSF project b2a4j distributes it) with three
image names per line, separated by spaces, tabs or commas, and the images at ``<root>/<name>.png`` (a name
that already has an extension is used as is). ``root`` defaults to ``<data_root>/things`` (the data root
defaults as in :func:`percepbench.data.data_root`; THINGS is placed there by hand); ``triplets=``
points at another triplet file. Per triplet the metric gives d12 = d(1, 2), d13 = d(1, 3), d23 = d(2, 3);
the triplet counts as correct when d12 <= d13 and d12 <= d23 — the third image is the odd one out, and ties
count as correct. The score is the mean x 100 with a bootstrap CI.

**Dataset source** (registered here as ``things``): no direct file URL is verified (the triplet file is on
OSF project b2a4j, the images come from the THINGS database), so ``percepbench data download things``
never fetches anything: it checks what is there and otherwise raises
:class:`~percepbench.data.ManualDownloadError` saying exactly what to fetch and where to put it
(:data:`MANUAL`). ``percepbench data verify things`` checks the triplet file (three names a line) and that
every image it names exists (``--deep``: decodes).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from percepbench.data import download_command, image_problems, task_data_dir
from percepbench.datasets import DatasetSource, Part
from percepbench.errors import DataError
from percepbench.registry import register_dataset, register_task
from percepbench.specs import TaskSpec
from percepbench.stats import require_finite_distances
from percepbench.tasks.files import FileTwoAFCTask, listed

#: the files the task reads, relative to the data root (the dataset source's ``layout`` too)
LAYOUT = "things/things_valset.txt, things/<name>.png"
SOURCE = (f"THINGS odd-one-out validation triplets (OSF b2a4j) and the THINGS images, as {LAYOUT} under the "
          "data root; percepbench cannot download them (no direct file URL is verified): `percepbench data "
          "download things --root <data root>` says what to fetch by hand and where to put it")
MANUAL = (
    "THINGS cannot be downloaded by percepbench: no direct file URL for it is verified, so it fetches "
    "nothing rather than guess. Fetch by hand:\n"
    "  1. the triplet file things_valset.txt (three image names per line; the third is the odd one out) "
    "from the OSF project https://osf.io/b2a4j/ (the THINGS odd-one-out validation triplets used by "
    "DreamSim's evaluation), and put it at {dest}/things_valset.txt;\n"
    "  2. every image it names, at {dest}/<name>.png (DreamSim's loader opens <root>/<name>.png; a name that "
    "already has an extension is used as is). The images come from the THINGS object image database "
    "(Hebart et al. 2019; its OSF project https://osf.io/jum2f/ is where it is distributed, under its own "
    "terms; percepbench has not verified the file names there): convert or rename them so that they match "
    "the names in the triplet file.\n"
    "Then check with `{verify}`, and run with --data-root {root} (or --task-args things:root={dest})."
)


def _source_for(data_root: Path | None) -> str:
    if data_root is None:
        return SOURCE
    return (f"{SOURCE}. For this data root: `{download_command('things', data_root)}`, then "
            f"`{download_command('things', data_root, action='verify')}`")


def image_file(name: str) -> str:
    """The file of an image named in the triplet file: ``<name>.png``, or ``name`` when it has an extension."""
    return name if Path(name).suffix else f"{name}.png"


def read_triplets(text: str) -> tuple[list[tuple[int, list[str]]], list[str]]:
    """``([(line number, [3 names]), ...], [bad line descriptions])`` of a triplet file's text; names are
    separated by spaces, tabs or commas; blank lines are skipped."""
    triplets, bad = [], []
    for lineno, line in enumerate(text.splitlines(), start=1):
        names = [n for n in re.split(r"[\s,]+", line.strip()) if n]
        if names and len(names) != 3:
            bad.append(f"line {lineno} ({len(names)} names)")
        elif names:
            triplets.append((lineno, names))
    return triplets, bad


def score_odd_one_out(d12: np.ndarray, d13: np.ndarray, d23: np.ndarray) -> np.ndarray:
    """1 where the third image is judged the odd one out (d12 <= d13 and d12 <= d23), else 0; a NaN or infinite
    distance is a ``ValueError`` (:func:`~percepbench.stats.require_finite_distances`).

    >>> score_odd_one_out(np.array([0.1, 0.5, 0.2]), np.array([0.2, 0.4, 0.2]), np.array([0.3, 0.9, 0.1])).tolist()
    [1.0, 0.0, 0.0]
    """
    d12, d13, d23 = (np.asarray(d, dtype=np.float64).reshape(-1) for d in (d12, d13, d23))
    require_finite_distances("odd-one-out", d12=d12, d13=d13, d23=d23)
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

    def prepare(self, *, data_root: str | None = None, num_workers: int = 0, progress: bool = True,
                seed: int = 0) -> None:
        root, base, note = task_data_dir("things", self.root, data_root)
        triplet_file = Path(self.triplets).expanduser() if self.triplets else root / "things_valset.txt"
        if not triplet_file.is_file():
            raise DataError(f"{triplet_file}: THINGS triplet file not found{note}. Expected: {_source_for(base)}")
        triplets, bad = read_triplets(triplet_file.read_text(encoding="utf-8"))
        if bad:
            raise DataError(f"{triplet_file}: every line must hold exactly 3 image names; bad: {listed(bad)}")
        rows, paths = [], []
        for lineno, names in triplets:
            rows.append({"item": f"line{lineno}", "subset": "val", "img1": names[0], "img2": names[1],
                         "img3": names[2]})
            paths.append(tuple(str(root / image_file(n)) for n in names))
        self._finish(pd.DataFrame(rows), paths, what=f"things ({triplet_file})",
                     hint=f"images are read from {root}/<name>.png", num_workers=num_workers)
        self._protocol = {"dataset": "THINGS odd-one-out", "root": str(root), "triplets": str(triplet_file),
                          "rule": "correct when d(1,2) <= d(1,3) and d(1,2) <= d(2,3); ties count correct"}


register_task(TaskSpec(
    name="things", dataset="things",
    target="percepbench.tasks.things:ThingsOddOneOut",
    description="THINGS odd-one-out triplets (image 3 is the odd one); options root, triplets",
    kind="odd_one_out", measure="odd_one_out_accuracy", needs_data=True,
))


# ------------------------------------------------------------------------------------------ dataset source


def verify_things(source: DatasetSource, root: Path, selected: list[Part], deep: bool) -> list[str]:
    """The triplet file: present, readable, three names a line; with part ``images``, every image it names
    present (and, with ``deep``, decodable)."""
    dest = root / source.folder
    fix = (f"Fix: fetch it by hand as `{download_command(source.name, root)}` explains (percepbench cannot "
           "download THINGS)")
    triplet_file = dest / "things_valset.txt"
    if not triplet_file.is_file():
        return [f"{triplet_file}: THINGS triplet file missing (things_valset.txt, OSF project b2a4j). {fix}"]
    try:
        triplets, bad = read_triplets(triplet_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        return [f"{triplet_file}: cannot be read ({exc}). {fix}"]
    problems = []
    if bad:
        problems.append(f"{triplet_file}: every line must hold exactly 3 image names; bad: {listed(bad)}. {fix}")
    if not triplets and not bad:
        problems.append(f"{triplet_file}: no triplets in it. {fix}")
    if any(p.name == "images" for p in selected):
        rels = list(dict.fromkeys(image_file(n) for _, names in triplets for n in names))
        problems += image_problems(dest, rels, fix, deep=deep)
    return problems


register_dataset(DatasetSource(
    name="things", title="THINGS odd-one-out", folder="things",
    description="THINGS odd-one-out validation triplets as in DreamSim's evaluation (image 3 is the odd one)",
    licence="see the OSF projects b2a4j (triplets) and jum2f (THINGS images) for their terms",
    citation="Hebart et al., THINGS-data, eLife 12 (2023); Hebart et al., THINGS: A database of 1,854 "
             "object concepts and more than 26,000 naturalistic object images, PLoS ONE 14(10) (2019)",
    approx_size="unknown (depends on the image set)",
    base_url="https://osf.io/b2a4j/",
    parts=(Part("triplets", "things_valset.txt", "manual", ("things_valset.txt",)),
           Part("images", "<name>.png", "manual", ())),
    default_parts=("triplets", "images"),
    verify=verify_things,
    groups={"all": ("triplets", "images")},
    extraction="none: placed by hand",
    layout=LAYOUT,
    manual=MANUAL,
))
