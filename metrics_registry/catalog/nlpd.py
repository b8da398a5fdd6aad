"""Spec of ``nlpd``: the normalized Laplacian pyramid distance (Laparra et al. 2016). Plain data (no torch).

Implementation: :mod:`percepbench.metrics_registry.nlpd`, which imports the constants below.
"""

from __future__ import annotations

from percepbench.registry import register_metric
from percepbench.specs import InputConvention, MetricSpec

#: pyramid levels (5 band-pass levels and the low-pass residual), as in the authors' ``NLP_dist.m``
LEVELS = 6
#: smallest image side: 2**(LEVELS - 1), so that each halving down to the 6th level (1 px) is a real one
MIN_SIZE = 2 ** (LEVELS - 1)
CITATION = ("Laparra, Berardino, Balle, Simoncelli. Perceptual image quality assessment using a normalized "
            "Laplacian pyramid. Electronic Imaging (Human Vision and Electronic Imaging) 2016.")

register_metric(MetricSpec(
    name="nlpd", target="percepbench.metrics_registry.nlpd:NLPD",
    description="Normalized Laplacian pyramid distance on luma (6 levels, divisive normalisation fitted by the authors)",
    distance="identity (NLPD, a distance)", inputs=InputConvention(min_size=MIN_SIZE),
    reference=("pyiqa 0.1.16 'nlpd' (test-only oracle): max rel. diff 1.1e-7 with pyiqa's 3x3 first-level "
               "normalisation filter; with the authors' 5x5 filter (default here) within 0.9% (tests/test_fr_weight_free.py)"),
    licence="Apache-2.0 (percepbench reimplementation from the paper and the authors' published parameters)",
    citation=CITATION, precisions=("fp32",),
))
