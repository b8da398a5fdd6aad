"""``coco_retrieval``: multi-label retrieval on COCO val2017 (the DreamSim paper's second retrieval set).

Data: ``<data_root>/coco`` (``--data-root`` / ``$PERCEPBENCH_DATA``, else the default data root of
:func:`percepbench.data.data_root`, where ``percepbench data download coco`` puts it), or ``root=`` pointing
at the ``coco`` folder itself. Layout (REFERENCE §8): ``coco/val2017/<file_name>`` (5,000 images in the
official set) and ``coco/annotations/instances_val2017.json`` with ``images`` (``id``, ``file_name``),
``annotations`` (``image_id``, ``category_id``, ``area``, ...) and ``categories`` (``id``, ``name``).

Rules:

- every entry of ``images`` is an image of the set, read from ``val2017/<file_name>``; its id is that path
  relative to the coco folder (``val2017/000000000139.jpg``);
- its labels are the distinct categories of its annotations, in category-id order: the category names
  (``labels=names``, default) or the numeric category ids as text (``labels=ids``);
- ``min_area=A`` (a number >= 0, default 0): an annotation counts toward its image's labels only when its
  ``area`` (pixels², as in the JSON) is >= A, so small instances can be left out; with A = 0 every
  annotation counts (and ``area`` is not read);
- crowd annotations (``iscrowd = 1``) count like any other: they mark objects that are in the image (a
  crowd of people), and their ``area`` is the crowd region's;
- an image left without labels stays in the gallery as a distractor (labels ``()``) and is never a query;
  the protocol counts them (``unlabelled_images``).

Relevance between label sets follows the task's ``match`` option (default ``any``: a shared category); the
protocol, measures and the other options are :class:`~percepbench.tasks.retrieval.RetrievalTask`'s. Errors
name the file: the JSON missing or unparsable, lacking ``images``/``annotations``/``categories``, entries
without their keys, duplicate image or category ids, annotations whose ``image_id`` or ``category_id`` is
unknown (the first few listed), a ``file_name`` leaving ``val2017/``; a missing or unreadable image is
reported by the retrieval task's file check.

**Dataset source** (registered here as ``coco``; ``percepbench data download coco``), from
``http://images.cocodataset.org/``: part ``val2017`` = ``zips/val2017.zip`` (about 0.8 GB) extracted into
``coco/val2017/``, and part ``instances_val2017`` = the one member ``annotations/instances_val2017.json`` of
``annotations/annotations_trainval2017.zip``, read with HTTP range requests (the member is about 25 MB; the zip,
about 0.24 GB, is not downloaded; needs a server that honours ``Range``). No sha256 is published: each is recorded at the
first download. ``percepbench data verify coco`` checks the JSON (as above), that every image it names
exists, and reports an image count other than 5,000 (in ``val2017/`` and in the JSON) as a problem;
``--deep`` decodes every image.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from percepbench.data import (
    DATA_ROOT_HELP,
    fix_hint,
    missing_grouped,
    task_data_dir,
    unreadable_images,
)
from percepbench.data import how_to_get as data_how_to_get
from percepbench.datasets import DatasetSource, Part
from percepbench.errors import DataError
from percepbench.registry import register_dataset, register_task
from percepbench.specs import TaskSpec
from percepbench.tasks.files import listed
from percepbench.tasks.retrieval import RetrievalTask

BASE_URL = "http://images.cocodataset.org/"
FOLDER = "coco"
IMAGES_FOLDER = "val2017"
ANNOTATIONS = "annotations/instances_val2017.json"
#: the files the task reads, relative to the data root (the dataset source's ``layout`` too)
LAYOUT = f"coco/{IMAGES_FOLDER}/<file_name>.jpg, coco/{ANNOTATIONS}"
KEYS = ("images", "annotations", "categories")
LABEL_MODES = ("names", "ids")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
#: the official val2017 set (REFERENCE §8)
OFFICIAL_IMAGES = 5_000
LICENCE = ("COCO annotations: CC BY 4.0; images: the Flickr terms of use (see https://cocodataset.org/#termsofuse)")
CITATION = "Lin et al., Microsoft COCO: Common Objects in Context, ECCV 2014"
HOW_TO_GET = (
    f"Download COCO val2017 with `percepbench data download coco --root <data root>` (val2017.zip, about "
    f"0.8 GB, and {ANNOTATIONS} read out of annotations_trainval2017.zip, from {BASE_URL}), or unzip them "
    f"into <data root>/coco/ yourself, so that the data root holds {LAYOUT}; then {DATA_ROOT_HELP}, or "
    "--task-args coco_retrieval:root=<coco folder>"
)


def how_to_get(data_root: Path | None) -> str:
    """:data:`HOW_TO_GET`, preceded by the exact download command when ``data_root`` is known."""
    return data_how_to_get("coco", data_root, HOW_TO_GET)


@dataclass
class Instances:
    """The parts of ``instances_val2017.json`` retrieval uses (see :func:`read_instances`)."""

    #: image id -> file name, in the JSON's order
    images: dict[Any, str]
    #: category id -> name
    categories: dict[Any, str]
    #: per annotation: (image id, category id, area or None)
    annotations: list[tuple[Any, Any, float | None]]


def _key(value: Any) -> Any:
    """An id as a dict key (``1`` and ``1.0`` are the same id; text stays text)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _entries(path: Path, data: dict[str, Any], key: str, needed: tuple[str, ...]) -> list[dict[str, Any]]:
    """``data[key]``, checked to be a list of objects with ``needed`` keys; DataError naming the file."""
    entries = data[key]
    if not isinstance(entries, list):
        raise DataError(f"{path}: {key!r} must be a list, got {type(entries).__name__}")
    bad = [i for i, e in enumerate(entries) if not isinstance(e, dict) or any(k not in e for k in needed)]
    if bad:
        raise DataError(f"{path}: {len(bad)} {key} entr(y/ies) lack {' or '.join(repr(k) for k in needed)} "
                        f"(or are not objects): positions {listed(bad)}")
    return entries


