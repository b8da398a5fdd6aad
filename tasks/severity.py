"""``severity2afc``: the built-in offline default benchmark.

A **monotonicity sanity benchmark with proxy labels, not human judgments.** Each triplet is a crop of a
real photograph that ships inside an installed package (scikit-image's bundled colour images and
scikit-learn's sample images; nothing is downloaded) and two distortions of that crop from the same
family at two different severities. The proxy label says the milder distortion is closer to the
reference (``p = 1`` when the right image is the milder one). A metric that orders severities correctly
scores 100; chance is 50. It checks that a metric responds monotonically to the strength of a
distortion, family by family; it says nothing about agreement with people (use ``nights`` / ``bapps``).

Triplets are generated at run time, deterministically from ``seed``: triplet ``k`` of family ``f`` draws
its photo (among those large enough for the crop plus the room rotation and translation need: all of
them up to ``size=212``; above that every photo but the 300 px tall chelsea), a crop that is not flat
(pixel std >= 0.05), two severities (uniform in [0.05, 1], at least 0.15 apart), the side of the milder one,
and each image's own direction/sign (colour-shift direction, shift direction, rotation sign, brightening
or darkening) from ``numpy.random.default_rng([seed, f, k])``, so the set is the same whatever the number
of loader workers. Independent directions keep the task from being a pure "same edit, more of it" test.
Subsets are the distortion families.
"""

from __future__ import annotations

import importlib.resources
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from percepbench.images import apply_convention, tensor_to_pil
from percepbench.registry import register_task
from percepbench.specs import InputConvention, TaskSpec
from percepbench.tasks.base import TwoAFCTask
from percepbench.tasks.distortions import FAMILIES, MAX_SHIFT, crop_offset, draw_params
from percepbench.tasks.files import split_list

if TYPE_CHECKING:  # torch loads when the triplets are generated, so `percepbench list` stays light
    import torch
    from torch.utils.data import Dataset

#: (package, file) of the bundled colour photographs used as sources
PHOTOS: tuple[tuple[str, str], ...] = (
    ("skimage.data", "astronaut.png"),
    ("skimage.data", "chelsea.png"),
    ("skimage.data", "coffee.png"),
    ("skimage.data", "hubble_deep_field.jpg"),
    ("skimage.data", "ihc.png"),
    ("skimage.data", "motorcycle_left.png"),
    ("skimage.data", "retina.jpg"),
    ("skimage.data", "rocket.jpg"),
    ("sklearn.datasets.images", "china.jpg"),
    ("sklearn.datasets.images", "flower.jpg"),
)
SEVERITY_RANGE = (0.05, 1.0)  # severities are drawn in this range ...
MIN_GAP = 0.15  # ... at least this far apart within a triplet
MIN_CROP_STD = 0.05  # a crop's pixel standard deviation must reach this (no flat crops)


@cache
def load_photo(index: int) -> np.ndarray:
    """Bundled photograph ``index`` as uint8 (H, W, 3)."""
    package, name = PHOTOS[index]
    with importlib.resources.as_file(importlib.resources.files(package) / name) as path, Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _context_size(size: int) -> int:
    # room for a 15-degree rotation (size * (cos + sin) < 1.23 size) and a MAX_SHIFT translation
    return int(np.ceil(size * 1.25)) + 2 * MAX_SHIFT + 2


@cache
def photos_for(size: int) -> tuple[int, ...]:
    """Indices into :data:`PHOTOS` of the photographs that hold a context window for ``size`` px crops.

    The window is the crop plus room for rotation and translation (``_context_size``). Every photo holds it
    up to 212 px; above that, chelsea (300 px tall) is left out.
    """
    ctx = _context_size(size)
    return tuple(i for i in range(len(PHOTOS)) if min(_photo_size(i)) >= ctx)


@cache
def _photo_size(index: int) -> tuple[int, int]:
    """``(width, height)`` of bundled photograph ``index``, from its header."""
    package, name = PHOTOS[index]
    with importlib.resources.as_file(importlib.resources.files(package) / name) as path, Image.open(path) as im:
        return im.size


