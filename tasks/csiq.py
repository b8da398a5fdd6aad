"""``csiq``: correlation with the CSIQ database's DMOS (Larson & Chandler 2010; REFERENCE §9).

CSIQ (Categorical Subjective Image Quality, Oklahoma State University): 30 reference images, 866 rated
distorted versions, six distortion types at four or five levels; one DMOS per distorted image in [0, 1],
**higher = worse** (so the task's ``score_kind`` is ``dmos``).

Layout, under ``<data_root>/csiq`` (``--data-root`` / ``$PERCEPBENCH_DATA``, else the default data root of
:func:`percepbench.data.data_root`), or ``root=`` pointing at that folder itself:

- ``src_imgs/<image>.png``: the references (``1600.png``, ``aerial_city.png``, ...);
- ``dst_imgs/<folder>/<image>.<TOKEN>.<level>.png``: the distorted images; folder and file token per
  ``dst_type`` of the label file: ``noise`` -> ``awgn/…AWGN…``, ``jpeg`` -> ``jpeg/…JPEG…``,
  ``jpeg 2000`` -> ``jpeg2000/…jpeg2000…``, ``fnoise`` -> ``fnoise/…fnoise…``, ``blur`` -> ``blur/…BLUR…``,
  ``contrast`` -> ``contrast/…contrast…`` (e.g. ``dst_imgs/awgn/1600.AWGN.1.png``). File names are matched
  **case-insensitively** anywhere under ``dst_imgs`` (copies that flatten the folders or change the case
  are found too); two files whose names differ only in case are an error;
- ``csiq.DMOS.xlsx``: the label workbook; percepbench reads its sheet ``all_by_image`` with the standard
  library (no spreadsheet package needed). The header row (the fourth row in the official file, its cells
  from column D on) holds ``image, dst_idx, dst_type, dst_lev, dmos_std, dmos``; the rows below it, one per
  rated image. Rows whose ``image``, ``dst_type``, ``dst_lev`` and ``dmos`` cells are all empty are skipped;
  a row with some but not all of them is an error, as are an unknown ``dst_type``, a non-numeric ``dmos``
  or ``dst_lev`` and a DMOS outside [0, 1] (all named by file and row). Or ``csiq.DMOS.csv``: that sheet exported as CSV (used when
  the workbook is absent), or any label file given with ``labels=<path>`` (``.xlsx`` or ``.csv``).

Not every file in ``dst_imgs`` is rated; only the rated ones (the rows of the label file) are scored.
Subsets are the six distortion folders (``awgn``, ``jpeg``, ``jpeg2000``, ``fnoise``, ``blur``,
``contrast``; ``types=awgn+blur`` scores only those), plus the pooled ``all``; CIs resample the 30 references (:mod:`percepbench.tasks.mos`).

**Dataset source** (registered here as ``csiq``): percepbench does not download CSIQ (the direct links below
are listed by the QUALINET database index, not verified by percepbench against the host, and the label
file is a workbook rather than an archive), so ``percepbench data download csiq`` checks what is there and
otherwise says exactly what to fetch (:data:`MANUAL`); ``percepbench data verify csiq`` parses the labels
and checks every image they name (``--deep``: decodes them).

What was checked, and where (none of it from percepbench's own runs on the real files):

- the links ``https://s2.smu.edu/~eclarson/csiq/{src_imgs.zip,dst_imgs.zip,csiq.DMOS.xlsx}`` and the
  authors' page ``https://s2.smu.edu/~eclarson/csiq.html``: the QUALINET databases index (secondary);
- the sheet name ``all_by_image``, the header ``image, dst_idx, dst_type, dst_lev, dmos_std, dmos`` in row
  4 from column D, the ``dst_type`` names and their folder/token mapping, the file naming and the DMOS range
  [0, 1] with higher = worse: several independent public loaders agree (secondary); **unverified**: the
  exact internal folder of the two zips, and whether every DMOS lies inside [0, 1] (values outside are
  refused, naming the file and row).
Licence: the CSIQ pages state none that percepbench has verified; cite Larson & Chandler 2010.
"""

from __future__ import annotations

import csv
import os
import re
import zipfile
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

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

