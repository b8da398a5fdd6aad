"""``benchmarks/compute_rate.py``: the FLOPs-per-image formula against torch's own FLOP counter.

``torch.utils.flop_counter.FlopCounterMode`` counts the matmuls and the patch convolution of a real forward pass
but not the fused ``scaled_dot_product_attention`` on the CPU; the formula's attention term (two T x T x width
products per block) is added by hand, so the two must agree to the ops the formula leaves out (< 1%).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from compute_rate import flops_per_image, vit_gflop


def test_vit_formula_matches_torch_flop_counter_plus_attention():
    from torch.utils.flop_counter import FlopCounterMode

    from percepbench.models.configs import BACKBONES
    from percepbench.models.dreamsim import build_dreamsim, zero_shot_variant

    model = build_dreamsim(zero_shot_variant("dino_vits16"), pretrained=False, progress=False)
    x = torch.rand(1, 3, 224, 224)
    # with autograd on (no weight requires a gradient, so no graph is kept) every block runs whole: the
    # formula's model FLOPs; without it the last block computes the CLS row only (models/vit.py)
    with FlopCounterMode(display=False) as counter:
        model.embed(x)
    cfg = BACKBONES["dino_vits16"]
    t = (224 // cfg.patch_size) ** 2 + 1
    attention = cfg.depth * 2 * 2 * t * t * cfg.width / 1e9
    assert vit_gflop("dino_vits16") == pytest.approx(counter.get_total_flops() / 1e9 + attention, rel=1e-3)
    with torch.no_grad(), FlopCounterMode(display=False) as scoring:
        model.embed(x)
    d, hidden = cfg.width, 4 * cfg.width
    # the last block skips the output projection and the MLP of the T - 1 patch tokens (its fused qkv layer
    # still computes every token's query, key and value)
    skipped = 2 * (t - 1) * (d * d + 2 * d * hidden) / 1e9
    assert scoring.get_total_flops() / 1e9 == pytest.approx(counter.get_total_flops() / 1e9 - skipped, rel=1e-3)


def test_dreamsim_ensemble_is_three_vit_b16():
    # ViT-B/16 at 224 px: 35.13 GFLOP (17.6 GMAC), so the ensemble is about 105 GFLOP an image (issue 18)
    assert flops_per_image("dino_vitb16") == pytest.approx(35.13, abs=0.01)
    assert flops_per_image("ensemble") == pytest.approx(105.38, abs=0.01)
