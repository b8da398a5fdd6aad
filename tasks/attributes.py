"""Attribute-sensitivity analyses: what a metric responds to (REFERENCE §7; percepbench's own protocol).

Three tasks of kind ``analysis``, run by the one runner like any other task (so results, reports and
``compare`` work unchanged), also started together by ``percepbench analyze attributes``:

``attr_curves`` — **edit curves.** For every pool image x, every attribute a and every strength s of
``strengths`` (default 0.125, 0.25, 0.5, 0.75, 1): d(x, edit_a(x, s)) (the edits of
:mod:`percepbench.tasks.edits`, deterministic from the seed, the random direction of an edit fixed per
(image, attribute) so that it only grows with s). Each distance is **normalised** between two anchors
the metric itself gives: its distance between an image and itself (subset ``identical``; 0 for nearly
every metric) and its median distance between unrelated pool images (each image paired with another one,
seeded; subset ``unrelated``): nd = (d - d_identical) / (median_unrelated - d_identical), the median over
the pool for both anchors (records ``median_distance``). For a metric whose identical-image distance is 0
this is d / median_unrelated; metrics with different scales become comparable: 0 is "the same image", 1
"as different as two unrelated images" (records in % of that: 100 = an unrelated pair). PSNR's distance is -PSNR with the MSE floored at 1e-10, so its
identical anchor is -100 dB and its curves measure the way from that floor to unrelated images: read them
as a rank of attributes, not against other metrics' values. Records per attribute: ``nd@<s>``, the mean normalised distance at
strength s, and ``auc``, the area under the normalised curve (nd(0) = 0, trapezoids) divided by the largest
strength: a sensitivity profile; both in % of the unrelated-pair median. CIs bootstrap over images.

``attr_contests`` — **attribute contests.** For every image and every pair of attributes (X, Y): A =
x edited in X at ``strength`` (default 0.5), B = x edited in Y at the strength whose pixel RMS change
equals A's (:func:`~percepbench.tasks.edits.match_strength`; when Y cannot reach it, Y is set to
``strength`` and X is matched instead; when neither can, the item is left out and counted);
``match_by=<metric>`` matches the two edits by that metric's distance instead of pixel RMS. Record
``p_first_closer`` per subset ``X~Y``: the % of images where the metric judged A (the X edit) closer to x
than B; 50 on an exact tie. A high value: the metric is less sensitive to X than to Y at equal pixel change.

``attr_reliance`` — **foreground / background reliance** (pools with masks). For every image and
replacement mode (``grey``, ``blur``, ``swap`` with another pool image's pixels): x_bg = x with its
background replaced, x_fg = x with its foreground replaced. The item scores 1 when d(x, x_bg) < d(x, x_fg)
(the background change mattered less), 0.5 on a tie. Record ``foreground_reliance`` = 100 x (2 P - 1) in
[-100, 100], P the mean score: positive when the metric relies on the foreground. The same index computed
from pixel RMS changes is in the protocol (``pixel_rms_index``): with masks covering a share of the image
other than half, pixels alone already lean one way.

**Pools** (``pool=``): ``bundled`` (default for curves and contests): ``images`` seeded ``size`` px crops of
the ten photographs that ship with scikit-image and scikit-learn (the ``severity2afc`` photos; no network);
``composites`` (default for reliance): a crop of one bundled photo pasted inside a seeded ellipse over a
crop of another, so the mask is known exactly (a stand-in for object masks, not segmented objects);
``folder``: ``path=<folder>`` of your images (centre square crop, resized to ``size``), with masks read from
``<folder>/masks/<stem>.png`` (non-zero = foreground) when present; ``coco``: COCO val2017 (the retrieval
task's dataset, ``percepbench data download coco``; ``path=`` the ``coco`` folder, default
``<data root>/coco``), each image with the mask of its largest non-crowd instance covering 10-60% of the
image (polygons rasterised with PIL; crowd regions, stored as RLE, are not used), ``images`` of them
drawn seeded. The fg/bg colour edits and the
reliance task need masks: a pool without them is refused, naming the folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from percepbench.errors import DataError
from percepbench.registry import register_task
from percepbench.specs import InputConvention, TaskSpec
from percepbench.stats import bootstrap_ci, paired_comparison
from percepbench.tasks.base import Task, score_2afc
from percepbench.tasks.files import listed, split_list

if TYPE_CHECKING:
    import torch
    from torch.utils.data import Dataset

#: default strengths of the edit curves
STRENGTHS = (0.125, 0.25, 0.5, 0.75, 1.0)
POOLS = ("bundled", "composites", "folder", "coco")
#: a COCO instance qualifies as an image's foreground when it covers this share of the image
COCO_SHARE = (0.1, 0.6)
MODES = ("grey", "blur", "swap", "noise")
#: the replacement modes of the reliance task by default
DEFAULT_MODES = ("grey", "blur", "swap")
#: the attributes of the contests by default (flip is a step and cannot be matched in strength)
CONTEST_ATTRIBUTES = ("hue", "saturation", "brightness", "contrast", "blur", "noise", "jpeg", "translation",
                      "rotation", "scale")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
MIN_CROP_STD = 0.05


@dataclass
class PoolImage:
    """One image of an analysis pool: float (size, size, 3) in [0, 1], an optional foreground mask."""

    id: str
    image: np.ndarray
    mask: np.ndarray | None
    source: str


def _square(im: Image.Image, size: int) -> np.ndarray:
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(im, dtype=np.float64) / 255.0


def _bundled_crops(n: int, size: int, seed: int) -> list[tuple[np.ndarray, str]]:
    from percepbench.tasks.severity import PHOTOS, load_photo

    rng = np.random.default_rng([seed, 7001])
    out = []
    for i in range(n):
        index = i % len(PHOTOS)
        photo = load_photo(index)
        h, w = photo.shape[:2]
        side = min(h, w, max(size, int(rng.integers(size, 2 * size + 1))))
        for _ in range(50):  # skip flat crops (black sky): every edit would be invisible there
            top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            crop = photo[top:top + side, left:left + side]
            if crop.std() / 255.0 >= MIN_CROP_STD:
                break
        im = Image.fromarray(crop).resize((size, size), Image.Resampling.BICUBIC)
        out.append((np.asarray(im, dtype=np.float64) / 255.0,
                    f"{PHOTOS[index][1]} crop {side}px at ({top}, {left})"))
    return out


def _coco_pool(images: int, size: int, seed: int, root: str | None, data_root: str | None) -> list[PoolImage]:
    """COCO val2017 images with the mask of one instance each (see the module docstring)."""
    import json

    from PIL import ImageDraw

    from percepbench.data import task_data_dir
    from percepbench.images import load_rgb
    from percepbench.tasks.coco import ANNOTATIONS, FOLDER, IMAGES_FOLDER, how_to_get, read_instances

    folder, base, note = task_data_dir(FOLDER, root, data_root)
    json_path = folder / ANNOTATIONS
    if not json_path.is_file():
        raise DataError(f"{json_path}: COCO annotation file not found{note}. {how_to_get(base)}")
    instances = read_instances(json_path)  # checks the file, naming it on any problem
    with json_path.open("rb") as fh:
        data = json.load(fh)
    sizes = {e["id"]: (e.get("width"), e.get("height")) for e in data["images"]}
    best: dict[Any, dict[str, Any]] = {}
    for ann in data["annotations"]:
        seg, (w, h) = ann.get("segmentation"), sizes.get(ann.get("image_id"), (None, None))
        if ann.get("iscrowd") or not isinstance(seg, list) or not seg or not w or not h:
            continue  # crowd regions are RLE, and a polygon needs the image size
        share = float(ann.get("area") or 0.0) / (w * h)
        if COCO_SHARE[0] <= share <= COCO_SHARE[1] and share > best.get(ann["image_id"], {}).get("share", 0.0):
            best[ann["image_id"]] = {"share": share, "polygons": seg, "size": (w, h)}
    ids = [i for i in instances.images if i in best]
    if len(ids) < 2:
        raise DataError(f"{json_path}: pool=coco needs at least 2 images with a polygon instance covering "
                        f"{COCO_SHARE[0]:.0%}-{COCO_SHARE[1]:.0%} of the image; found {len(ids)}")
    order = np.random.default_rng([seed, 7004]).permutation(len(ids))[:images]
    out = []
    for k in sorted(order.tolist()):
        image_id = ids[k]
        path = folder / IMAGES_FOLDER / instances.images[image_id]
        im = load_rgb(path)
        w, h = best[image_id]["size"]
        mask_im = Image.new("L", im.size, 0)
        draw = ImageDraw.Draw(mask_im)
        sx, sy = im.size[0] / w, im.size[1] / h
        for poly in best[image_id]["polygons"]:
            pts = [(float(x) * sx, float(y) * sy) for x, y in zip(poly[0::2], poly[1::2], strict=False)]
            if len(pts) >= 3:
                draw.polygon(pts, fill=255)
        mask = _square(mask_im.convert("RGB"), size)[..., 0] > 0.5
        out.append(PoolImage(f"{IMAGES_FOLDER}/{instances.images[image_id]}", _square(im, size), mask, str(path)))
    return out


def load_pool(pool: str, *, images: int, size: int, seed: int, path: str | None,
              data_root: str | None = None) -> list[PoolImage]:
    """The images of a pool (see the module docstring), deterministic from ``seed``."""
    from percepbench.tasks.edits import composite, ellipse_mask

    if pool == "coco":
        return _coco_pool(images, size, seed, path, data_root)
    if pool == "bundled":
        return [PoolImage(f"bundled/{i:03d}", im, None, src)
                for i, (im, src) in enumerate(_bundled_crops(images, size, seed))]
    if pool == "composites":
        crops = _bundled_crops(2 * images, size, seed)
        out = []
        for i in range(images):
            (fg, fsrc), (bg, bsrc) = crops[2 * i], crops[(2 * i + 3) % len(crops)]
            mask = ellipse_mask(size, size, seed=[seed, i])
            out.append(PoolImage(f"composite/{i:03d}", composite(fg, bg, mask), mask,
                                 f"ellipse of {fsrc} over {bsrc}"))
        return out
    if path in (None, ""):
        raise ValueError("pool=folder needs path=<folder of images> (masks optional in <folder>/masks/<stem>.png)")
    root = Path(str(path)).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found (pool=folder, path=)")
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 2:
        raise DataError(f"{root}: an analysis pool needs at least 2 images ({', '.join(IMAGE_SUFFIXES)}); "
                        f"found {len(files)}")
    if images and len(files) > images:
        pick = np.sort(np.random.default_rng([seed, 7002]).choice(len(files), size=images, replace=False))
        files = [files[i] for i in pick]
    from percepbench.images import load_rgb

    out = []
    for f in files:
        image = _square(load_rgb(f), size)
        mask = None
        mask_file = root / "masks" / f"{f.stem}.png"
        if mask_file.is_file():
            try:
                with Image.open(mask_file) as m:
                    mask = _square(m.convert("L").convert("RGB"), size)[..., 0] > 0.5
            except OSError as exc:
                raise DataError(f"{mask_file}: cannot read mask ({exc})") from exc
        out.append(PoolImage(f.name, image, mask, str(f)))
    return out


def _require_masks(pool: list[PoolImage], what: str, pool_name: str, path: str | None) -> None:
    missing = [p.id for p in pool if p.mask is None]
    if missing:
        where = (f"{Path(str(path)).expanduser()}/masks/<stem>.png" if pool_name == "folder" else
                 f"pool={pool_name} has no masks (use pool=composites, or pool=folder with masks)")
        raise DataError(f"{what} needs a foreground mask for every image; {len(missing)} image(s) have none "
                        f"({listed(missing)}); expected at {where}")


def _stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    import torch

    return torch.stack(list(tensors))


def _to_uint8(stack: Sequence[np.ndarray]) -> torch.Tensor:
    arr = np.clip(np.rint(np.stack(stack) * 255.0), 0, 255).astype(np.uint8)
    import torch  # here: importing the task module must not load torch (`percepbench list`)

    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


class AnalysisTask(Task):
    """Common ground: a pool of images generated in memory, items of several slots held as uint8 tensors."""

    in_memory: ClassVar[bool] = True
    default_pool: ClassVar[str] = "bundled"

    def __init__(self, pool: str | None = None, images: int = 12, size: int = 96, path: str | None = None,
                 seed: int | None = None) -> None:
        pool = pool or self.default_pool
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
        for name, value, lo in (("images", images, 2), ("size", size, 16)):
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
        self.pool_name, self.n_images, self.size, self.path, self.seed = pool, images, size, path, seed
        self._items: pd.DataFrame | None = None
        self._images: torch.Tensor | None = None
        self._protocol: dict[str, Any] = {}

    def dataset(self, inputs: InputConvention) -> Dataset:
        from percepbench.tasks.severity import InMemoryItems

        if self._images is None:
            raise RuntimeError("call prepare() first")
        return InMemoryItems(self._images, self.slots, inputs)

    def protocol(self) -> dict[str, Any]:
        return dict(self._protocol)

    def _pool(self, seed: int, data_root: str | None = None) -> list[PoolImage]:
        return load_pool(self.pool_name, images=self.n_images, size=self.size, seed=seed, path=self.path,
                         data_root=data_root)

    def _pool_protocol(self, pool: list[PoolImage], seed: int) -> dict[str, Any]:
        return {"pool": self.pool_name, "images": len(pool), "size": self.size, "seed": seed,
                "path": self.path, "sources": {p.id: p.source for p in pool}}


class AttributeCurves(AnalysisTask):
    """Edit curves: d(x, edit_a(x, s)) normalised by the median unrelated-pair distance (module docstring)."""

    slots: ClassVar[tuple[str, ...]] = ("x", "edited")
    comparisons: ClassVar[tuple[tuple[str, str, str], ...]] = (("d", "x", "edited"),)
    measure: ClassVar[str] = "auc"

    def __init__(self, attributes: Any = None, strengths: Any = None, **options: Any) -> None:
        super().__init__(**options)
        from percepbench.tasks.edits import ATTRIBUTES, parse_attributes

        self.attributes = parse_attributes(attributes)
        values = split_list(strengths) if isinstance(strengths, str) else strengths
        try:
            self.strengths = tuple(sorted({float(v) for v in (values or STRENGTHS)}))
        except (TypeError, ValueError):
            raise ValueError(f"strengths must be numbers in (0, 1] such as 0.25+0.5+1, got {strengths!r}") from None
        if not self.strengths or self.strengths[0] <= 0 or self.strengths[-1] > 1:
            raise ValueError(f"strengths must be numbers in (0, 1], got {strengths!r}")
        self._needs_mask = [a for a in self.attributes if ATTRIBUTES[a].needs_mask]

    @property
    def measures(self) -> list[str]:
        return ["auc", *[f"nd@{s:g}" for s in self.strengths]]

    def prepare(self, *, data_root: str | None = None, num_workers: int = 0, progress: bool = True,
                seed: int = 0) -> None:
        from percepbench.tasks.edits import ATTRIBUTES, edit

        seed = self.seed if self.seed is not None else seed
        pool = self._pool(seed, data_root)
        if self._needs_mask:
            _require_masks(pool, f"attr_curves (attributes {', '.join(self._needs_mask)})", self.pool_name, self.path)
        names = list(ATTRIBUTES)
        rows, stacks = [], []
        bar = tqdm(total=len(pool) * len(self.attributes), desc="attr_curves: editing images", unit="edit",
                   disable=not progress, leave=False)
        for i, p in enumerate(pool):
            for a in self.attributes:
                for s in self.strengths:
                    edited = edit(p.image, a, s, seed=[seed, i, names.index(a)], mask=p.mask)
                    stacks.append(_to_uint8([p.image, edited]))
                    rows.append({"item": f"{a}/{p.id}/{s:g}", "subset": a, "image": p.id, "attribute": a,
                                 "strength": s})
                bar.update()
        bar.close()
        partners = _unrelated_partners(len(pool), seed)
        for i, j in enumerate(partners):
            stacks.append(_to_uint8([pool[i].image, pool[j].image]))
            rows.append({"item": f"unrelated/{pool[i].id}/{pool[j].id}", "subset": "unrelated", "image": pool[i].id,
                         "attribute": "unrelated", "strength": np.nan})
        for p in pool:
            stacks.append(_to_uint8([p.image, p.image]))
            rows.append({"item": f"identical/{p.id}", "subset": "identical", "image": p.id,
                         "attribute": "identical", "strength": 0.0})
        self._images = _stack(stacks)
        self._items = pd.DataFrame(rows)
        self._protocol = {
            **self._pool_protocol(pool, seed),
            "attributes": {a: ATTRIBUTES[a].description for a in self.attributes},
            "strengths": list(self.strengths),
            "normalisation": "nd = (d - median d(x, x)) / (median d(x, unrelated) - median d(x, x)) over the pool "
                             "(each pool image paired with another one, seeded); d / median unrelated when d(x, x) "
                             "= 0",
            "auc": "area under the normalised curve from (0, 0) through the strengths (trapezoids), divided by "
                   "the largest strength; mean over images, bootstrap CI over images",
        }

    def _normalised(self, samples: pd.DataFrame) -> tuple[np.ndarray, float, float]:
        """``(nd per item, median unrelated distance, median identical distance)``."""
        d = samples["d"].to_numpy(dtype=np.float64)
        subset = samples["subset"].to_numpy()
        unrelated, identical = d[subset == "unrelated"], d[subset == "identical"]
        median = float(np.median(unrelated)) if unrelated.size else float("nan")
        zero = float(np.median(identical)) if identical.size else 0.0
        if not np.isfinite(median) or not median > zero:
            raise ValueError(f"the median distance between unrelated pool images ({median:g}) is not above the "
                             f"distance between identical images ({zero:g}): edit distances cannot be normalised "
                             "between them (a metric that does not separate different images?)")
        return (d - zero) / (median - zero), median, zero

    def item_scores(self, samples: pd.DataFrame) -> np.ndarray:
        """Per item: the normalised distance (the unrelated pairs' median is 1, the identical pairs' 0)."""
        return self._normalised(samples)[0]

    def _per_image_auc(self, frame: pd.DataFrame) -> pd.Series:
        xs = np.array([0.0, *self.strengths])
        wide = frame.pivot_table(index="image", columns="strength", values="score", aggfunc="first")
        wide = wide.reindex(columns=list(self.strengths))
        ys = np.concatenate([np.zeros((len(wide), 1)), wide.to_numpy(dtype=np.float64)], axis=1) * 100.0
        area = ((ys[:, 1:] + ys[:, :-1]) / 2 * np.diff(xs)).sum(axis=1)
        return pd.Series(area / xs[-1], index=wide.index)

    def score(self, samples: pd.DataFrame, *, seed: int = 0, n_boot: int = 1000) -> list[dict[str, Any]]:
        nd, median, zero = self._normalised(samples)
        frame = samples.assign(score=nd)
        records = []
        for a in self.attributes:
            part = frame[frame["subset"] == a]
            auc = self._per_image_auc(part).to_numpy()
            lo, hi = bootstrap_ci(auc, seed=seed, n_boot=n_boot)
            records.append({"subset": a, "measure": "auc", "value": float(auc.mean()), "ci_low": lo,
                            "ci_high": hi, "n": len(auc)})
            for s in self.strengths:
                vals = part.loc[part["strength"] == s, "score"].to_numpy(dtype=np.float64) * 100.0
                lo, hi = bootstrap_ci(vals, seed=seed, n_boot=n_boot)
                records.append({"subset": a, "measure": f"nd@{s:g}", "value": float(vals.mean()), "ci_low": lo,
                                "ci_high": hi, "n": len(vals)})
        for subset, value in (("unrelated", median), ("identical", zero)):
            records.append({"subset": subset, "measure": "median_distance", "value": value,
                            "ci_low": float("nan"), "ci_high": float("nan"),
                            "n": int((frame["subset"] == subset).sum())})
        return records

    def compare(self, a: pd.DataFrame, b: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0,
                measure: str | None = None) -> dict[str, float] | None:
        """Paired over images: the per-image AUC (``auc``) or normalised distance (``nd@s``) of two metrics."""
        if len(a) == 0 or a["subset"].isin(["unrelated", "identical"]).all():
            return None
        measure = measure or "auc"
        if measure == "auc":
            va, vb = self._per_image_auc(a), self._per_image_auc(b)
            vb = vb.reindex(va.index)
        else:
            s = float(measure.split("@", 1)[1])
            ra, rb = a[a["strength"] == s], b[b["strength"] == s]
            va, vb = ra["score"].to_numpy() * 100.0, rb["score"].to_numpy() * 100.0
        return paired_comparison(np.asarray(va, dtype=np.float64), np.asarray(vb, dtype=np.float64),
                                 n_boot=n_boot, seed=seed)


def _unrelated_partners(n: int, seed: int) -> list[int]:
    """For each of ``n`` images, another one (a seeded derangement by a random cyclic shift of a permutation)."""
    rng = np.random.default_rng([seed, 7003])
    order = rng.permutation(n)
    partner = np.empty(n, dtype=np.int64)
    partner[order] = np.roll(order, -1)
    return partner.tolist()


class AttributeContests(AnalysisTask):
    """Contests: X edit against Y edit matched in pixel RMS; P(the X edit judged closer) (module docstring)."""

    slots: ClassVar[tuple[str, ...]] = ("x", "a", "b")
    comparisons: ClassVar[tuple[tuple[str, str, str], ...]] = (("d_a", "x", "a"), ("d_b", "x", "b"))
    measure: ClassVar[str] = "p_first_closer"

    def __init__(self, attributes: Any = None, strength: float = 0.5, match_by: str | None = None,
                 **options: Any) -> None:
        super().__init__(**options)
        #: a metric name: match the edits by that metric's distance instead of pixel RMS; the runner builds
        #: the metric and sets :attr:`matcher` (a tasks knows no networks) before ``prepare``
        self.match_by = None if match_by in (None, "", "rms") else str(match_by)
        self.matcher: Any = None
        from percepbench.tasks.edits import ATTRIBUTES, parse_attributes

        self.attributes = parse_attributes(attributes) if attributes is not None else list(CONTEST_ATTRIBUTES)
        steps = [a for a in self.attributes if a == "flip" or ATTRIBUTES[a].needs_mask]
        if steps:
            raise ValueError(f"contest attributes cannot include {', '.join(steps)} (flip is a step and the region "
                             "edits need masks: they cannot be matched in strength)")
        if len(self.attributes) < 2:
            raise ValueError("a contest needs at least two attributes")
        strength = float(strength)
        if not 0 < strength <= 1:
            raise ValueError(f"strength must be in (0, 1], got {strength!r}")
        self.strength = strength

    def prepare(self, *, data_root: str | None = None, num_workers: int = 0, progress: bool = True,
                seed: int = 0) -> None:
        from percepbench.tasks.edits import ATTRIBUTES, edit, match_strength, rms_change

        seed = self.seed if self.seed is not None else seed
        if self.match_by is not None and self.matcher is None:
            raise ValueError(f"match_by={self.match_by}: the matching metric was not set up (run the task through "
                             "percepbench run, which builds it)")
        zero: dict[int, float] = {}

        def change(edited: np.ndarray, image: np.ndarray) -> float:
            """Pixel RMS, or the matching metric's distance above its distance of the image to itself (so
            that it is 0 for the unedited image whatever the metric's scale: -PSNR is negative)."""
            if self.matcher is None:
                return rms_change(edited, image)
            if id(image) not in zero:
                zero[id(image)] = self.matcher(image, image)
            return self.matcher(edited, image) - zero[id(image)]

        def matched(image: np.ndarray, name: str, target: float, seed: list[int]) -> float | None:
            tol = 1e-3 if self.matcher is None else max(1e-3 * abs(target), 1e-9)
            return match_strength(image, name, max(target, 0.0), seed=seed, tol=tol,
                                  change=None if self.matcher is None else change)

        pool = self._pool(seed, data_root)
        names = list(ATTRIBUTES)
        pairs = [(x, y) for i, x in enumerate(self.attributes) for y in self.attributes[i + 1:]]
        rows, stacks, unmatched = [], [], []
        bar = tqdm(total=len(pool) * len(pairs), desc="attr_contests: matching edits", unit="contest",
                   disable=not progress, leave=False)
        for i, p in enumerate(pool):
            for x, y in pairs:
                seed_x, seed_y = [seed, i, names.index(x)], [seed, i, names.index(y)]
                s_x, s_y = self.strength, None
                target = change(edit(p.image, x, s_x, seed=seed_x), p.image)
                s_y = matched(p.image, y, target, seed_y)
                if s_y is None:
                    s_y = self.strength
                    target = change(edit(p.image, y, s_y, seed=seed_y), p.image)
                    s_x = matched(p.image, x, target, seed_x)
                bar.update()
                if s_x is None or s_y is None:
                    unmatched.append(f"{p.id} {x}~{y}")
                    continue
                a, b = edit(p.image, x, s_x, seed=seed_x), edit(p.image, y, s_y, seed=seed_y)
                stacks.append(_to_uint8([p.image, a, b]))
                row = {"item": f"{x}~{y}/{p.id}", "subset": f"{x}~{y}", "image": p.id, "attr_a": x,
                       "attr_b": y, "s_a": s_x, "s_b": s_y, "rms_a": rms_change(a, p.image),
                       "rms_b": rms_change(b, p.image)}
                if self.matcher is not None:
                    row.update(match_a=float(change(a, p.image)), match_b=float(change(b, p.image)))
                rows.append(row)
        bar.close()
        if not rows:
            raise DataError(f"attr_contests: no pair of edits could be matched in pixel RMS on the pool "
                            f"({len(unmatched)} tried)")
        self._images = _stack(stacks)
        self._items = pd.DataFrame(rows)
        self._protocol = {
            **self._pool_protocol(pool, seed),
            "attributes": {a: ATTRIBUTES[a].description for a in self.attributes},
            "strength": self.strength,
            "matching": (f"equal {self.match_by} distance to the original (match_by; relative tolerance 1e-3)"
                         if self.match_by else "equal pixel RMS change (tolerance 1e-3)")
                        + ": Y's strength found by bisection to match X at `strength` (else X matched to Y at "
                          "`strength`)",
            "unmatched": len(unmatched), "unmatched_items": unmatched[:20],
            "measure": "p_first_closer: % of images where d(x, X edit) < d(x, Y edit); 50 on a tie",
        }

    def item_scores(self, samples: pd.DataFrame) -> np.ndarray:
        return score_2afc(samples["d_a"].to_numpy(), samples["d_b"].to_numpy(), np.zeros(len(samples)))