SHEET = "all_by_image"
LABEL_FILES = ("csiq.DMOS.xlsx", "csiq.DMOS.csv")
#: ``dst_type`` in the label file -> (folder under dst_imgs, token in the file name)
TYPES = {
    "noise": ("awgn", "AWGN"),
    "jpeg": ("jpeg", "JPEG"),
    "jpeg 2000": ("jpeg2000", "jpeg2000"),
    "fnoise": ("fnoise", "fnoise"),
    "blur": ("blur", "BLUR"),
    "contrast": ("contrast", "contrast"),
}
REQUIRED = ("image", "dst_type", "dst_lev", "dmos")
DMOS_RANGE = (0.0, 1.0)
HOMEPAGE = "https://s2.smu.edu/~eclarson/csiq.html"
FILES_URL = "https://s2.smu.edu/~eclarson/csiq/"
CSIQ_LICENCE = "no licence verified by percepbench; see the authors' page " + HOMEPAGE
CSIQ_CITATION = ("E. C. Larson and D. M. Chandler, Most apparent distortion: full-reference image quality "
                 "assessment and the role of strategy, Journal of Electronic Imaging 19(1), 2010")
LAYOUT = ("csiq/csiq.DMOS.xlsx (or csiq/csiq.DMOS.csv), csiq/src_imgs/<image>.png, "
          "csiq/dst_imgs/<type>/<image>.<TYPE>.<level>.png")
MANUAL = (
    "CSIQ is not downloaded by percepbench (its label file is a workbook, not an archive, and the links are "
    "not verified by percepbench). Fetch by hand, from the authors' page " + HOMEPAGE + ":\n"
    "  1. " + FILES_URL + "src_imgs.zip: unzip it so that the references are {dest}/src_imgs/<image>.png;\n"
    "  2. " + FILES_URL + "dst_imgs.zip: unzip it so that the distorted images are under {dest}/dst_imgs/ "
    "(e.g. {dest}/dst_imgs/awgn/1600.AWGN.1.png; subfolders and the case of names do not matter);\n"
    "  3. " + FILES_URL + "csiq.DMOS.xlsx: put it at {dest}/csiq.DMOS.xlsx (percepbench reads its sheet "
    "all_by_image without any spreadsheet package); or export that sheet as CSV to {dest}/csiq.DMOS.csv.\n"
    "Then check with `{verify}`, and run with --data-root {root} (or --task-args csiq:root={dest})."
)
HOW_TO_GET = (f"Fetch CSIQ by hand ({FILES_URL}src_imgs.zip, dst_imgs.zip and csiq.DMOS.xlsx; `percepbench data "
              f"download csiq --root <data root>` says exactly where each goes) so that the data root holds "
              f"{LAYOUT}; then {DATA_ROOT_HELP}, or --task-args csiq:root=<path to the csiq folder>")


def how_to_get(data_root: Path | None) -> str:
    if data_root is None:
        return HOW_TO_GET
    return (f"Run `{download_command('csiq', data_root)}` to see what to fetch. {HOW_TO_GET}")


# --------------------------------------------------------------------------------------------- label file

_MAIN = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
_REL = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}id"
_PKG_REL = "{http://schemas.openxmlformats.org/package/2006/relationships}Relationship"


def _column_index(ref: str) -> int:
    """``"D5"`` -> 3 (zero-based column of a cell reference)."""
    letters = re.match(r"[A-Z]+", ref.upper())
    if letters is None:
        raise ValueError(f"bad cell reference {ref!r}")
    n = 0
    for ch in letters.group(0):
        n = n * 26 + (ord(ch) - 64)
    return n - 1


