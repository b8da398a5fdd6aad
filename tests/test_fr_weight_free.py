"""The weight-free full-reference metrics NLPD, CW-SSIM and MAD against independent oracles.

Oracles:

Pairs are stored as (distorted, reference); percepbench's metrics take ``d(reference, distorted)`` (only MAD
is asymmetric).

- **pyiqa 0.1.16** (``pyiqa.archs.nlpd_arch.NLPD``, ``pyiqa.archs.ssim_arch.CW_SSIM`` with pyiqa's default
  options for ``nlpd`` and ``cw_ssim``, ``pyiqa.archs.mad_arch.MAD``), run once on 2026-11-30 in a separate
  virtual environment (torch 2.14.1, float64 inputs) on the inputs of :func:`oracle_pairs`; the numbers are
  recorded below (pyiqa is never imported by percepbench, and none of its code is copied).
- **vIQA 3.0.1** (``viqa.fr_metrics.mad.most_apparent_distortion``, BSD-3, a port of the MAD authors'
  2011 MATLAB release), same day and inputs, on the luma ``255 (0.299 R + 0.587 G + 0.114 B)``.
- **A numpy brute-force MAD** (:func:`numpy_mad`, below): block loops written like the authors' MATLAB/C
  code (``MAD_index_april_2010.m``, ``ical_stat.c``), the paper's quadrant rule for the reference contrast.
- Hand-computed values: NLPD of two flat images, CW-SSIM of an image and a scaled copy, identities.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from PIL import Image

from percepbench import create_metric
from percepbench.errors import UsageError
from percepbench.metrics_registry import cw_ssim as cw_mod
from percepbench.metrics_registry import mad as mad_mod
from percepbench.metrics_registry import nlpd as nlpd_mod
from percepbench.registry import METRICS

from conftest import SHARED_FIXTURES, TEST_DEVICE

LPIPS_FIXTURES = SHARED_FIXTURES / "lpips"


def _load(name: str) -> torch.Tensor:
    a = np.asarray(Image.open(LPIPS_FIXTURES / f"{name}.png").convert("RGB"), dtype=np.float64) / 255
    return torch.from_numpy(a).permute(2, 0, 1)[None]


def oracle_pairs() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(distorted, reference) float64 pairs the recorded oracle values were computed on."""
    ref, p0, p1 = _load("ex_ref"), _load("ex_p0"), _load("ex_p1")
    g = torch.Generator().manual_seed(16)
    x = torch.rand(2, 3, 96, 96, generator=g, dtype=torch.float64)
    coarse = torch.rand(2, 3, 12, 12, generator=g, dtype=torch.float64)
    smooth = torch.nn.functional.interpolate(coarse, size=(96, 96), mode="bilinear", align_corners=False)
    noisy = (smooth + 0.05 * torch.randn(2, 3, 96, 96, generator=g, dtype=torch.float64)).clamp(0, 1)
    # an 8-bit grey image and a noisy copy (R = G = B): luma is exactly k / 255, so pyiqa's rounding is exact
    grey = (torch.randint(0, 256, (1, 1, 80, 80), generator=g).double() / 255).expand(1, 3, 80, 80)
    noise = torch.randint(-20, 21, (1, 1, 80, 80), generator=g).double()
    grey2 = ((grey * 255 + noise).clamp(0, 255) / 255).expand(1, 3, 80, 80)
    return {"p0_ref": (p0, ref), "p1_ref": (p1, ref), "noisy_smooth": (noisy, smooth),
            "rand_smooth": (x, smooth), "grey": (grey2, grey)}


