"""``pipal``: correlation with the Elo scores of PIPAL's public training part (NTIRE 2021 release).

PIPAL (Perceptual Image Processing ALgorithms) rates images restored or distorted by 40 kinds of algorithms,
GAN-based super-resolution among them, with Elo scores from pairwise human judgments (higher = better).
Only the training part's labels are public (200 references, about 23,200 distorted images). The metric gives
``d = d(reference, distorted)``; the measures are those of the correlation task kind
(:mod:`percepbench.tasks.mos`): SRCC, KRCC, PLCC and PLCC after the logistic fit, pooled over all images
(subset ``all``), with CIs that resample whole reference images. There are no per-type subsets: the file
names carry a code after the reference's name (``A0001_10_02.bmp``) that third-party loaders read as a
distortion type and index, but no official statement of that naming was found, so percepbench does not
split by it (the ``item`` column keeps the name, for your own grouping).

Layout (``<data_root>/pipal``, or ``root=`` pointing at that folder): ``Train_Label/*.txt`` (one file per
reference, ``A0001.txt`` ...), each line ``<distorted file name>,<Elo score>`` (e.g.
``A0001_00_00.bmp,1438.54``; spaces around the comma are accepted); ``Train_Ref/A0001.bmp`` ...; the
distorted images in ``Train_Dis/`` (the download splits them into ``Distortion_1`` ... ``Distortion_4``:
put those folders, or their content, in ``Train_Dis/``; percepbench searches it recursively, and also
accepts the folder names ``Train_Dist`` and ``Train_Distort`` other tools use). The reference of a distorted
image is ``Train_Ref/<its name up to the first "_">`` with the distorted file's extension.
Options: ``root``.

**Dataset source** (registered here as ``pipal``). The data is on Google Drive behind the authors' pages
(https://www.jasongt.com/projectpages/pipal.html; the training part's folder
https://drive.google.com/drive/folders/1G4fLeDcq6uQQmYdkjYUHhzyel4Pz81p- from the authors' repository
HaomingCai/PIPAL-dataset), which offers no stable direct file URL, so ``percepbench data download pipal``
fetches nothing: it checks what is there and otherwise says exactly what to fetch and where to put it
(:data:`MANUAL`). ``percepbench data verify pipal`` checks every label file (``name,score`` a line, finite
numbers, no repeats) and that every image they name exists (``--deep``: decodes).

What was checked, and against what (percepbench's tests use generated trees in this layout):
- verified: the folder names ``Train_Label``, ``Train_Ref`` and the line format ``name,score`` (pyiqa's
  ``scripts/process_pipal.py`` splits each line on ","; piq's benchmark reads the files as header-less CSV
  with columns ``dist_img, score``: both read, not copied); the reference rule (both take the part before
  the first "_" plus the extension); Elo higher = better (the PIPAL paper: "Elo system" scores; a loader
  notes "lower ELO scores correspond to lower quality"); the Drive folder and the Distortion_1..4 split
  (the authors' repository README); only the training labels are public (the same README).
- not verified: the official name of the distorted-image folder (``Train_Dis`` in percepbench's reference
  notes, ``Train_Dist`` in piq, ``Train_Distort`` elsewhere: all accepted); any documented Elo range (none
  found: percepbench only requires finite numbers); the meaning of the codes in the file names; the licence.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from percepbench.data import DATA_ROOT_HELP, download_command
from percepbench.datasets import DatasetSource, Part
from percepbench.errors import DataError
from percepbench.registry import register_dataset, register_task
from percepbench.results import ALL
from percepbench.specs import TaskSpec
from percepbench.tasks.files import listed
from percepbench.tasks.mos_files import (
    FolderIndex,
    MissingLabels,
    MOSDatasetTask,
    check_unique,
    listing_frame,
    manual_fix,
    read_scores,
    text_lines,
    verify_listing,
)

PAGE = "https://www.jasongt.com/projectpages/pipal.html"
DRIVE = "https://drive.google.com/drive/folders/1G4fLeDcq6uQQmYdkjYUHhzyel4Pz81p-"
LABEL_DIR, REF_DIR, DIST_DIR = "Train_Label", "Train_Ref", "Train_Dis"
#: folder names accepted for the distorted images, in the order searched (each searched recursively)
DIST_DIRS = (DIST_DIR, "Train_Dist", "Train_Distort")
LICENCE = f"see the PIPAL project page ({PAGE}) for its terms (not stated there as a licence)"
CITATION = ("J. Gu, H. Cai, H. Chen, X. Ye, J. Ren, C. Dong, PIPAL: a Large-Scale Image Quality Assessment "
            "Dataset for Perceptual Image Restoration, ECCV 2020")
#: the files the task reads, relative to the data root (the dataset source's ``layout`` too)
LAYOUT = (f"pipal/{LABEL_DIR}/A0001.txt ... (lines 'A0001_00_00.bmp,<Elo>'), pipal/{REF_DIR}/A0001.bmp ..., "
          f"pipal/{DIST_DIR}/**/A0001_00_00.bmp ...")
MANUAL = (
    "PIPAL cannot be downloaded by percepbench: it is on Google Drive, without a stable direct file URL. "
    "By hand:\n"
    f"  1. open the PIPAL page {PAGE} (or the authors' repository https://github.com/HaomingCai/PIPAL-dataset) "
    f"and download the public training part (NTIRE 2021 'Train' folder, {DRIVE});\n"
    f"  2. put the reference images in {{dest}}/{REF_DIR}/ (A0001.bmp ...), the label files in "
    f"{{dest}}/{LABEL_DIR}/ (A0001.txt ..., lines 'A0001_00_00.bmp,<Elo score>'), and every distorted "
    f"image in {{dest}}/{DIST_DIR}/ (the Distortion_1 ... Distortion_4 folders of the download may go in it "
    "as they are: it is searched recursively); unzip any zip files of the download first.\n"
    "Then check with `{verify}`, and run with --data-root {root} (or --task-args pipal:root={dest})."
)
SOURCE_TEXT = (f"PIPAL's public training part ({PAGE}), placed so that the data root holds {LAYOUT}; "
               "percepbench cannot download it (Google Drive): `percepbench data download pipal --root "
               "<data root>` says how")


def how_to_get(data_root: Path | None) -> str:
    """Where PIPAL comes from, with the exact commands for ``data_root`` when it is known."""
    if data_root is None:
        return f"{SOURCE_TEXT}; then {DATA_ROOT_HELP}, or --task-args pipal:root=<the pipal folder>"
    return (f"{SOURCE_TEXT}. For this data root: `{download_command('pipal', data_root)}` prints the steps, "
            f"`{download_command('pipal', data_root, action='verify')}` checks the result")


class _Distorted:
    """The distorted images: looked up in each of :data:`DIST_DIRS` that exists, recursively."""

    def __init__(self, folder: Path) -> None:
        self.default = folder / DIST_DIR
        self.indexes = [FolderIndex(folder / d, recursive=True) for d in DIST_DIRS if (folder / d).is_dir()]

    def path(self, name: str) -> Path:
        for index in self.indexes:
            found = index.exact.get(name)
            if found is not None:
                return found
        return self.default / name


def read_pipal(folder: Path) -> tuple[pd.DataFrame, str]:
    """The listing of the PIPAL folder ``folder`` (see :mod:`percepbench.tasks.mos_files`).

    Raises:
        MissingLabels: ``Train_Label/`` missing or without ``.txt`` files.
        DataError: a line that is not ``name,score``; a
            score not a finite number; a name without the ``<reference>_`` prefix (no reference can be
            told); an image listed twice.
    """
    label_dir = folder / LABEL_DIR
    if not label_dir.is_dir():
        raise MissingLabels(f"{label_dir}: PIPAL label folder not found")
    files = sorted(p for p in label_dir.iterdir() if p.suffix.lower() == ".txt" and p.is_file())
    if not files:
        raise MissingLabels(f"{label_dir}: no PIPAL label files (*.txt) in it")
    refs, dists = FolderIndex(folder / REF_DIR), _Distorted(folder)
    rows = []
    all_names, all_where = [], []
    for path in files:
        parsed, bad, alone = [], [], []
        for lineno, text in text_lines(path, "PIPAL label file"):
            fields = [f.strip() for f in text.split(",")]
            if len(fields) != 2 or not fields[0] or not fields[1]:
                bad.append(f"line {lineno}: {text[:60]!r}")
            elif "_" not in Path(fields[0]).stem:
                alone.append(f"line {lineno}: {fields[0]}")
            else:
                parsed.append((lineno, fields[0], fields[1]))
        if bad:
            raise DataError(f"{path}: {len(bad)} line(s) are not '<distorted image>,<Elo score>': {listed(bad)}")
        if alone:
            raise DataError(f"{path}: {len(alone)} distorted image(s) without a reference: their names lack the "
                            f"'<reference>_' prefix that names it: {listed(alone)}")
        scores = read_scores([p[2] for p in parsed], [p[0] for p in parsed], path, what="Elo score")
        check_unique([p[1] for p in parsed], [p[0] for p in parsed], path)
        for (lineno, name, _), score in zip(parsed, scores, strict=True):
            ref = name.split("_", 1)[0]
            rows.append({"item": name, "subset": ALL, "reference": ref, "mos": score,
                         "ref_path": str(refs.path(ref + Path(name).suffix)), "dist_path": str(dists.path(name)),
                         "line": lineno})
            all_names.append(name)
            all_where.append(f"{path.name}:{lineno}")
    seen: dict[str, str] = {}
    dup = []
    for name, where in zip(all_names, all_where, strict=True):
        if name in seen:
            dup.append(f"{name} ({seen[name]} and {where})")
        seen.setdefault(name, where)
    if dup:
        raise DataError(f"{label_dir}: {len(dup)} distorted image(s) listed in more than one label file: "
                        f"{listed(dup)}")
    return listing_frame(rows, label_dir), f"{label_dir}/*.txt ({len(files)} file(s))"


class PIPAL(MOSDatasetTask):
    """PIPAL (public training part) Elo correlation, pooled; see the module docstring. Option: ``root``."""

    dataset_name = "pipal"
    folder = "pipal"
    title = "PIPAL"
    score_note = "Elo scores (Train_Label/*.txt), higher = better; no documented range"
    source_url = PAGE

    def __init__(self, root: str | None = None) -> None:
        super().__init__(root=root)

    def read(self, folder: Path) -> tuple[pd.DataFrame, str]:
        return read_pipal(folder)

    def how_to_get(self, data_root: Path | None) -> str:
        return how_to_get(data_root)


register_task(TaskSpec(
    name="pipal", dataset="pipal",
    target="percepbench.tasks.pipal:PIPAL",
    description="PIPAL public training part (200 references, about 23,200 distorted images incl. GAN-based "
                "restoration; Elo scores): SRCC, KRCC, PLCC, PLCC after a logistic fit, pooled; option root",
    kind="correlation", measure="srcc", needs_data=True,
    licence=f"PIPAL: {LICENCE}", citation=CITATION,
))


# ------------------------------------------------------------------------------------------ dataset source


def verify_pipal(source: DatasetSource, root: Path, selected: list[Part], deep: bool) -> list[str]:
    """Every ``Train_Label/*.txt`` readable, ``name,score`` a line with finite scores; every image the labels
    name present (and, with ``deep``, decodable)."""
    return verify_listing(source, root, read_pipal, deep, manual_fix(source.name, root))


register_dataset(DatasetSource(
    name="pipal", title="PIPAL", folder="pipal",
    description="PIPAL public training part: about 23,200 distorted/restored images of 200 references with Elo "
                "scores (higher = better)",
    licence=LICENCE, citation=CITATION,
    approx_size="unknown (not stated by the authors; BMP images)",
    base_url=PAGE,
    parts=(Part("train", "Train", "manual", (LABEL_DIR, REF_DIR, DIST_DIR)),),
    default_parts=("train",),
    verify=verify_pipal,
    extraction="none: placed by hand (see `percepbench data download pipal`)",
    layout=LAYOUT,
    manual=MANUAL,
))
