"""The CUDA path, checked where a CUDA device exists (skipped elsewhere, with the reason).

These tests run on ``PERCEPBENCH_TEST_DEVICE`` when it is set, else on ``cuda``. On a GPU machine,
``PERCEPBENCH_TEST_DEVICE=cuda pytest`` runs them with the rest of the suite (``benchmarks/gpu_check.sh``
does that, then the CUDA rows of the DreamSim speed benchmark). ``PERCEPBENCH_TEST_DEVICE=cpu pytest
tests/test_gpu.py`` runs the same tests on the CPU, to check the tests themselves on a machine without a
GPU. Device placement as such is also checked without a GPU, on the ``meta`` device
(``tests/test_device_placement.py``).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from percepbench import DreamSimMetric, dreamsim
from percepbench.registry import METRICS
from percepbench.weights import usable_offline

from conftest import PYTHON, TEST_DEVICE_GIVEN

DEVICE = torch.device(TEST_DEVICE_GIVEN or "cuda")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(),
                       reason="needs a CUDA device (PERCEPBENCH_TEST_DEVICE=cpu runs these tests on the CPU)"),
]
BASELINE = Path(__file__).resolve().parents[1] / "reports" / "baselines" / "default"


@pytest.fixture(autouse=True)
def _exact_fp32():
    """fp32 comparisons against the CPU without TF32 (cuDNN enables it for convolutions by default)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def random_metric(variant: str, **kwargs) -> DreamSimMetric:
    torch.manual_seed(0)
    return DreamSimMetric(variant=variant, pretrained=False, reduction="none", **kwargs)


def images(n: int = 4, size: tuple[int, int] = (96, 80), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, *size, generator=g), torch.rand(n, 3, *size, generator=g)


@pytest.mark.parametrize("variant", ["dino_vitb16", "ensemble", "dinov2_vitb14_patch"])
def test_metric_on_device_matches_cpu(variant):
    metric = random_metric(variant)
    x, y = images()
    with torch.no_grad():
        ref = metric.pairwise(x, y)
    metric.to(DEVICE)
    assert metric.device.type == DEVICE.type
    assert all(p.device.type == DEVICE.type for p in metric.parameters())
    with torch.no_grad():
        d = metric(x.to(DEVICE), y.to(DEVICE))
        d_cpu_inputs = metric.pairwise(x, y)  # CPU inputs are moved to the metric's device
    assert d.device.type == DEVICE.type and d.shape == (4,)
    torch.testing.assert_close(d.cpu(), ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(d_cpu_inputs.cpu(), ref, atol=1e-4, rtol=1e-4)
    out = metric.compute()
    assert out.device.type == DEVICE.type and out.shape == (4,)


def test_bf16_autocast_on_device():
    metric = random_metric("dino_vitb16").to(DEVICE)
    seen: set[torch.dtype] = set()
    qkv = metric.model.extractor_list[0].model.blocks[0].attn.qkv
    hook = qkv.register_forward_hook(lambda mod, inp, out: seen.add(out.dtype))
    x, y = (t.to(DEVICE) for t in images())
    with torch.no_grad():
        ref = metric.pairwise(x, y)
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            d = metric.pairwise(x, y)
    hook.remove()
    assert seen == {torch.float32, torch.bfloat16}  # the autocast call really ran the attention in bf16
    assert torch.isfinite(d).all()
    torch.testing.assert_close(d.float(), ref, atol=0.03, rtol=0.1)


def test_metric_as_a_loss_on_device():
    """Gradients reach the inputs under bf16 autocast, never the frozen weights; a few Adam steps on an
    image lower its DreamSim distance to a target (the metric used as a training loss)."""
    metric = random_metric("dino_vitb16").to(DEVICE)
    target = images(2)[1].to(DEVICE)
    image = torch.rand(2, 3, 96, 80, device=DEVICE, generator=torch.Generator(DEVICE).manual_seed(1),
                       requires_grad=True)
    opt = torch.optim.Adam([image], lr=0.02)
    losses = []
    for _ in range(6):
        opt.zero_grad()
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            loss = metric(image.clamp(0, 1), target).mean()
        loss.backward()
        assert image.grad is not None and torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0
        assert all(p.grad is None for p in metric.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def test_drop_in_api_on_device():
    model, _ = dreamsim(pretrained=False, dreamsim_type="dino_vitb16", device=DEVICE)
    assert next(model.parameters()).device.type == DEVICE.type
    img = torch.rand(2, 3, 224, 224, device=DEVICE)
    with torch.no_grad():
        assert model.embed(img).shape == (2, 768) and model(img, img).device.type == DEVICE.type


def _metric_pair(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random image and a smooth image plus noise (so structure-based indices see structure)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, size, size, generator=g)
    base = torch.nn.functional.interpolate(torch.rand(2, 3, 8, 8, generator=g), size=(size, size), mode="bilinear")
    return x, (base + 0.05 * torch.randn(2, 3, size, size, generator=g)).clamp(0, 1)


#: every metric but the ViT-L/14 ones: the same wrapper classes as their ViT-B siblings, and slow to build
#: with random weights on the CPU
DEVICE_METRICS = [name for name in METRICS.names() if not name.endswith("vitl14")]


@pytest.mark.slow
@pytest.mark.parametrize("name", DEVICE_METRICS)
def test_every_metric_on_device_matches_cpu(name):
    """Every registered metric (random weights where its files are absent; ViT-L/14 left out, see
    DEVICE_METRICS), the piq wrappers included (which the meta-device check of
    tests/test_device_placement.py leaves out), gives on the device the per-pair distances it gives on the
    CPU."""
    spec = METRICS.get(name)
    torch.manual_seed(0)
    metric = spec.create(reduction="none", **({} if usable_offline(spec) else {"pretrained": False}))
    x, y = _metric_pair(max(64, spec.inputs.min_size))
    with torch.no_grad():
        ref = metric.pairwise(x, y)
        metric.to(DEVICE)
        d = metric.pairwise(x.to(DEVICE), y.to(DEVICE))
    assert d.device.type == DEVICE.type and d.shape == (2,)
    torch.testing.assert_close(d.cpu(), ref, atol=1e-4, rtol=1e-3)


def test_embedding_cache_fingerprint_includes_the_device():
    from percepbench.embed_cache import metric_fingerprint

    metric = random_metric("dino_vitb16")
    on_cpu, _ = metric_fingerprint(metric, None, {})
    on_dev, desc_dev = metric_fingerprint(metric.to(DEVICE), None, {})
    assert desc_dev["device_type"] == DEVICE.type
    assert (on_cpu == on_dev) == (DEVICE.type == "cpu")


@pytest.mark.slow
def test_default_run_on_device_passes_the_committed_baseline(tmp_path):
    """`percepbench run --device DEVICE` on the offline default benchmark, gated by the committed CPU
    baseline (`percepbench compare`): CUDA kernels may move a distance in the last bits, never a verdict
    beyond the gate's tolerance."""
    from percepbench.reports.compare import compare_runs

    env = dict(os.environ, PERCEPBENCH_CACHE=str(tmp_path / "cache"))
    res = subprocess.run([PYTHON, "-m", "percepbench.cli", "run", "--quiet", "--device", str(DEVICE),
                          "--no-report", "-o", str(tmp_path / "run")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr
    comparison = compare_runs(BASELINE, tmp_path / "run")
    assert comparison.exit_code == 0, comparison.to_text()
    assert comparison.new_meta["device"].startswith(DEVICE.type)
    from percepbench.runner import resolve_num_workers

    assert comparison.new_meta["config"]["num_workers"] == resolve_num_workers(None, DEVICE)  # automatic
