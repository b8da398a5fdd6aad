"""``pieapp_2afc`` and ``pieapp``: the PieAPP dataset (Prashnani et al., CVPR 2018) as 2AFC and as correlation.

**Licence: non-commercial and educational use only** (the dataset's own terms, ``TERMS_OF_USE.pdf`` in the
archive); its reference images come from the Waterloo Exploration Database (cite it too).

Layout, under ``<data_root>/pieapp`` (``--data-root`` / ``$PERCEPBENCH_DATA``, else the default data root of
:func:`percepbench.data.data_root`), or ``root=`` pointing at that folder itself:

- ``reference_images/<split>/ref_<n>.png``; ``distorted_images/<split>/ref_<n>/distort_<...>.png``, split
  ``train``, ``val`` or ``test`` (the official split: 160 references for train and val together, 40 for
  test);
- ``labels/<split>/ref_<n>_pairwise_labels.csv``: a header line, then per pair: column 1 the reference
  image, 2 distorted image A, 3 distorted image B, then for train/val column 4 the raw MTurk probability
  that **A** is closer to the reference (blank where not asked) and column 5 the processed (maximum-
  likelihood) probability for A, which is the label used; for test, column 4 the probability for A (every
  test pair was asked). Columns are read by position; cells are stripped of spaces;
- ``labels/test/ref_<n>_per_image_score.csv``: a header line, then column 1 the reference, 2 the distorted
  image, 3 its score: the **level of dissimilarity** from the reference (higher = worse; the reference
  itself scores 0).

``pieapp_2afc``: items (ref, A, B) with ``left = A``, ``right = B`` and **p = 1 - probability for A** (the
probability that B is judged closer), so the shared 2AFC rule applies (``d0 = d(ref, A)``, ``d1 = d(ref,
B)``: 1 - p if d0 < d1, p if d1 < d0, 0.5 on a tie). Option ``split=`` ``test`` (default), ``val`` or
``train``; ``min_margin=`` keeps the pairs with ``|p - 0.5| > min_margin`` when it is above 0 (0, the
default, keeps every pair; UniSim-Bench uses 0.1, i.e. p < 0.4 or p > 0.6). Test pairs in which the
reference image itself is A or B are left out (their d(ref, ref) = 0 decides them for any metric; the
official test labels compare every image with the reference too), as UniSim-Bench does; their count is
recorded. One subset, the split.

``pieapp``: correlation (:mod:`percepbench.tasks.mos`) between d(ref, distorted) and the per-image scores of
the test split, as ``dmos`` (higher = worse); a row naming the reference itself as the distorted image is
left out. One subset (``test``); CIs resample the 40 references.

Bad data is a :class:`~percepbench.errors.DataError` naming the file: no label files, a header-only or
unparsable CSV, too few columns, a probability outside [0, 1] or a score that is not a finite number, a row
whose reference differs from the one in the file's name (the row would pair images of two references),
missing images.

**Dataset source** (registered here as ``pieapp``; ``percepbench data download pieapp``): the authors' single
archive ``https://web.ece.ucsb.edu/~ekta/projects/PieAPPv0.1/all_data_PieAPP_dataset_CVPR_2018.zip``
(2.2 GB), extracted to ``<data_root>/pieapp``; a leading ``PieAPP_dataset_CVPR_2018/`` folder inside it is
accepted. ``percepbench data verify pieapp`` parses every label file and checks the images they name.

What was checked, and where: the archive URL and size, the folder organisation, the column meanings (A is
the image whose preference is given; processed column 5 for train/val; per-image score = dissimilarity,
reference = 0), the image naming, the licence: the dataset README in the authors' repository
``prashnani/PerceptualImageError`` (``dataset/dataset_README.md``; primary). The path rules
(``reference_images/<split>/<col 1>``, ``distorted_images/<split>/<ref stem>/<name>``), the header line and
its names (``ref. image, distorted image A, distorted image B, …``), the reference appearing as image A in
test pairs, and the UniSim-Bench filter: public loaders (secondary). **Not verified**: the archive's internal
top folder, whether every per-image score is >= 0 (any finite score is accepted), and the exact pair counts.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from percepbench.data import (
    DATA_ROOT_HELP,
    fix_hint,
    image_problems,
    task_data_dir,
)
from percepbench.data import how_to_get as data_how_to_get
from percepbench.datasets import DatasetSource, Part
from percepbench.errors import DataError
from percepbench.registry import register_dataset, register_task
from percepbench.specs import TaskSpec
from percepbench.tasks.files import FileTask, FileTwoAFCTask, listed
from percepbench.tasks.mos import CorrelationTask

SPLITS = ("train", "val", "test")
URL = "https://web.ece.ucsb.edu/~ekta/projects/PieAPPv0.1/all_data_PieAPP_dataset_CVPR_2018.zip"
PIEAPP_LICENCE = ("non-commercial and educational use only (PieAPP dataset terms, TERMS_OF_USE.pdf in the "
                  "archive); reference images from the Waterloo Exploration Database")
PIEAPP_CITATION = ("Prashnani, Cai, Mostofi, Sen, PieAPP: Perceptual Image-Error Assessment Through Pairwise "
                   "Preference, CVPR 2018; Ma et al., Waterloo Exploration Database, IEEE TIP 26(2), 2017")
LAYOUT = ("pieapp/reference_images/<split>/ref_<n>.png, pieapp/distorted_images/<split>/ref_<n>/<name>.png, "
          "pieapp/labels/<split>/ref_<n>_pairwise_labels.csv, pieapp/labels/test/ref_<n>_per_image_score.csv")
HOW_TO_GET = (f"Download PieAPP with `percepbench data download pieapp --root <data root>` ({URL}, 2.2 GB; "
              "non-commercial, educational use only), or unzip that archive yourself, so that the data root "
              f"holds {LAYOUT}; then {DATA_ROOT_HELP}, or --task-args <task>:root=<path to the pieapp folder>")
PAIRS_SUFFIX = "_pairwise_labels.csv"
SCORES_SUFFIX = "_per_image_score.csv"


def how_to_get(data_root: Path | None) -> str:
    return data_how_to_get("pieapp", data_root, HOW_TO_GET)


def _cells(path: Path, min_columns: int, required: tuple[int, ...]) -> pd.DataFrame:
    """A label CSV (header line, then rows) as text cells, stripped; columns by position 0, 1, ... (at least
    ``min_columns``; the frame's index is the file's line number).

    Raises:
        DataError: naming the file: missing, unparsable, no rows, or an empty cell in a ``required`` column.
    """
    if not path.is_file():
        raise DataError(f"{path}: PieAPP label file not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot parse this PieAPP label CSV ({exc})") from exc
    rows = [[c.strip() for c in r] for r in rows[1:]]
    lines = [i + 2 for i, r in enumerate(rows) if any(r)]
    rows = [r for r in rows if any(r)]
    width = max([min_columns, *(len(r) for r in rows)])
    frame = pd.DataFrame([r + [""] * (width - len(r)) for r in rows], index=lines, dtype=str)
    if frame.empty:
        raise DataError(f"{path}: no rows below the header")
    short = [i for i in range(len(frame)) if (frame.iloc[i, list(required)] == "").any()]
    if short:
        shown = ", ".join(str(c + 1) for c in required)
        raise DataError(f"{path}: {len(short)} row(s) with an empty cell in columns {shown} "
                        f"({listed([f'line {frame.index[i]}' for i in short])})")
    return frame


def _numbers(frame: pd.DataFrame, column: int, path: Path, *, probability: bool) -> np.ndarray:
    values = pd.to_numeric(frame[column], errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(values)
    what = "not a finite number"
    if probability and not bad.any():
        bad = (values < 0) | (values > 1)
        what = "outside [0, 1]"
    if bad.any():
        lines = [f"line {frame.index[i]}: {frame[column].iloc[i]!r}" for i in np.flatnonzero(bad)]
        raise DataError(f"{path}: column {column + 1} has {len(lines)} value(s) {what} ({listed(lines)})")
    return values


def _check_reference(frame: pd.DataFrame, path: Path, suffix: str) -> str:
    """The reference named by the file (``ref_<n>``); every row's column 1 must be ``ref_<n>.<ext>``."""
    stem = path.name[: -len(suffix)]
    wrong = [i for i, r in enumerate(frame[0]) if os.path.splitext(r)[0] != stem]
    if wrong:
        shown = [f"line {frame.index[i]}: {frame[0].iloc[i]!r}" for i in wrong]
        raise DataError(f"{path}: {len(wrong)} row(s) name another reference than {stem} in column 1 "
                        f"({listed(shown)}); each label file holds the pairs of its own reference")
    return stem


