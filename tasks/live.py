"""``live``: correlation with the LIVE Image Quality Assessment Database, release 2 (Sheikh et al. 2006).

29 reference images and 779 distorted images of five types; one DMOS per image, **higher = worse** (so the
task's ``score_kind`` is ``dmos``).

Layout, under ``<data_root>/live`` (``--data-root`` / ``$PERCEPBENCH_DATA``, else the default data root of
:func:`percepbench.data.data_root`), or ``root=`` pointing at that folder itself (the content of the
official ``databaserelease2`` folder):

- ``refimgs/<name>.bmp``: the references;
- ``jp2k/``, ``jpeg/``, ``wn/``, ``gblur/``, ``fastfading/``: ``img<k>.bmp``, k counted from 1 within each folder;
- ``dmos.mat``: MATLAB variables ``dmos`` and ``orgs``, 982 entries each, in the order jp2k ``img1..img227``,
  jpeg ``img1..img233``, wn, gblur and fastfading ``img1..img174`` each. ``orgs == 1`` marks an entry
  that is a copy of its reference (203 of them): those are **left out**, which leaves the 779 distorted
  images; ``orgs`` must be 0 or 1;
- ``refnames_all.mat``: ``refnames_all``, 982 reference file names (``coinsinfountain.bmp``, ...), the
  reference of each entry;
- with ``scores=realigned``: ``dmos_realigned.mat`` (``dmos_new`` and ``orgs``, the realigned DMOS that
  the database also ships) instead of ``dmos.mat``.

Each array must have exactly 982 entries (the folder of an entry is known only from its position), and every
DMOS must be a finite number: the database documents no range, so none is imposed. Subsets are the five
distortion folders (``types=jp2k+wn`` scores only those) plus the pooled ``all``; CIs resample the 29 references (:mod:`percepbench.tasks.mos`).

**Dataset source** (registered here as ``live``): the release-2 archive
``http://live.ece.utexas.edu/research/quality/release2/databaserelease2.zip`` (about 700 MB) is password
protected and given after a request form on https://live.ece.utexas.edu/research/quality/subjective.htm,
so ``percepbench data download live`` downloads nothing: it checks what is there and otherwise says what
to fetch (:data:`MANUAL`). ``percepbench data verify live`` reads the .mat files and checks every image the
kept entries need (``--deep``: decodes them).

What was checked, and where: the archive name, the password and request form, and the copyright notice
(use, copy, modify and distribute for any purpose, provided the notice is kept and LIVE is acknowledged):
the QUALINET databases index, which quotes the LIVE pages (secondary); the variables ``dmos``, ``orgs``,
``refnames_all``, ``dmos_new``, the 982-entry order and counts, the ``img<k>.bmp`` naming and the rule
"``orgs(i) == 0`` for distorted images": several independent public loaders agree, one quoting the
database's own MATLAB comments (secondary). Not verified: that the realigned file's ``orgs`` equals
``dmos.mat``'s (each file's own ``orgs`` is used).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from percepbench.data import (
    DATA_ROOT_HELP,
    download_command,
    image_problems,
    task_data_dir,
)
from percepbench.datasets import DatasetSource, Part
from percepbench.errors import DataError
from percepbench.registry import register_dataset, register_task
from percepbench.specs import TaskSpec
from percepbench.tasks.files import FileTask, listed, split_list
from percepbench.tasks.mos import CorrelationTask

#: (folder, number of entries), in the order of the 982 entries of dmos.mat
FOLDERS = (("jp2k", 227), ("jpeg", 233), ("wn", 174), ("gblur", 174), ("fastfading", 174))
N_ENTRIES = sum(n for _, n in FOLDERS)
#: scores= option -> (file, DMOS variable)
SCORE_FILES = {"dmos": ("dmos.mat", "dmos"), "realigned": ("dmos_realigned.mat", "dmos_new")}
ARCHIVE = "http://live.ece.utexas.edu/research/quality/release2/databaserelease2.zip"
HOMEPAGE = "https://live.ece.utexas.edu/research/quality/subjective.htm"
LIVE_LICENCE = ("LIVE copyright notice: use, copy, modify and distribute for any purpose, provided the notice "
                "is kept and LIVE/CPS at UT Austin are acknowledged (" + HOMEPAGE + ")")
LIVE_CITATION = ("H. R. Sheikh, M. F. Sabir and A. C. Bovik, A statistical evaluation of recent full reference "
                 "image quality assessment algorithms, IEEE TIP 15(11), 2006; H. R. Sheikh, Z. Wang, L. Cormack "
                 "and A. C. Bovik, LIVE Image Quality Assessment Database Release 2")
LAYOUT = ("live/dmos.mat, live/refnames_all.mat, live/refimgs/<name>.bmp, "
          "live/{jp2k,jpeg,wn,gblur,fastfading}/img<k>.bmp")
MANUAL = (
    "LIVE release 2 cannot be downloaded by percepbench: the archive is password protected and given after "
    "a request form. Fetch by hand:\n"
    "  1. fill in the request form on " + HOMEPAGE + " to get the password of " + ARCHIVE + " (about 700 MB);\n"
    "  2. unzip it and put the content of its databaserelease2 folder in {dest}, so that {dest}/dmos.mat, "
    "{dest}/refnames_all.mat, {dest}/refimgs/ and {dest}/jp2k/, jpeg/, wn/, gblur/, fastfading/ exist.\n"
    "Then check with `{verify}`, and run with --data-root {root} (or --task-args live:root={dest})."
)
HOW_TO_GET = (f"Fetch LIVE release 2 by hand ({ARCHIVE}, password from the request form on {HOMEPAGE}; "
              "`percepbench data download live --root <data root>` says where it goes) so that the data root "
              f"holds {LAYOUT}; then {DATA_ROOT_HELP}, or --task-args live:root=<path to the live folder>")


def how_to_get(data_root: Path | None) -> str:
    if data_root is None:
        return HOW_TO_GET
    return f"Run `{download_command('live', data_root)}` to see what to fetch. {HOW_TO_GET}"


def _load_mat(path: Path) -> dict[str, Any]:
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    if not path.is_file():
        raise DataError(f"{path}: LIVE file not found")
    try:
        return loadmat(str(path))
    except (MatReadError, ValueError, TypeError, OSError, NotImplementedError) as exc:  # scipy's errors for bad files
        raise DataError(f"{path}: cannot read this MATLAB file ({type(exc).__name__}: {exc})") from exc


def _variable(mat: dict[str, Any], name: str, path: Path) -> np.ndarray:
    if name not in mat:
        found = ", ".join(k for k in mat if not k.startswith("__"))
        raise DataError(f"{path}: no variable {name!r} (found {found or 'none'})")
    values = np.asarray(mat[name]).reshape(-1)
    if values.size != N_ENTRIES:
        raise DataError(f"{path}: {name!r} has {values.size} entries; LIVE release 2 has {N_ENTRIES} "
                        "(jp2k 227, jpeg 233, wn 174, gblur 174, fastfading 174), and an entry's image is known "
                        "only from its position")
    return values


def _name(cell: Any) -> str:
    """A MATLAB cell entry (a nested array holding one string) as text."""
    while isinstance(cell, np.ndarray):
        if cell.size != 1:
            return ""
        cell = cell.reshape(-1)[0]
    return str(cell).strip() if isinstance(cell, str | np.str_) else ""


def read_entries(root: Path, scores: str = "dmos") -> pd.DataFrame:
    """The 982 entries: ``folder, k, reference, dmos, org`` (``org`` True for reference copies).

    Raises:
        DataError: naming the file: missing or unreadable .mat files, a missing variable, a wrong number of
            entries, ``orgs`` not 0/1, a DMOS that is not a finite number, an empty reference name.
    """
    score_file, variable = SCORE_FILES[scores]
    dmos_path, names_path = root / score_file, root / "refnames_all.mat"
    mat = _load_mat(dmos_path)
    dmos = _variable(mat, variable, dmos_path)
    orgs = _variable(mat, "orgs", dmos_path)
    names = _variable(_load_mat(names_path), "refnames_all", names_path)
    try:
        dmos = dmos.astype(np.float64)
        orgs_f = orgs.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{dmos_path}: {variable!r} and 'orgs' must be numeric arrays ({exc})") from exc
    bad_orgs = np.flatnonzero(~np.isin(orgs_f, (0.0, 1.0)))
    if bad_orgs.size:
        raise DataError(f"{dmos_path}: 'orgs' must be 0 (distorted) or 1 (reference copy); entries "
                        + listed([f"{i + 1}: {orgs_f[i]!r}" for i in bad_orgs]))
    bad = np.flatnonzero(~np.isfinite(dmos) & (orgs_f == 0))
    if bad.size:
        raise DataError(f"{dmos_path}: {variable!r} has {bad.size} value(s) that are not finite numbers (entries "
                        + listed([f"{i + 1}: {dmos[i]!r}" for i in bad]) + ")")
    refs = [_name(c) for c in names]
    empty = [i for i, r in enumerate(refs) if not r and orgs_f[i] == 0]
    if empty:
        raise DataError(f"{names_path}: 'refnames_all' has {len(empty)} empty or non-text name(s) (entries "
                        + listed([str(i + 1) for i in empty]) + ")")
    folder = [f for f, n in FOLDERS for _ in range(n)]
    k = [i for _, n in FOLDERS for i in range(1, n + 1)]
    return pd.DataFrame({"folder": folder, "k": k, "reference": refs, "dmos": dmos, "org": orgs_f == 1})


def items_and_paths(root: Path, scores: str = "dmos") -> tuple[pd.DataFrame, list[tuple[str, str]], int]:
    """The distorted entries (``orgs == 0``) as items, their (reference, distorted) paths, and how many
    reference copies were left out."""
    entries = read_entries(root, scores)
    kept = entries[~entries["org"]]
    items = pd.DataFrame({
        "item": [f"{f}/img{k}" for f, k in zip(kept["folder"], kept["k"], strict=True)],
        "subset": kept["folder"].to_numpy(),
        "reference": kept["reference"].to_numpy(),
        "mos": kept["dmos"].to_numpy(),
    })
    paths = [(str(root / "refimgs" / r), str(root / f / f"img{k}.bmp"))
             for r, f, k in zip(kept["reference"], kept["folder"], kept["k"], strict=True)]
    return items, paths, int(entries["org"].sum())


def select_types(types: object) -> list[str] | None:
    """The distortion folders named by a ``types=`` option (``+``-separated; None: all)."""
    wanted = split_list(types)  # type: ignore[arg-type]
    if not wanted:
        return None
    known = [f for f, _ in FOLDERS]
    unknown = [t for t in wanted if t not in known]
    if unknown:
        raise ValueError(f"LIVE: unknown distortion type(s) {', '.join(unknown)} in types=; choose from "
                         f"{', '.join(known)} (separate several with +)")
    return wanted


class LIVE(FileTask, CorrelationTask):
    """LIVE release 2: d(reference, distorted) against DMOS (higher = worse); see the module docstring."""

    score_kind = "dmos"

    def __init__(self, root: str | None = None, scores: str = "dmos", types: object = None) -> None:
        super().__init__()
        if scores not in SCORE_FILES:
            raise ValueError(f"scores must be dmos (dmos.mat) or realigned (dmos_realigned.mat), got {scores!r}")
        self.root = None if root in (None, "") else str(root)
        self.scores = scores
        self.types = select_types(types)

    def prepare(self, *, data_root: str | None = None, num_workers: int = 0, progress: bool = True,
                seed: int = 0) -> None:
        root, base, note = task_data_dir("live", self.root, data_root)
        hint = how_to_get(base)
        if not root.is_dir():
            raise DataError(f"{root}: LIVE folder not found{note}. {hint}")
        score_file = root / SCORE_FILES[self.scores][0]
        for needed in (score_file, root / "refnames_all.mat"):
            if not needed.is_file():
                raise DataError(f"{needed}: LIVE label file not found{note}. {hint}")
        items, paths, copies = items_and_paths(root, self.scores)
        if self.types is not None:
            keep = items["subset"].isin(self.types).to_numpy()
            items, paths = items[keep], [p for p, k in zip(paths, keep, strict=True) if k]
        self._finish(items, paths, what=f"LIVE ({score_file})", hint=hint, num_workers=num_workers)
        self._protocol = {
            "dataset": "LIVE Image Quality Assessment Database, release 2", "root": str(root),
            "labels": f"{score_file} ({SCORE_FILES[self.scores][1]}, orgs), {root / 'refnames_all.mat'}",
            "source": HOMEPAGE, "scores": "dmos (higher = worse)",
            "filters": f"entries with orgs == 1 (copies of the reference) left out: {copies} of {N_ENTRIES}",
            "comparison": "d = d(refimgs/<refnames_all>, <type>/img<k>.bmp); predicted quality = -d",
            "subsets": "distortion folders jp2k, jpeg, wn, gblur, fastfading; pooled 'all'",
            "types": "all" if self.types is None else ", ".join(self.types),
            "measures": "srcc, krcc, plcc, plcc_fit (4-parameter logistic); CIs over the reference images",
        }


register_task(TaskSpec(
    name="live", dataset="live",
    target="percepbench.tasks.live:LIVE",
    description="LIVE IQA release 2: correlation with DMOS (779 distorted images of 29 references, 5 types as "
                "subsets; reference copies left out); options root, scores=dmos|realigned, types",
    kind="correlation", measure="srcc", needs_data=True,
    licence=LIVE_LICENCE, citation=LIVE_CITATION,
))


# ------------------------------------------------------------------------------------------ dataset source


def verify_live(source: DatasetSource, root: Path, selected: list[Part], deep: bool) -> list[str]:
    """``dmos.mat`` and ``refnames_all.mat`` readable and consistent; with part ``images``, every image of the
    distorted entries and their references present (``deep``: decodable)."""
    dest = root / source.folder
    fix = (f"Fix: fetch it by hand as `{download_command(source.name, root)}` explains (percepbench cannot "
           "download LIVE)")
    if not dest.is_dir():
        return [f"{dest}: LIVE folder missing. {fix}"]
    try:
        _, paths, _ = items_and_paths(dest)
    except DataError as exc:
        return [f"{exc}. {fix}"]
    if not any(p.name == "images" for p in selected):
        return []
    return image_problems(dest, [p for pair in paths for p in pair], fix, deep=deep)


register_dataset(DatasetSource(
    name="live", title="LIVE IQA release 2", folder="live",
    description="LIVE Image Quality Assessment Database release 2: 29 references, 779 distorted images "
                "(jp2k, jpeg, wn, gblur, fastfading), DMOS (higher = worse)",
    licence=LIVE_LICENCE, citation=LIVE_CITATION,
    approx_size="about 700 MB (the zip)",
    base_url="http://live.ece.utexas.edu/research/quality/release2/",
    parts=(Part("labels", "databaserelease2.zip", "manual", ("dmos.mat", "refnames_all.mat")),
           Part("images", "databaserelease2.zip", "manual", ("refimgs", *(f for f, _ in FOLDERS)))),
    default_parts=("labels", "images"),
    verify=verify_live,
    groups={"all": ("labels", "images")},
    extraction="none: placed by hand (password-protected archive)",
    layout=LAYOUT,
    manual=MANUAL,
))