def odd_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """(distorted, reference): an odd-sized, non-square 8-bit grey image (75 x 101, lightly smoothed) and a
    noisy copy, for the size-dependent details (spectrum centre and crops, borders)."""
    g = torch.Generator().manual_seed(23)
    a = torch.randint(0, 256, (1, 1, 75, 101), generator=g).double() / 255
    a = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(a, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    a = (a * 255).round() / 255
    b = (a * 255 + torch.randint(-15, 16, a.shape, generator=g).double()).clamp(0, 255) / 255
    return b.expand(1, 3, 75, 101), a.expand(1, 3, 75, 101)


#: pyiqa 0.1.16, 2026-11-30, on :func:`odd_pair` (NLPD with pyiqa's first-level filter, see below)
PYIQA_ODD = {"nlpd": 0.202191699244521, "cw_ssim": 0.994027947942646}
#: pyiqa 0.1.16, 2026-11-30 (module docstring): NLPD, CW-SSIM (a similarity) and MAD per pair
PYIQA = {
    "p0_ref": {"nlpd": [0.600556505017], "cw_ssim": [0.990608211918], "mad": [215.914222512]},
    "p1_ref": {"nlpd": [1.25686512528], "cw_ssim": [0.867542402336], "mad": [149.618080213]},
    "noisy_smooth": {"nlpd": [0.22541242813, 0.219931970742], "cw_ssim": [0.999631409602, 0.999522232457],
                     "mad": [6.82496041945, 5.98806663265]},
    "rand_smooth": {"nlpd": [1.35443993541, 1.33812395756], "cw_ssim": [0.161482366128, 0.110837726917],
                    "mad": [297.739532411, 294.750190377]},
    "grey": {"nlpd": [0.17026284279], "cw_ssim": [0.987396020198], "mad": [0.0]},
}
#: vIQA 3.0.1, 2026-11-30: MAD per pair (0.0 where its detection index is 0, as here for noisy_smooth, grey)
VIQA_MAD = {"p0_ref": [119.115677237], "p1_ref": [127.528897248], "noisy_smooth": [0.0, 0.0],
            "rand_smooth": [210.891855392, 209.645020172], "grey": [0.0]}


@pytest.fixture(scope="module")
def pairs():
    return oracle_pairs()


def _rel(a: torch.Tensor, b) -> float:
    b = torch.as_tensor(b, dtype=torch.float64)
    return ((a.double() - b).abs() / b.abs().clamp_min(1e-12)).max().item()


# ------------------------------------------------------------------------------------------------ NLPD


def test_nlpd_matches_pyiqa_with_its_first_level_filter(pairs, monkeypatch):
    """pyiqa keeps only the 3x3 centre of the authors' 5x5 first-level filter; with that filter the two
    implementations agree to float32-constant precision (pyiqa stores its constants in float32)."""
    filters = [list(map(list, f)) for f in nlpd_mod.DN_FILTERS]
    filters[0][2][4] = 0.0  # the authors' 0.0072 tap
    monkeypatch.setattr(nlpd_mod, "DN_FILTERS", tuple(tuple(map(tuple, f)) for f in filters))
    metric = nlpd_mod.NLPD(reduction="none")
    for name, (dist, ref) in pairs.items():
        assert _rel(metric.distance(dist, ref), PYIQA[name]["nlpd"]) < 1e-6, name
    assert _rel(metric.distance(*odd_pair()), [PYIQA_ODD["nlpd"]]) < 1e-6


def test_nlpd_with_the_authors_filter_is_within_one_percent_of_pyiqa(pairs):
    metric = nlpd_mod.NLPD(reduction="none")
    worst = max(_rel(metric.distance(d, r), PYIQA[k]["nlpd"]) for k, (d, r) in pairs.items())
    assert 1e-4 < worst < 1e-2  # measured 0.0089 (the grey pair); the extra tap does change the value


def test_nlpd_of_flat_images_by_hand():
    """Flat images: every band-pass level is 0 (the filter sums to 1 and the padding keeps constants); a
    32-px image's low-pass residual is 1x1, normalised by sigma_6 alone (zero-padded 'same' convolution)."""
    a = torch.full((1, 3, 32, 32), 0.2, dtype=torch.float64)
    b = torch.full((1, 3, 32, 32), 0.6, dtype=torch.float64)
    metric = nlpd_mod.NLPD(reduction="none")
    bands = metric.transform(a)
    assert [tuple(t.shape[-2:]) for t in bands] == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    assert all(t.abs().max() < 1e-12 for t in bands[:-1])
    expected = 0.4 / 0.2782 / 6
    assert metric.distance(a, b).item() == pytest.approx(expected, rel=1e-9)


def test_nlpd_symmetric_pad_is_matlab_symmetric():
    x = torch.arange(3.0).view(1, 1, 1, 3)
    # numpy's "symmetric" is MATLAB's; sizes smaller than the pad wrap around as in MATLAB's padarray
    for pad in (1, 2, 5):
        expected = np.pad(np.arange(3.0)[None], ((pad, pad), (pad, pad)), mode="symmetric")
        assert nlpd_mod.symmetric_pad(x, pad)[0, 0].numpy() == pytest.approx(expected)


# --------------------------------------------------------------------------------------------- CW-SSIM


def test_cw_ssim_matches_pyiqa(pairs):
    metric = cw_mod.CWSSIM(reduction="none")
    # 8-bit grey images: pyiqa's rounding of luma to integers changes nothing -> exact agreement
    grey = metric.similarity(*pairs["grey"])
    assert (grey - torch.tensor(PYIQA["grey"]["cw_ssim"], dtype=torch.float64)).abs().max() < 1e-6
    assert metric.similarity(*odd_pair()).item() == pytest.approx(PYIQA_ODD["cw_ssim"], abs=1e-6)
    # colour images: pyiqa rounds luma to 8 bits, percepbench does not (measured max abs. diff 3.0e-4)
    for name in ("p0_ref", "p1_ref", "noisy_smooth", "rand_smooth"):
        s = metric.similarity(*pairs[name])
        assert (s - torch.tensor(PYIQA[name]["cw_ssim"], dtype=torch.float64)).abs().max() < 5e-4, name


def test_cw_ssim_of_a_scaled_copy_by_hand(pairs):
    """With K = 0 every band of c * x is c times that of x: CW-SSIM(x, c x) = 2c / (1 + c^2) exactly."""
    _, ref = pairs["p0_ref"]
    metric = cw_mod.CWSSIM(reduction="none")
    for c in (0.5, 0.8):
        assert metric.similarity(ref, c * ref).item() == pytest.approx(2 * c / (1 + c * c), abs=1e-12)


def test_cw_ssim_tolerates_small_translations(pairs):
    """The paper's point: a 1-px shift costs far less than additive noise of the same mean squared error."""
    _, ref = pairs["p1_ref"]
    shifted = torch.roll(ref, 1, dims=-1)
    mse = ((shifted - ref) ** 2).mean()
    g = torch.Generator().manual_seed(3)
    noisy = ref + mse.sqrt() * torch.randn(ref.shape, generator=g, dtype=torch.float64)
    metric = cw_mod.CWSSIM(reduction="none")
    assert metric.distance(shifted, ref).item() < 0.5 * metric.distance(noisy.clamp(0, 1), ref).item()


def test_cw_ssim_options_are_checked():
    with pytest.raises(UsageError, match="level"):
        cw_mod.CWSSIM(level=0)
    with pytest.raises(UsageError, match="orientations"):
        cw_mod.CWSSIM(orientations=0)
    with pytest.raises(UsageError, match="k must be"):
        cw_mod.CWSSIM(k=-1)
    assert cw_mod.CWSSIM(level=3).min_size == 32


def test_cw_ssim_flat_images_are_identical_not_nan():
    flat = torch.full((1, 3, 64, 64), 0.5)
    d = cw_mod.CWSSIM(reduction="none").pairwise(flat, flat)
    assert d.item() == 0.0


# ------------------------------------------------------------------------------------------------- MAD


def _np_luma(rgb: torch.Tensor) -> np.ndarray:
    a = rgb[0].numpy()
    return 255.0 * (0.299 * a[0] + 0.587 * a[1] + 0.114 * a[2])


def _np_block_stats(img: np.ndarray):
    """``ical_stat.c``: 16x16 blocks at stride 4; std (n - 1), skewness, kurtosis written on the block's
    top-left 4x4 px; zeros elsewhere."""
    std, skw, krt = (np.zeros_like(img) for _ in range(3))
    rows, cols = img.shape
    for i in range(0, rows - 15, 4):
        for j in range(0, cols - 15, 4):
            blk = img[i:i + 16, j:j + 16]
            d = blk - blk.mean()
            s2 = (d ** 2).sum()
            pop = math.sqrt(s2 / 256)
            std[i:i + 4, j:j + 4] = math.sqrt(s2 / 255)
            if pop != 0:
                skw[i:i + 4, j:j + 4] = (d ** 3).sum() / 256 / pop ** 3
                krt[i:i + 4, j:j + 4] = (d ** 4).sum() / 256 / pop ** 4
    return std, skw, krt


def _np_make_csf(x: int, y: int, nfreq: float) -> np.ndarray:
    xplane, yplane = np.meshgrid(np.arange(-x / 2 + 0.5, x / 2), np.arange(-y / 2 + 0.5, y / 2))
    plane = (xplane + 1j * yplane) / y * 2 * nfreq
    radfreq = np.abs(plane)
    s = (1 - 0.7) / 2 * np.cos(4 * np.angle(plane)) + (1 + 0.7) / 2
    radfreq = radfreq / s
    csf = 2.6 * (0.0192 + 0.114 * radfreq) * np.exp(-((0.114 * radfreq) ** 1.1))
    csf[radfreq < 7.8909] = 0.9809
    return csf


def _np_hi_index(ref: np.ndarray, dst: np.ndarray) -> float:
    m, n = ref.shape
    csf = _np_make_csf(m, n, 32).T
    lum = [0.02874 * v ** (2.2 / 3) for v in (ref, dst)]
    ref_f, dst_f = (np.real(np.fft.ifft2(np.fft.ifftshift(np.fft.fftshift(np.fft.fft2(v)) * csf))) for v in lum)
    err = dst_f - ref_f
    msk = np.zeros_like(ref)
    for i in range(0, m - 15, 4):
        for j in range(0, n - 15, 4):
            mu = ref_f[i:i + 16, j:j + 16].mean()
            if mu < 0.5:
                continue
            s_err = err[i:i + 16, j:j + 16].std(ddof=1)
            s_ref = min(ref_f[i + a:i + a + 8, j + b:j + b + 8].std(ddof=1) for a in (0, 8) for b in (0, 8))
            ci_ref, ci_err = math.log(s_ref / mu), math.log(s_err / mu) if s_err > 0 else -math.inf
            if ci_ref > -5 and ci_err > ci_ref:
                msk[i:i + 4, j:j + 4] = ci_err - ci_ref
            elif ci_ref <= -5 and ci_err > -5:
                msk[i:i + 4, j:j + 4] = ci_err + 5
    padded = np.pad((ref - dst) ** 2, ((7, 8), (7, 8)), mode="symmetric")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (16, 16))
    lmse = windows.mean(axis=(-2, -1))
    mp2 = (msk * lmse)[16:m - 17, 16:n - 17]
    return float(np.linalg.norm(mp2) / math.sqrt(mp2.size) * 200)