def label_files(root: Path, split: str, suffix: str) -> list[Path]:
    folder = root / "labels" / split
    if not folder.is_dir():
        raise DataError(f"{folder}: PieAPP label folder not found")
    files = sorted(p for p in folder.iterdir() if p.name.endswith(suffix) and p.is_file())
    if not files:
        raise DataError(f"{folder}: no PieAPP label files *{suffix} in it")
    return files


def _image_path(root: Path, split: str, stem: str, ref_name: str, name: str) -> str:
    if name == ref_name:
        return str(root / "reference_images" / split / name)
    return str(root / "distorted_images" / split / stem / name)


def pair_items(root: Path, split: str, min_margin: float = 0.0
               ) -> tuple[pd.DataFrame, list[tuple[str, str, str]], dict[str, int]]:
    """2AFC items of one split (``p`` = probability that B is closer), their paths, and counts for the record."""
    rows, paths = [], []
    counts = {"pairs_in_files": 0, "pairs_with_the_reference": 0, "pairs_below_margin": 0}
    label_column = 3 if split == "test" else 4
    for path in label_files(root, split, PAIRS_SUFFIX):
        frame = _cells(path, label_column + 1, (0, 1, 2, label_column))
        stem = _check_reference(frame, path, PAIRS_SUFFIX)
        prob_a = _numbers(frame, label_column, path, probability=True)
        counts["pairs_in_files"] += len(frame)
        for i in range(len(frame)):
            ref_name, a, b = frame.iloc[i, 0], frame.iloc[i, 1], frame.iloc[i, 2]
            if ref_name in (a, b):
                counts["pairs_with_the_reference"] += 1
                continue
            p = 1.0 - float(prob_a[i])
            if min_margin > 0 and not abs(p - 0.5) > min_margin:
                counts["pairs_below_margin"] += 1
                continue
            rows.append({"item": f"{stem}:line{frame.index[i]}", "subset": split, "p": p, "reference": stem,
                         "left": a, "right": b})
            paths.append((str(root / "reference_images" / split / ref_name),
                          _image_path(root, split, stem, ref_name, a), _image_path(root, split, stem, ref_name, b)))
    return pd.DataFrame(rows), paths, counts


