"""``nights``: 2AFC on NIGHTS (DreamSim paper; human judgments of synthetic image triplets).

Data: ``<data_root>/nights`` (``--data-root`` / ``$PERCEPBENCH_DATA``, else the default data root of
:func:`percepbench.data.data_root`, where ``percepbench data download nights`` puts it), or ``root=``
pointing at the nights folder itself. It holds ``data.csv`` (columns ``id, left_vote, right_vote, votes,
ref_path, left_path, right_path, split, is_imagenet, prompt``) and the images under ``ref/`` and
``distort/``; the paths in the CSV are relative to the nights folder and are used exactly as given.

Protocol, as in the official code: keep rows with ``votes >= 6`` (unanimous votes); label ``p =
right_vote`` (1 = the right image was judged closer to the reference); ``d0 = d(ref, left)``, ``d1 =
d(ref, right)``; per-triplet score ``1 - p`` if d0 < d1, ``p`` if d1 < d0, 0.5 on an exact tie.

``subset=`` (alias ``split=``) picks the items: ``test`` (default) scores the filtered test split with
subsets ``test_imagenet`` / ``test_no_imagenet`` and the pooled record ``all`` = the headline NIGHTS test
accuracy (plain accuracy over the filtered test split, i.e. the size-weighted mean of the two);
``test_imagenet``, ``test_no_imagenet``, ``val`` and ``train`` score that part alone.

**Dataset source** (registered here as ``nights``; ``percepbench data download nights``). URLs from the
dataset authors, "verified" = published by their own scripts or pages, as recorded in percepbench's
reference notes (percepbench's tests use a local server). Default parts: the chunk zips
``https://data.csail.mit.edu/nights/nights_chunked/ref/000.zip`` ... ``099.zip`` and ``.../distort/000.zip``
... ``099.zip`` (verified: the official chunked script), plus ``data.csv``. The chunked script forgets
``data.csv`` and no standalone URL for it is known, so percepbench reads the one member ``nights/data.csv``
out of the verified ``https://data.csail.mit.edu/nights/nights.zip`` with HTTP range requests (a few MB,
not the whole archive); this needs a server that honours ``Range``, and fails with instructions otherwise.
Part ``zip``: the single ``nights.zip`` instead (needs room for the archive and its content at once,
whereas a chunk is deleted as soon as it is extracted). **Not verified**: the internal layout of the chunk
zips. The official script unzips ``ref/NNN.zip`` into ``ref/``, which suggests members ``NNN/<file>.png``;
extraction accepts that and also a leading ``nights/`` and/or ``ref/``/``distort/`` component, or the images
at the top of the zip, and fails naming the archive if it finds none of these. ``percepbench data verify
nights`` checks ``data.csv`` (columns, numeric votes) and every image of the rows with ``votes >= 6``.
"""

from __future__ import annotations

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
from percepbench.tasks.files import FileTwoAFCTask, numeric_column, read_csv

URL = "https://data.csail.mit.edu/nights/nights.zip"
COLUMNS = ("id", "left_vote", "right_vote", "votes", "ref_path", "left_path", "right_path", "split",
           "is_imagenet", "prompt")
SUBSETS = ("test", "test_imagenet", "test_no_imagenet", "val", "train")
NIGHTS_LICENCE = ("see the DreamSim project (https://github.com/ssundaram21/dreamsim); images generated with "
                  "Stable Diffusion")
NIGHTS_CITATION = ("Fu et al., DreamSim: Learning New Dimensions of Human Visual Similarity using Synthetic Data, "
                   "NeurIPS 2023")
MIN_VOTES = 6
#: the files the task reads, relative to the data root (the dataset source's ``layout`` too)
LAYOUT = "nights/data.csv, nights/ref/<000-099>/<000-999>.png, nights/distort/<000-099>/<file>_0.png|_1.png"
HOW_TO_GET = (
    "Download NIGHTS with `percepbench data download nights --root <data root>` (the official chunked "
    "archives https://data.csail.mit.edu/nights/nights_chunked/{ref,distort}/000.zip ... 099.zip plus data.csv, "
    f"about 58 GB), or get {URL} and unzip it yourself, so that the data root holds {LAYOUT}; then "
    f"{DATA_ROOT_HELP}, or --task-args nights:root=<path to the nights folder>"
)


def how_to_get(data_root: Path | None) -> str:
    """:data:`HOW_TO_GET`, preceded by the exact download command for ``data_root`` when it is known."""
    return data_how_to_get("nights", data_root, HOW_TO_GET)


