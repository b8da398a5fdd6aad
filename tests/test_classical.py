"""Classical metrics agree per image with the reference implementations (torchmetrics, piq, scikit-image)."""

from __future__ import annotations

import numpy as np
import piq
import pytest
import torch
import torchmetrics.functional.image as tmf
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim

from percepbench import create_metric
from percepbench.metrics_registry.classical import (
    MS_SSIM_WEIGHTS,
    PIQ_INDICES,
    piq_ms_ssim_levels,
    scale_weights,
    torchmetrics_ms_ssim_levels,
)


def images(size: int, n: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Natural-ish pairs: a smooth random image and a distorted copy (noise + blur-ish shift)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.interpolate(torch.rand(n, 3, 12, 12, generator=g), size=(size, size),
                                           mode="bicubic", align_corners=False).clamp(0, 1)
    other = (0.8 * base + 0.2 * base.roll(2, dims=-1) + 0.04 * torch.randn(n, 3, size, size, generator=g))
    return base, other.clamp(0, 1)


def per_image_np(x: torch.Tensor) -> list[np.ndarray]:
    return [img.permute(1, 2, 0).double().numpy() for img in x]


# ---------------------------------------------------------------------------------------------
# PSNR
# ---------------------------------------------------------------------------------------------
def test_psnr_hand_computed():
    m = create_metric("psnr", reduction="none")
    x = torch.zeros(2, 3, 8, 8)
    y = torch.full((2, 3, 8, 8), 0.1)
    y[1] = x[1]  # identical pair
    # MSE 0.01 -> 10 log10(1 / 0.01) = 20 dB; identical: MSE floored at 1e-10 -> 100 dB
    torch.testing.assert_close(m.pairwise(x, y), torch.tensor([-20.0, -100.0]))


@pytest.mark.parametrize("size", [32, 64])
def test_psnr_matches_torchmetrics_and_skimage(size):
    x, y = images(size)
    ours = create_metric("psnr", reduction="none").pairwise(x, y)
    tm = tmf.peak_signal_noise_ratio(x, y, data_range=1.0, reduction="none", dim=(1, 2, 3))
    torch.testing.assert_close(ours, -tm, rtol=1e-5, atol=1e-4)
    sk = torch.tensor([sk_psnr(a, b, data_range=1.0) for a, b in zip(per_image_np(x), per_image_np(y), strict=True)])
    torch.testing.assert_close(ours.double(), -sk, rtol=1e-5, atol=1e-4)
    piq_psnr = create_metric("piq.psnr", reduction="none").pairwise(x, y)
    torch.testing.assert_close(piq_psnr.double(), -sk, rtol=1e-5, atol=1e-4)


def test_psnr_is_per_image_not_pooled_over_batch():
    """The torchmetrics trap: dim=None pools the MSE over the whole batch."""
    x, y = images(32)
    y[0] = x[0] * 0.5
    ours = create_metric("psnr", reduction="none").pairwise(x, y)
    single = torch.stack([create_metric("psnr", reduction="none").pairwise(x[i:i + 1], y[i:i + 1])[0]
                          for i in range(4)])
    torch.testing.assert_close(ours, single)


# ---------------------------------------------------------------------------------------------
# SSIM / MS-SSIM
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [11, 32, 96])
def test_ssim_matches_skimage_reference(size):
    """Wang et al.'s definition as scikit-image implements it: mean of the SSIM map over the valid region."""
    x, y = images(size)
    ours = create_metric("ssim", reduction="none").pairwise(x, y)
    sk = torch.tensor([
        sk_ssim(a, b, data_range=1.0, channel_axis=2, gaussian_weights=True, sigma=1.5,
                use_sample_covariance=False)
        for a, b in zip(per_image_np(x), per_image_np(y), strict=True)
    ])
    torch.testing.assert_close(ours.double(), 1 - sk, rtol=0, atol=2e-5)


def test_ssim_is_torchmetrics_map_without_border():
    x, y = images(64)
    ours = create_metric("ssim", reduction="none").pairwise(x, y)
    _, full = tmf.structural_similarity_index_measure(x, y, data_range=1.0, reduction="none",
                                                      return_full_image=True)
    torch.testing.assert_close(ours, 1 - full[..., 5:-5, 5:-5].mean((1, 2, 3)), rtol=1e-5, atol=1e-6)
    # torchmetrics' own scalar averages over the padded border too: a known, documented difference
    whole = tmf.structural_similarity_index_measure(x, y, data_range=1.0, reduction="none")
    assert (ours - (1 - whole)).abs().max() > 1e-3


def test_ssim_uses_fixed_data_range_not_batch_inferred():
    x, y = images(32)
    a = create_metric("ssim", reduction="none").pairwise(x * 0.5, y * 0.5)
    sk = [sk_ssim(p, q, data_range=1.0, channel_axis=2, gaussian_weights=True, sigma=1.5,
                  use_sample_covariance=False) for p, q in zip(per_image_np(x * 0.5), per_image_np(y * 0.5), strict=True)]
    torch.testing.assert_close(a.double(), 1 - torch.tensor(sk), rtol=0, atol=2e-5)


