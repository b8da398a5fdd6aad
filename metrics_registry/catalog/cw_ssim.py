"""Spec of ``cw_ssim``: complex wavelet SSIM (Sampat, Wang et al. 2009). Plain data (no torch).

Implementation: :mod:`percepbench.metrics_registry.cw_ssim`, which imports the constants below.
"""

from __future__ import annotations

from percepbench.registry import register_metric
from percepbench.specs import InputConvention, MetricSpec

#: pyramid height whose bands are compared, orientations, and the K constant (the reference code's defaults
#: as pyiqa configures them: level 4, 8 orientations, K = 0, no guard band)
LEVEL = 4
ORIENTATIONS = 8
K = 0.0
#: smallest side for a 4-level complex steerable pyramid: matlabPyrTools allows floor(log2(size)) - 2 levels
MIN_SIZE = 2 ** (LEVEL + 2)
CITATION = ("Sampat, Wang, Gupta, Bovik, Markey. Complex wavelet structural similarity: a new image similarity "
            "index. IEEE Transactions on Image Processing 18(11), 2009.")

register_metric(MetricSpec(
    name="cw_ssim", target="percepbench.metrics_registry.cw_ssim:CWSSIM",
    description="Complex wavelet SSIM on luma: complex steerable pyramid, level-4 bands, 8 orientations, K=0",
    distance="1 - CW-SSIM", inputs=InputConvention(min_size=MIN_SIZE),
    reference=("pyiqa 0.1.16 'cw_ssim' (test-only oracle): max abs. diff 1.5e-8 on 8-bit grey images; on colour "
               "images pyiqa rounds luma to 8 bits first (not done here): abs. diff up to 3e-4 "
               "(tests/test_fr_weight_free.py)"),
    licence="Apache-2.0 (percepbench reimplementation from the paper and matlabPyrTools' published definition)",
    citation=CITATION, precisions=("fp32",),
))
