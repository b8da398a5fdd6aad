"""Every metric computes on its own device, checked without a GPU.

The metric is built on the CPU (random weights where it has any), moved with ``.to("meta")`` and run on
PyTorch's ``meta`` device, where any tensor that stayed on the CPU, or is created there inside the
forward pass, raises "Tensor on device cpu is not on the expected device meta". Those are exactly the bugs
that break the CUDA path (a constant made with ``torch.tensor(...)`` and no ``device=``, a plain tensor
attribute instead of a registered buffer, a stray ``.cpu()``), so this catches them on a CPU-only machine.
The CUDA numbers themselves are checked by ``tests/test_gpu.py`` where a GPU exists.
"""

from __future__ import annotations

import pytest
import torch

from percepbench.registry import METRICS
from percepbench.weights import usable_offline

# piq validates inputs with data-dependent checks (``.item()``): fine on CUDA, impossible on ``meta``
NAMES = [s.name for s in METRICS.specs() if not s.name.startswith("piq.")]


def build(name: str, **kwargs):
    spec = METRICS.get(name)
    if not usable_offline(spec):
        kwargs["pretrained"] = False
    torch.manual_seed(0)
    return spec.create(**kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_metric_runs_entirely_on_its_device(name):
    metric = build(name, reduction="none").to("meta")
    assert metric.device.type == "meta"
    assert all(t.device.type == "meta" for t in [*metric.parameters(), *metric.buffers()])
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)  # CPU inputs are moved to the metric's device
    d = metric.pairwise(x, y)
    assert d.device.type == "meta" and d.shape == (2,)
    metric.update(x, y)
    assert metric.compute().device.type == "meta"
    if metric.embeds:
        e = metric.embed_images(x)
        assert e.device.type == "meta" and e.ndim == 2
        assert metric.embedding_distance(e, e).device.type == "meta"


def test_the_check_catches_a_cpu_constant():
    """The premise of this file: a CPU tensor made inside forward fails on ``meta``."""
    from percepbench.metrics_registry.base import DistanceMetric

    class CpuConstant(DistanceMetric):
        def distance(self, preds, target):
            weight = torch.tensor([0.3, 0.6, 0.1]).view(1, 3, 1, 1)  # no device=: a CUDA bug
            return ((preds - target) * weight).abs().flatten(1).mean(1)

    metric = CpuConstant(reduction="none")
    metric.pairwise(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))  # fine on the CPU
    with pytest.raises(RuntimeError, match="not on the expected device meta"):
        metric.to("meta").pairwise(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))


@pytest.mark.parametrize("variant", ["ensemble", "dino_vitb16_patch", "dinov2_vitb14_patch", "clip_vitb32"])
def test_dreamsim_model_api_on_device(variant):
    """The drop-in model: ``embed`` and ``forward`` stay on the model's device (official shapes)."""
    from percepbench.models.dreamsim import DreamSimModel

    model = DreamSimModel(variant).eval().to("meta")
    img = torch.rand(3, 3, 224, 224, device="meta")
    assert model(img, img).shape == (3,) and model(img, img).device.type == "meta"
    assert model.embed_pooled(img).device.type == "meta"
