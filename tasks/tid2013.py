"""``tid2013``: correlation with the mean opinion scores of TID2013 (Tampere Image Database 2013).

25 reference images, 3,000 distorted images (24 distortion types x 5 levels), each with a MOS (higher =
better). The metric gives ``d = d(reference, distorted)``; the measures are those of the correlation task
kind (:mod:`percepbench.tasks.mos`): SRCC, KRCC, PLCC and PLCC after the logistic fit, per distortion type
(subsets ``01_additive_gaussian_noise`` ... ``24_sparse_sampling_and_reconstruction``) and pooled (``all``),
with CIs that resample whole reference images.

Layout (``<data_root>/tid2013``, or ``root=`` pointing at that folder): ``mos_with_names.txt`` with one line
per distorted image, ``<MOS> <file name>`` separated by white space (e.g. ``5.51429 i01_01_1.bmp``);
``distorted_images/i<RR>_<TT>_<L>.bmp`` (reference RR = 01..25, distortion type TT = 01..24, level L = 1..5)
and ``reference_images/I<RR>.BMP``. The reference of a distorted image is the one with its number RR.

**File-name case (the TID2013 quirk).** The archive's names do not agree in case with each other or with
``mos_with_names.txt``: references are ``I01.BMP`` ... but ``i25.bmp``, and some distorted files are named
``I<RR>_<TT>_<L>.bmp`` (capital I) where the label file says ``i<RR>_<TT>_<L>.bmp``. percepbench therefore looks every file up in
its folder by the exact name first, then by the one name that equals it ignoring case
(:class:`~percepbench.tasks.mos_files.FolderIndex`), so the same data works on case-sensitive and
case-insensitive file systems. Options: ``root``, ``types`` (distortion types to score, by number or name,
``types=1+8+10`` on the command line).

**Dataset source** (registered here as ``tid2013``). The authors distribute one RAR archive,
``http://www.ponomarenko.info/tid2013/tid2013.rar`` (about 908 MB; linked from
``http://www.ponomarenko.info/tid2013.htm``). percepbench extracts zip and tar only, so ``percepbench data
download tid2013`` fetches nothing: it checks what is there and otherwise says exactly what to fetch,
how to unpack it and where to put it (:data:`MANUAL`). ``percepbench data verify tid2013`` checks the label
file (two fields a line, a number in [0, 9], names in the official pattern, no repeats) and that every
image it names exists (``--deep``: decodes).

What was checked, and against what (percepbench's tests use generated trees in this layout):
- verified: the archive URL and size (the QUALINET database listing, and third-party download scripts that
  name the same URL); the file names ``mos_with_names.txt``, ``reference_images/``, ``distorted_images/``,
  the line order "MOS, then name" and the case quirk (``i25.bmp``, upper-case distorted names), from the
  loaders of pyiqa (``scripts/process_tid.py``: read, not copied) and piq (``tests/results_benchmark.py``)
  and a MATLAB reader (``textscan(f, '%f %s')``); the 24 distortion-type names and their numbers (the
  readme's Table I as quoted by several independent repositories); 25 x 24 x 5 = 3,000 (the TID2013 paper's
  abstract); MOS higher = better (pyiqa's dataset table: ``mos_type "mos"``).
- not verified: the MOS range [0, 9] is pyiqa's dataset table (``score_range (0, 9)``), not the authors'
  readme (observed MOS span about 0.24 to 7.21); the folder layout inside the RAR archive (the instructions
  say to move the three entries into place whatever folder holds them); the licence text of TID2013 (the
  TID2008 readme grants use "for educational and research purposes only"; TID2013's is assumed alike).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from percepbench.data import DATA_ROOT_HELP, download_command
from percepbench.datasets import DatasetSource, Part
from percepbench.errors import DataError
from percepbench.registry import register_dataset, register_task
from percepbench.specs import TaskSpec
from percepbench.tasks.files import listed
from percepbench.tasks.mos_files import (
    FolderIndex,
    MOSDatasetTask,
    check_unique,
    listing_frame,
    manual_fix,
    read_scores,
    text_lines,
    type_names,
    verify_listing,
)

URL = "http://www.ponomarenko.info/tid2013/tid2013.rar"
PAGE = "http://www.ponomarenko.info/tid2013.htm"
LABELS = "mos_with_names.txt"
REF_DIR, DIST_DIR = "reference_images", "distorted_images"
MOS_RANGE = (0.0, 9.0)
N_REFS, N_LEVELS = 25, 5
#: the 24 distortion types, numbered as in the file names (TID2013 readme, Table I)
TYPES = {
    1: "additive_gaussian_noise",
    2: "additive_noise_in_color_components",
    3: "spatially_correlated_noise",
    4: "masked_noise",
    5: "high_frequency_noise",
    6: "impulse_noise",
    7: "quantization_noise",
    8: "gaussian_blur",
    9: "image_denoising",
    10: "jpeg_compression",
    11: "jpeg2000_compression",
    12: "jpeg_transmission_errors",
    13: "jpeg2000_transmission_errors",
    14: "non_eccentricity_pattern_noise",
    15: "local_block_wise_distortions",
    16: "mean_shift",
    17: "contrast_change",
    18: "change_of_color_saturation",
    19: "multiplicative_gaussian_noise",
    20: "comfort_noise",
    21: "lossy_compression_of_noisy_images",
    22: "color_quantization_with_dither",
    23: "chromatic_aberrations",
    24: "sparse_sampling_and_reconstruction",
}
SUBSETS = type_names(TYPES)
#: a distorted image's name: i<reference>_<type>_<level>.bmp, any case
NAME = re.compile(r"i(\d{2})_(\d{2})_(\d)\.bmp", re.IGNORECASE)
LICENCE = ("free for educational and research purposes; see the readme in the archive and " + PAGE)
CITATION = ("N. Ponomarenko et al., Image database TID2013: Peculiarities, results and perspectives, Signal "
            "Processing: Image Communication 30 (2015) 57-77")
#: the files the task reads, relative to the data root (the dataset source's ``layout`` too)
LAYOUT = (f"tid2013/{LABELS}, tid2013/{REF_DIR}/I01.BMP ... I25.BMP, "
          f"tid2013/{DIST_DIR}/i01_01_1.bmp ... (file-name case as in the archive)")
MANUAL = (
    "TID2013 cannot be downloaded by percepbench: its authors distribute it as a RAR archive, and percepbench "
    "extracts only zip and tar. By hand:\n"
    f"  1. download {URL} (about 908 MB; linked from {PAGE});\n"
    "  2. unpack it with a RAR tool, e.g. `unrar x tid2013.rar`, `7z x tid2013.rar` or `bsdtar -xf "
    "tid2013.rar`;\n"
    f"  3. move what it holds so that {{dest}}/{LABELS}, {{dest}}/{REF_DIR}/ (I01.BMP ...) and "
    f"{{dest}}/{DIST_DIR}/ (i01_01_1.bmp ...) exist (if the archive unpacks into a folder, move its content up; "
    "keep the file names as they are, whatever their case: percepbench resolves them).\n"
    "Then check with `{verify}`, and run with --data-root {root} (or --task-args tid2013:root={dest})."
)
SOURCE_TEXT = (f"TID2013 ({PAGE}): unpack {URL} so that the data root holds {LAYOUT}; percepbench cannot "
               "download it (a RAR archive): `percepbench data download tid2013 --root <data root>` says how")


def how_to_get(data_root: Path | None) -> str:
    """Where TID2013 comes from, with the exact commands for ``data_root`` when it is known."""
    if data_root is None:
        return f"{SOURCE_TEXT}; then {DATA_ROOT_HELP}, or --task-args tid2013:root=<the tid2013 folder>"
    return (f"{SOURCE_TEXT}. For this data root: `{download_command('tid2013', data_root)}` prints the steps, "
            f"`{download_command('tid2013', data_root, action='verify')}` checks the result")


def read_tid2013(folder: Path) -> tuple[pd.DataFrame, str]:
    """The listing of the TID2013 folder ``folder`` (see :mod:`percepbench.tasks.mos_files`).

    Raises:
        MissingLabels: no ``mos_with_names.txt``.
        DataError: ``mos_with_names.txt`` unreadable, a line that is not ``<MOS> <name>``, a name
            outside the official pattern, a MOS outside [0, 9] or not a number, an image listed twice.
    """
    path = folder / LABELS
    lines = text_lines(path, "TID2013 label file (mos_with_names.txt)")
    bad, parsed = [], []
    for lineno, text in lines:
        fields = text.split(" ")
        match = NAME.fullmatch(fields[1]) if len(fields) == 2 else None
        if match is None or not 1 <= int(match.group(1)) <= N_REFS or int(match.group(2)) not in TYPES \
                or not 1 <= int(match.group(3)) <= N_LEVELS:
            bad.append(f"line {lineno}: {text[:60]!r}")
            continue
        parsed.append((lineno, fields[0], fields[1], match))
    if bad:
        raise DataError(f"{path}: {len(bad)} line(s) are not '<MOS> i<reference 01-25>_<type 01-24>_<level 1-5>"
                        f".bmp': {listed(bad)}")
    mos = read_scores([p[1] for p in parsed], [p[0] for p in parsed], path, what="MOS",
                      lo=MOS_RANGE[0], hi=MOS_RANGE[1])
    check_unique([p[2].lower() for p in parsed], [p[0] for p in parsed], path)
    refs, dists = FolderIndex(folder / REF_DIR), FolderIndex(folder / DIST_DIR)
    rows = []
    for (lineno, _, name, match), score in zip(parsed, mos, strict=True):
        ref = f"I{match.group(1)}"
        rows.append({"item": name, "subset": SUBSETS[int(match.group(2))], "reference": ref, "mos": score,
                     "ref_path": str(refs.path(f"{ref}.BMP")), "dist_path": str(dists.path(name)),
                     "line": lineno})
    return listing_frame(rows, path), str(path)


class TID2013(MOSDatasetTask):
    """TID2013 MOS correlation; see the module docstring. Options: ``root``, ``types``."""

    dataset_name = "tid2013"
    folder = "tid2013"
    title = "TID2013"
    types = TYPES
    score_note = "MOS in [0, 9], higher = better (mos_with_names.txt)"
    source_url = URL

    def read(self, folder: Path) -> tuple[pd.DataFrame, str]:
        return read_tid2013(folder)

    def how_to_get(self, data_root: Path | None) -> str:
        return how_to_get(data_root)


register_task(TaskSpec(
    name="tid2013", dataset="tid2013",
    target="percepbench.tasks.tid2013:TID2013",
    description="TID2013 MOS correlation (25 references, 3,000 distorted images, 24 distortion types): SRCC, "
                "KRCC, PLCC, PLCC after a logistic fit, per type and pooled; options root, types",
    kind="correlation", measure="srcc", needs_data=True,
    licence=f"TID2013: {LICENCE}", citation=CITATION,
))


# ------------------------------------------------------------------------------------------ dataset source


def verify_tid2013(source: DatasetSource, root: Path, selected: list[Part], deep: bool) -> list[str]:
    """``mos_with_names.txt`` readable, every line ``<MOS in [0, 9]> <official name>``; every image it names
    present, file-name case ignored where the exact name is absent (and, with ``deep``, decodable)."""
    return verify_listing(source, root, read_tid2013, deep, manual_fix(source.name, root))


register_dataset(DatasetSource(
    name="tid2013", title="TID2013", folder="tid2013",
    description="TID2013: 3,000 distorted images of 25 references (24 distortion types x 5 levels) with MOS",
    licence=LICENCE, citation=CITATION,
    approx_size="about 908 MB (RAR archive)",
    base_url="http://www.ponomarenko.info/tid2013/",
    parts=(Part("files", "tid2013.rar", "manual", (LABELS, REF_DIR, DIST_DIR), approx="about 908 MB"),),
    default_parts=("files",),
    verify=verify_tid2013,
    extraction="none: a RAR archive, unpacked by hand (see `percepbench data download tid2013`)",
    layout=LAYOUT,
    manual=MANUAL,
))