_TRUE = {"true", "1", "1.0", "yes", "t"}
_FALSE = {"false", "0", "0.0", "no", "f"}


def _bool_column(frame: pd.DataFrame, column: str, path: Path) -> pd.Series:
    """``True``/``False``/``1``/``0`` column as bool; :class:`DataError` naming the file otherwise."""
    text = frame[column].astype(str).str.strip().str.lower()
    bad = ~text.isin(_TRUE | _FALSE)
    if bad.any():
        idx = list(frame.index[bad.to_numpy()])
        raise DataError(f"{path}: column {column!r} must be True/False, got "
                        + ", ".join(f"line {i + 2}: {frame[column].loc[i]!r}" for i in idx[:5]))
    return text.isin(_TRUE)


class NIGHTS(FileTwoAFCTask):
    """NIGHTS 2AFC (human judgments): filtered ``votes >= 6``, label ``right_vote``; see the module docstring."""

    def __init__(self, subset: str | None = None, split: str | None = None, root: str | None = None,
                 min_votes: int = MIN_VOTES) -> None:
        super().__init__()
        if subset is not None and split is not None and str(subset) != str(split):
            raise ValueError(f"subset={subset!r} and split={split!r} disagree; give one of them")
        chosen = str(subset if subset is not None else split if split is not None else "test")
        if chosen not in SUBSETS:
            raise ValueError(f"unknown NIGHTS subset {chosen!r}; choose one of {', '.join(SUBSETS)}")
        self.subset = chosen
        self.root = None if root in (None, "") else str(root)
        self.min_votes = int(min_votes)

    def prepare(self, *, data_root: str | None = None, num_workers: int = 0, progress: bool = True,
                seed: int = 0) -> None:
        root, base, note = task_data_dir("nights", self.root, data_root)
        hint = how_to_get(base)
        csv = root / "data.csv"
        if not root.is_dir():
            raise DataError(f"{root}: NIGHTS folder not found{note}. {hint}")
        if not csv.is_file():
            raise DataError(f"{csv}: NIGHTS data.csv not found{note}. {hint}")
        frame = read_csv(csv, COLUMNS)
        n_rows = len(frame)
        votes = numeric_column(frame, "votes", csv)
        frame = frame[(votes >= self.min_votes).to_numpy()]
        n_kept = len(frame)
        p = numeric_column(frame, "right_vote", csv, lo=0.0, hi=1.0)
        imagenet = _bool_column(frame, "is_imagenet", csv)
        split = frame["split"].astype(str).str.strip()
        if self.subset in ("test", "test_imagenet", "test_no_imagenet"):
            mask = split == "test"
            if self.subset == "test_imagenet":
                mask &= imagenet
            elif self.subset == "test_no_imagenet":
                mask &= ~imagenet
            names = np.where(imagenet, "test_imagenet", "test_no_imagenet")
        else:
            mask = split == self.subset
            names = np.full(len(frame), self.subset, dtype=object)
        mask = mask.to_numpy()
        if not mask.any():
            raise DataError(f"{csv}: no rows left for subset {self.subset!r} after keeping votes >= "
                            f"{self.min_votes} ({n_kept} of {n_rows} rows kept; splits present: "
                            f"{', '.join(sorted(split.unique()))})")
        sel = frame[mask]
        items = pd.DataFrame({
            "item": sel["id"].astype(str).to_numpy(),
            "subset": names[mask],
            "p": p.to_numpy()[mask],
            "split": split.to_numpy()[mask],
            "is_imagenet": imagenet.to_numpy()[mask],
            "votes": votes.loc[sel.index].to_numpy(),
            "ref_path": sel["ref_path"].astype(str).to_numpy(),
            "left_path": sel["left_path"].astype(str).to_numpy(),
            "right_path": sel["right_path"].astype(str).to_numpy(),
            "prompt": sel["prompt"].astype(str).to_numpy(),
        })
        paths = [tuple(os.path.join(root, rel) for rel in row)
                 for row in zip(items["ref_path"], items["left_path"], items["right_path"], strict=True)]
        self._finish(items, paths, what=f"NIGHTS ({csv})", hint=hint, num_workers=num_workers)
        self._protocol = {
            "dataset": "NIGHTS (DreamSim, Fu et al. 2023)",
            "root": str(root),
            "csv": str(csv),
            "source": URL,
            "filters": f"votes >= {self.min_votes}; subset {self.subset!r}",
            "rows_in_csv": n_rows,
            "rows_after_votes_filter": n_kept,
            "label": "p = right_vote (fraction judging the right image closer)",
            "comparisons": "d0 = d(ref, left), d1 = d(ref, right); paths from data.csv used as given",
            "pooled": "subset 'all' = plain accuracy over every scored triplet "
                      "(for subset=test: the headline NIGHTS test score)",
        }


