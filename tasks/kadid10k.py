"""``kadid10k``: correlation with the subjective scores of KADID-10k (Konstanz artificially distorted images).

81 reference images, 10,125 distorted images (25 distortion types x 5 levels), each with a crowd-sourced
score. The metric gives ``d = d(reference, distorted)``; the measures are those of the correlation task kind
(:mod:`percepbench.tasks.mos`): SRCC, KRCC, PLCC and PLCC after the logistic fit, per distortion type
(subsets ``01_gaussian_blur`` ... ``25_contrast_change``) and pooled (``all``), with CIs that resample whole
reference images.

Layout (``<data_root>/kadid10k``, or ``root=`` pointing at that folder): ``dmos.csv`` with a header and the
columns ``dist_img, ref_img, dmos, var`` (e.g. ``I01_01_01.png,I01.png,4.57,0.496``), and every image, the
references (``I01.png`` ... ``I81.png``) and the distorted ones (``I<RR>_<TT>_<LL>.png``: reference RR, type
TT = 01..25, level LL = 01..05), in ``images/``. Each distorted image is paired with the reference its
``ref_img`` names; its type is TT.

**Score direction.** Despite its name, the ``dmos`` column is a mean opinion score on the 5-point absolute
category scale, 1 (very annoying) to 5 (imperceptible): higher = better. percepbench uses it as a MOS
(``score_kind = "mos"``), so a metric whose distance grows with the degradation scores a positive SRCC.
Scores outside [1, 5] are refused as bad data. Options: ``root``, ``types`` (distortion types to score, by
number or name, ``types=1+10`` on the command line).

**Dataset source** (registered here as ``kadid10k``; ``percepbench data download kadid10k``): the one zip
``https://datasets.vqa.mmsp-kn.de/archives/kadid10k.zip`` (about 3 GB), extracted into ``kadid10k/``; a
leading ``kadid10k/`` folder in the zip is accepted (the archive holds ``kadid10k/dmos.csv`` and
``kadid10k/images/``). No checksum is published: the sha256 is recorded at the first download.
``percepbench data verify kadid10k`` checks ``dmos.csv`` (columns, names, scores in [1, 5]) and that every
image it names exists (``--deep``: decodes).

What was checked, and against what (percepbench's tests use generated trees in this layout and a local
HTTP server):
- verified: the zip URL (the authors' page http://database.mmsp-kn.de/kadid-10k-database.html as cited by
  piq's benchmark code and several independent download scripts); the columns and file names (piq's and
  pyiqa's loaders read ``dmos.csv`` with ``dist_img``, ``ref_img``, ``dmos``, ``var`` and the images from
  ``images/``); the direction and range (pyiqa's dataset table: ``score_range (1, 5)``, ``mos_type "mos"``;
  a loader quoting the KADID-10k paper: "imperceptible (5) ... very annoying (1)"); the 25 type numbers and
  names (several independent loaders agree); 81 x 25 x 5 = 10,125.
- not verified: the archive's size (about 3 GB, from third-party notes; not enforced) and the licence (the
  authors' page is reported to say the database is freely available to the research community, with a
  request to cite the paper).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from percepbench.data import DATA_ROOT_HELP, fix_hint
from percepbench.data import how_to_get as data_how_to_get
from percepbench.datasets import DatasetSource, Part
from percepbench.errors import DataError
from percepbench.registry import register_dataset, register_task
from percepbench.specs import TaskSpec
from percepbench.tasks.files import listed, read_csv
from percepbench.tasks.mos_files import (
    FolderIndex,
    MissingLabels,
    MOSDatasetTask,
    check_unique,
    listing_frame,
    read_scores,
    type_names,
    verify_listing,
)

URL = "https://datasets.vqa.mmsp-kn.de/archives/kadid10k.zip"
PAGE = "http://database.mmsp-kn.de/kadid-10k-database.html"
LABELS = "dmos.csv"
IMAGES = "images"
COLUMNS = ("dist_img", "ref_img", "dmos", "var")
SCORE_RANGE = (1.0, 5.0)
#: the 25 distortion types, numbered as in the file names
TYPES = {
    1: "gaussian_blur",
    2: "lens_blur",
    3: "motion_blur",
    4: "color_diffusion",
    5: "color_shift",
    6: "color_quantization",
    7: "color_saturation_1",
    8: "color_saturation_2",
    9: "jpeg2000",
    10: "jpeg",
    11: "white_noise",
    12: "white_noise_in_color_component",
    13: "impulse_noise",
    14: "multiplicative_noise",
    15: "denoise",
    16: "brighten",
    17: "darken",
    18: "mean_shift",
    19: "jitter",
    20: "non_eccentricity_patch",
    21: "pixelate",
    22: "quantization",
    23: "color_block",
    24: "high_sharpen",
    25: "contrast_change",
}
SUBSETS = type_names(TYPES)
#: a distorted image's name: I<reference>_<type>_<level>.png
NAME = re.compile(r"I(\d{2})_(\d{2})_(\d{2})\.png", re.IGNORECASE)
LICENCE = f"freely available to the research community (see {PAGE}); cite the paper"
CITATION = ("H. Lin, V. Hosu, D. Saupe, KADID-10k: A Large-scale Artificially Distorted IQA Database, QoMEX "
            "2019")
#: the files the task reads, relative to the data root (the dataset source's ``layout`` too)
LAYOUT = f"kadid10k/{LABELS}, kadid10k/{IMAGES}/I01.png ... I81.png, kadid10k/{IMAGES}/I01_01_01.png ..."
HOW_TO_GET = (
    f"Download KADID-10k with `percepbench data download kadid10k --root <data root>` (the zip {URL}, about "
    f"3 GB), or get it yourself and unzip it so that the data root holds {LAYOUT}; then {DATA_ROOT_HELP}, or "
    "--task-args kadid10k:root=<the kadid10k folder>"
)


def how_to_get(data_root: Path | None) -> str:
    """:data:`HOW_TO_GET`, preceded by the exact download command for ``data_root`` when it is known."""
    return data_how_to_get("kadid10k", data_root, HOW_TO_GET)


def read_kadid10k(folder: Path) -> tuple[pd.DataFrame, str]:
    """The listing of the KADID-10k folder ``folder`` (see :mod:`percepbench.tasks.mos_files`).

    Raises:
        MissingLabels: no ``dmos.csv``.
        DataError: ``dmos.csv`` unparsable or without the official columns; a ``dist_img`` outside
            the official pattern; a row without ``ref_img``; a score not a number or outside [1, 5]; an image
            listed twice.
    """
    path = folder / LABELS
    if not path.is_file():
        raise MissingLabels(f"{path}: KADID-10k label file (dmos.csv) not found")
    frame = read_csv(path, COLUMNS)
    lines = [i + 2 for i in range(len(frame))]
    dist = frame["dist_img"].fillna("").astype(str).str.strip().tolist()
    ref = frame["ref_img"].fillna("").astype(str).str.strip().tolist()
    matches = [NAME.fullmatch(d) for d in dist]
    bad = [f"line {n}: {d!r}" for n, d, m in zip(lines, dist, matches, strict=True)
           if m is None or int(m.group(2)) not in TYPES]
    if bad:
        raise DataError(f"{path}: {len(bad)} dist_img value(s) are not 'I<reference>_<type 01-25>_<level>.png': "
                        f"{listed(bad)}")
    alone = [f"line {n}: {d}" for n, d, r in zip(lines, dist, ref, strict=True) if not r]
    if alone:
        raise DataError(f"{path}: {len(alone)} distorted image(s) without their reference (empty ref_img): "
                        f"{listed(alone)}")
    scores = read_scores(frame["dmos"].tolist(), lines, path, what="dmos (a MOS: 1 = very annoying, 5 = "
                         "imperceptible)", lo=SCORE_RANGE[0], hi=SCORE_RANGE[1])
    check_unique(dist, lines, path)
    images = FolderIndex(folder / IMAGES)
    rows = [{"item": d, "subset": SUBSETS[int(m.group(2))], "reference": Path(r).stem, "mos": s,
             "ref_path": str(images.path(r)), "dist_path": str(images.path(d)), "line": n}
            for d, r, m, s, n in zip(dist, ref, matches, scores, lines, strict=True)]
    return listing_frame(rows, path), str(path)


class KADID10k(MOSDatasetTask):
    """KADID-10k correlation; see the module docstring. Options: ``root``, ``types``."""

    dataset_name = "kadid10k"
    folder = "kadid10k"
    title = "KADID-10k"
    types = TYPES
    score_note = ("dmos.csv column 'dmos': a MOS in [1, 5] (5 = imperceptible), higher = better despite its "
                  "name")
    source_url = URL

    def read(self, folder: Path) -> tuple[pd.DataFrame, str]:
        return read_kadid10k(folder)

    def how_to_get(self, data_root: Path | None) -> str:
        return how_to_get(data_root)


register_task(TaskSpec(
    name="kadid10k", dataset="kadid10k",
    target="percepbench.tasks.kadid10k:KADID10k",
    description="KADID-10k correlation (81 references, 10,125 distorted images, 25 distortion types; scores "
                "1-5, higher = better): SRCC, KRCC, PLCC, PLCC after a logistic fit, per type and pooled; "
                "options root, types",
    kind="correlation", measure="srcc", needs_data=True,
    licence=f"KADID-10k: {LICENCE}", citation=CITATION,
))


# ------------------------------------------------------------------------------------------ dataset source


def verify_kadid10k(source: DatasetSource, root: Path, selected: list[Part], deep: bool) -> list[str]:
    """``dmos.csv`` with the official columns, names and scores in [1, 5]; every image it names present (and,
    with ``deep``, decodable)."""
    return verify_listing(source, root, read_kadid10k, deep, fix_hint(source, root))


register_dataset(DatasetSource(
    name="kadid10k", title="KADID-10k", folder="kadid10k",
    description="KADID-10k: 10,125 distorted images of 81 references (25 distortion types x 5 levels) with "
                "crowd-sourced scores (1-5, higher = better)",
    licence=LICENCE, citation=CITATION,
    approx_size="about 3 GB",
    base_url="https://datasets.vqa.mmsp-kn.de/archives/",
    parts=(Part("zip", "kadid10k.zip", "zip", (LABELS, IMAGES), approx="about 3 GB"),),
    default_parts=("zip",),
    verify=verify_kadid10k,
    strip_prefixes=("kadid10k",),
    extraction="kadid10k.zip -> kadid10k/dmos.csv and kadid10k/images/ (a leading kadid10k/ folder in the zip "
               "is accepted)",
    layout=LAYOUT,
))
