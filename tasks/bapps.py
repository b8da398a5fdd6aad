"""``bapps_2afc``: 2AFC on BAPPS (the LPIPS paper's Berkeley-Adobe Perceptual Patch Similarity dataset).

Data: ``<data_root>/bapps/dataset`` (``--data-root`` / ``$PERCEPBENCH_DATA``, else the default data root of
:func:`percepbench.data.data_root`, where ``percepbench data download bapps`` puts it), or ``root=``
pointing at the folder that holds ``2afc/``. Layout: ``2afc/<split>/<subset>/{ref,p0,p1,judge}/
<stem>.png|.npy``; the official archives extract to ``dataset/2afc/...``.

Files are paired **by stem** across ``ref``, ``p0``, ``p1`` and ``judge`` (the stem sets must be equal; a
difference is an error naming the folder and example stems). Label ``p`` = the ``judge/<stem>.npy`` value,
the fraction of raters preferring ``p1`` (shape (1,)); ``d0 = d(ref, p0)``, ``d1 = d(ref, p1)``; per-triplet
score ``1 - p`` if d0 < d1, ``p`` if d1 < d0, 0.5 on an exact tie. Subsets are the distortion categories
(val: traditional, cnn, superres, deblur, color, frameinterp; train: traditional, cnn, mix), every one by
default; the pooled record ``all`` is the mean over every scored triplet.

Patches are 64x64: a metric without a fixed input size gets them loaded at 64x64 bilinear, the official
LPIPS protocol (a no-op on the official patches; recorded per metric in ``meta.protocol``); one with a fixed
size gets them resized to it (e.g. DreamSim 224 bicubic).

**Dataset source** (registered here as ``bapps``; ``percepbench data download bapps``; it also serves
``bapps_jnd``): ``https://perceptual-similarity.s3.us-west-2.amazonaws.com/dataset/{jnd,twoafc_val,
twoafc_train}.tar.gz`` (URLs verified: published by the authors' scripts); default parts ``jnd`` and
``twoafc_val``, ``twoafc_train`` on request. **Not verified**: that they extract to ``dataset/jnd/...`` and
``dataset/2afc/{val,train}/...``; a missing leading ``dataset/`` (or ``2afc/``) is accepted too.
``percepbench data verify bapps`` checks, per selected part, that every subset folder exists and that the
stems of ref/p0/p1/judge (2afc) or p0/p1/same (jnd) match; with ``--deep`` it also decodes every image
and reads every label.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from percepbench.data import DATA_ROOT_HELP, fix_hint, task_data_dir, unreadable_images
from percepbench.data import how_to_get as data_how_to_get
from percepbench.datasets import DatasetSource, Part
from percepbench.errors import DataError
from percepbench.registry import register_dataset, register_task
from percepbench.specs import TaskSpec
from percepbench.tasks.files import FileTwoAFCTask, listed, split_list

BASE_URL = "https://perceptual-similarity.s3.us-west-2.amazonaws.com/dataset/"
URL = BASE_URL + "{twoafc_val,twoafc_train}.tar.gz"
SUBSETS = {
    "val": ("traditional", "cnn", "superres", "deblur", "color", "frameinterp"),
    "train": ("traditional", "cnn", "mix"),
}
IMAGE_FOLDERS = ("ref", "p0", "p1")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
BAPPS_LICENCE = "BSD-2-Clause (richzhang/PerceptualSimilarity)"
BAPPS_CITATION = "Zhang et al., The Unreasonable Effectiveness of Deep Features as a Perceptual Metric, CVPR 2018"
#: the files the tasks read, relative to the data root (the dataset source's ``layout`` too)
LAYOUT = ("bapps/dataset/2afc/{val,train}/<subset>/{ref,p0,p1,judge}/<stem>.png|.npy, "
          "bapps/dataset/jnd/val/{traditional,cnn}/{p0,p1,same}/<stem>.png|.npy")
HOW_TO_GET = (
    "Download BAPPS with `percepbench data download bapps --root <data root>` (jnd and twoafc_val; add "
    f"--parts twoafc_train for the train split) from {BASE_URL}{{jnd,twoafc_val,twoafc_train}}.tar.gz "
    "(0.2 / 1.1 / 5.3 GB), or extract those archives into <data root>/bapps/ yourself, so that the data root "
    f"holds {LAYOUT}; then {DATA_ROOT_HELP}, or --task-args bapps_2afc:root=<folder holding 2afc/>"
)


def how_to_get(data_root: Path | None, parts: list[str] | None = None) -> str:
    """:data:`HOW_TO_GET`, preceded by the exact download command (for ``parts``, default the default
    parts) when ``data_root`` is known."""
    return data_how_to_get("bapps", data_root, HOW_TO_GET, parts)


def _stems(folder: Path, suffixes: tuple[str, ...]) -> dict[str, Path]:
    """Stem -> file for the files of ``folder`` with one of ``suffixes``; DataError on a missing folder or duplicate stem."""
    if not folder.is_dir():
        raise DataError(f"{folder}: BAPPS folder not found. {HOW_TO_GET}")
    out: dict[str, Path] = {}
    for f in folder.iterdir():
        if f.suffix.lower() not in suffixes or not f.is_file():
            continue
        if f.stem in out:
            raise DataError(f"{folder}: two files share the stem {f.stem!r} ({out[f.stem].name}, {f.name})")
        out[f.stem] = f
    return out


def read_fraction(path: Path, what: str, meaning: str = "") -> float:
    """One number in [0, 1] from a ``.npy`` label file; :class:`DataError` naming the file otherwise."""
    try:
        value = np.asarray(np.load(path, allow_pickle=False))
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: cannot read {what} file ({exc})") from exc
    if value.size != 1 or not np.issubdtype(value.dtype, np.number):
        raise DataError(f"{path}: {what} file must hold one number (shape (1,)), got dtype {value.dtype} "
                        f"shape {value.shape}")
    v = float(value.reshape(-1)[0])
    if not 0.0 <= v <= 1.0:  # also rejects NaN
        raise DataError(f"{path}: {what} value {v} is outside [0, 1]{meaning}")
    return v


def read_judge(path: Path) -> float:
    """The label in a ``judge/*.npy`` file: the fraction of raters preferring ``p1``."""
    return read_fraction(path, "judge", " (fraction of raters preferring p1)")


def bapps_dataset_root(root: str | None, data_root: str | None) -> tuple[Path, Path | None, str]:
    """(folder holding ``2afc/`` and ``jnd/``, data root it sits in or None, note on where it came from).

    ``root`` (a task's ``root=`` option) wins; else ``<data root>/bapps/dataset`` with the data root of
    :func:`percepbench.data.data_root` (what ``percepbench data download bapps`` writes); see
    :func:`percepbench.data.task_data_dir`.
    """
    return task_data_dir("bapps/dataset", root, data_root)


def paired_by_stem(folder: Path, image_folders: tuple[str, ...], label_folder: str, what: str
                   ) -> tuple[dict[str, dict[str, Path]], list[str]]:
    """Files of ``folder/<image folder>/*`` and ``folder/<label folder>/*.npy`` by stem, and the sorted stems.

    :class:`DataError` naming the folder when the stem sets differ (listing what each folder lacks) or when
    every folder is empty.
    """
    found = {name: _stems(folder / name, IMAGE_SUFFIXES) for name in image_folders}
    found[label_folder] = _stems(folder / label_folder, (".npy",))
    all_stems = set().union(*found.values())
    problems = [f"{name}/ lacks {len(lacking)} stem(s) ({listed(lacking)})"
                for name, files in found.items() if (lacking := sorted(all_stems - files.keys()))]
    names = "/".join(found)
    if problems:
        raise DataError(f"{folder}: files do not pair by stem across {names}: " + "; ".join(problems))
    if not all_stems:
        raise DataError(f"{folder}: no {what} ({', '.join(f'{n}/' for n in found)} are empty)")
    return found, sorted(all_stems)


class BAPPS2AFC(FileTwoAFCTask):
    """BAPPS 2AFC (human judgments): triplets paired by stem, label from ``judge/*.npy``; see the module docstring."""

    native_load = (64, "bilinear")  # official LPIPS protocol for metrics without a fixed input size

    slots = ("ref", "p0", "p1")
    comparisons = (("d0", "ref", "p0"), ("d1", "ref", "p1"))

    def __init__(self, subsets: str | list[str] | None = None, split: str = "val", root: str | None = None) -> None:
        super().__init__()
        split = str(split)
        if split not in SUBSETS:
            raise ValueError(f"unknown BAPPS 2AFC split {split!r}; choose one of {', '.join(SUBSETS)}")
        chosen = split_list(subsets) or list(SUBSETS[split])
        unknown = [s for s in chosen if s not in SUBSETS[split]]
        if unknown:
            raise ValueError(f"unknown BAPPS {split} subsets {unknown}; known: {', '.join(SUBSETS[split])} "
                             "(separate several with '+', e.g. subsets=cnn+traditional)")
        self.split, self.subsets = split, list(dict.fromkeys(chosen))
        self.root = None if root in (None, "") else str(root)

    def prepare(self, *, data_root: str | None = None, num_workers: int = 0, progress: bool = True,
                seed: int = 0) -> None:
        root, data_base, note = bapps_dataset_root(self.root, data_root)
        hint = how_to_get(data_base, ["twoafc_train"] if self.split == "train" else None)
        base = root / "2afc" / self.split
        if not base.is_dir():
            raise DataError(f"{base}: BAPPS 2AFC folder not found{note}. {hint}")
        rows, paths = [], []
        for subset in self.subsets:
            folder = base / subset
            if not folder.is_dir():
                raise DataError(f"{folder}: BAPPS subset folder not found. {hint}")
            found, stems = paired_by_stem(folder, IMAGE_FOLDERS, "judge", "triplets")
            for stem in stems:
                rows.append({"item": f"{subset}/{stem}", "subset": subset, "p": read_judge(found["judge"][stem]),
                             "split": self.split, "stem": stem})
                paths.append(tuple(str(found[name][stem]) for name in IMAGE_FOLDERS))
        items = pd.DataFrame(rows)
        self._finish(items, paths, what=f"BAPPS ({base})", num_workers=num_workers)
        self._protocol = {
            "dataset": "BAPPS 2AFC (LPIPS, Zhang et al. 2018)",
            "root": str(root),
            "split": self.split,
            "subsets": list(self.subsets),
            "source": URL,
            "filters": "none; ref/p0/p1/judge paired by file stem (stem sets checked equal)",
            "label": "p = judge/<stem>.npy (fraction of raters preferring p1)",
            "comparisons": "d0 = d(ref, p0), d1 = d(ref, p1)",
            "pooled": "subset 'all' = mean over every scored triplet",
        }


register_task(TaskSpec(
    name="bapps_2afc", dataset="bapps",
    target="percepbench.tasks.bapps:BAPPS2AFC",
    description="BAPPS 2AFC human judgments (LPIPS paper), 64x64 patches, val subsets traditional/cnn/"
                "superres/deblur/color/frameinterp; options subsets (a+b), split (val|train), root",
    kind="2afc", measure="2afc_accuracy", needs_data=True,
    licence=f"BAPPS: {BAPPS_LICENCE}", citation=BAPPS_CITATION,
))


# ------------------------------------------------------------------------------------------ dataset source

#: per part: (folder under bapps/, subsets, image folders, label folder)
_PART_LAYOUT = {
    "jnd": ("dataset/jnd/val", ("traditional", "cnn"), ("p0", "p1"), "same"),
    "twoafc_val": ("dataset/2afc/val", SUBSETS["val"], IMAGE_FOLDERS, "judge"),
    "twoafc_train": ("dataset/2afc/train", SUBSETS["train"], IMAGE_FOLDERS, "judge"),
}


def verify_bapps(source: DatasetSource, root: Path, selected: list[Part], deep: bool) -> list[str]:
    """Per selected part: every subset folder exists and the stems of its image and label folders match;
    with ``deep``, every image decodes and every label holds one number in [0, 1]."""
    dest = root / source.folder
    problems: list[str] = []
    for part in selected:
        base_rel, subsets, image_folders, label_folder = _PART_LAYOUT[part.name]
        fix = fix_hint(source, root, [part.name])
        base = dest / base_rel
        if not base.is_dir():
            problems.append(f"{base}: BAPPS {part.name} folder missing. {fix}")
            continue
        for subset in subsets:
            folder = base / subset
            if not folder.is_dir():
                problems.append(f"{folder}: BAPPS {part.name} subset folder missing. {fix}")
                continue
            found: dict[str, dict[str, Path]] = {}
            for sub in (*image_folders, label_folder):
                if not (folder / sub).is_dir():
                    problems.append(f"{folder / sub}: folder missing. {fix}")
                    continue
                try:
                    found[sub] = _stems(folder / sub, (".npy",) if sub == label_folder else IMAGE_SUFFIXES)
                except DataError as exc:  # two files with one stem
                    problems.append(f"{exc}. {fix}")
            if len(found) < len(image_folders) + 1:
                continue
            every = set().union(*(s.keys() for s in found.values()))
            if not every:
                problems.append(f"{folder}: no files in {', '.join(found)}. {fix}")
            for sub, stems in found.items():
                lacking = sorted(every - stems.keys())
                if lacking:
                    ext = ".npy" if sub == label_folder else ".png"
                    problems.append(f"{folder / sub}: {len(lacking)} file(s) missing that the other folders "
                                    f"have (stems {listed(lacking)}; e.g. {folder / sub / (lacking[0] + ext)}). {fix}")
            if deep:
                images = [p for sub in image_folders for p in found[sub].values()]
                problems += [f"{p}: image cannot be read ({why}). {fix_hint(source, root, [part.name], delete=p)}"
                             for p, why in unreadable_images(images)]
                for p in found[label_folder].values():
                    try:
                        read_fraction(p, label_folder)
                    except DataError as exc:
                        problems.append(f"{exc}. {fix_hint(source, root, [part.name], delete=p)}")
    return problems


register_dataset(DatasetSource(
    name="bapps", title="BAPPS", folder="bapps",
    description="BAPPS (LPIPS paper): 64x64 patch triplets with human 2AFC judgments, and JND pairs",
    licence=BAPPS_LICENCE, citation=BAPPS_CITATION,
    approx_size="jnd 0.2 GB + twoafc_val 1.1 GB (+ twoafc_train 5.3 GB)",
    base_url=BASE_URL,
    parts=(
        Part("jnd", "jnd.tar.gz", "tar", ("dataset/jnd",), approx="0.2 GB"),
        Part("twoafc_val", "twoafc_val.tar.gz", "tar", ("dataset/2afc/val",), approx="1.1 GB"),
        Part("twoafc_train", "twoafc_train.tar.gz", "tar", ("dataset/2afc/train",), approx="5.3 GB"),
    ),
    default_parts=("jnd", "twoafc_val"),
    verify=verify_bapps,
    groups={"all": ("jnd", "twoafc_val", "twoafc_train"), "default": ("jnd", "twoafc_val")},
    extraction="each .tar.gz extracted into bapps/: jnd -> bapps/dataset/jnd/, twoafc_val -> "
               "bapps/dataset/2afc/val/, twoafc_train -> bapps/dataset/2afc/train/ (the archives are "
               "expected to hold dataset/...; a missing leading dataset/ or 2afc/ is accepted)",
    layout=LAYOUT,
))
