"""Spec of ``mad``: Most Apparent Distortion (Larson & Chandler 2010). Plain data (no torch).

Implementation: :mod:`percepbench.metrics_registry.mad`, which imports the constants below.
"""

from __future__ import annotations

from percepbench.registry import register_metric
from percepbench.specs import InputConvention, MetricSpec

#: block size of the local statistics (blocks overlap by 75 %: stride BLOCK // 4), as in the paper
BLOCK = 16
#: smallest image side: the border of BLOCK px (top/left) and BLOCK + 1 px (bottom/right) that the
#: reference code discards must leave at least one pixel
MIN_SIZE = 2 * BLOCK + 2
CITATION = ("Larson, Chandler. Most apparent distortion: full-reference image quality assessment and the role "
            "of strategy. Journal of Electronic Imaging 19(1), 011006, 2010.")

register_metric(MetricSpec(
    name="mad", target="percepbench.metrics_registry.mad:MAD",
    description=("Most apparent distortion on luma, d(reference, distorted): detection (CSF, contrast masking) and "
                 "appearance (log-Gabor statistics) strategies, adaptively blended"),
    distance="identity (MAD, higher = more distorted)", inputs=InputConvention(min_size=MIN_SIZE),
    reference=("numpy brute-force oracle of the authors' MATLAB code (MAD_index, 2010 beta + the 2011 x200 "
               "factor): rel. 1e-6; vIQA 3.0.1 (other sub-blocks and border): within 3.1%; "
               "pyiqa 0.1.16 follows other conventions (up to 76% apart; tests/test_fr_weight_free.py)"),
    licence="Apache-2.0 (percepbench reimplementation from the paper and the authors' published code)",
    citation=CITATION, precisions=("fp32",),
))
