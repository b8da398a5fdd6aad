"""Every PIL mode a user can hand in decodes to the right 8-bit RGB pixels, or is refused naming the file.

Oracles: images built with numpy from known values; expected pixels worked out by hand (16-bit v -> round(v /
257), float f -> round(255 f), the CMYK / YCbCr / HSV formulas), scikit-image's ``lab2rgb`` for LAB greys,
and the official DreamSim preprocess (``convert("RGB")``, torchvision bicubic resize, ``ToTensor``) for
8-bit modes.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from skimage.color import lab2rgb
from torchvision import transforms

from percepbench import create_task
from percepbench.cli import main
from percepbench.errors import DataError
from percepbench.images import load_rgb, pil_to_tensor, to_rgb
from percepbench.models.dreamsim import preprocess
from percepbench.results import load_results
from percepbench.specs import MetricSpec

# 16-bit values and their nearest 8-bit level, by hand: v * 255 / 65535 = v / 257, rounded
SIXTEEN = np.array([[0, 257, 32768, 65535], [128, 129, 25700, 65280]], dtype=np.uint16)
SIXTEEN_TO_8 = np.array([[0, 1, 128, 255], [0, 1, 100, 254]], dtype=np.uint8)  # 128/257 = .498, 129/257 = .502
# float values in [0, 1] and round(255 f), by hand
FLOATS = np.array([[0.0, 0.5, 1.0, 1 / 255], [0.25, 0.75, 100 / 255, 0.999]], dtype=np.float32)
FLOATS_TO_8 = np.array([[0, 128, 255, 1], [64, 191, 100, 255]], dtype=np.uint8)  # 63.75, 191.25, 254.7


def rgb(im, source=None):
    out = to_rgb(im, source)
    assert out.mode == "RGB" and out.size == im.size
    return np.asarray(out)


def grey(levels):
    return np.repeat(np.asarray(levels, dtype=np.uint8)[..., None], 3, axis=2)


def bands(mode, *pixels):
    """A 1-row image of ``mode`` whose pixels hold the given band values."""
    arr = np.array([pixels], dtype=np.uint8)
    return Image.merge(mode, [Image.fromarray(np.ascontiguousarray(arr[..., i])) for i in range(arr.shape[2])])


def saved(im, fmt, **options):
    """``im`` written in ``fmt`` and read back by PIL (so the test sees what a file gives)."""
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    buf.seek(0)
    return Image.open(buf)


# ----------------------------------------------------------------------------------- 8-bit modes: as PIL


def test_rgb_is_unchanged():
    arr = np.array([[[10, 20, 30], [200, 100, 50]]], dtype=np.uint8)
    assert np.array_equal(rgb(Image.fromarray(arr)), arr)


def test_bilevel_and_grey():
    assert np.array_equal(rgb(Image.fromarray(np.array([[False, True]]))), grey([[0, 255]]))
    assert np.array_equal(rgb(Image.fromarray(np.array([[0, 128, 255]], dtype=np.uint8))), grey([[0, 128, 255]]))


def test_alpha_is_dropped_not_composited():
    # PIL's convert("RGB"), as the official DreamSim preprocess: the colour as stored, whatever the alpha
    rgba = Image.fromarray(np.array([[[10, 20, 30, 0], [200, 100, 50, 128]]], dtype=np.uint8))
    assert np.array_equal(rgb(rgba), [[[10, 20, 30], [200, 100, 50]]])
    la = bands("LA", (100, 0), (200, 255))
    assert np.array_equal(rgb(la), grey([[100, 200]]))
    assert np.array_equal(rgb(saved(rgba, "PNG")), [[[10, 20, 30], [200, 100, 50]]])


@pytest.mark.parametrize("transparency", [None, 0, bytes([0, 128])])
def test_palette_with_and_without_transparency(transparency):
    p = Image.fromarray(np.array([[0, 1]], dtype=np.uint8)).convert("P")
    p.putpalette([10, 20, 30, 200, 100, 50])
    options = {} if transparency is None else {"transparency": transparency}
    png = saved(p, "PNG", **options)
    assert png.mode == "P" and ("transparency" in png.info) == (transparency is not None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "palette images with transparency" warning either
        assert np.array_equal(rgb(png), [[[10, 20, 30], [200, 100, 50]]])
    pa = p.convert("PA")
    assert np.array_equal(rgb(pa), [[[10, 20, 30], [200, 100, 50]]])


def test_cmyk_by_the_naive_formula():
    # R = (255 - C)(255 - K) / 255, and so on, rounded
    cmyk = bands("CMYK", (0, 0, 0, 0), (255, 0, 0, 0), (0, 0, 0, 255), (100, 50, 25, 0), (100, 50, 25, 100))
    expected = [[[255, 255, 255], [0, 255, 255], [0, 0, 0], [155, 205, 230], [94, 125, 140]]]
    assert np.array_equal(rgb(cmyk), expected)
    assert np.array_equal(rgb(saved(cmyk, "TIFF")), expected)


def test_ycbcr_by_the_jpeg_formula():
    ycc = bands("YCbCr", (128, 128, 128), (255, 128, 128), (100, 128, 200), (150, 60, 128))
    y, cb, cr = (np.array([128, 255, 100, 150.0]), np.array([128, 128, 128, 60.0]), np.array([128, 128, 200, 128.0]))
    expected = np.stack([y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128),
                         y + 1.772 * (cb - 128)], axis=-1)[None]
    assert np.abs(rgb(ycc) - np.clip(expected, 0, 255)).max() <= 1  # PIL's fixed point rounds down


def test_hsv_primaries_and_grey():
    hsv = bands("HSV", (0, 255, 255), (85, 255, 255), (170, 255, 255), (0, 0, 128))  # hue 0, 120, 240 deg
    assert np.abs(rgb(hsv).astype(int) - [[[255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128]]]).max() <= 1


def _pil_converts_lab():
    try:
        Image.new("LAB", (1, 1)).convert("RGB")
    except ValueError:
        return False
    return True


def test_lab_greys_match_scikit_image_or_are_refused():
    levels = [0, 64, 128, 200, 255]  # L band 0..255 = L* 0..100; a = b = 128 is a* = b* = 0
    lab = bands("LAB", *[(v, 128, 128) for v in levels])
    if not _pil_converts_lab():  # older Pillow: no LAB -> RGB conversion
        with pytest.raises(DataError, match="PIL mode LAB"):
            to_rgb(lab, "lab.tif")
        return
    expected = lab2rgb(np.array([[[v * 100 / 255, 0.0, 0.0] for v in levels]])) * 255
    assert np.abs(rgb(lab) - expected).max() <= 1.5
    # a colour: PIL goes through LittleCMS (D50 PCS adapted to sRGB), scikit-image assumes D65 without
    # adaptation, so they differ by a few levels; the hue must still agree
    colour = rgb(bands("LAB", (153, 168, 108))).astype(float)[0, 0]  # L* 60, a* 40, b* -20: a pink-violet
    assert np.abs(colour - lab2rgb(np.array([[[60.0, 40.0, -20.0]]]))[0, 0] * 255).max() <= 8


def test_a_mode_pil_cannot_convert_is_refused_naming_it():
    la = Image.new("La", (2, 2))
    with pytest.raises(DataError, match=r"pic\.png: .*PIL mode La"):
        to_rgb(la, "pic.png")


# --------------------------------------------------------------------------- 16-bit and 32-bit integers


@pytest.mark.parametrize("mode", ["I;16", "I;16L", "I;16B"])
def test_sixteen_bit_scales_to_eight(mode):
    im = Image.frombytes(mode, (4, 2), SIXTEEN.astype(">u2" if mode == "I;16B" else "<u2").tobytes())
    assert np.array_equal(np.asarray(im), SIXTEEN)  # the image holds what the test meant
    assert np.array_equal(rgb(im), grey(SIXTEEN_TO_8))


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_sixteen_bit_files(tmp_path, fmt):
    path = tmp_path / f"grey16.{fmt.lower()}"
    Image.fromarray(SIXTEEN).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I")
    assert np.array_equal(np.asarray(load_rgb(path)), grey(SIXTEEN_TO_8))


def test_sixteen_bit_big_endian_tiff_and_pgm(tmp_path):
    tiff = tmp_path / "be.tif"
    Image.frombytes("I;16B", (4, 2), SIXTEEN.astype(">u2").tobytes()).save(tiff)
    with Image.open(tiff) as im:
        assert im.mode == "I;16B"
    assert np.array_equal(np.asarray(load_rgb(tiff)), grey(SIXTEEN_TO_8))
    pgm = tmp_path / "grey16.pgm"
    pgm.write_bytes(b"P5\n4 2\n65535\n" + SIXTEEN.astype(">u2").tobytes())
    assert np.array_equal(np.asarray(load_rgb(pgm)), grey(SIXTEEN_TO_8))


def test_a_sixteen_bit_png_is_not_white():
    # the regression: a mid-grey 16-bit PNG used to decode as 99.6 % white
    im = saved(Image.fromarray(np.full((16, 16), 32768, dtype=np.uint16)), "PNG")
    assert np.array_equal(np.unique(rgb(im)), [128])


def test_int32_images_are_sixteen_bit_and_out_of_range_is_refused(tmp_path):
    path = tmp_path / "int32.tif"
    Image.fromarray(SIXTEEN.astype(np.int32)).save(path)
    with Image.open(path) as im:
        assert im.mode == "I"
    assert np.array_equal(np.asarray(load_rgb(path)), grey(SIXTEEN_TO_8))
    for bad in (-1, 65536):
        arr = SIXTEEN.astype(np.int32)
        arr[0, 0] = bad
        Image.fromarray(arr).save(path)
        with pytest.raises(DataError) as info:
            load_rgb(path)
        assert str(path) in str(info.value) and "[0, 65535]" in str(info.value) and str(bad) in str(info.value)


# -------------------------------------------------------------------------------------------------- float


def test_float_in_unit_range_scales_to_eight(tmp_path):
    assert np.array_equal(rgb(Image.fromarray(FLOATS)), grey(FLOATS_TO_8))
    path = tmp_path / "float.tif"
    Image.fromarray(FLOATS).save(path)
    with Image.open(path) as im:
        assert im.mode == "F"
    assert np.array_equal(np.asarray(load_rgb(path)), grey(FLOATS_TO_8))


def test_a_float_tiff_is_not_black(tmp_path):
    # the regression: a float32 TIFF in [0, 1] used to decode as all black
    path = tmp_path / "half.tif"
    Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32)).save(path)
    assert np.array_equal(np.unique(np.asarray(load_rgb(path))), [128])


@pytest.mark.parametrize("bad", [-0.01, 1.01, 255.0, np.nan, np.inf])
def test_float_outside_unit_range_is_refused(tmp_path, bad):
    arr = FLOATS.copy()
    arr[1, 1] = bad
    path = tmp_path / "bad.tif"
    Image.fromarray(arr).save(path)
    with pytest.raises(DataError) as info:
        load_rgb(path)
    message = str(info.value)
    assert str(path) in message and "[0, 1]" in message and "PIL mode F" in message


# ----------------------------------------------------------------------------- every caller uses the rule


def test_pil_to_tensor_decodes_by_mode():
    t = pil_to_tensor(Image.fromarray(SIXTEEN))
    assert t.dtype == torch.uint8 and t.shape == (3, 2, 4)
    assert torch.equal(t, torch.from_numpy(grey(SIXTEEN_TO_8)).permute(2, 0, 1))


def test_unreadable_file_still_names_it(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"broken\.png: cannot read image"):
        load_rgb(path)


def official_preprocess(im):
    """dreamsim 0.2.1 ``model.py``: ``convert('RGB')``, ``Resize((224, 224), BICUBIC)``, ``ToTensor``."""
    t = transforms.Compose([transforms.Resize((224, 224), interpolation=transforms.InterpolationMode.BICUBIC),
                            transforms.ToTensor()])
    return t(im.convert("RGB")).unsqueeze(0)


EIGHT_BIT = {
    "1": lambda a: Image.fromarray(a[..., 0] > 127),
    "L": lambda a: Image.fromarray(a[..., 0].copy()),
    "LA": lambda a: Image.merge("LA", [Image.fromarray(a[..., 0].copy()), Image.fromarray(a[..., 1].copy())]),
    "P": lambda a: Image.fromarray(a[..., :3].copy()).convert("P"),
    "RGB": lambda a: Image.fromarray(a[..., :3].copy()),
    "RGBA": lambda a: Image.fromarray(a.copy()),
    "CMYK": lambda a: Image.fromarray(a.copy()).convert("RGB").convert("CMYK"),
    "YCbCr": lambda a: Image.fromarray(a[..., :3].copy()).convert("YCbCr"),
    "HSV": lambda a: Image.fromarray(a[..., :3].copy()).convert("HSV"),
}


@pytest.mark.parametrize("mode", list(EIGHT_BIT))
def test_dreamsim_preprocess_keeps_official_parity_for_eight_bit_modes(mode):
    arr = np.random.default_rng(0).integers(0, 256, size=(40, 60, 4), dtype=np.uint8)
    im = EIGHT_BIT[mode](arr)
    assert im.mode == mode
    torch.testing.assert_close(preprocess(im), official_preprocess(im), rtol=0, atol=0)


def test_dreamsim_preprocess_scales_wide_modes():
    out = preprocess(Image.fromarray(np.full((30, 50), 32768, dtype=np.uint16)))
    assert out.shape == (1, 3, 224, 224)
    torch.testing.assert_close(out, torch.full_like(out, 128 / 255), rtol=0, atol=1e-7)
    out = preprocess(Image.fromarray(np.full((30, 50), 0.5, dtype=np.float32)))
    torch.testing.assert_close(out, torch.full_like(out, 128 / 255), rtol=0, atol=1e-7)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        preprocess(Image.fromarray(np.full((30, 50), 2.0, dtype=np.float32)))


# ------------------------------------------------------------------------------------ through percepbench run


@pytest.fixture
def toy(register_temp):
    register_temp(MetricSpec(name="toy-meanabs", target="helpers_metrics:MeanAbs", description="test"))
    return "toy-meanabs"


def test_run_scores_sixteen_bit_and_float_files_right(capsys, tmp_path, clean_env, toy):
    folder = tmp_path / "mine"
    folder.mkdir()
    Image.fromarray(np.full((8, 8), 100 * 257, dtype=np.uint16)).save(folder / "ref16.png")  # -> 100
    Image.new("L", (8, 8), 110).save(folder / "left8.png")
    Image.fromarray(np.full((8, 8), 150 / 255, dtype=np.float32)).save(folder / "rightf.tif")  # -> 150
    pd.DataFrame({"ref": ["ref16.png"], "left": ["left8.png"], "right": ["rightf.tif"], "p": [0.0]}).to_csv(
        folder / "t.csv", index=False)
    code = main(["run", "-m", toy, "-t", "2afc_csv", "--task-args", f"2afc_csv:path={folder / 't.csv'}",
                 "-o", str(tmp_path / "run"), "--n-boot", "20", "-q", "--num-workers", "0"])
    _, err = capsys.readouterr()
    assert code == 0, err
    samples = load_results(tmp_path / "run").samples
    assert samples["d0"].to_numpy() == pytest.approx([10 / 255])  # |100 - 110| / 255
    assert samples["d1"].to_numpy() == pytest.approx([50 / 255])  # |100 - 150| / 255


def test_run_refuses_an_out_of_range_float_file_with_exit_2(capsys, tmp_path, clean_env, toy):
    folder = tmp_path / "mine"
    folder.mkdir()
    for name in ("r.png", "a.png"):
        Image.new("L", (8, 8), 100).save(folder / name)
    Image.fromarray(np.full((8, 8), 150.0, dtype=np.float32)).save(folder / "f.tif")  # 0..255 floats
    pd.DataFrame({"ref": ["r.png"], "left": ["a.png"], "right": ["f.tif"], "p": [0.0]}).to_csv(
        folder / "t.csv", index=False)
    # refused while the task is prepared (before any metric runs), so no loader worker wraps the message
    with pytest.raises(DataError, match=r"1 image file\(s\) cannot be read: .*f\.tif \(float image"):
        create_task("2afc_csv", path=str(folder / "t.csv")).prepare(progress=False)
    code = main(["run", "-m", toy, "-t", "2afc_csv", "--task-args", f"2afc_csv:path={folder / 't.csv'}",
                 "-o", str(tmp_path / "run"), "--n-boot", "20", "-q", "--num-workers", "2"])
    _, err = capsys.readouterr()
    assert code == 2, err
    assert str(folder / "f.tif") in err and "[0, 1]" in err and "Traceback" not in err
