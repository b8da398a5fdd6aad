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
