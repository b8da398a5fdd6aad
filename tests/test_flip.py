"""NVIDIA FLIP (``flip``): parity with the official ``flip-evaluator`` wheel (NVlabs' C++ core), checks from
first principles (CIELAB from scikit-image, filter sums, viewing-condition arithmetic, finite differences),
and the metric's contract (identical images, batches, gradients, options)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from percepbench import create_metric
from percepbench.metrics_registry.catalog.flip import DEFAULT_PPD, MAP_ATOL, ORACLE_ATOL, pixels_per_degree
from percepbench.metrics_registry.flip import FLIP, feature_filters, flip_error_map, spatial_filters
from percepbench.registry import METRICS

from conftest import SHARED_FIXTURES

FIXTURES = SHARED_FIXTURES / "lpips"


def _oracle():
    return pytest.importorskip(
        "flip_evaluator", reason="the official oracle flip-evaluator is not installed (pip install flip-evaluator)")


def _hwc(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.permute(1, 2, 0).numpy(), dtype=np.float32)


def _nchw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).permute(2, 0, 1)[None]


def official(reference: np.ndarray, test: np.ndarray, ppd: float | None = None) -> tuple[np.ndarray, float]:
    """The official LDR-FLIP error map (H, W) and the mean it reports, for sRGB HxWx3 float32 images."""
    fe = _oracle()
    params = {} if ppd is None else {"ppd": ppd}
    error, mean, _ = fe.evaluate(np.ascontiguousarray(reference, dtype=np.float32),
                                 np.ascontiguousarray(test, dtype=np.float32), "LDR", applyMagma=False,
                                 parameters=params)
    return np.asarray(error)[..., 0], float(mean)


def _fixture(name: str) -> np.ndarray:
    path = FIXTURES / f"{name}.png"
    if not path.exists():
        pytest.fail(f"missing fixture {path}")
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0


def _smooth(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = torch.from_numpy(rng.random((1, 3, 6, 6), dtype=np.float32))
    return torch.nn.functional.interpolate(base, size=(h, w), mode="bicubic").clamp(0, 1)[0].permute(1, 2, 0).numpy()


def _cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    ref, p0, p1 = (_fixture(n) for n in ("ex_ref", "ex_p0", "ex_p1"))
    a, b = rng.random((70, 52, 3), dtype=np.float32), rng.random((70, 52, 3), dtype=np.float32)
    s = _smooth(rng, 60, 72)
    return {
        "lpips ref/p0": (ref, p0), "lpips ref/p1": (ref, p1), "lpips p0/p1": (p0, p1),
        "random": (a, b),
        "smooth + noise": (s, np.clip(s + 0.03 * rng.standard_normal(s.shape, dtype=np.float32), 0, 1)),
        "smooth, contrast": (s, np.clip(0.8 * s + 0.1, 0, 1)),
        "5x40 strip": (a[:5, :40], b[:5, :40]),
        "3x3": (a[:3, :3], b[:3, :3]),
        "1x1": (a[:1, :1], b[:1, :1]),
    }


# -- the official implementation ------------------------------------------------------------------------
@pytest.mark.parametrize("ppd", [None, 20.0, 150.0])
def test_error_map_and_mean_match_the_official_flip(ppd):
    """Maps within 5e-5 per pixel; means within 1e-4 of the official mean and 1e-5 of the exact mean of its map
    (the official tool sums the map in float32, which drifts by ~1e-5 on large images)."""
    worst_map = worst_mean = 0.0
    for name, (reference, test) in _cases().items():
        expected_map, expected_mean = official(reference, test, ppd)
        got = flip_error_map(_nchw(reference), _nchw(test), DEFAULT_PPD if ppd is None else ppd)[0].numpy()
        assert got.shape == expected_map.shape, name
        np.testing.assert_allclose(got, expected_map, rtol=0, atol=MAP_ATOL, err_msg=name)
        mean = got.astype(np.float64).mean()
        assert abs(mean - expected_mean) < ORACLE_ATOL, (name, mean, expected_mean)
        assert abs(mean - expected_map.astype(np.float64).mean()) < 1e-5, name
        worst_map = max(worst_map, float(np.abs(got - expected_map).max()))
        worst_mean = max(worst_mean, abs(mean - expected_mean))
    print(f"ppd={ppd}: max |map diff| {worst_map:.2e}, max |mean diff| {worst_mean:.2e}")


def test_metric_batch_matches_official_means_and_default_viewing_conditions():
    """The registered metric on a uint8 batch = the official tool's means at its own default ppd."""
    _oracle()
    ref, p0, p1 = (_fixture(n) for n in ("ex_ref", "ex_p0", "ex_p1"))
    metric = create_metric("flip", reduction="none")
    preds = torch.cat([_nchw(p0), _nchw(p1), _nchw(ref)])
    target = torch.cat([_nchw(ref), _nchw(ref), _nchw(p0)])
    got = metric((preds * 255).round().to(torch.uint8), (target * 255).round().to(torch.uint8))
    expected = [official(ref, p0)[1], official(ref, p1)[1], official(p0, ref)[1]]
    torch.testing.assert_close(got, torch.tensor(expected), rtol=0, atol=ORACLE_ATOL)
    # the official default viewing conditions: its ppd is the metric's default (float32 rounding apart)
    _, _, params = _oracle().evaluate(ref, p0, "LDR", applyMagma=False)
    assert params["ppd"] == pytest.approx(DEFAULT_PPD, abs=1e-5)