def score_items(root: Path) -> tuple[pd.DataFrame, list[tuple[str, str]], int]:
    """Correlation items of the test split (per-image dissimilarity scores), their paths, and how many rows
    named the reference itself (left out)."""
    rows, paths, skipped = [], [], 0
    for path in label_files(root, "test", SCORES_SUFFIX):
        frame = _cells(path, 3, (0, 1, 2))
        stem = _check_reference(frame, path, SCORES_SUFFIX)
        scores = _numbers(frame, 2, path, probability=False)
        for i in range(len(frame)):
            ref_name, dist = frame.iloc[i, 0], frame.iloc[i, 1]
            if dist == ref_name:
                skipped += 1
                continue
            rows.append({"item": f"{stem}/{dist}", "subset": "test", "reference": stem, "mos": float(scores[i])})
            paths.append((str(root / "reference_images" / "test" / ref_name),
                          _image_path(root, "test", stem, ref_name, dist)))
    items = pd.DataFrame(rows)
    if len(items) and items["item"].duplicated().any():
        dup = items["item"][items["item"].duplicated()].unique().tolist()
        raise DataError(f"{root / 'labels' / 'test'}: distorted images scored twice: {listed(dup)}")
    return items, paths, skipped


def _folder(root_opt: str | None, data_root: str | None) -> tuple[Path, str, str]:
    root, base, note = task_data_dir("pieapp", root_opt, data_root)
    hint = how_to_get(base)
    if not root.is_dir():
        raise DataError(f"{root}: PieAPP folder not found{note}. {hint}")
    if not (root / "labels").is_dir():
        raise DataError(f"{root / 'labels'}: PieAPP label folder not found{note}. {hint}")
    return root, hint, note