register_task(TaskSpec(
    name="nights", dataset="nights",
    target="percepbench.tasks.nights:NIGHTS",
    description="NIGHTS 2AFC human judgments (DreamSim paper): votes >= 6, test split by default with "
                "imagenet / no-imagenet subsets; options subset|split, root, min_votes",
    kind="2afc", measure="2afc_accuracy", needs_data=True,
    licence=f"NIGHTS: {NIGHTS_LICENCE}", citation=NIGHTS_CITATION,
))


# ------------------------------------------------------------------------------------------ dataset source


def verify_nights(source: DatasetSource, root: Path, selected: list[Part], deep: bool) -> list[str]:
    """``data.csv`` present with the official columns and numeric ``votes``/``right_vote``; every image of
    the rows with ``votes >= 6`` present (and, with ``deep``, decodable)."""
    dest = root / source.folder
    fix = fix_hint(source, root)
    if not dest.is_dir():
        return [f"{dest}: NIGHTS folder missing. {fix}"]
    csv = dest / "data.csv"
    if not csv.is_file():
        return [f"{csv}: NIGHTS data.csv missing. {fix} (it reads nights/data.csv out of nights.zip)"]
    try:
        frame = read_csv(csv, COLUMNS)
        votes = numeric_column(frame, "votes", csv)
        numeric_column(frame, "right_vote", csv, lo=0.0, hi=1.0)
    except DataError as exc:
        return [f"{exc}. {fix_hint(source, root, delete=csv)}"]
    kept = frame[(votes >= MIN_VOTES).to_numpy()]
    rels = list(dict.fromkeys(str(p) for col in ("ref_path", "left_path", "right_path") for p in kept[col]))
    return image_problems(dest, rels, fix, deep=deep, unreadable_fix=lambda p: fix_hint(source, root, delete=p))


def nights_source(chunks: int = 100) -> DatasetSource:
    """The NIGHTS source with ``chunks`` chunk zips per kind (100 officially; tests use fewer)."""
    chunk_parts = tuple(
        Part(f"{kind}/{i:03d}", f"nights_chunked/{kind}/{i:03d}.zip", "zip", (f"{kind}/{i:03d}",), flat=True)
        for kind in ("ref", "distort") for i in range(chunks))
    ref = tuple(p.name for p in chunk_parts if p.name.startswith("ref/"))
    distort = tuple(p.name for p in chunk_parts if p.name.startswith("distort/"))
    csv = Part("csv", "nights.zip", "zip_member", ("data.csv",), member="nights/data.csv", approx="a few MB")
    whole = Part("zip", "nights.zip", "zip", ("data.csv", "ref", "distort"), approx="58 GB unzipped")
    return DatasetSource(
        name="nights", title="NIGHTS", folder="nights",
        description="NIGHTS: 20,019 synthetic image triplets with human 2AFC similarity votes (DreamSim paper); "
                    "percepbench scores the rows with votes >= 6",
        licence=NIGHTS_LICENCE, citation=NIGHTS_CITATION,
        approx_size="about 58 GB unzipped",
        base_url="https://data.csail.mit.edu/nights/",
        parts=(csv, *chunk_parts, whole),
        default_parts=("csv", *ref, *distort),
        verify=verify_nights,
        groups={"ref": ref, "distort": distort, "chunks": ref + distort, "default": ("csv", *ref, *distort)},
        parts_hint=" and single chunks such as ref/007 or distort/042",
        strip_prefixes=("nights",),
        extraction="chunks: nights_chunked/ref/NNN.zip -> nights/ref/NNN/, nights_chunked/distort/NNN.zip -> "
                   "nights/distort/NNN/ (a leading nights/, ref/ or distort/ folder in the zip is accepted; "
                   "the chunks' internal layout is not verified); data.csv: the member nights/data.csv of "
                   "nights.zip, read with HTTP range requests; parts=zip: nights.zip extracted whole",
        layout=LAYOUT,
    )


register_dataset(nights_source())