def _np_gabor(im: np.ndarray):
    rows, cols = im.shape
    imagefft = np.fft.fft2(im)
    x = np.ones((rows, 1)) * np.arange(-cols / 2, cols / 2)[None] / (cols / 2)
    y = np.arange(-rows / 2, rows / 2)[:, None] * np.ones((1, cols)) / (rows / 2)
    radius = np.sqrt(x ** 2 + y ** 2)
    cy, cx = int(np.floor(rows / 2 + 1 + 0.5)) - 1, int(np.floor(cols / 2 + 1 + 0.5)) - 1
    radius[cy, cx] = 1
    theta = np.arctan2(-y, x)
    sintheta, costheta = np.sin(theta), np.cos(theta)
    theta_sigma = np.pi / 4 / 1.5
    out = {}
    for o in range(4):
        angl = o * np.pi / 4
        ds = sintheta * np.cos(angl) - costheta * np.sin(angl)
        dc = costheta * np.cos(angl) + sintheta * np.sin(angl)
        spread = np.exp(-np.abs(np.arctan2(ds, dc)) ** 2 / (2 * theta_sigma ** 2))
        for s in range(5):
            rfo = (1.0 / (3 * 3 ** s)) / 0.5
            log_gabor = np.exp(-np.log(radius / rfo) ** 2 / (2 * np.log(0.55) ** 2))
            log_gabor[cy, cx] = 0
            out[s, o] = np.fft.ifft2(imagefft * np.fft.fftshift(log_gabor * spread))
    return out