def read_instances(path: Path, *, need_area: bool = False) -> Instances:
    """Read and check a COCO instances JSON; :class:`DataError` naming ``path`` on any problem listed in the
    module docstring. ``need_area``: every annotation must carry a numeric ``area`` (``min_area`` > 0)."""
    if not path.is_file():
        raise DataError(f"{path}: COCO annotation file not found")
    try:
        with path.open("rb") as fh:
            data = json.load(fh)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: cannot parse the COCO annotation JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path}: a COCO annotation file is a JSON object with {', '.join(KEYS)}; "
                        f"got a {type(data).__name__}")
    missing = [k for k in KEYS if k not in data]
    if missing:
        raise DataError(f"{path}: missing key(s) {', '.join(missing)}; a COCO instances file has "
                        f"{', '.join(KEYS)} (found {listed(sorted(map(str, data)))})")
    images: dict[Any, str] = {}
    for entry in _entries(path, data, "images", ("id", "file_name")):
        image_id, name = _key(entry["id"]), entry["file_name"]
        if image_id in images:
            raise DataError(f"{path}: image id {image_id!r} appears more than once in 'images'")
        rel = PurePosixPath(str(name))
        if not str(name) or rel.is_absolute() or ".." in rel.parts or "\\" in str(name):
            raise DataError(f"{path}: image {image_id!r} has file_name {name!r}, which is not a plain path "
                            f"inside {IMAGES_FOLDER}/")
        images[image_id] = str(name)
    categories: dict[Any, str] = {}
    for entry in _entries(path, data, "categories", ("id", "name")):
        cat_id = _key(entry["id"])
        if cat_id in categories:
            raise DataError(f"{path}: category id {cat_id!r} appears more than once in 'categories'")
        categories[cat_id] = str(entry["name"])
    repeated = sorted(n for n, count in Counter(categories.values()).items() if count > 1)
    if repeated:
        raise DataError(f"{path}: category name(s) used by several category ids: {listed(repeated)}")
    annotations: list[tuple[Any, Any, float | None]] = []
    unknown: list[str] = []
    no_area: list[int] = []
    for i, entry in enumerate(_entries(path, data, "annotations", ("image_id", "category_id"))):
        image_id, cat_id = _key(entry["image_id"]), _key(entry["category_id"])
        which = f"annotation {entry.get('id', f'at position {i}')}"
        if image_id not in images:
            unknown.append(f"{which}: image_id {image_id!r}")
        if cat_id not in categories:
            unknown.append(f"{which}: category_id {cat_id!r}")
        area = entry.get("area")
        if isinstance(area, bool) or not isinstance(area, (int, float)) or not math.isfinite(area):
            area = None
            if need_area:
                no_area.append(i)
        annotations.append((image_id, cat_id, None if area is None else float(area)))
    if unknown:
        raise DataError(f"{path}: {len(unknown)} reference(s) to an image or category id the file does not "
                        f"define: {listed(unknown)}")
    if no_area:
        raise DataError(f"{path}: {len(no_area)} annotation(s) without a finite numeric 'area' (needed by "
                        f"min_area > 0): positions {listed(no_area)}")
    return Instances(images, categories, annotations)


