"""Specs of the weight-free classical metrics: ``psnr``, ``ssim``, ``ms_ssim`` (torchmetrics) and
``piq.<index>``; the implementations and the distance conversions are in
:mod:`percepbench.metrics_registry.classical`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from percepbench.registry import register_metric
from percepbench.specs import InputConvention, MetricSpec

FP32_ONLY = ("fp32",)  # the precisions every metric of this module computes in (module docstring)


@dataclass(frozen=True)
class _PiqIndex:
    function: str
    similarity: bool  # True: distance = 1 - value (or -value for psnr)
    min_size: int
    per_image: bool = False  # piq normalises over the whole batch: call it one image at a time
    kwargs: tuple[tuple[str, Any], ...] = ()


# name -> piq function, direction and the smallest image side piq 0.8 accepts (found by scanning sizes;
# tests/test_classical.py checks each bound)
PIQ_INDICES: dict[str, _PiqIndex] = {
    "psnr": _PiqIndex("psnr", True, 1),
    "ssim": _PiqIndex("ssim", True, 11),
    "ms_ssim": _PiqIndex("multi_scale_ssim", True, 11),
    "iw_ssim": _PiqIndex("information_weighted_ssim", True, 11),
    "vif": _PiqIndex("vif_p", True, 41),
    "fsim": _PiqIndex("fsim", True, 2),
    "srsim": _PiqIndex("srsim", True, 40, per_image=True),
    "gmsd": _PiqIndex("gmsd", False, 1),
    "ms_gmsd": _PiqIndex("multi_scale_gmsd", False, 17),
    "vsi": _PiqIndex("vsi", True, 1),
    "dss": _PiqIndex("dss", True, 32),
    "haarpsi": _PiqIndex("haarpsi", True, 16),
    "mdsi": _PiqIndex("mdsi", False, 1),
}


_TM_CITE_SSIM = "Wang, Bovik, Sheikh, Simoncelli. Image quality assessment: from error visibility to structural similarity. IEEE TIP 2004."
_TM_CITE_MSSSIM = "Wang, Simoncelli, Bovik. Multiscale structural similarity for image quality assessment. Asilomar 2003."
_PIQ_CITE = "Kastryulin et al. PyTorch Image Quality: metrics for image quality assessment. 2022 (piq)."

_MODULE = "percepbench.metrics_registry.classical"

register_metric(MetricSpec(
    name="psnr", target=f"{_MODULE}:PSNR",
    description="Peak signal-to-noise ratio per image, as -PSNR (dB)",
    distance="-PSNR (dB); MSE floored at 1e-10",
    reference="torchmetrics.functional.peak_signal_noise_ratio(data_range=1, dim=(1,2,3)); skimage.metrics.peak_signal_noise_ratio",
    licence="Apache-2.0 (torchmetrics)", citation="", precisions=FP32_ONLY,
))
register_metric(MetricSpec(
    name="ssim", target=f"{_MODULE}:SSIM",
    description="Structural similarity (Gaussian 11x11, sigma 1.5, valid region), mean over RGB channels",
    distance="1 - SSIM", inputs=InputConvention(min_size=11),
    reference="skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1); torchmetrics SSIM map (border excluded)",
    licence="Apache-2.0 (torchmetrics)", citation=_TM_CITE_SSIM, precisions=FP32_ONLY,
))
register_metric(MetricSpec(
    name="ms_ssim", target=f"{_MODULE}:MSSSIM",
    description="Multi-scale SSIM; fewer scales (renormalised weights) on images under 176 px",
    distance="1 - MS-SSIM", inputs=InputConvention(min_size=11),
    reference="torchmetrics.functional.multiscale_structural_similarity_index_measure(data_range=1)",
    licence="Apache-2.0 (torchmetrics)", citation=_TM_CITE_MSSSIM, precisions=FP32_ONLY,
))

_PIQ_DESCRIPTIONS = {
    "psnr": "piq PSNR, as -PSNR (dB)",
    "ssim": "piq SSIM (downsamples images larger than 256 px, as piq does)",
    "ms_ssim": "piq multi-scale SSIM; fewer scales on images under 161 px",
    "iw_ssim": "piq information-weighted SSIM; fewer scales on images under 161 px",
    "vif": "piq visual information fidelity in the pixel domain (VIFp)",
    "fsim": "piq feature similarity index (FSIMc, chromatic)",
    "srsim": "piq spectral-residual similarity",
    "gmsd": "piq gradient magnitude similarity deviation",
    "ms_gmsd": "piq multi-scale GMSD",
    "vsi": "piq visual saliency-induced index",
    "dss": "piq DCT subband similarity",
    "haarpsi": "piq Haar wavelet-based perceptual similarity",
    "mdsi": "piq mean deviation similarity index",
}

#: inputs where piq's gradient is NaN (measured on piq 0.8 with random 64x64 images and a flat grey one):
#: the square roots and divisions of gradient-magnitude indices at zero difference or zero gradient
_PIQ_NAN_GRADIENT = {
    "gmsd": "identical images, flat images", "ms_gmsd": "identical images, flat images",
    "mdsi": "identical images, flat images", "fsim": "flat images", "srsim": "flat images",
    "vsi": "flat images", "dss": "flat images",
}

for _index, _info in PIQ_INDICES.items():
    _dist = "identity (already a distance)" if not _info.similarity else (
        "-PSNR (dB)" if _index == "psnr" else f"1 - {_index.upper()}")
    register_metric(MetricSpec(
        name=f"piq.{_index}", target=f"{_MODULE}:PiqDistance", kwargs={"index": _index},
        description=_PIQ_DESCRIPTIONS[_index], distance=_dist,
        inputs=InputConvention(min_size=_info.min_size),
        reference=f"piq.{_info.function}(data_range=1, reduction='none')",
        licence="Apache-2.0 (piq)", citation=_PIQ_CITE, precisions=FP32_ONLY,
        nan_gradient=_PIQ_NAN_GRADIENT.get(_index, ""),
    ))