def _np_lo_index(ref: np.ndarray, dst: np.ndarray) -> float:
    g_ref, g_dst = _np_gabor(ref), _np_gabor(dst)
    weights = np.array([0.5, 0.75, 1, 5, 6]) / 13.25
    mp = np.zeros_like(ref)
    for (s, o), band in g_ref.items():
        sr, kr, tr = _np_block_stats(np.abs(band))
        sd, kd, td = _np_block_stats(np.abs(g_dst[s, o]))
        mp += weights[s] * (np.abs(sr - sd) + 2 * np.abs(kr - kd) + np.abs(tr - td))
    m, n = ref.shape
    mp2 = mp[16:m - 17, 16:n - 17]
    return float(np.linalg.norm(mp2) / math.sqrt(mp2.size))


def numpy_mad(dist: torch.Tensor, ref: torch.Tensor) -> tuple[float, float, float]:
    """(MAD, d_detect, d_appear) of one (1, 3, H, W) float64 pair, by block loops (module docstring)."""
    r, d = _np_luma(ref), _np_luma(dist)
    hi, lo = _np_hi_index(r, d), _np_lo_index(r, d)
    b1, b2 = math.exp(-2.55 / 3.35), 1 / (math.log(10) * 3.35)
    sig = 1 / (1 + b1 * hi ** b2)
    return lo ** (1 - sig) * hi ** sig, hi, lo


