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
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from percepbench.data import data_root as default_data_root
from percepbench.data import download_command
from percepbench.errors import DataError
from percepbench.registry import register_task
from percepbench.specs import TaskSpec
from percepbench.tasks.files import FileTwoAFCTask, numeric_column, read_csv

URL = "https://data.csail.mit.edu/nights/nights.zip"
COLUMNS = ("id", "left_vote", "right_vote", "votes", "ref_path", "left_path", "right_path", "split",
           "is_imagenet", "prompt")
SUBSETS = ("test", "test_imagenet", "test_no_imagenet", "val", "train")
MIN_VOTES = 6
HOW_TO_GET = (
    "Download NIGHTS with `percepbench data download nights --root <data root>` (the official chunked "
    "archives https://data.csail.mit.edu/nights/nights_chunked/{ref,distort}/000.zip ... 099.zip plus data.csv, "
    f"about 58 GB), or get {URL} and unzip it yourself, so that the layout is <data root>/nights/data.csv, "
    "<data root>/nights/ref/<000-099>/<000-999>.png and <data root>/nights/distort/<000-099>/<file>_0.png|_1.png; "
    "then pass --data-root <data root> (or set PERCEPBENCH_DATA; without either, the default data root "
    "$XDG_CACHE_HOME/percepbench/data, i.e. ~/.cache/percepbench/data, is used, as by the download command), or "
    "--task-args nights:root=<path to the nights folder>"
)


def how_to_get(data_root: Path | None) -> str:
    """:data:`HOW_TO_GET`, preceded by the exact download command for ``data_root`` when it is known."""
    if data_root is None:
        return HOW_TO_GET
    return f"Run `{download_command('nights', data_root)}` to download it. {HOW_TO_GET}"


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

    def _nights_root(self, data_root: str | None) -> tuple[Path, Path | None, str]:
        """(nights folder, data root it sits in or None, note on where it came from)."""
        if self.root is not None:
            root = Path(self.root).expanduser()
            return root, root.parent if root.name == "nights" else None, ""
        base = default_data_root(data_root)
        note = "" if data_root else f" (no data root given, so the default data root {base} was used)"
        return base / "nights", base, note

    def prepare(self, *, data_root: str | None = None, num_workers: int = 0, progress: bool = True,
                seed: int = 0) -> None:
        root, base, note = self._nights_root(data_root)
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
    name="nights",
    target="percepbench.tasks.nights:NIGHTS",
    description="NIGHTS 2AFC human judgments (DreamSim paper): votes >= 6, test split by default with "
                "imagenet / no-imagenet subsets; options subset|split, root, min_votes",
    kind="2afc", measure="2afc_accuracy", needs_data=True, offline=True,
    licence="NIGHTS: see the DreamSim project (https://github.com/ssundaram21/dreamsim); images generated "
            "with Stable Diffusion",
    citation="Fu et al., DreamSim: Learning New Dimensions of Human Visual Similarity using Synthetic "
             "Data, NeurIPS 2023",
))