class PieAPP2AFC(FileTwoAFCTask):
    """PieAPP pairs as 2AFC: (ref, A, B), p = 1 - probability for A; see the module docstring."""

    def __init__(self, split: str = "test", min_margin: float = 0.0, root: str | None = None) -> None:
        super().__init__()
        if str(split) not in SPLITS:
            raise ValueError(f"unknown PieAPP split {split!r}; choose one of {', '.join(SPLITS)}")
        try:
            margin = float(min_margin)
        except (TypeError, ValueError):
            raise ValueError(f"min_margin must be a number in [0, 0.5), got {min_margin!r}") from None
        if not (0.0 <= margin < 0.5) or math.isnan(margin):
            raise ValueError(f"min_margin must be in [0, 0.5) (pairs with |p - 0.5| > min_margin are kept), "
                             f"got {min_margin!r}")
        self.split, self.min_margin = str(split), margin
        self.root = None if root in (None, "") else str(root)

    def prepare(self, *, data_root: str | None = None, num_workers: int = 0, progress: bool = True,
                seed: int = 0) -> None:
        root, hint, _ = _folder(self.root, data_root)
        items, paths, counts = pair_items(root, self.split, self.min_margin)
        folder = root / "labels" / self.split
        if len(items) == 0:
            raise DataError(f"{folder}: no pairs left to score ({counts['pairs_in_files']} in the files; "
                            f"{counts['pairs_with_the_reference']} with the reference as A or B, "
                            f"{counts['pairs_below_margin']} with |p - 0.5| <= {self.min_margin})")
        self._finish(items, paths, what=f"PieAPP {self.split} pairs ({folder})", hint=hint, num_workers=num_workers)
        self._protocol = {
            "dataset": "PieAPP (Prashnani et al. 2018)", "root": str(root), "labels": str(folder),
            "source": URL, "split": self.split,
            "label": "p = 1 - (probability that A is closer to the reference): the probability that B is "
                     + ("closer; column 4 of the test labels" if self.split == "test"
                        else "closer; column 5 (processed) of the train/val labels"),
            "comparisons": "d0 = d(ref, A), d1 = d(ref, B)",
            "filters": (f"|p - 0.5| > {self.min_margin}" if self.min_margin > 0 else "none (every pair)")
                       + "; pairs with the reference image as A or B left out",
            **counts,
        }