@pytest.mark.parametrize("name", ["p0_ref", "p1_ref", "rand_smooth", "odd_crop"])
def test_mad_matches_the_numpy_brute_force(pairs, name):
    if name == "odd_crop":  # odd, non-square: 75 x 91
        dist, ref = (t[:1, :, 3:78, 2:93] for t in pairs["rand_smooth"])
    else:
        dist, ref = (t[:1] for t in pairs[name])
    got = mad_mod.mad_components(ref, dist)  # percepbench order: d(reference, distorted)
    want_mad, want_hi, want_lo = numpy_mad(dist, ref)
    assert got["d_detect"].item() == pytest.approx(want_hi, rel=1e-6)
    assert got["d_appear"].item() == pytest.approx(want_lo, rel=1e-6)
    assert got["mad"].item() == pytest.approx(want_mad, rel=1e-6)


def test_mad_is_close_to_viqa_and_records_pyiqa(pairs):
    """vIQA ports the authors' 2011 code with other sub-blocks for the reference contrast, a 16-px border
    and scipy's box alignment: within 5 % where its detection index is not 0 (measured 3.1 %, 0.4 %, 0.4 %,
    0.6 %). pyiqa's MAD averages RGB channels, weights scales by orientation index and keeps the border: it
    is recorded for reference only (e.g. 215.9 vs 122.8 here on p0_ref)."""
    for name in ("p0_ref", "p1_ref", "rand_smooth"):
        dist, ref = pairs[name]
        got = mad_mod.MAD(reduction="none").distance(ref, dist)
        assert _rel(got, VIQA_MAD[name]) < 0.05, name
    # both faithful ports find no visible distortion in these pairs: MAD is 0 whatever d_appear is
    for name in ("noisy_smooth", "grey"):
        dist, ref = pairs[name]
        comps = mad_mod.mad_components(ref, dist)
        assert VIQA_MAD[name][0] == 0.0
        assert (comps["d_detect"] < 1e-6).any() and (comps["d_appear"] > 1.0).all()


def test_mad_float32_matches_float64(pairs):
    dist, ref = pairs["p0_ref"]
    d64 = mad_mod.MAD(reduction="none").distance(ref, dist)
    d32 = mad_mod.MAD(reduction="none").distance(ref.float(), dist.float())
    assert _rel(d32, d64) < 1e-4


