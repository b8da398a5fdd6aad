"""The FLIP spec (``flip``: NVIDIA's LDR-FLIP) and the constants it shares with
:mod:`percepbench.metrics_registry.flip`, where the metric, its sources and what was checked are described.
"""

from __future__ import annotations

import math

from percepbench.registry import register_metric
from percepbench.specs import InputConvention, MetricSpec

CITATION = ("Andersson, Nilsson, Akenine-Möller, Oskarsson, Åström, Fairchild. FLIP: A Difference Evaluator "
            "for Alternating Images. Proc. ACM Comput. Graph. Interact. Tech. (HPG) 3(2), 2020.")


def pixels_per_degree(distance_m: float, width_px: float, width_m: float) -> float:
    """Pixels per degree of visual angle for a viewer ``distance_m`` metres from a display ``width_px``
    pixels and ``width_m`` metres wide (FLIP's small-angle formula: distance * px/m * pi/180)."""
    return distance_m * (width_px / width_m) * math.pi / 180.0


#: FLIP's default viewing conditions: 0.7 m from a 0.7 m wide, 3840 px wide monitor (about 67.02 px/degree)
DEFAULT_PPD = pixels_per_degree(0.7, 3840.0, 0.7)
#: FLIP needs no minimum size: its filters pad by repeating edge pixels (the official tool accepts 1x1 images)
MIN_SIZE = 1
#: tolerance of the parity tests against the official ``flip-evaluator`` (per-image mean FLIP)
ORACLE_ATOL = 1e-4
#: per-pixel tolerance of the error map against the official ``flip-evaluator``
MAP_ATOL = 5e-5

register_metric(MetricSpec(
    name="flip",
    target="percepbench.metrics_registry.flip:FLIP",
    kwargs={"ppd": DEFAULT_PPD},
    description="NVIDIA FLIP for LDR images (sRGB in [0, 1]): mean of the per-pixel FLIP error map, which "
                "combines a CSF-filtered Hunt-adjusted HyAB colour difference with edge and point feature "
                "differences; option ppd= (pixels per degree, default 67.02: 0.7 m from a 0.7 m wide 3840 px "
                "monitor)",
    distance="identity (mean of the FLIP error map, in [0, 1])",
    inputs=InputConvention(min_size=MIN_SIZE),
    reference=(f"official flip-evaluator 1.7 (PyPI, NVlabs/flip C++ core), evaluate(..., 'LDR'): per-image "
               f"mean atol {ORACLE_ATOL:g}, error map atol {MAP_ATOL:g} (tests/test_flip.py)"),
    licence="BSD-3-Clause (FLIP, NVIDIA)",
    citation=CITATION,
    precisions=("fp32",),
))