def read_xlsx_sheet(path: Path, sheet: str) -> list[tuple[int, list[Any]]]:
    """``[(row number, [cell values]), ...]`` of one sheet of an .xlsx workbook, read with the standard library.

    Handles what spreadsheet programs write for plain tables: shared strings (``t="s"``), inline strings,
    formula results (``t="str"``), booleans and numbers (as float). Empty cells are None.

    Raises:
        DataError: naming the file, when it is not an .xlsx workbook, lacks the sheet, or is damaged.
    """
    try:
        with zipfile.ZipFile(path) as z:
            book = ElementTree.fromstring(z.read("xl/workbook.xml"))
            rels = ElementTree.fromstring(z.read("xl/_rels/workbook.xml.rels"))
            sheets = {s.get("name"): s.get(_REL) for s in book.iter(_MAIN + "sheet")}
            if sheet not in sheets:
                raise DataError(f"{path}: no sheet {sheet!r} in this workbook; sheets: {', '.join(map(str, sheets))}")
            targets = {r.get("Id"): r.get("Target", "") for r in rels.iter(_PKG_REL)}
            target = targets.get(sheets[sheet], "")
            member = target.lstrip("/") if target.startswith("/") else "xl/" + target
            shared: list[str] = []
            if "xl/sharedStrings.xml" in z.namelist():
                strings = ElementTree.fromstring(z.read("xl/sharedStrings.xml"))
                shared = ["".join(t.text or "" for t in si.iter(_MAIN + "t")) for si in strings.iter(_MAIN + "si")]
            data = ElementTree.fromstring(z.read(member))
    except DataError:
        raise
    except (zipfile.BadZipFile, KeyError, ElementTree.ParseError, OSError) as exc:
        raise DataError(f"{path}: cannot read this .xlsx workbook ({type(exc).__name__}: {exc})") from exc
    rows: list[tuple[int, list[Any]]] = []
    for number, row in enumerate(data.iter(_MAIN + "row"), start=1):
        number = int(row.get("r", number))
        cells: dict[int, Any] = {}
        for k, c in enumerate(row.iter(_MAIN + "c")):
            try:
                col = _column_index(c.get("r")) if c.get("r") else k
                kind, v = c.get("t"), c.find(_MAIN + "v")
                text = v.text if v is not None else None
                if kind == "s":
                    value: Any = shared[int(text)] if text is not None else None
                elif kind == "inlineStr":
                    value = "".join(t.text or "" for t in c.iter(_MAIN + "t"))
                elif kind in ("str", "e"):
                    value = text
                elif kind == "b":
                    value = text == "1"
                else:
                    value = float(text) if text not in (None, "") else None
            except (ValueError, IndexError) as exc:
                raise DataError(f"{path}: sheet {sheet!r} row {number}: unreadable cell ({exc})") from exc
            cells[col] = value
        width = max(cells, default=-1) + 1
        rows.append((number, [cells.get(i) for i in range(width)]))
    return rows