class ForegroundReliance(AnalysisTask):
    """Foreground/background reliance on pools with masks (module docstring)."""

    slots: ClassVar[tuple[str, ...]] = ("x", "bg_replaced", "fg_replaced")
    comparisons: ClassVar[tuple[tuple[str, str, str], ...]] = (("d_bg", "x", "bg_replaced"),
                                                                ("d_fg", "x", "fg_replaced"))
    measure: ClassVar[str] = "foreground_reliance"
    default_pool: ClassVar[str] = "composites"

    def __init__(self, modes: Any = None, **options: Any) -> None:
        super().__init__(**options)
        self.modes = split_list(modes) if modes is not None else list(DEFAULT_MODES)
        unknown = [m for m in self.modes if m not in MODES]
        if unknown or not self.modes:
            raise ValueError(f"modes must be among {', '.join(MODES)} (e.g. modes=grey+swap), got {modes!r}")

    def prepare(self, *, data_root: str | None = None, num_workers: int = 0, progress: bool = True,
                seed: int = 0) -> None:
        from percepbench.tasks.edits import replace_region, rms_change

        seed = self.seed if self.seed is not None else seed
        pool = self._pool(seed, data_root)
        _require_masks(pool, "attr_reliance", self.pool_name, self.path)
        partners = _unrelated_partners(len(pool), seed)
        rows, stacks = [], []
        for i, p in enumerate(pool):
            other = pool[partners[i]].image
            for mode in self.modes:
                kw = {"other": other} if mode == "swap" else {}
                bg = replace_region(p.image, p.mask, "background", mode, seed=seed, **kw)
                fg = replace_region(p.image, p.mask, "foreground", mode, seed=seed, **kw)
                stacks.append(_to_uint8([p.image, bg, fg]))
                rows.append({"item": f"{mode}/{p.id}", "subset": mode, "image": p.id,
                             "foreground_share": float(p.mask.mean()),  # type: ignore[union-attr]
                             "rms_bg": rms_change(bg, p.image), "rms_fg": rms_change(fg, p.image)})
        self._images = _stack(stacks)
        self._items = pd.DataFrame(rows)
        pixel = {m: _reliance(score_2afc(g["rms_bg"].to_numpy(), g["rms_fg"].to_numpy(), np.zeros(len(g))))
                 for m, g in self._items.groupby("subset", sort=False)}
        self._protocol = {
            **self._pool_protocol(pool, seed),
            "modes": self.modes,
            "measure": "foreground_reliance = 100 x (2P - 1), P = share of images where d(x, background replaced) "
                       "< d(x, foreground replaced); 0.5 on a tie",
            "pixel_rms_index": pixel,
            "foreground_share_mean": float(self._items["foreground_share"].mean()),
        }

    def item_scores(self, samples: pd.DataFrame) -> np.ndarray:
        return score_2afc(samples["d_bg"].to_numpy(), samples["d_fg"].to_numpy(), np.zeros(len(samples)))

    def score(self, samples: pd.DataFrame, *, seed: int = 0, n_boot: int = 1000) -> list[dict[str, Any]]:
        scores = self.item_scores(samples)
        subsets = samples["subset"].to_numpy()
        groups = [(s, subsets == s) for s in pd.unique(subsets)]
        records = []
        for subset, mask in groups:
            lo, hi = bootstrap_ci(scores[mask], seed=seed, n_boot=n_boot)
            records.append({"subset": str(subset), "measure": self.measure, "value": _reliance(scores[mask]),
                            "ci_low": 100 * (2 * lo - 1), "ci_high": 100 * (2 * hi - 1), "n": int(mask.sum())})
        return records

    def compare(self, a: pd.DataFrame, b: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0,
                measure: str | None = None) -> dict[str, float]:
        return paired_comparison(a["score"].to_numpy() * 200, b["score"].to_numpy() * 200, n_boot=n_boot, seed=seed)