def test_mad_is_not_symmetric_and_zero_for_identical(pairs):
    """d(reference, distorted), the order of percepbench's tasks: swapping the arguments changes the value."""
    dist, ref = pairs["p1_ref"]
    metric = mad_mod.MAD(reduction="none")
    assert metric.pairwise(ref.float(), ref.float()).item() < 1e-6
    assert abs(metric.pairwise(dist.float(), ref.float()).item()
               - metric.pairwise(ref.float(), dist.float()).item()) > 1.0


# ----------------------------------------------------------------------------------------- all three


NAMES = ("nlpd", "cw_ssim", "mad")


@pytest.mark.parametrize("name", NAMES)
def test_specs(name):
    spec = METRICS.get(name)
    assert spec.precisions == ("fp32",)
    assert spec.inputs.min_size == {"nlpd": 32, "cw_ssim": 64, "mad": 34}[name]
    assert spec.distance.startswith("1 - CW-SSIM" if name == "cw_ssim" else "identity")
    assert "pyiqa" in spec.reference or "numpy" in spec.reference


@pytest.mark.parametrize("name", NAMES)
def test_distance_grows_with_noise(pairs, name):
    _, ref = pairs["p1_ref"]
    ref = ref.float()
    g = torch.Generator().manual_seed(5)
    noise = torch.randn(ref.shape, generator=g)
    metric = create_metric(name, reduction="none")
    values = [metric.pairwise(ref, (ref + s * noise).clamp(0, 1)).item() for s in (0.0, 0.02, 0.05, 0.1, 0.2)]
    assert values[0] < 1e-6
    assert all(b > a for a, b in itertools.pairwise(values)), values


@pytest.mark.parametrize("name", NAMES)
def test_batch_independent(pairs, name):
    dist, ref = pairs["rand_smooth"]
    (d2, r2), (d3, r3) = pairs["noisy_smooth"], pairs["grey"]
    a = torch.cat([dist, d2, torch.nn.functional.interpolate(d3, size=(96, 96))]).float()
    b = torch.cat([ref, r2, torch.nn.functional.interpolate(r3, size=(96, 96))]).float()
    metric = create_metric(name, reduction="none")
    whole = metric.pairwise(a, b)
    single = torch.cat([metric.pairwise(a[i:i + 1], b[i:i + 1]) for i in range(len(a))])
    torch.testing.assert_close(whole, single, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_are_finite(pairs, name):
    dist, ref = pairs["rand_smooth"]
    metric = create_metric(name, reduction="mean")
    for x, y in ((dist.float(), ref.float()), (ref.float(), ref.float())):
        x = x[:, :, :64, :64].clone().requires_grad_(True)
        metric(x, y[:, :, :64, :64]).backward()
        assert torch.isfinite(x.grad).all(), name
        metric.reset()
    # a random pair: the gradient is not zero either
    x = dist.float()[:, :, :64, :64].clone().requires_grad_(True)
    metric(x, ref.float()[:, :, :64, :64]).backward()
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_on_the_test_device(pairs, name):
    """Same values on PERCEPBENCH_TEST_DEVICE (cpu by default; cuda on the GPU check) as on the CPU."""
    dist, ref = pairs["p0_ref"]
    cpu = create_metric(name, reduction="none").pairwise(ref.float(), dist.float())
    metric = create_metric(name, reduction="none").to(TEST_DEVICE)
    other = metric.pairwise(ref.float().to(TEST_DEVICE), dist.float().to(TEST_DEVICE)).cpu()
    torch.testing.assert_close(other, cpu, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_cached_constants_built_under_inference_mode_serve_gradients(name):
    """The runner scores under torch.inference_mode: the filters and masks cached there (per image size)
    must still work in a later differentiable call."""
    g = torch.Generator().manual_seed(9)
    x, y = torch.rand(2, 1, 3, 72, 72, generator=g)  # a size no other test uses: the cache is empty for it
    metric = create_metric(name, reduction="mean")
    with torch.inference_mode():
        first = metric.pairwise(x, y)
    x = x.clone().requires_grad_(True)
    again = metric.pairwise(x, y)
    again.sum().backward()
    torch.testing.assert_close(again.detach(), first)
    assert torch.isfinite(x.grad).all()