def test_error_map_method_matches_official():
    reference, test = _cases()["lpips ref/p1"]
    expected, _ = official(reference, test)
    got = FLIP().error_map(_nchw(test), _nchw(reference))
    assert got.shape == (1, *expected.shape)
    np.testing.assert_allclose(got[0].numpy(), expected, rtol=0, atol=MAP_ATOL)


# -- first principles -----------------------------------------------------------------------------------
def test_default_viewing_conditions_by_hand():
    # 0.7 m * (3840 px / 0.7 m) * pi / 180 = 3840 pi / 180
    assert math.isclose(DEFAULT_PPD, 3840 * math.pi / 180, rel_tol=1e-12)
    assert abs(DEFAULT_PPD - 67.0206) < 1e-4
    assert pixels_per_degree(1.0, 1920, 0.5) == pytest.approx(3840 * math.pi / 180)
    assert METRICS.get("flip").kwargs["ppd"] == DEFAULT_PPD


def test_filter_sizes_and_sums_by_hand():
    # CSF radius ceil(3 sqrt(0.04 / (2 pi^2)) 67.02) = ceil(9.05) = 10; feature sigma 0.5 * 0.082 * 67.02
    # = 2.748 px, radius ceil(8.24) = 9
    y, cx, cz1, cz2 = (np.array(t) for t in spatial_filters(DEFAULT_PPD))
    assert len(y) == len(cx) == len(cz1) == len(cz2) == 21
    assert y.sum() == pytest.approx(1) and cx.sum() == pytest.approx(1)
    assert cz1.sum() ** 2 + cz2.sum() ** 2 == pytest.approx(1)  # the two separable 2-D terms sum to 1
    # Y's CSF Gaussian: exp(-pi^2 x^2 / b) with x in degrees, so the tap ratio at one pixel is known
    assert y[11] / y[10] == pytest.approx(math.exp(-math.pi**2 / DEFAULT_PPD**2 / 0.0047), rel=1e-9)
    assert cz2[11] / cz1[11] == pytest.approx(
        math.sqrt(13.5 * math.sqrt(math.pi / 0.025) / (34.1 * math.sqrt(math.pi / 0.04)))
        * math.exp(-math.pi**2 / DEFAULT_PPD**2 * (1 / 0.025 - 1 / 0.04)), rel=1e-9)
    g, dg, ddg = (np.array(t) for t in feature_filters(DEFAULT_PPD))
    assert len(g) == len(dg) == len(ddg) == 19
    assert g.sum() == pytest.approx(1)
    for d in (dg, ddg):
        assert d[d > 0].sum() == pytest.approx(1) and d[d < 0].sum() == pytest.approx(-1)
    assert dg[9] == 0 and ddg[9] < 0  # odd first derivative, second derivative negative at the centre
    sigma = 0.5 * 0.082 * DEFAULT_PPD
    assert g[10] / g[9] == pytest.approx(math.exp(-1 / (2 * sigma**2)), rel=1e-9)


def _lab(rgb: tuple[float, float, float]) -> np.ndarray:
    from skimage.color import rgb2lab  # independent CIELAB (D65, 2 degrees), sRGB input

    return rgb2lab(np.array([[rgb]], dtype=np.float64), illuminant="D65", observer="2")[0, 0]


def _flat_flip_by_hand(c1: tuple[float, float, float], c2: tuple[float, float, float]) -> float:
    """FLIP of two flat images from the paper's formulas: filtering leaves a flat image unchanged and it has
    no edges or points, so the error is the remapped Hunt-adjusted HyAB difference of the two colours."""
    def hunt(lab):
        return np.array([lab[0], 0.01 * lab[0] * lab[1], 0.01 * lab[0] * lab[2]])

    def hyab(p, q):
        return abs(p[0] - q[0]) + math.hypot(p[1] - q[1], p[2] - q[2])

    # pure linear green and blue are also pure sRGB green and blue
    cmax = hyab(hunt(_lab((0, 1, 0))), hunt(_lab((0, 0, 1)))) ** 0.7
    c = hyab(hunt(_lab(c1)), hunt(_lab(c2))) ** 0.7
    knee = 0.4 * cmax
    return c * 0.95 / knee if c < knee else 0.95 + (c - knee) / (cmax - knee) * 0.05


@pytest.mark.parametrize("c1, c2", [((0, 0, 0), (1, 1, 1)), ((0.5, 0.5, 0.5), (0.55, 0.5, 0.5)),
                                    ((0.2, 0.6, 0.9), (0.25, 0.55, 0.8)), ((1, 0, 0), (0, 0, 1))])