def _reliance(scores: np.ndarray) -> float:
    return float(100 * (2 * np.mean(scores) - 1))


_POOL_OPTIONS = "pool (bundled|composites|folder|coco), images (12), size (96), path (folder or coco), seed"

register_task(TaskSpec(
    name="attr_curves", target="percepbench.tasks.attributes:AttributeCurves",
    description="edit curves: d(x, edit(x, s)) per attribute and strength, normalised by the median distance "
                f"between unrelated images; records auc and nd@s. Options attributes, strengths, {_POOL_OPTIONS}",
    kind="analysis", measure="auc",
))
register_task(TaskSpec(
    name="attr_contests", target="percepbench.tasks.attributes:AttributeContests",
    description="attribute contests: an X edit against a Y edit of equal pixel RMS change; % of images where the "
                f"X edit is judged closer. Options attributes, strength, match_by (a metric; default pixel RMS), "
                f"{_POOL_OPTIONS}",
    kind="analysis", measure="p_first_closer",
))
register_task(TaskSpec(
    name="attr_reliance", target="percepbench.tasks.attributes:ForegroundReliance",
    description="foreground/background reliance: background replaced vs foreground replaced (grey, blur, swap); "
                f"index in [-100, 100]. Options modes, {_POOL_OPTIONS} (default pool composites: masks known)",
    kind="analysis", measure="foreground_reliance",
))
