"""Single-attribute edits and masks (percepbench.tasks.edits) against hand-computed, brute-force oracles."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from scipy import optimize

from percepbench.errors import UsageError
from percepbench.tasks.edits import (
    ATTRIBUTES,
    composite,
    edit,
    ellipse_mask,
    match_strength,
    parse_attributes,
    replace_region,
    rms_change,
)
from percepbench.tasks.severity import load_photo

ORDER = ["hue", "saturation", "brightness", "contrast", "blur", "noise", "jpeg", "translation", "rotation",
         "scale", "flip", "crop", "fg_colour", "bg_colour"]
GEOMETRY = {"translation", "rotation", "scale", "crop"}
#: attributes with a random choice (direction, sign, noise field, anchor) drawn from the seed
RANDOM = {"hue", "brightness", "noise", "translation", "rotation", "crop", "fg_colour", "bg_colour"}
#: (photo index, top, left) of the 96 px crops: astronaut, coffee, china
CROPS = [(0, 100, 180), (2, 150, 250), (8, 200, 300)]
STRENGTHS = [0.0, 0.25, 0.5, 0.75, 1.0]


def crop(k: int, size: int = 96) -> np.ndarray:
    i, top, left = CROPS[k]
    return load_photo(i)[top:top + size, left:left + size].astype(np.float64) / 255.0


def rms(a, b) -> float:  # the oracle for rms_change, written out
    return float(np.sqrt(((np.asarray(a, float) - np.asarray(b, float)) ** 2).sum() / np.asarray(a).size))


def smooth(rows, cols) -> np.ndarray:
    """A smooth analytic RGB image evaluated at (possibly fractional) coordinates: wavelengths >= 29 px, so
    cubic-spline resampling of its samples reproduces it to about 1e-3."""
    r, c = np.asarray(rows, float), np.asarray(cols, float)
    return np.stack([0.5 + 0.3 * np.sin(2 * np.pi * (r / 37 + c / 53) + 0.3),
                     0.5 + 0.3 * np.cos(2 * np.pi * (r / 29 - c / 41)),
                     0.5 + 0.2 * np.sin(2 * np.pi * c / 47) * np.cos(2 * np.pi * r / 31)], axis=-1)


def smooth_image(size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rr, cc = np.meshgrid(np.arange(size, dtype=float), np.arange(size, dtype=float), indexing="ij")
    return smooth(rr, cc), rr, cc


def mask_for(k: int, size: int = 96) -> np.ndarray:
    rr, cc = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    return (rr - size / 2 + 5 * k) ** 2 / 30 ** 2 + (cc - size / 2) ** 2 / 22 ** 2 <= 1


# ----------------------------------------------------------------------------------------- contract


def test_attributes_in_order_with_groups_and_descriptions():
    assert list(ATTRIBUTES) == ORDER
    assert {n for n, a in ATTRIBUTES.items() if a.needs_mask} == {"fg_colour", "bg_colour"}
    assert {a.group for a in ATTRIBUTES.values()} == {"colour", "quality", "geometry", "region"}
    for name, a in ATTRIBUTES.items():
        assert a.name == name and len(a.description) > 20


@pytest.mark.parametrize("name", ORDER)
def test_zero_strength_is_an_exact_copy(name):
    x = crop(0, 48)
    out = edit(x, name, 0.0, seed=3, mask=mask_for(0, 48))
    assert out is not x and out.dtype == np.float64 and np.array_equal(out, x)
    out[:] = 0.0
    assert np.array_equal(x, crop(0, 48))  # a copy, not a view


@pytest.mark.parametrize("name", ORDER)
def test_same_seed_same_edit_and_range(name):
    x, m = crop(1, 48), mask_for(1, 48)
    a = edit(x, name, 0.6, seed=[4, 2], mask=m)
    b = edit(x, name, 0.6, seed=[4, 2], mask=m)
    assert np.array_equal(a, b)
    assert a.shape == x.shape and a.dtype == np.float64 and a.min() >= 0.0 and a.max() <= 1.0
    assert rms(a, x) > 1e-3  # s = 0.6 really edits
    outs = {edit(x, name, 0.6, seed=seed, mask=m).tobytes() for seed in range(8)}
    assert (len(outs) > 1) == (name in RANDOM)  # only random attributes depend on the seed


def test_random_choices_do_not_depend_on_strength():
    x = np.full((32, 32, 3), 0.5)
    # noise: one field per seed, scaled by s (no pixel clips at s <= 0.4 for |z| < 5)
    d1 = edit(x, "noise", 0.2, seed=9) - x
    d2 = edit(x, "noise", 0.4, seed=9) - x
    np.testing.assert_allclose(d2, 2 * d1, atol=1e-12)
    assert abs(d1.std() / (0.25 * 0.2) - 1) < 0.1  # sigma 0.25 s
    # brightness: the same sign at every strength
    signs = {np.sign((edit(x, "brightness", s, seed=5) - x).mean()) for s in (0.1, 0.5, 0.9)}
    assert len(signs) == 1


@pytest.mark.parametrize("k", range(3))
@pytest.mark.parametrize("name", ORDER)
def test_rms_grows_with_strength_on_photo_crops(name, k):
    x, m = crop(k), mask_for(k)
    for seed in range(2):
        r = np.array([rms(edit(x, name, s, seed=seed, mask=m), x) for s in STRENGTHS])
        assert r[0] == 0.0 and r[-1] > 0.01
        if name in GEOMETRY:
            # grows, then levels off near the decorrelated value where it may wobble: the module doc
            # reports falls of up to 26% of the maximum on other crops
            assert r[-1] > r[1] and (r[1:] >= 0.75 * np.maximum.accumulate(r)[1:]).all(), r
        else:
            tol = 1e-6 if name == "flip" else 0.0
            assert (np.diff(r) >= -tol).all(), r


# --------------------------------------------------------------------------------- values, by attribute


def test_colour_edits_match_formulas():
    x = crop(1, 32)
    grey = 0.299 * x[..., :1] + 0.587 * x[..., 1:2] + 0.114 * x[..., 2:]
    np.testing.assert_allclose(edit(x, "saturation", 0.3, seed=0), grey + 0.7 * (x - grey), atol=1e-12)
    np.testing.assert_allclose(edit(x, "saturation", 1.0, seed=0), np.repeat(grey, 3, axis=2), atol=1e-12)
    mean = x.reshape(-1, 3).mean(axis=0)
    np.testing.assert_allclose(edit(x, "contrast", 1.0, seed=0), mean + 0.2 * (x - mean), atol=1e-12)
    for seed in range(4):
        b = edit(x, "brightness", 0.5, seed=seed)
        assert np.allclose(b, np.clip(x + 0.25, 0, 1)) or np.allclose(b, np.clip(x - 0.25, 0, 1))


def test_hue_half_turn_gives_complements_and_keeps_intensity():
    rng = np.random.default_rng(0)
    x = 0.3 + 0.4 * rng.random((16, 16, 3))  # chroma small enough that no rotation leaves the cube
    grey = x.mean(axis=2, keepdims=True)
    np.testing.assert_allclose(edit(x, "hue", 1.0, seed=1), 2 * grey - x, atol=1e-12)
    for s, cos in ((1 / 3, 0.5), (0.5, 0.0)):  # 60 and 90 degrees
        y = edit(x, "hue", s, seed=1)
        c0, c1 = x - grey, y - y.mean(axis=2, keepdims=True)
        np.testing.assert_allclose(y.mean(axis=2, keepdims=True), grey, atol=1e-12)
        np.testing.assert_allclose(np.linalg.norm(c1, axis=2), np.linalg.norm(c0, axis=2), atol=1e-12)
        np.testing.assert_allclose((c0 * c1).sum(2) / (c0 * c0).sum(2), cos, atol=1e-9)
    grey_image = np.full((4, 4, 3), 0.4)
    assert np.allclose(edit(grey_image, "hue", 0.7, seed=0), grey_image)


def gaussian_oracle(x: np.ndarray, sigma: float) -> np.ndarray:
    """Brute-force Gaussian blur of each channel: a 6-sigma kernel, the border mirrored (edge pixel kept)."""
    h, w = x.shape[:2]
    radius = int(np.ceil(6 * sigma))
    t = np.arange(-radius, radius + 1)
    k = np.exp(-t ** 2 / (2 * sigma ** 2))
    k /= k.sum()
    pad = np.pad(x, ((radius, radius), (radius, radius), (0, 0)), mode="symmetric")
    rows = sum(k[i] * pad[i:i + h] for i in range(len(k)))
    return sum(k[j] * rows[:, j:j + w] for j in range(len(k)))


def test_blur_matches_brute_force_convolution():
    x = crop(2, 50)
    np.testing.assert_allclose(edit(x, "blur", 1.0, seed=0), gaussian_oracle(x, 0.04 * 50), atol=1e-3)
    np.testing.assert_allclose(edit(x, "blur", 0.5, seed=0), gaussian_oracle(x, 0.02 * 50), atol=1e-3)


@pytest.mark.parametrize(("s", "quality"), [(1.0, 5), (0.5, 50), (1e-6, 95)])
def test_jpeg_quality_falls_with_strength(s, quality):
    x = crop(0, 40)
    buf = io.BytesIO()
    Image.fromarray(np.rint(x * 255).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
    expected = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=float) / 255
    assert np.array_equal(edit(x, "jpeg", s, seed=0), expected)


def test_flip_is_a_step():
    x = crop(1, 24)
    for s in (1e-9, 0.4, 1.0):
        assert np.array_equal(edit(x, "flip", s, seed=0), x[:, ::-1])


def _fit(out, model, p0, inside):
    """Least-squares fit of the parameters of ``model(p) -> image`` to ``out`` on the pixels ``inside(p)``."""
    res = optimize.least_squares(lambda p: ((model(p) - out) * inside(p)[..., None]).ravel(), p0)
    return res.x, float(np.abs((model(res.x) - out) * inside(res.x)[..., None]).max())


def test_translation_is_a_shift_by_a_quarter_of_the_side():
    x, rr, cc = smooth_image(64)
    for seed in range(3):
        out = edit(x, "translation", 1.0, seed=seed)
        # brute force over directions, then refine: out(p) = f(p - d) where p - d lies in the frame

        def miss(a, out=out):
            return np.abs(smooth(rr - 16 * np.sin(a), cc - 16 * np.cos(a)) - out)[24:40, 24:40].sum()

        best = min(np.linspace(0, 2 * np.pi, 72, endpoint=False), key=miss)
        d0 = [16 * np.sin(best), 16 * np.cos(best)]
        d, err = _fit(out, lambda d: smooth(rr - d[0], cc - d[1]), d0,
                      lambda d: (rr - d[0] >= 2) & (rr - d[0] <= 61) & (cc - d[1] >= 2) & (cc - d[1] <= 61))
        assert err < 5e-3 and abs(np.hypot(*d) - 16.0) < 0.05  # 25% of 64 px


def test_rotation_turns_thirty_degrees_about_the_centre():
    x, rr, cc = smooth_image(64)
    c = 31.5
    inside = (rr - c) ** 2 + (cc - c) ** 2 <= 28 ** 2
    for seed in range(4):
        out = edit(x, "rotation", 1.0, seed=seed)
        errs = []
        for sign in (1, -1):
            t = np.deg2rad(sign * 30)
            src = smooth(c + np.cos(t) * (rr - c) - np.sin(t) * (cc - c),
                         c + np.sin(t) * (rr - c) + np.cos(t) * (cc - c))
            errs.append(np.abs(src - out)[inside].max())
        assert min(errs) < 5e-3 < max(errs)  # one of the two directions, exactly


def test_scale_zooms_one_and_a_half_about_the_centre():
    x, rr, cc = smooth_image(64)
    c = 31.5
    expected = smooth(c + (rr - c) / 1.5, c + (cc - c) / 1.5)
    assert np.abs(edit(x, "scale", 1.0, seed=0) - expected)[2:-2, 2:-2].max() < 5e-3


def test_crop_is_a_half_window_towards_an_off_centre_point():
    x, rr, cc = smooth_image(64)
    anchors = []
    for seed in range(4):
        out = edit(x, "crop", 1.0, seed=seed)
        # out(p) = f(a + (p - a) / 2) for an unknown anchor a: brute force on a grid, then refine
        grid = [(ay, ax) for ay in range(0, 64, 4) for ax in range(0, 64, 4)]

        def model(a):
            return smooth(a[0] + (rr - a[0]) / 2, a[1] + (cc - a[1]) / 2)

        a0 = min(grid, key=lambda a, out=out: np.abs(model(a) - out).sum())
        a, err = _fit(out, model, a0, lambda a: np.ones(rr.shape, bool))
        assert err < 5e-3
        assert all(0.25 * 63 - 0.5 <= abs(v - 31.5) <= 0.5 * 63 + 0.5 for v in a)  # 25-50% off centre
        anchors.append(tuple(np.round(a)))
    assert len(set(anchors)) > 1


# ------------------------------------------------------------------------------------------- masks


@pytest.mark.parametrize(("name", "changed"), [("fg_colour", True), ("bg_colour", False)])
def test_region_colour_edits_leave_the_other_side_bit_identical(name, changed):
    x, m = crop(0), mask_for(0)
    out = edit(x, name, 0.8, seed=1, mask=m)
    edited = m if changed else ~m
    assert np.array_equal(out[~edited], x[~edited])
    assert rms(out[edited], x[edited]) > 0.02
    # inside the edited region, the same edit as the whole-image hue rotation
    assert np.array_equal(out[edited], edit(x, "hue", 0.8, seed=1)[edited])


@pytest.mark.parametrize("region", ["foreground", "background"])
@pytest.mark.parametrize("mode", ["grey", "blur", "noise", "swap"])
def test_replace_region(region, mode):
    x, m = crop(1, 40), mask_for(1, 40)
    other = crop(2, 40)
    out = replace_region(x, m, region, mode, other=other, seed=3)
    inside = m if region == "foreground" else ~m
    assert np.array_equal(out[~inside], x[~inside])
    if mode == "grey":
        assert (out[inside] == 0.5).all()
    elif mode == "swap":
        assert np.array_equal(out[inside], other[inside])
    elif mode == "noise":
        assert np.array_equal(out, replace_region(x, m, region, mode, seed=3))
        assert not np.array_equal(out, replace_region(x, m, region, mode, seed=4))
        assert 0.2 < out[inside].std() < 0.4  # uniform on [0, 1]: std 0.289
    else:  # blur, sigma 10% of the side
        np.testing.assert_allclose(out[inside], gaussian_oracle(x, 0.1 * 40)[inside], atol=1e-3)


def test_composite():
    fg, bg, m = crop(0, 32), crop(1, 32), mask_for(0, 32)
    out = composite(fg, bg, m)
    assert np.array_equal(out[m], fg[m]) and np.array_equal(out[~m], bg[~m])


@pytest.mark.parametrize("shape", [(64, 64), (96, 48), (20, 150), (12, 12)])
def test_ellipse_mask_area_and_shape(shape):
    h, w = shape
    masks = [ellipse_mask(h, w, seed=seed) for seed in range(20)]
    assert all(m.shape == shape and m.dtype == bool for m in masks)
    assert all(0.35 <= m.mean() <= 0.55 for m in masks)
    assert np.array_equal(masks[0], ellipse_mask(h, w, seed=0))
    assert len({m.tobytes() for m in masks}) > 10
    rr, cc = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    for m in masks:  # an axis-aligned ellipse: the one with the mask's moments
        cy, cx = rr[m].mean(), cc[m].mean()
        b, a = 2 * rr[m].std(), 2 * cc[m].std()  # a uniform ellipse has variance (semi-axis)^2 / 4
        radius = np.sqrt(((rr - cy) / b) ** 2 + ((cc - cx) / a) ** 2)
        slack = 2.0 / min(a, b)  # a pixel's worth of the normalised radius
        assert m[radius < 1 - slack].all() and not m[radius > 1 + slack].any()
    small = [ellipse_mask(h, w, seed=s, area=(0.1, 0.2)) for s in range(5)]
    assert all(0.1 <= m.mean() <= 0.2 for m in small)


# ------------------------------------------------------------------------------------- match_strength


def test_match_strength_saturation_against_closed_form():
    x = crop(1, 48)
    grey = 0.299 * x[..., :1] + 0.587 * x[..., 1:2] + 0.114 * x[..., 2:]
    full = rms(np.repeat(grey, 3, axis=2), x)  # the RMS change is s * full, exactly
    s = match_strength(x, "saturation", 0.5 * full, seed=0, tol=1e-5)
    assert s is not None and abs(s - 0.5) <= 1e-5 / full
    assert match_strength(x, "saturation", full + 0.01, seed=0) is None  # beyond s = 1
    assert match_strength(x, "saturation", 0.0, seed=0) == 0.0


@pytest.mark.parametrize("name", ["hue", "blur", "noise", "translation", "rotation", "crop"])
def test_match_strength_hits_the_target(name):
    x = crop(2, 64)
    target = 0.05
    s = match_strength(x, name, target, seed=1, tol=1e-3)
    assert s is not None and 0 < s < 1
    assert abs(rms(edit(x, name, s, seed=1), x) - target) <= 1e-3


def test_match_strength_takes_the_first_crossing_when_the_rms_wobbles():
    x = crop(2)  # china: translation with seed 1 changes by 0.184 at s = 0.25 and by 0.174 at s = 0.5
    r = [rms(edit(x, "translation", s, seed=1), x) for s in (0.25, 0.5)]
    assert r[0] > 0.18 > r[1]
    s = match_strength(x, "translation", 0.18, seed=1, tol=1e-3)
    assert s is not None and s < 0.25 and abs(rms(edit(x, "translation", s, seed=1), x) - 0.18) <= 1e-3


def test_match_strength_steps_and_unreachable_targets():
    x = crop(0, 48)
    flipped = rms(x[:, ::-1], x)
    assert match_strength(x, "flip", flipped, seed=0) == pytest.approx(1 / 8)  # first scan point hits
    # inside the step: after max_iter halvings, the end of the bracket [0, 2^-33] whose RMS is nearer
    assert match_strength(x, "flip", 0.3 * flipped, seed=0, max_iter=30) == 0.0
    assert match_strength(x, "flip", 0.7 * flipped, seed=0, max_iter=30) == 2.0 ** -33
    assert match_strength(x, "flip", 2 * flipped, seed=0) is None
    m = np.zeros((48, 48), bool)
    m[:4, :4] = True
    assert match_strength(x, "fg_colour", 0.2, seed=0, mask=m) is None  # 16 pixels cannot move the RMS so far


# ----------------------------------------------------------------------------------------------- errors


def test_edit_errors():
    x = crop(0, 16)
    with pytest.raises(ValueError,
                       match=r"unknown attribute 'hu' \(did you mean 'hue'\?\).*saturation.*bg_colour"):
        edit(x, "hu", 0.5, seed=0)
    for s in (-0.1, 1.5, float("nan"), "0.5"):
        with pytest.raises(ValueError, match=r"strength s must be a number in \[0, 1\]"):
            edit(x, "blur", s, seed=0)
    for name in ("fg_colour", "bg_colour"):
        with pytest.raises(ValueError, match="a mask is needed"):
            edit(x, name, 0.5, seed=0)
    with pytest.raises(ValueError, match=r"mask must have the image's shape \(H, W\) = \(16, 16\)"):
        edit(x, "fg_colour", 0.5, seed=0, mask=np.ones((16, 15), bool))
    with pytest.raises(ValueError, match="mask must have the image's shape"):
        edit(x, "blur", 0.5, seed=0, mask=np.ones((16, 16, 3), bool))
    with pytest.raises(ValueError, match="float array"):
        edit((x * 255).astype(np.uint8), "blur", 0.5, seed=0)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        edit(x[..., 0], "blur", 0.5, seed=0)
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        edit(x * 2, "blur", 0.5, seed=0)
    assert issubclass(UsageError, ValueError)


def test_replace_region_and_helper_errors():
    x, m = crop(0, 16), mask_for(0, 16)
    with pytest.raises(ValueError, match="needs other="):
        replace_region(x, m, "foreground", "swap")
    with pytest.raises(ValueError, match="other must have the image's shape"):
        replace_region(x, m, "background", "swap", other=crop(1, 12))
    with pytest.raises(ValueError, match="region must be"):
        replace_region(x, m, "middle", "grey")
    with pytest.raises(ValueError, match="mode must be one of"):
        replace_region(x, m, "foreground", "pink")
    with pytest.raises(ValueError, match="mask must have"):
        replace_region(x, m[:8], "foreground", "grey")
    with pytest.raises(ValueError, match="area must satisfy"):
        ellipse_mask(32, 32, seed=0, area=(0.5, 0.9))
    with pytest.raises(ValueError, match="too small"):
        ellipse_mask(2, 2, seed=0, area=(0.3, 0.35))
    with pytest.raises(ValueError, match="target_rms"):
        match_strength(x, "blur", -1.0, seed=0)
    with pytest.raises(ValueError, match="one shape"):
        rms_change(x, x[:8])


def test_rms_change_by_hand():
    a = np.zeros((2, 2, 3))
    b = a.copy()
    b[..., 0] = 0.5
    assert rms_change(a, b) == pytest.approx(np.sqrt(0.25 / 3))
    assert rms_change(a, a) == 0.0


def test_parse_attributes():
    assert parse_attributes(None) == ORDER[:12]  # everything that needs no mask
    assert parse_attributes("hue+blur") == ["hue", "blur"]
    assert parse_attributes("blur, hue+blur") == ["blur", "hue"]
    assert parse_attributes(["fg_colour", "flip"]) == ["fg_colour", "flip"]
    with pytest.raises(ValueError, match=r"unknown attributes 'warp', 'blurr' \(did you mean 'blur'\?\); "
                                         r"known attributes: hue, saturation"):
        parse_attributes("hue+warp+blurr")
    with pytest.raises(ValueError, match="no attribute named"):
        parse_attributes(" + ")
    with pytest.raises(ValueError, match="must be strings"):
        parse_attributes([1, 2])