class PieAPPScores(FileTask, CorrelationTask):
    """PieAPP test set: d(ref, distorted) against the per-image dissimilarity scores (higher = worse)."""

    score_kind = "dmos"

    def __init__(self, root: str | None = None) -> None:
        super().__init__()
        self.root = None if root in (None, "") else str(root)

    def prepare(self, *, data_root: str | None = None, num_workers: int = 0, progress: bool = True,
                seed: int = 0) -> None:
        root, hint, _ = _folder(self.root, data_root)
        items, paths, skipped = score_items(root)
        folder = root / "labels" / "test"
        if len(items) < 3:
            raise DataError(f"{folder}: a correlation needs at least 3 scored images, found {len(items)}")
        self._finish(items, paths, what=f"PieAPP test scores ({folder})", hint=hint, num_workers=num_workers)
        self._protocol = {
            "dataset": "PieAPP (Prashnani et al. 2018), test split", "root": str(root), "labels": str(folder),
            "source": URL, "scores": "per-image dissimilarity score (higher = worse; the reference scores 0)",
            "filters": f"rows naming the reference itself left out: {skipped}",
            "comparison": "d = d(reference, distorted); predicted quality = -d",
            "measures": "srcc, krcc, plcc, plcc_fit (4-parameter logistic); CIs over the reference images",
        }


register_task(TaskSpec(
    name="pieapp_2afc", dataset="pieapp",
    target="percepbench.tasks.pieapp:PieAPP2AFC",
    description="PieAPP pairwise preferences as 2AFC (ref, A, B; p = probability that B is closer); options "
                "split=test|val|train, min_margin (0.1 = UniSim-Bench's filter), root",
    kind="2afc", measure="2afc_accuracy", needs_data=True,
    licence=f"PieAPP: {PIEAPP_LICENCE}", citation=PIEAPP_CITATION,
))

register_task(TaskSpec(
    name="pieapp", dataset="pieapp",
    target="percepbench.tasks.pieapp:PieAPPScores",
    description="PieAPP test set: correlation with the per-image dissimilarity scores (40 references x 15 "
                "distorted images); SRCC, KRCC, PLCC, PLCC after a logistic fit; option root",
    kind="correlation", measure="srcc", needs_data=True,
    licence=f"PieAPP: {PIEAPP_LICENCE}", citation=PIEAPP_CITATION,
))


# ------------------------------------------------------------------------------------------ dataset source


def verify_pieapp(source: DatasetSource, root: Path, selected: list[Part], deep: bool) -> list[str]:
    """Every split's pairwise labels and the test per-image scores parse; every image they name is present
    (``deep``: decodable)."""
    dest = root / source.folder
    fix = fix_hint(source, root)
    if not dest.is_dir():
        return [f"{dest}: PieAPP folder missing. {fix}"]
    problems: list[str] = []
    files: list[str] = []
    for split in SPLITS:
        try:
            _, paths, _ = pair_items(dest, split)
            files += [p for row in paths for p in row]
        except DataError as exc:
            problems.append(f"{exc}. {fix}")
    try:
        _, paths, _ = score_items(dest)
        files += [p for row in paths for p in row]
    except DataError as exc:
        problems.append(f"{exc}. {fix}")
    return problems + image_problems(dest, files, fix, deep=deep,
                                     unreadable_fix=lambda p: fix_hint(source, root, delete=p))


register_dataset(DatasetSource(
    name="pieapp", title="PieAPP", folder="pieapp",
    description="PieAPP: 200 references, 20,280 distorted images, 81,480 pairwise preference probabilities; "
                "per-image dissimilarity scores for the 40 test references (non-commercial, educational use)",
    licence=PIEAPP_LICENCE, citation=PIEAPP_CITATION,
    approx_size="2.2 GB (zip)",
    base_url="https://web.ece.ucsb.edu/~ekta/projects/PieAPPv0.1/",
    parts=(Part("zip", "all_data_PieAPP_dataset_CVPR_2018.zip", "zip",
                ("reference_images", "distorted_images", "labels"), approx="2.2 GB"),),
    default_parts=("zip",),
    verify=verify_pieapp,
    groups={"all": ("zip",)},
    strip_prefixes=("PieAPP_dataset_CVPR_2018",),
    extraction="all_data_PieAPP_dataset_CVPR_2018.zip extracted whole into pieapp/ (a leading "
               "PieAPP_dataset_CVPR_2018/ folder is accepted; the archive's internal layout is not verified)",
    layout=LAYOUT,
))