def _text(value: Any) -> str:
    """A cell as text: ``1600.0`` -> ``"1600"``; None -> ``""``."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() and re.fullmatch(r"[+-]?\d+(\.0*)?", text) else text


def read_labels(path: Path) -> pd.DataFrame:
    """The CSIQ label file (``.xlsx`` sheet ``all_by_image``, or its CSV export) as a table with columns
    ``image, dst_type, dst_lev, dmos, row`` (``row``: the spreadsheet row or CSV line, for messages).

    Raises:
        DataError: naming the file: missing, unreadable, no header row, incomplete or non-numeric rows,
            unknown distortion types, DMOS outside [0, 1], or the same image listed twice.
    """
    if not path.is_file():
        raise DataError(f"{path}: CSIQ label file not found")
    if path.suffix.lower() == ".xlsx":
        rows = read_xlsx_sheet(path, SHEET)
        where = "row"
    else:
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                rows = [(i, list(r)) for i, r in enumerate(csv.reader(f), start=1)]
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise DataError(f"{path}: cannot read the CSIQ label CSV ({exc})") from exc
        where = "line"
    header_at = next((k for k, (_, cells) in enumerate(rows)
                      if {"image", "dmos"} <= {_text(c).lower() for c in cells}), None)
    if header_at is None:
        raise DataError(f"{path}: no header row with the columns {', '.join(REQUIRED)} (the official sheet "
                        f"{SHEET!r} has them in row 4)")
    header = [_text(c).lower() for c in rows[header_at][1]]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise DataError(f"{path}: header row {rows[header_at][0]} lacks column(s) {', '.join(missing)}; found "
                        f"{', '.join(h for h in header if h)}")
    col = {name: header.index(name) for name in REQUIRED}
    records, bad = [], []
    for number, cells in rows[header_at + 1:]:
        values = {name: _text(cells[i]) if i < len(cells) else "" for name, i in col.items()}
        if not any(values.values()):
            continue
        empty = [name for name, v in values.items() if v == ""]
        if empty:
            bad.append(f"{where} {number}: empty {', '.join(empty)}")
            continue
        kind = values["dst_type"].lower()
        if kind not in TYPES:
            bad.append(f"{where} {number}: unknown dst_type {values['dst_type']!r} (known: {', '.join(TYPES)})")
            continue
        try:
            dmos = float(values["dmos"])
            level = float(values["dst_lev"])
        except ValueError:
            bad.append(f"{where} {number}: dmos {values['dmos']!r} / dst_lev {values['dst_lev']!r} not numbers")
            continue
        if not level.is_integer():
            bad.append(f"{where} {number}: dst_lev {values['dst_lev']!r} is not a whole number")
            continue
        if not DMOS_RANGE[0] <= dmos <= DMOS_RANGE[1]:  # also refuses NaN
            bad.append(f"{where} {number}: dmos {dmos!r} outside [{DMOS_RANGE[0]}, {DMOS_RANGE[1]}]")
            continue
        records.append({"image": values["image"], "dst_type": kind, "dst_lev": int(level), "dmos": dmos,
                        "row": number})
    if bad:
        raise DataError(f"{path}: {len(bad)} unusable label row(s): {listed(bad)}")
    if not records:
        raise DataError(f"{path}: no label rows below the header (row {rows[header_at][0]})")
    frame = pd.DataFrame(records)
    key = frame[["image", "dst_type", "dst_lev"]].astype(str).agg("/".join, axis=1)
    if key.duplicated().any():
        dup = [f"{where} {r}" for r in frame["row"][key.duplicated(keep=False)]]
        raise DataError(f"{path}: the same distorted image is listed more than once ({listed(dup)})")
    return frame


def _index_pngs(folder: Path) -> dict[str, Path]:
    """Lower-case file name -> path of every file under ``folder``; :class:`DataError` on a case clash."""
    index: dict[str, Path] = {}
    if not folder.is_dir():
        return index
    for dirpath, _, files in os.walk(folder):
        for name in files:
            key = name.lower()
            if key in index:
                raise DataError(f"{folder}: two files named {name!r} (case-insensitively): {index[key]} and "
                                f"{Path(dirpath) / name}; keep one")
            index[key] = Path(dirpath) / name
    return index


def label_file(root: Path, labels: str | None) -> Path:
    """``labels=`` when given, else the first of :data:`LABEL_FILES` present in ``root`` (else the workbook)."""
    if labels not in (None, ""):
        return Path(str(labels)).expanduser()
    for name in LABEL_FILES:
        if (root / name).is_file():
            return root / name
    return root / LABEL_FILES[0]


def items_and_paths(root: Path, labels: Path) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """The scored items (one per label row) and their (reference, distorted) paths under ``root``.

    A file that cannot be found under its official name (case-insensitively) gets its official path, which
    the caller's file check then reports as missing.
    """
    frame = read_labels(labels)
    refs = _index_pngs(root / "src_imgs")
    dists = _index_pngs(root / "dst_imgs")
    rows, paths = [], []
    for rec in frame.itertuples():
        folder, token = TYPES[rec.dst_type]
        name = f"{rec.image}.{token}.{rec.dst_lev}.png"
        ref = refs.get(f"{rec.image}.png".lower(), root / "src_imgs" / f"{rec.image}.png")
        dist = dists.get(name.lower(), root / "dst_imgs" / folder / name)
        rows.append({"item": f"{rec.image}.{token}.{rec.dst_lev}", "subset": folder, "reference": rec.image,
                     "mos": rec.dmos, "level": rec.dst_lev})
        paths.append((str(ref), str(dist)))
    return pd.DataFrame(rows), paths


def select_types(types: object) -> list[str] | None:
    """The distortion folders named by a ``types=`` option (``+``-separated; None: all)."""
    wanted = split_list(types)  # type: ignore[arg-type]
    if not wanted:
        return None
    known = [f for f, _ in TYPES.values()]
    unknown = [t for t in wanted if t not in known]
    if unknown:
        raise ValueError(f"CSIQ: unknown distortion type(s) {', '.join(unknown)} in types=; choose from "
                         f"{', '.join(known)} (separate several with +)")
    return wanted


class CSIQ(FileTask, CorrelationTask):
    """CSIQ: d(reference, distorted) against DMOS (higher = worse); see the module docstring."""

    score_kind = "dmos"

    def __init__(self, root: str | None = None, labels: str | None = None, types: object = None) -> None:
        super().__init__()
        self.root = None if root in (None, "") else str(root)
        self.labels = None if labels in (None, "") else str(labels)
        self.types = select_types(types)

    def prepare(self, *, data_root: str | None = None, num_workers: int = 0, progress: bool = True,
                seed: int = 0) -> None:
        root, base, note = task_data_dir("csiq", self.root, data_root)
        hint = how_to_get(base)
        if not root.is_dir():
            raise DataError(f"{root}: CSIQ folder not found{note}. {hint}")
        labels = label_file(root, self.labels)
        if not labels.is_file():
            raise DataError(f"{labels}: CSIQ label file not found{note} (looked for "
                            f"{' and '.join(str(root / n) for n in LABEL_FILES)}). {hint}")
        items, paths = items_and_paths(root, labels)
        if self.types is not None:
            keep = items["subset"].isin(self.types).to_numpy()
            items, paths = items[keep], [p for p, k in zip(paths, keep, strict=True) if k]
        self._finish(items, paths, what=f"CSIQ ({labels})", hint=hint, num_workers=num_workers)
        self._protocol = {
            "dataset": "CSIQ (Larson & Chandler 2010)", "root": str(root), "labels": str(labels),
            "source": HOMEPAGE, "scores": "dmos (higher = worse), in [0, 1]",
            "comparison": "d = d(src_imgs/<image>.png, dst_imgs/<type>/<image>.<TYPE>.<level>.png); predicted "
                          "quality = -d",
            "subsets": "distortion folders awgn, jpeg, jpeg2000, fnoise, blur, contrast; pooled 'all'",
            "types": "all" if self.types is None else ", ".join(self.types),
            "measures": "srcc, krcc, plcc, plcc_fit (4-parameter logistic); CIs over the reference images",
        }


register_task(TaskSpec(
    name="csiq", dataset="csiq",
    target="percepbench.tasks.csiq:CSIQ",
    description="CSIQ: correlation with DMOS (866 distorted images of 30 references, 6 distortion types as "
                "subsets); SRCC, KRCC, PLCC, PLCC after a logistic fit; options root, labels, types",
    kind="correlation", measure="srcc", needs_data=True,
    licence=f"CSIQ: {CSIQ_LICENCE}", citation=CSIQ_CITATION,
))


# ------------------------------------------------------------------------------------------ dataset source


def verify_csiq(source: DatasetSource, root: Path, selected: list[Part], deep: bool) -> list[str]:
    """The label file parses (official sheet and columns, DMOS in [0, 1]); with part ``images``, every image
    it names is present (``deep``: decodable)."""
    dest = root / source.folder
    fix = (f"Fix: fetch it by hand as `{download_command(source.name, root)}` explains (percepbench does not "
           "download CSIQ)")
    if not dest.is_dir():
        return [f"{dest}: CSIQ folder missing. {fix}"]
    labels = label_file(dest, None)
    if not labels.is_file():
        return [f"{labels}: CSIQ label file missing (csiq.DMOS.xlsx, or its sheet {SHEET} as csiq.DMOS.csv). {fix}"]
    try:
        _, paths = items_and_paths(dest, labels)
    except DataError as exc:
        return [f"{exc}. {fix}"]
    if not any(p.name == "images" for p in selected):
        return []
    return image_problems(dest, [p for pair in paths for p in pair], fix, deep=deep)


register_dataset(DatasetSource(
    name="csiq", title="CSIQ", folder="csiq",
    description="CSIQ: 30 references, 866 rated distorted images (6 types, 4-5 levels), DMOS in [0, 1] "
                "(higher = worse)",
    licence=CSIQ_LICENCE, citation=CSIQ_CITATION,
    approx_size="unknown (not verified)",
    base_url=FILES_URL,
    parts=(Part("labels", "csiq.DMOS.xlsx", "manual", ("csiq.DMOS.xlsx",)),
           Part("images", "src_imgs.zip + dst_imgs.zip", "manual", ("src_imgs", "dst_imgs"))),
    default_parts=("labels", "images"),
    verify=verify_csiq,
    groups={"all": ("labels", "images")},
    extraction="none: placed by hand",
    layout=LAYOUT,
    manual=MANUAL,
))
