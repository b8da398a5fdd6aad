"""``imagenet_r``: retrieval on ImageNet-R (renditions of 200 ImageNet classes), as in the DreamSim paper.

Data: ``<data_root>/imagenet_r/imagenet-r`` (``--data-root`` / ``$PERCEPBENCH_DATA``, else the default data
root of :func:`percepbench.data.data_root`, where ``percepbench data download imagenet_r`` puts it), or
``root=`` pointing at the folder that holds the class folders. Layout (REFERENCE §8):
``imagenet-r/<wnid>/<rendition>_<n>.jpg``: one folder per class, named by its WordNet id (``n`` and 8
digits, e.g. ``n01443537``), 30,000 images in 200 classes in the official set.

Rules:

- every folder directly under the root is a class folder and must be named by a WordNet id; names that
  start with ``.`` (hidden) and plain files at the top are ignored. A folder of another name is an error
  listing them, as is a class folder without images;
- images are the files directly in a class folder with suffix ``.jpg``, ``.jpeg`` or ``.png`` (any case);
  other files (and sub-folders) are ignored;
- an image's id is its path relative to the root (``n01443537/art_0.jpg``), its labels ``(wnid,)``, and
  its subset the rendition type: the file stem before its last ``_<digits>`` (``art``, ``cartoon``,
  ``sketch``, ...); a stem without that pattern, or whose prefix is empty or ``all`` (the name reserved for
  the pooled record), gets subset ``other``.

The retrieval protocol (queries, gallery, relevance = same class under the default ``match=any``, leave-one-
out, ties by id, measures) is :class:`~percepbench.tasks.retrieval.RetrievalTask`'s; its options (``ks``,
``queries``, ``gallery``, ``match``, ``per_class``, ...) pass through. Records: one per rendition type and the
pooled ``all``.

**Dataset source** (registered here as ``imagenet_r``; ``percepbench data download imagenet_r``):
``https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar`` (about 2.1 GB; **not verified**: the URL, and
that the archive holds ``imagenet-r/<wnid>/...`` (a download without that folder installs nothing and says
so); no sha256 is published, so the archive's is recorded at the first download), extracted into ``<data root>/imagenet_r/`` so that ``imagenet-r/``
lands there. ``percepbench data verify imagenet_r`` checks that the class folders are WordNet ids and not
empty, and reports a class count other than 200 or an image count other than 30,000 as problems (a
partial copy); ``--deep`` decodes every image.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from percepbench.data import DATA_ROOT_HELP, fix_hint, task_data_dir, unreadable_images
from percepbench.data import how_to_get as data_how_to_get
from percepbench.datasets import DatasetSource, Part
from percepbench.errors import DataError
from percepbench.registry import register_dataset, register_task
from percepbench.results import ALL
from percepbench.specs import TaskSpec
from percepbench.tasks.files import listed
from percepbench.tasks.retrieval import RetrievalTask, relative_id

BASE_URL = "https://people.eecs.berkeley.edu/~hendrycks/"
#: the dataset folder under the data root, and the folder of class folders under it
FOLDER = "imagenet_r"
CLASSES_FOLDER = "imagenet-r"
#: the files the task reads, relative to the data root (the dataset source's ``layout`` too)
LAYOUT = "imagenet_r/imagenet-r/<wnid>/<rendition>_<n>.jpg"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
#: the official set: 200 classes, 30,000 images (REFERENCE §8)
OFFICIAL_CLASSES = 200
OFFICIAL_IMAGES = 30_000
OTHER = "other"
WNID_RE = re.compile(r"n\d{8}")
RENDITION_RE = re.compile(r"(.*)_\d+")
LICENCE = "see https://github.com/hendrycks/imagenet-r for the terms of ImageNet-R"
CITATION = ("Hendrycks et al., The Many Faces of Robustness: A Critical Analysis of Out-of-Distribution "
            "Generalization, ICCV 2021")
HOW_TO_GET = (
    f"Download ImageNet-R with `percepbench data download imagenet_r --root <data root>` (imagenet-r.tar, "
    f"about 2.1 GB, from {BASE_URL}), or extract imagenet-r.tar into <data root>/imagenet_r/ yourself, so that "
    f"the data root holds {LAYOUT}; then {DATA_ROOT_HELP}, or --task-args imagenet_r:root=<folder holding the "
    "class folders>"
)


def how_to_get(data_root: Path | None) -> str:
    """:data:`HOW_TO_GET`, preceded by the exact download command when ``data_root`` is known."""
    return data_how_to_get("imagenet_r", data_root, HOW_TO_GET)


def rendition(filename: str) -> str:
    """The rendition type of an ImageNet-R file: its stem before the last ``_<digits>``, else ``other``.

    >>> [rendition(n) for n in ("art_0.jpg", "deviant_art_12.JPG", "sketch.jpg", "_3.png", "all_1.jpg")]
    ['art', 'deviant_art', 'other', 'other', 'other']
    """
    m = RENDITION_RE.fullmatch(Path(filename).stem)
    if m is None or m.group(1) in ("", ALL):
        return OTHER
    return m.group(1)


@dataclass
class ClassFolders:
    """What :func:`scan_classes` found under the folder of class folders."""

    classes: dict[str, list[Path]] = field(default_factory=dict)  # wnid -> image files, sorted by name
    not_wnid: list[str] = field(default_factory=list)  # folder names that are not WordNet ids
    empty: list[str] = field(default_factory=list)  # class folders without an image

    @property
    def images(self) -> int:
        return sum(len(files) for files in self.classes.values())


def scan_classes(root: Path) -> ClassFolders:
    """The class folders of ``root`` and their images, by the rules of the module docstring (sorted).

    Raises:
        DataError: ``root`` cannot be listed.
    """
    found = ClassFolders()
    try:
        entries = sorted(root.iterdir(), key=lambda p: p.name)
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            if not WNID_RE.fullmatch(entry.name):
                found.not_wnid.append(entry.name)
                continue
            files = sorted((f for f in entry.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()),
                           key=lambda p: p.name)
            if files:
                found.classes[entry.name] = files
            else:
                found.empty.append(entry.name)
    except OSError as exc:
        raise DataError(f"{root}: cannot list the ImageNet-R folder ({exc})") from exc
    return found


def layout_problems(root: Path, found: ClassFolders) -> list[str]:
    """What makes ``found`` unusable (each naming ``root``), without the fix: no class folders, folders not
    named by a WordNet id, class folders without images."""
    problems = []
    if found.not_wnid:
        problems.append(f"{root}: {len(found.not_wnid)} folder(s) are not named by a WordNet id (n + 8 digits, "
                        f"e.g. n01443537): {listed(found.not_wnid)}; every folder here must be one ImageNet-R "
                        "class")
    if found.empty:
        problems.append(f"{root}: {len(found.empty)} class folder(s) hold no image (.jpg, .jpeg or .png): "
                        f"{listed([str(root / n) for n in found.empty])}")
    if not found.classes and not found.not_wnid and not found.empty:
        problems.append(f"{root}: no class folders (expected one folder per WordNet id, e.g. "
                        f"{root / 'n01443537' / 'art_0.jpg'})")
    return problems


def count_note(classes: int, images: int) -> str:
    """How the counts differ from the official 200 classes / 30,000 images ("" when they do not)."""
    if classes == OFFICIAL_CLASSES and images == OFFICIAL_IMAGES:
        return ""
    return (f"{classes} classes and {images:,} images, whereas the official ImageNet-R has {OFFICIAL_CLASSES} "
            f"classes and {OFFICIAL_IMAGES:,} images")


class ImageNetR(RetrievalTask):
    """Retrieval on ImageNet-R: labels = the class folder's WordNet id, subsets = rendition types.

    Args:
        root: the folder holding the class folders (default ``<data root>/imagenet_r/imagenet-r``).
        **options: the :class:`~percepbench.tasks.retrieval.RetrievalTask` options (``ks``, ``queries``,
            ``gallery``, ``match``, ``per_class``, ``max_pairs``, ``index``, ``nprobe``, ``ef_search``,
            ``size``).
    """

    dataset_name = "imagenet_r"

    def __init__(self, root: str | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.root = None if root in (None, "") else str(root)

    def load_images(self, *, data_root: str | None, num_workers: int, progress: bool
                    ) -> tuple[pd.DataFrame, dict[str, Any], str]:
        root, base, note = task_data_dir(f"{FOLDER}/{CLASSES_FOLDER}", self.root, data_root)
        hint = how_to_get(base)
        if not root.is_dir():
            raise DataError(f"{root}: ImageNet-R folder not found{note}. {hint}")
        found = scan_classes(root)
        problems = layout_problems(root, found)
        if problems:
            raise DataError("; ".join(problems) + f". {hint}")
        rows = [{"id": relative_id(f, root), "path": str(f), "labels": (wnid,), "subset": rendition(f.name)}
                for wnid, files in found.classes.items() for f in files]
        table = pd.DataFrame(rows, columns=["id", "path", "labels", "subset"])
        subsets = table["subset"].value_counts()
        protocol = {
            "dataset": "ImageNet-R (Hendrycks et al. 2021)",
            "root": str(root),
            "classes": len(found.classes),
            "dataset_images": len(table),
            "labels": "(wnid,): the image's class folder",
            "subsets": "rendition type: the file stem before its last _<digits> (else 'other')",
            "subset_images": {str(k): int(v) for k, v in sorted(subsets.items())},
        }
        note_counts = count_note(len(found.classes), len(table))
        if note_counts:
            protocol["note"] = note_counts
        return table, protocol, f"ImageNet-R ({root})"


register_task(TaskSpec(
    name="imagenet_r", dataset="imagenet_r",
    target="percepbench.tasks.imagenet_r:ImageNetR",
    description="Retrieval on ImageNet-R (200 classes, 30,000 renditions; relevant = same class), "
                "subsets = rendition types; options root and the retrieval options (ks, queries, gallery, "
                "match, per_class, ...)",
    kind="retrieval", measure="recall@1", needs_data=True,
    licence=f"ImageNet-R: {LICENCE}", citation=CITATION,
))


# ------------------------------------------------------------------------------------------ dataset source


def verify_imagenet_r(source: DatasetSource, root: Path, selected: list[Part], deep: bool) -> list[str]:
    """The folder exists, its class folders are WordNet ids and hold images; a class count other than 200
    or an image count other than 30,000 is a problem; with ``deep``, every image decodes."""
    dest = root / source.folder / CLASSES_FOLDER
    fix = fix_hint(source, root)
    if not dest.is_dir():
        return [f"{dest}: ImageNet-R folder missing. {fix}"]
    try:
        found = scan_classes(dest)
    except DataError as exc:
        return [f"{exc}. {fix}"]
    problems = [f"{p}. {fix}" for p in layout_problems(dest, found)]
    if found.classes:
        if len(found.classes) != OFFICIAL_CLASSES:
            problems.append(f"{dest}: {len(found.classes)} class folder(s), whereas the official ImageNet-R has "
                            f"{OFFICIAL_CLASSES} (a partial or different copy). {fix}")
        if found.images != OFFICIAL_IMAGES:
            problems.append(f"{dest}: {found.images:,} image(s), whereas the official ImageNet-R has "
                            f"{OFFICIAL_IMAGES:,} (a partial or different copy). {fix}")
    if deep:
        files = [f for fs in found.classes.values() for f in fs]
        problems += [f"{p}: image cannot be read ({why}). {fix_hint(source, root, delete=p)}"
                     for p, why in unreadable_images(files)]
    return problems


register_dataset(DatasetSource(
    name="imagenet_r", title="ImageNet-R", folder=FOLDER,
    description="ImageNet-R: 30,000 renditions (art, cartoons, sketches, ...) of 200 ImageNet classes, one "
                "folder per WordNet id; used for retrieval",
    licence=LICENCE, citation=CITATION,
    approx_size="about 2.1 GB",
    base_url=BASE_URL,
    parts=(Part("images", "imagenet-r.tar", "tar", (CLASSES_FOLDER,), approx="2.1 GB"),),
    default_parts=("images",),
    verify=verify_imagenet_r,
    groups={"all": ("images",)},
    extraction="imagenet-r.tar extracted into imagenet_r/: imagenet-r/<wnid>/<file> -> "
               "imagenet_r/imagenet-r/<wnid>/<file>",
    layout=LAYOUT,
))