def test_ms_ssim_full_scale_is_the_standard_metric():
    x, y = images(192, n=2)
    metric = create_metric("ms_ssim", reduction="none")
    ours = metric.pairwise(x, y)
    tm = tmf.multiscale_structural_similarity_index_measure(x, y, data_range=1.0, reduction="none")
    torch.testing.assert_close(ours, 1 - tm, rtol=1e-5, atol=1e-6)
    assert metric.last_scales == 5


def test_ms_ssim_reduced_scale_on_64px():
    x, y = images(64)
    with pytest.raises(ValueError):  # the standard metric refuses BAPPS-size patches
        tmf.multiscale_structural_similarity_index_measure(x, y, data_range=1.0)
    metric = create_metric("ms_ssim", reduction="none")
    ours = metric.pairwise(x, y)
    assert metric.last_scales == 3
    betas = tuple(w / sum(MS_SSIM_WEIGHTS[:3]) for w in MS_SSIM_WEIGHTS[:3])
    tm = tmf.multiscale_structural_similarity_index_measure(x, y, data_range=1.0, reduction="none", betas=betas)
    torch.testing.assert_close(ours, 1 - tm, rtol=1e-5, atol=1e-6)
    fixed = create_metric("ms_ssim", reduction="none", scales=2).pairwise(x, y)
    assert not torch.allclose(fixed, ours)


def test_scale_rules():
    assert scale_weights(5) == pytest.approx(MS_SSIM_WEIGHTS, abs=1e-4)
    assert sum(scale_weights(2)) == pytest.approx(1.0)
    assert [torchmetrics_ms_ssim_levels(s) for s in (11, 21, 22, 44, 64, 99, 128, 175, 176)] == [1, 1, 2, 3, 3, 4, 4, 4, 5]
    assert [piq_ms_ssim_levels(s) for s in (11, 21, 41, 64, 81, 128, 160, 161)] == [1, 2, 3, 3, 4, 4, 4, 5]
    with pytest.raises(ValueError, match="too small"):
        piq_ms_ssim_levels(10)
    with pytest.raises(ValueError, match="scales must be"):
        create_metric("ms_ssim", scales=7)


# ---------------------------------------------------------------------------------------------
# piq indices
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("index", sorted(PIQ_INDICES))
@pytest.mark.parametrize("size", [64, 176])
def test_piq_matches_piq(index, size):
    info = PIQ_INDICES[index]
    x, y = images(size, n=3, seed=size)
    ours = create_metric(f"piq.{index}", reduction="none").pairwise(x, y)
    fn = getattr(piq, info.function)
    kwargs = {}
    if index in ("ms_ssim", "iw_ssim"):
        kwargs["scale_weights"] = torch.tensor(scale_weights(piq_ms_ssim_levels(size)))
    # reference: piq called one image at a time (the per-image value, independent of batch-mates)
    ref = torch.cat([fn(x[i:i + 1], y[i:i + 1], data_range=1.0, reduction="none", **kwargs) for i in range(3)])
    expected = -ref if index == "psnr" else (1 - ref if info.similarity else ref)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)


def test_piq_multiscale_full_size_equals_piq_defaults():
    x, y = images(176, n=2)
    for index, fn in (("ms_ssim", piq.multi_scale_ssim), ("iw_ssim", piq.information_weighted_ssim)):
        ours = create_metric(f"piq.{index}", reduction="none").pairwise(x, y)
        torch.testing.assert_close(ours, 1 - fn(x, y, data_range=1.0, reduction="none"), rtol=1e-4, atol=1e-5)


def test_srsim_does_not_depend_on_batch_mates():
    """piq normalises SR-SIM saliency over the whole batch; percepbench's value is per image."""
    x, y = images(64, n=3)
    alone = create_metric("piq.srsim", reduction="none").pairwise(x[:1], y[:1])
    with_dark_mates = create_metric("piq.srsim", reduction="none").pairwise(
        torch.cat([x[:1], x[1:] * 0.1]), torch.cat([y[:1], y[1:] * 0.1]))
    torch.testing.assert_close(alone[0], with_dark_mates[0])
    batch_value = 1 - piq.srsim(torch.cat([x[:1], x[1:] * 0.1]), torch.cat([y[:1], y[1:] * 0.1]),
                                data_range=1.0, reduction="none")
    assert not torch.isclose(batch_value[0], alone[0]), "piq's batch dependence is gone: drop the workaround"


def test_iw_ssim_flat_image_error_is_clear():
    flat = torch.full((1, 3, 64, 64), 0.5)
    with pytest.raises(ValueError, match="perfectly flat region"):
        create_metric("piq.iw_ssim").pairwise(flat, flat)
