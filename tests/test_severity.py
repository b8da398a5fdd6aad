"""The built-in offline default benchmark: deterministic, labelled as documented."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from percepbench import create_task
from percepbench.specs import InputConvention
from percepbench.tasks.distortions import FAMILIES
from percepbench.tasks.severity import PHOTOS, load_photo, make_triplet


def prepared(**kw):
    seed = kw.pop("seed", 0)
    workers = kw.pop("num_workers", 0)
    task = create_task("severity2afc", **kw)
    task.prepare(seed=seed, num_workers=workers, progress=False)
    return task


def test_photos_ship_with_installed_packages():
    for i, (_package, name) in enumerate(PHOTOS):
        photo = load_photo(i)
        assert photo.ndim == 3 and photo.shape[2] == 3 and min(photo.shape[:2]) >= 300, name


def test_same_seed_same_triplets_whatever_the_workers():
    a = prepared(per_family=3, seed=7)
    b = prepared(per_family=3, seed=7, num_workers=2)
    assert torch.equal(a.images, b.images)
    pd.testing.assert_frame_equal(a.items, b.items)


def test_different_seed_different_triplets():
    a = prepared(per_family=2, seed=0)
    b = prepared(per_family=2, seed=1)
    assert not torch.equal(a.images, b.images)


def test_layout_subsets_and_labels():
    task = prepared(per_family=4, size=64)
    items = task.items
    assert task.images.shape == (4 * len(FAMILIES), 3, 3, 64, 64) and task.images.dtype == torch.uint8
    assert sorted(items["subset"].unique()) == sorted(FAMILIES)
    assert items["item"].is_unique
    assert set(items["p"]) <= {0.0, 1.0}
    # proxy label: p = 1 exactly when the right image is the milder distortion
    right_milder = items["severity_right"] < items["severity_left"]
    assert ((items["p"] == 1.0) == right_milder).all()
    assert ((items["severity_left"] - items["severity_right"]).abs() >= 0.15 - 1e-9).all()


def test_family_subset_selection_and_errors():
    task = prepared(per_family=2, families="blur,noise")
    assert sorted(task.items["subset"].unique()) == ["blur", "noise"]
    with pytest.raises(ValueError, match="unknown distortion families"):
        create_task("severity2afc", families=["warp"])
    with pytest.raises(ValueError, match="per_family"):
        create_task("severity2afc", per_family=0)


def test_reference_is_undistorted_crop_and_distortions_differ():
    stack, row = make_triplet(0, list(FAMILIES).index("noise"), 0, 64)
    ref, left, right = stack.astype(np.int32)
    photo = load_photo(PHOTOS.index(next(p for p in PHOTOS if p[1] == row["photo"])))
    ctx = int(np.ceil(64 * 1.25)) + 2 * 16 + 2
    c0 = (ctx - 64) // 2
    top, lft = row["crop_top"] + c0, row["crop_left"] + c0
    assert np.array_equal(ref, photo[top:top + 64, lft:lft + 64])
    milder, severe = (right, left) if row["p"] == 1.0 else (left, right)
    assert np.abs(milder - ref).mean() < np.abs(severe - ref).mean()


def test_dataset_applies_metric_resize():
    task = prepared(per_family=1, families=["blur"], size=64)
    native = task.dataset(InputConvention())[0]
    assert native["ref"].shape == (3, 64, 64)
    resized = task.dataset(InputConvention(size=32, interpolation="bicubic"))[0]
    assert resized["left"].shape == (3, 32, 32) and resized["left"].dtype == torch.uint8


def test_protocol_says_proxy_labels():
    task = prepared(per_family=1, families=["jpeg"])
    proto = task.protocol()
    assert "proxy" in proto["labels"] and "not human" in proto["labels"]
    assert proto["families"] == {"jpeg": FAMILIES["jpeg"].description}


def _allowed_sizes():
    """The documented size range, read from the task's own checks: 16..256 px."""
    for bad in (15, 257):
        with pytest.raises(ValueError, match="size must be between 16 and 256"):
            create_task("severity2afc", size=bad)
    return range(16, 257)


def test_every_allowed_size_generates_triplets():
    # sizes 213..256 used to fail with "ValueError: high <= 0" whenever chelsea (300 px tall) was drawn
    family = list(FAMILIES).index("translate")  # the cheapest family; the crop is the same for all
    for size in _allowed_sizes():
        ctx = int(np.ceil(size * 1.25)) + 2 * 16 + 2
        c0 = (ctx - size) // 2
        for k in range(10):
            stack, row = make_triplet(0, family, k, size)
            assert stack.shape == (3, size, size, 3), (size, k)
            photo = load_photo([n for _, n in PHOTOS].index(row["photo"]))
            top, left = row["crop_top"], row["crop_left"]
            # the whole context window (the crop plus room for rotation and translation) lies in the photo
            assert top >= 0 and left >= 0 and top + ctx <= photo.shape[0] and left + ctx <= photo.shape[1]
            assert np.array_equal(stack[0], photo[top + c0:top + c0 + size, left + c0:left + c0 + size])


def test_photos_too_small_for_a_size_are_skipped_only_there():
    chelsea = [n for _, n in PHOTOS].index("chelsea.png")
    assert load_photo(chelsea).shape[:2] == (300, 451)
    family = list(FAMILIES).index("translate")
    drawn = {size: {make_triplet(0, family, k, size)[1]["photo"] for k in range(60)} for size in (212, 213, 256)}
    assert "chelsea.png" in drawn[212]  # its 299 px context fits in 300 px
    assert "chelsea.png" not in drawn[213] and "chelsea.png" not in drawn[256]
    assert len(drawn[256]) == len(PHOTOS) - 1  # every other photo is still drawn
    # a size every photo fits keeps the triplets it always had (same photo draw as before the size rule)
    assert [make_triplet(3, 2, k, 64)[1]["photo"] for k in range(8)] == \
        [PHOTOS[int(np.random.default_rng([3, 2, k]).integers(len(PHOTOS)))][1] for k in range(8)]


def test_large_size_runs_through_the_task():
    task = prepared(per_family=6, families=["rotate"], size=224)  # seed 0: triplet 5 used to draw chelsea
    assert task.images.shape == (6, 3, 3, 224, 224)
    assert "chelsea.png" not in set(task.items["photo"])