def test_flat_images_by_hand(c1, c2):
    x = torch.tensor(c1, dtype=torch.float64).view(1, 3, 1, 1).expand(1, 3, 9, 7)
    y = torch.tensor(c2, dtype=torch.float64).view(1, 3, 1, 1).expand(1, 3, 9, 7)
    error = flip_error_map(x, y)
    expected = _flat_flip_by_hand(c1, c2)
    # scikit-image's sRGB->XYZ matrix and white point differ from FLIP's in the 4th-5th digit
    torch.testing.assert_close(error, torch.full_like(error, expected), rtol=0, atol=2e-4)


def test_black_white_by_hand():
    # L 0 vs 100, a = b = 0 (neutral): HyAB 100, 100^0.7 = 25.119 > 0.4 cmax; the flat error is then
    # 0.95 + (25.119 - 0.4 cmax) / (0.6 cmax) * 0.05 with cmax = 41.276 (green-blue, hand-checked above)
    d = create_metric("flip", reduction="none")(torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4))
    cmax = 41.276
    expected = 0.95 + (100**0.7 - 0.4 * cmax) / (0.6 * cmax) * 0.05
    assert d.item() == pytest.approx(expected, abs=2e-4)


def test_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(3)
    x = (0.2 + 0.6 * torch.rand(1, 3, 6, 5, generator=g, dtype=torch.float64)).requires_grad_(True)
    y = 0.2 + 0.6 * torch.rand(1, 3, 6, 5, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a: flip_error_map(y, a, ppd=8.0).mean(), (x,), eps=1e-6, atol=1e-5)


# -- the metric contract --------------------------------------------------------------------------------
def test_identical_images_give_exactly_zero():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 40, 33, generator=g)
    metric = FLIP(reduction="none")
    assert metric(x, x.clone()).tolist() == [0.0, 0.0, 0.0]
    assert metric(torch.full((1, 3, 8, 8), 0.3), torch.full((1, 3, 8, 8), 0.3)).item() == 0.0


def test_symmetric_and_batch_independent():
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(4, 3, 32, 48, generator=g), torch.rand(4, 3, 32, 48, generator=g)
    y[2] = x[2]  # an identical pair inside the batch changes nothing for the others
    metric = FLIP(reduction="none")
    batch = metric(x, y)
    one_by_one = torch.cat([metric(x[i:i + 1], y[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(batch, one_by_one, rtol=0, atol=1e-6)
    torch.testing.assert_close(metric(y, x), batch, rtol=0, atol=1e-6)
    assert batch[2] == 0 and (batch[[0, 1, 3]] > 0.3).all()


def test_gradients_finite_on_random_identical_and_flat_images():
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(2, 3, 24, 24, generator=g), torch.rand(2, 3, 24, 24, generator=g)
    metric = FLIP(reduction="mean")
    for name, (a, b) in {"random": (x, y), "identical": (x, x.clone()),
                         "flat": (torch.full((2, 3, 24, 24), 0.5), torch.full((2, 3, 24, 24), 0.5)),
                         "flat vs random": (torch.full((2, 3, 24, 24), 0.5), y)}.items():
        a = a.clone().requires_grad_(True)
        metric(a, b).backward()
        assert a.grad is not None and torch.isfinite(a.grad).all(), name
        if name in ("random", "flat vs random"):
            assert a.grad.abs().sum() > 0, name
    assert METRICS.get("flip").nan_gradient == ""


def test_ppd_changes_the_value_and_bad_ppd_is_refused():
    g = torch.Generator().manual_seed(4)
    x = torch.rand(1, 3, 32, 32, generator=g)
    y = (x + 0.05 * torch.randn(1, 3, 32, 32, generator=g)).clamp(0, 1)
    near, far = FLIP(ppd=20.0)(x, y), FLIP(ppd=150.0)(x, y)
    assert near > far > 0  # seen from farther away (more px per degree), fine noise is less visible
    for bad in (0, -3.0, float("nan"), float("inf"), "67", True):
        with pytest.raises(ValueError, match="ppd"):
            FLIP(ppd=bad)
    with pytest.raises(ValueError, match="ppd"):
        flip_error_map(x, y, ppd=0.0)


def test_spec():
    spec = METRICS.get("flip")
    assert spec.target == "percepbench.metrics_registry.flip:FLIP" and spec.inputs.min_size == 1
    assert spec.precisions == ("fp32",) and "BSD-3-Clause" in spec.licence and "flip-evaluator" in spec.reference
    metric = spec.create(reduction="none")
    assert isinstance(metric, FLIP) and metric.min_size == 1
    # one-pixel images are fine (the official tool accepts them too)
    assert metric(torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)).shape == (1,)


def test_half_precision_autocast_computes_in_fp32():
    """The spec lists fp32 only: inside a bf16 autocast region the metric computes in float32."""
    g = torch.Generator().manual_seed(5)
    x, y = torch.rand(2, 3, 24, 24, generator=g), torch.rand(2, 3, 24, 24, generator=g)
    metric = create_metric("flip", reduction="none")
    expected = metric.pairwise(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = metric.pairwise(x, y)
    assert metric.computes_in("bf16") == "fp32" and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