def image_labels(instances: Instances, *, min_area: float = 0.0, labels: str = "names") -> dict[Any, tuple[str, ...]]:
    """Image id -> its labels: the distinct categories (in category-id order) of its annotations with
    ``area >= min_area`` (every annotation when ``min_area`` is 0), as names or as id text.

    >>> inst = Instances({1: "a.jpg", 2: "b.jpg"}, {3: "cat", 1: "person"},
    ...                  [(1, 3, 50.0), (1, 1, 10.0), (1, 3, 5.0)])
    >>> image_labels(inst)
    {1: ('person', 'cat'), 2: ()}
    >>> image_labels(inst, min_area=20, labels="ids")
    {1: ('3',), 2: ()}
    """
    order = {cat_id: i for i, cat_id in enumerate(sorted(instances.categories, key=lambda c: (str(type(c)), c)))}
    found: dict[Any, set[Any]] = {image_id: set() for image_id in instances.images}
    for image_id, cat_id, area in instances.annotations:
        if min_area > 0 and (area is None or area < min_area):
            continue
        found[image_id].add(cat_id)
    name = instances.categories.__getitem__ if labels == "names" else str
    return {image_id: tuple(name(c) for c in sorted(cats, key=order.__getitem__))
            for image_id, cats in found.items()}


def parse_min_area(value: Any) -> float:
    """``min_area``: a finite number >= 0 (text such as ``"32.5"`` accepted); ``ValueError`` otherwise."""
    try:
        area = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        area = math.nan
    if not math.isfinite(area) or area < 0:
        raise ValueError(f"min_area must be a number >= 0 (pixels², as the annotations' area), got {value!r}")
    return area


class COCORetrieval(RetrievalTask):
    """Retrieval on COCO val2017: labels = the categories of each image's annotations (see the module).

    Args:
        root: the ``coco`` folder holding ``val2017/`` and ``annotations/`` (default ``<data root>/coco``).
        min_area: an annotation counts toward its image's labels only when its ``area`` >= this (default 0).
        labels: ``names`` (category names, default) or ``ids`` (category ids as text).
        **options: the :class:`~percepbench.tasks.retrieval.RetrievalTask` options (``ks``, ``queries``,
            ``gallery``, ``match``, ``per_class``, ...).
    """

    dataset_name = "coco"

    def __init__(self, root: str | None = None, min_area: float = 0.0, labels: str = "names",
                 **options: Any) -> None:
        super().__init__(**options)
        self.root = None if root in (None, "") else str(root)
        self.min_area = parse_min_area(min_area)
        if labels not in LABEL_MODES:
            raise ValueError(f"labels must be names or ids, got {labels!r}")
        self.label_mode = str(labels)

    def load_images(self, *, data_root: str | None, num_workers: int, progress: bool
                    ) -> tuple[pd.DataFrame, dict[str, Any], str]:
        root, base, note = task_data_dir(FOLDER, self.root, data_root)
        hint = how_to_get(base)
        json_path = root / ANNOTATIONS
        if not root.is_dir():
            raise DataError(f"{root}: COCO folder not found{note}. {hint}")
        if not json_path.is_file():
            raise DataError(f"{json_path}: COCO annotation file not found{note}. {hint}")
        instances = read_instances(json_path, need_area=self.min_area > 0)
        labels = image_labels(instances, min_area=self.min_area, labels=self.label_mode)
        rows = [{"id": f"{IMAGES_FOLDER}/{name}", "path": str(root / IMAGES_FOLDER / name),
                 "labels": labels[image_id]} for image_id, name in instances.images.items()]
        table = pd.DataFrame(rows, columns=["id", "path", "labels"])
        unlabelled = sum(1 for ls in labels.values() if not ls)
        protocol = {
            "dataset": "COCO val2017 instances (Lin et al. 2014)",
            "root": str(root),
            "annotations": str(json_path),
            "dataset_images": len(table),
            "categories": len(instances.categories),
            "labels": f"{self.label_mode}: the distinct categories of an image's annotations",
            "min_area": self.min_area,
            "instances": ("every annotation counts" if self.min_area == 0 else
                          f"an annotation counts only when its area >= {self.min_area:g}")
                         + "; crowd annotations (iscrowd = 1) count like any other",
            "unlabelled_images": unlabelled,
            "unlabelled": "images without a label stay in the gallery as distractors and are never queries",
        }
        if len(table) != OFFICIAL_IMAGES:
            protocol["note"] = f"{len(table):,} images, whereas the official val2017 has {OFFICIAL_IMAGES:,}"
        return table, protocol, f"COCO val2017 ({json_path})"


