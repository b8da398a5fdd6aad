"""The DISTS spec (``dists``) and the weight files it shares with
:mod:`percepbench.metrics_registry.dists`.
"""

from __future__ import annotations

from percepbench.metrics_registry.catalog.lpips import TRUNK_WEIGHTS
from percepbench.registry import register_metric
from percepbench.specs import IMAGENET, InputConvention, MetricSpec, WeightFile

CITATION = ("Ding, Ma, Wang, Simoncelli. Image Quality Assessment: Unifying Structure and Texture Similarity. "
            "IEEE TPAMI 44(5), 2022 (arXiv:2004.07728, 2020).")

#: ``torchmetrics/functional/image/dists_models/weights.pt``: alpha and beta of the official DISTS, with the
#: sha256 of the file in torchmetrics 1.9.0
ALPHA_BETA_WEIGHTS = WeightFile(
    filename="functional/image/dists_models/weights.pt", url="https://pypi.org/project/torchmetrics/1.9.0/",
    sha256="f5e65c96230b7f6ca995691647d482237e4cab8a50c5c4a5784f219ef0748218", cache="package",
    package="torchmetrics", package_version="1.9.0")
VGG16_WEIGHTS = TRUNK_WEIGHTS["vgg"]
#: smallest image side (the five stride-2 stages)
MIN_SIZE = 16


register_metric(MetricSpec(
    name="dists",
    target="percepbench.metrics_registry.dists:DISTSMetric",
    kwargs={"resize": None},
    description="DISTS (VGG16 + L2 pooling, structure and texture terms); option resize='official' "
                "(shorter side to 256 when above 256)",
    distance="identity (DISTS = 1 - weighted structure/texture similarity)",
    inputs=InputConvention(normalization=(IMAGENET,), min_size=MIN_SIZE),
    weights=(VGG16_WEIGHTS, ALPHA_BETA_WEIGHTS),
    reference=("torchmetrics deep_image_structure_and_texture_similarity (parity on a random VGG16 in "
               f"tests/test_dists.py); alpha/beta from torchmetrics' weights.pt sha256 {ALPHA_BETA_WEIGHTS.sha256}; "
               f"trunk: torchvision ImageNet weights {VGG16_WEIGHTS.filename}"),
    licence="MIT (DISTS code and alpha/beta, via torchmetrics, Apache-2.0); trunk weights: torchvision (BSD-3-Clause)",
    citation=CITATION,
))