def make_triplet(seed: int, family_index: int, k: int, size: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Triplet ``k`` of family ``family_index``: uint8 array (3 slots, H, W, 3) and its item row."""
    family = list(FAMILIES.values())[family_index]
    rng = np.random.default_rng([seed, family_index, k])
    eligible = photos_for(size)  # all photos up to 212 px, so those sizes draw what they always drew
    photo_index = eligible[int(rng.integers(len(eligible)))]
    photo = load_photo(photo_index)
    ctx = _context_size(size)
    c0 = (ctx - size) // 2
    h, w = photo.shape[:2]
    for _ in range(50):  # skip flat crops (black sky, image borders): they make every triplet a tie
        top = int(rng.integers(0, h - ctx + 1))
        left = int(rng.integers(0, w - ctx + 1))
        context = photo[top:top + ctx, left:left + ctx].astype(np.float64) / 255.0
        if context[c0:c0 + size, c0:c0 + size].std() >= MIN_CROP_STD:
            break
    s_mild = float(rng.uniform(SEVERITY_RANGE[0], SEVERITY_RANGE[1] - MIN_GAP))
    s_severe = float(rng.uniform(s_mild + MIN_GAP, SEVERITY_RANGE[1]))
    mild_right = bool(rng.integers(2))

    def distort(s: float) -> np.ndarray:
        params = draw_params(family.name, rng)  # each side its own direction / sign
        dy, dx = crop_offset(family.name, s, params)
        img = family.apply(context, s, params, rng)
        return img[c0 + dy:c0 + dy + size, c0 + dx:c0 + dx + size]

    mild, severe = distort(s_mild), distort(s_severe)
    ref = context[c0:c0 + size, c0:c0 + size]
    left_img, right_img = (severe, mild) if mild_right else (mild, severe)
    stack = np.stack([ref, left_img, right_img])
    stack = np.clip(np.rint(stack * 255.0), 0, 255).astype(np.uint8)
    row = {
        "item": f"{family.name}/{k:04d}",
        "subset": family.name,
        "p": 1.0 if mild_right else 0.0,
        "photo": PHOTOS[photo_index][1],
        "crop_top": top, "crop_left": left,
        "severity_left": s_severe if mild_right else s_mild,
        "severity_right": s_mild if mild_right else s_severe,
    }
    return stack, row


class _Generator:
    def __init__(self, seed: int, families: list[int], per_family: int, size: int) -> None:
        self.keys = [(f, k) for f in families for k in range(per_family)]
        self.seed, self.size = seed, size

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int):
        f, k = self.keys[i]
        stack, row = make_triplet(self.seed, f, k, self.size)
        import torch

        return torch.from_numpy(stack).permute(0, 3, 1, 2).contiguous(), row


class InMemoryItems:
    """Element ``i``: dict slot -> uint8 (3, H, W) from ``images[i]`` (N, slots, 3, H, W), resized for ``inputs``
    when the metric has a fixed size other than the images'."""

    def __init__(self, images: torch.Tensor, slots: tuple[str, ...], inputs: InputConvention) -> None:
        self.images, self.slots, self.inputs = images, slots, inputs

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        out = {}
        for j, slot in enumerate(self.slots):
            t = self.images[i, j]
            if self.inputs.size is not None and tuple(t.shape[-2:]) != (self.inputs.size, self.inputs.size):
                from percepbench.images import pil_to_tensor

                t = pil_to_tensor(apply_convention(tensor_to_pil(t), self.inputs))
            out[slot] = t
        return out


def _collate_rows(batch):
    import torch

    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


class Severity2AFC(TwoAFCTask):
    """Distortion-severity 2AFC on bundled photographs (proxy labels; see module docstring)."""

    in_memory = True

    def __init__(self, per_family: int = 32, size: int = 128, families: list[str] | str | None = None,
                 seed: int | None = None) -> None:
        families = split_list(families) or list(FAMILIES)  # a string: "blur+noise", as bapps' subsets
        unknown = [f for f in families if f not in FAMILIES]
        if unknown:
            raise ValueError(f"unknown distortion families {unknown}; known: {', '.join(FAMILIES)} "
                             "(separate several with '+', e.g. families=blur+noise)")
        if int(per_family) < 1:
            raise ValueError(f"per_family must be >= 1, got {per_family}")
        if not 16 <= int(size) <= 256:
            raise ValueError(f"size must be between 16 and 256 px, got {size}")
        self.per_family, self.size, self.families = int(per_family), int(size), families
        self.seed = seed
        self._items: pd.DataFrame | None = None
        self._images: torch.Tensor | None = None

    def prepare(self, *, data_root: str | None = None, num_workers: int = 0, progress: bool = True,
                seed: int = 0) -> None:
        import torch
        from torch.utils.data import DataLoader

        seed = self.seed if self.seed is not None else seed
        names = list(FAMILIES)
        gen = _Generator(seed, [names.index(f) for f in self.families], self.per_family, self.size)
        loader = DataLoader(gen, batch_size=16, num_workers=num_workers, collate_fn=_collate_rows)
        images, rows = [], []
        for stack, batch_rows in tqdm(loader, desc="severity2afc: generating triplets", unit="batch",
                                      disable=not progress, leave=False):
            images.append(stack)
            rows.extend(batch_rows)
        self._images = torch.cat(images)
        self._items = pd.DataFrame(rows)
        self._seed_used = seed

    @property
    def images(self) -> torch.Tensor:
        """uint8 tensor (N, 3 slots, 3, H, W) of every triplet."""
        if self._images is None:
            raise RuntimeError("call prepare() first")
        return self._images

    def dataset(self, inputs: InputConvention) -> Dataset:
        return InMemoryItems(self.images, self.slots, inputs)

    def protocol(self) -> dict[str, Any]:
        return {
            "source": "bundled photographs: " + ", ".join(f"{p}/{n}" for p, n in PHOTOS),
            "generation": f"seed {getattr(self, '_seed_used', self.seed)}, {self.per_family} triplets per family, "
                          f"{self.size}x{self.size} px crops, severities uniform in {list(SEVERITY_RANGE)} at least "
                          f"{MIN_GAP} apart, direction/sign drawn independently per image",
            "labels": "proxy: the milder distortion is closer (not human judgments)",
            "families": {f: FAMILIES[f].description for f in self.families},
        }


register_task(TaskSpec(
    name="severity2afc",
    target="percepbench.tasks.severity:Severity2AFC",
    description="Offline default: 2AFC on bundled photos, two severities of one distortion; proxy labels "
                "(milder = closer), a monotonicity sanity check, not human judgments",
    kind="2afc", measure="2afc_accuracy", needs_data=False,
    licence="images: scikit-image data (BSD-3 / public domain / CC0 as listed in skimage/data/README.txt), "
            "scikit-learn sample images (CC BY 2.0 / public domain)",
))