register_task(TaskSpec(
    name="coco_retrieval", dataset="coco",
    target="percepbench.tasks.coco:COCORetrieval",
    description="Multi-label retrieval on COCO val2017 (5,000 images; labels = annotated categories, relevant "
                "= a shared category by default; unlabelled images are distractors); options root, min_area, "
                "labels (names|ids) and the retrieval options (ks, queries, gallery, match, per_class, ...)",
    kind="retrieval", measure="recall@1", needs_data=True,
    licence=LICENCE, citation=CITATION,
))


# ------------------------------------------------------------------------------------------ dataset source


def verify_coco(source: DatasetSource, root: Path, selected: list[Part], deep: bool) -> list[str]:
    """Per selected part: ``instances_val2017``: the JSON parses and is consistent (:func:`read_instances`),
    with 5,000 images; ``val2017``: the folder holds 5,000 images and every image the JSON names (when
    it reads), each decodable with ``deep``."""
    dest = root / source.folder
    names = {p.name for p in selected}
    json_path = dest / ANNOTATIONS
    problems: list[str] = []
    instances: Instances | None = None
    if json_path.is_file():
        try:
            instances = read_instances(json_path)
        except DataError as exc:
            if "instances_val2017" in names:
                problems.append(f"{exc}. {fix_hint(source, root, ['instances_val2017'], delete=json_path)}")
    elif "instances_val2017" in names:
        problems.append(f"{json_path}: COCO annotation file missing. {fix_hint(source, root, ['instances_val2017'])}")
    if instances is not None and "instances_val2017" in names and len(instances.images) != OFFICIAL_IMAGES:
        problems.append(f"{json_path}: names {len(instances.images):,} image(s), whereas the official val2017 "
                        f"has {OFFICIAL_IMAGES:,} (a different annotation file). "
                        f"{fix_hint(source, root, ['instances_val2017'], delete=json_path)}")
    if "val2017" not in names:
        return problems
    fix = fix_hint(source, root, ["val2017"])
    folder = dest / IMAGES_FOLDER
    if not folder.is_dir():
        return [*problems, f"{folder}: COCO image folder missing. {fix}"]
    try:
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
    except OSError as exc:
        return [*problems, f"{folder}: cannot be listed ({exc}). {fix}"]
    if len(files) != OFFICIAL_IMAGES:
        problems.append(f"{folder}: {len(files):,} image(s), whereas the official val2017 has "
                        f"{OFFICIAL_IMAGES:,} (a partial or different copy). {fix}")
    checked = files
    if instances is not None:
        rels = [f"{IMAGES_FOLDER}/{name}" for name in instances.images.values()]
        missing = [r for r in rels if not (dest / r).is_file()]
        problems += missing_grouped(dest, missing, fix, "image")
        gone = set(missing)
        checked = [dest / r for r in rels if r not in gone]
    if deep:
        problems += [f"{p}: image cannot be read ({why}). {fix_hint(source, root, ['val2017'], delete=p)}"
                     for p, why in unreadable_images(checked)]
    return problems


register_dataset(DatasetSource(
    name="coco", title="COCO val2017", folder=FOLDER,
    description="COCO val2017: 5,000 images with instance annotations (80 categories); used for multi-label "
                "retrieval",
    licence=LICENCE, citation=CITATION,
    approx_size="val2017 0.8 GB + instances_val2017.json (about 25 MB, read by range requests)",
    base_url=BASE_URL,
    parts=(
        Part("val2017", "zips/val2017.zip", "zip", (IMAGES_FOLDER,), approx="0.8 GB"),
        Part("instances_val2017", "annotations/annotations_trainval2017.zip", "zip_member", (ANNOTATIONS,),
             member=ANNOTATIONS, approx="about 25 MB, read by range requests"),
    ),
    default_parts=("val2017", "instances_val2017"),
    verify=verify_coco,
    groups={"all": ("val2017", "instances_val2017")},
    extraction="zips/val2017.zip extracted into coco/ (val2017/<file> -> coco/val2017/<file>); "
               f"{ANNOTATIONS}: the one member of annotations/annotations_trainval2017.zip, read with HTTP "
               f"range requests, placed at coco/{ANNOTATIONS}",
    layout=LAYOUT,
))
