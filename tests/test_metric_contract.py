"""The metric contract, checked for every registered metric, and each input-validation rule."""

from __future__ import annotations

import socket

import pytest
import torch
import torchmetrics

from percepbench import create_metric
from percepbench.metrics_registry.base import DistanceMetric
from percepbench.registry import METRICS
from percepbench.specs import MetricSpec
from percepbench.weights import usable_offline

ALL = METRICS.names()


def _size(spec: MetricSpec) -> int:
    return max(48, spec.inputs.min_size)


def offline_kwargs(spec: MetricSpec) -> dict:
    """Metrics with weight files build with random weights (``pretrained=False``) when those are absent."""
    return {} if usable_offline(spec) else {"pretrained": False}


def _pair(spec: MetricSpec, n: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = _size(spec)
    x = torch.rand(n, 3, s, s, generator=g)
    # a smooth image plus noise, so structure-based indices see structure
    base = torch.nn.functional.interpolate(torch.rand(n, 3, 8, 8, generator=g), size=(s, s), mode="bilinear")
    y = (base + 0.05 * torch.randn(n, 3, s, s, generator=g)).clamp(0, 1)
    return x, y, base.clamp(0, 1)


@pytest.fixture(scope="module", autouse=True)
def _free_heavy_metrics():
    yield
    _heavy_cache.clear()


#: d(x, x), from each metric's definition: 0 for 1 - similarity index, 1 - cosine, LPIPS, DISTS and the
#: deviation indices (GMSD, MS-GMSD, MDSI); -PSNR at the MSE floor: 10 log10(1 / 1e-10) = 100 dB for
#: percepbench's PSNR, 10 log10(1 / 1e-8) = 80 dB for piq's (its ``eps``)
SELF_DISTANCE = {
    **dict.fromkeys(["ssim", "ms_ssim", "lpips.alex", "lpips.vgg", "lpips.squeeze", "dists"], 0.0),
    **dict.fromkeys([f"piq.{index}" for index in ("ssim", "ms_ssim", "iw_ssim", "vif", "fsim", "srsim", "vsi",
                                                  "dss", "haarpsi", "gmsd", "ms_gmsd", "mdsi")], 0.0),
    **dict.fromkeys(["dino.vits8", "dino.vits16", "dino.vitb8", "dino.vitb16", "dinov2.vitb14", "synclr.vitb16",
                     "clip.vitb16", "clip.vitb32", "clip.vitl14", "open_clip.vitb16", "open_clip.vitb32",
                     "open_clip.vitl14", "mae.vitb16"], 0.0),
    **dict.fromkeys([f"dreamsim.{v}" for v in ("ensemble", "dino_vitb16", "dino_vitb16_patch", "clip_vitb32",
                                               "open_clip_vitb32", "dinov2_vitb14", "dinov2_vitb14_patch",
                                               "synclr_vitb16")], 0.0),
    "stlpips.alex": 0.0, "stlpips.vgg": 0.0,  # LPIPS-style: identical features give zero differences
    "pieapp": 0.0,  # with random weights (pretrained=False: file absent), built so that d(x, x) = 0; the
    #               released weights give a learned constant instead (ref_score_subtract)
    "psnr": -100.0,
    # NLPD and MAD take sqrt(mean + 1e-20) for finite gradients: d(x, x) is 1e-10 and ~1.6e-8 (within atol)
    "nlpd": 0.0,
    "cw_ssim": 0.0,
    "mad": 0.0,
    "piq.psnr": -80.0,
    "flip": 0.0,  # the FLIP error map of identical images is 0 everywhere
}


#: metrics that score a distortion below their visibility threshold 0 by definition (MAD's detection stage
#: masks the contract's mild noise on a busy image, as the authors' code does): compared with an unrelated image
THRESHOLDED = {"mad"}
#: metrics whose d(x, x) with the released weights is a learned constant rather than SELF_DISTANCE's value
LEARNED_SELF_DISTANCE = {"pieapp"}


def test_every_registered_metric_is_covered():
    """The contract below runs over exactly the built-in metrics, each with its known d(x, x)."""
    assert sorted(SELF_DISTANCE) == sorted(ALL)


@pytest.mark.parametrize("name", ALL)
def test_spec_is_valid(name):
    spec = METRICS.get(name)
    assert spec.description and spec.target and spec.distance
    assert spec.higher_is_better is False
    assert spec.inputs.value_range == (0.0, 1.0)
    assert spec.inputs.min_size >= 1
    d = spec.to_dict()
    assert d["name"] == name and isinstance(d["kwargs"], dict)


def make(spec: MetricSpec, **kwargs):
    torch.manual_seed(0)  # metrics built with random weights are reproducible
    options = offline_kwargs(spec)
    metric = spec.create(**options, **kwargs)
    if options.get("pretrained") is False:
        _undamp_layer_scale(metric)
    return metric


def _undamp_layer_scale(metric: torch.nn.Module) -> None:
    """timm starts LayerScale at 1e-5: with random weights the blocks then barely touch a DINOv2 CLS token,
    and every distance is ~0 whatever the images. Scales of 1 make random-weight outputs depend on them."""
    from timm.layers import LayerScale

    with torch.no_grad():
        for module in metric.modules():
            if isinstance(module, LayerScale):
                module.gamma.fill_(1.0)


#: ViT-L/14 metrics: the same wrapper class as their ViT-B siblings, ~4x the CPU time per image. They run
#: the whole contract on one pair per call and are built once for both tests that need them.
HEAVY = {name for name in ALL if name.endswith("vitl14")}
_heavy_cache: dict[str, DistanceMetric] = {}


def make_for_contract(spec: MetricSpec) -> DistanceMetric:
    if spec.name not in HEAVY:
        return make(spec, reduction="none")
    if spec.name not in _heavy_cache:
        _heavy_cache[spec.name] = make(spec, reduction="none")  # ~1.2 GB each; freed at the end of the module
    metric = _heavy_cache[spec.name]
    metric.reset()
    return metric


@pytest.mark.parametrize("name", ALL)
def test_contract(name):
    spec = METRICS.get(name)
    metric = make_for_contract(spec)
    assert isinstance(metric, DistanceMetric) and isinstance(metric, torchmetrics.Metric)
    assert metric.higher_is_better is False and metric.full_state_update is False
    assert metric.spec is spec
    n = 1 if name in HEAVY else 2 if metric.embeds else 3  # network metrics: keep CPU time down
    x, y, smooth = _pair(spec, n=n)

    d = metric.pairwise(x, y)
    assert d.shape == (n,) and torch.isfinite(d).all()

    # lower = more similar: an image is at its definitional floor from itself, closer than to another image
    d_self = metric.pairwise(smooth, smooth)
    d_other = metric.pairwise(smooth, x if name in THRESHOLDED else y)
    if name in LEARNED_SELF_DISTANCE and usable_offline(spec):  # real weights: a learned constant, whatever x is
        torch.testing.assert_close(d_self, torch.full((n,), float(d_self[0])), rtol=0, atol=1e-4)
    else:
        torch.testing.assert_close(d_self, torch.full((n,), SELF_DISTANCE[name]), rtol=0, atol=1e-5)
    assert (d_other > d_self + 1e-5).all(), (d_self, d_other)

    # uint8 input == float input / 255
    xu = (x * 255).round().to(torch.uint8)
    yu = (y * 255).round().to(torch.uint8)
    torch.testing.assert_close(metric.pairwise(xu, yu), metric.pairwise(xu.float() / 255, yu.float() / 255))

    # per-pair values accumulate over updates (mean/sum reductions: test_reductions, in the base class)
    assert type(metric).compute is DistanceMetric.compute
    metric.update(x[:1], y[:1])
    if n > 1:
        metric.update(x[1:], y[1:])
    torch.testing.assert_close(metric.compute(), d, rtol=1e-4, atol=1e-5)
    metric.reset()
    assert metric.distances == []

    # .to(device) and .train() keep the metric usable and any networks frozen
    metric = metric.to("cpu").train()
    for module in metric._frozen:
        assert not module.training
    assert all(not p.requires_grad for p in metric.parameters())


@pytest.mark.parametrize("name", ALL)
def test_min_size_bound(name):
    spec = METRICS.get(name)
    metric = make_for_contract(spec)
    s = spec.inputs.min_size
    assert metric.min_size == s, "spec and metric disagree on the minimum size"
    g = torch.Generator().manual_seed(1)
    n = 1 if name in HEAVY else 2
    x, y = torch.rand(n, 3, s, s, generator=g), torch.rand(n, 3, s, s, generator=g)
    assert metric.pairwise(x, y).shape == (n,)
    if s > 1:
        with pytest.raises(ValueError, match=f"needs at least {s}x{s}"):
            metric.pairwise(x[..., :-1, :-1], y[..., :-1, :-1])


@pytest.mark.parametrize("name", ["psnr", "ssim", "ms_ssim", "piq.fsim", "piq.gmsd"])
def test_differentiable_wrt_inputs(name):
    spec = METRICS.get(name)
    metric = create_metric(name, reduction="mean")
    x, y, _ = _pair(spec, n=2)
    x = x.clone().requires_grad_(True)
    loss = metric(x, y)
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_reductions():
    from helpers_metrics import MeanAbs

    x, y = torch.rand(5, 3, 8, 8), torch.rand(5, 3, 8, 8)
    expected = (x - y).abs().flatten(1).mean(1)
    for reduction, value in (("none", expected), ("mean", expected.mean()), ("sum", expected.sum())):
        m = MeanAbs(reduction=reduction)
        m.update(x[:2], y[:2])
        m.update(x[2:], y[2:])
        torch.testing.assert_close(m.compute(), value)
        batch = m(x[:2], y[:2])  # forward: this batch's value, state kept
        torch.testing.assert_close(batch, {"none": expected[:2], "mean": expected[:2].mean(),
                                           "sum": expected[:2].sum()}[reduction])
    # torchmetrics squeezes one-element results to 0-d; per-pair values keep their shape (N,) = (1,)
    one = MeanAbs(reduction="none")
    assert one(x[:1], y[:1]).shape == (1,) and one.compute().shape == (1,)
    assert MeanAbs(reduction="mean")(x[:1], y[:1]).shape == ()


def test_mean_as_a_training_loss_keeps_constant_memory():
    """Used as a loss for many steps, mean/sum keep two numbers (no growing list, no retained graphs)."""
    from helpers_metrics import WithNet

    torch.manual_seed(0)
    metric = WithNet(reduction="mean")
    seen = []
    for _ in range(50):
        x = torch.rand(4, 3, 8, 8, requires_grad=True)
        y = torch.rand(4, 3, 8, 8)
        loss = metric(x, y)
        loss.backward()
        assert x.grad is not None and loss.dtype == torch.float32
        seen.append(metric.pairwise(x.detach(), y))
    assert metric.pairs == 200 and metric.distance_sum.dtype == torch.float32
    assert metric.distance_sum.grad_fn is None  # no autograd graph kept from earlier steps
    assert {k for k, v in metric.metric_state.items()} == {"distance_sum", "pairs"}
    assert all(v.numel() == 1 for v in metric.metric_state.values())
    torch.testing.assert_close(metric.compute(), torch.cat(seen).mean())
    metric.reset()
    assert metric.pairs == 0 and metric.distance_sum == 0


def test_frozen_network_stays_in_eval_mode():
    from helpers_metrics import WithNet

    metric = WithNet(reduction="none")
    parent = torch.nn.Module()
    parent.metric = metric
    parent.train()
    assert metric.training and not metric.net.training
    assert all(not p.requires_grad for p in metric.net.parameters())
    x = torch.rand(2, 3, 16, 16)
    # dropout inactive: identical results on repeated calls in train mode
    torch.testing.assert_close(metric.pairwise(x, x.flip(-1)), metric.pairwise(x, x.flip(-1)))


# ---------------------------------------------------------------------------------------------
# Input validation: each rule raises ValueError naming the problem
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def psnr():
    return create_metric("psnr", reduction="none")


@pytest.mark.parametrize(
    ("preds", "target", "message"),
    [
        (torch.rand(3, 8, 8), torch.rand(3, 8, 8), "expected a 4-D NCHW batch, got shape \\(3, 8, 8\\).*unsqueeze"),
        (torch.rand(1, 1, 3, 8, 8), torch.rand(1, 1, 3, 8, 8), "expected a 4-D NCHW batch"),
        (torch.rand(2, 4, 8, 8), torch.rand(2, 4, 8, 8), "expected 3 RGB channels in dim 1 \\(NCHW\\), got 4"),
        (torch.rand(2, 8, 8, 3), torch.rand(2, 8, 8, 3), "got 8 \\(channels-last\\?"),
        (torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 9), "same shape, got \\(2, 3, 8, 8\\) and \\(2, 3, 8, 9\\)"),
        (torch.rand(0, 3, 8, 8), torch.rand(0, 3, 8, 8), "empty batch"),
        (torch.rand(2, 3, 8, 8) * 255, torch.rand(2, 3, 8, 8), "must lie in \\[0, 1\\].*uint8"),
        (torch.rand(2, 3, 8, 8) - 0.5, torch.rand(2, 3, 8, 8), "must lie in \\[0, 1\\]"),
        (torch.full((1, 3, 8, 8), float("nan")), torch.rand(1, 3, 8, 8), "NaN or Inf"),
        (torch.full((1, 3, 8, 8), float("inf")), torch.rand(1, 3, 8, 8), "NaN or Inf"),
        (torch.randint(0, 255, (1, 3, 8, 8)), torch.randint(0, 255, (1, 3, 8, 8)), "dtype torch.int64"),
        (torch.rand(1, 3, 8, 8).numpy(), torch.rand(1, 3, 8, 8), "expected a torch.Tensor, got ndarray"),
    ],
)
def test_validation_rules(psnr, preds, target, message):
    with pytest.raises(ValueError, match=message):
        psnr.update(preds, target)
    assert psnr.distances == []  # nothing half-recorded


def test_target_is_validated_too(psnr):
    with pytest.raises(ValueError, match=r"^target: contains NaN"):
        psnr.pairwise(torch.rand(1, 3, 8, 8), torch.full((1, 3, 8, 8), float("nan")))


def test_grayscale_expanded_where_documented(psnr):
    g = torch.rand(2, 1, 16, 16)
    h = torch.rand(2, 1, 16, 16)
    torch.testing.assert_close(psnr.pairwise(g, h), psnr.pairwise(g.expand(-1, 3, -1, -1), h.expand(-1, 3, -1, -1)))


def test_grayscale_rejected_where_documented():
    from helpers_metrics import MeanAbs

    class NoGray(MeanAbs):
        grayscale = "reject"

    with pytest.raises(ValueError, match="grayscale input \\(C=1\\) is not accepted"):
        NoGray().update(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))


def test_small_float_overshoot_is_tolerated(psnr):
    x = torch.rand(1, 3, 8, 8)
    assert torch.isfinite(psnr.pairwise(x + 5e-5, x)).all()


def test_bad_reduction():
    with pytest.raises(ValueError, match="reduction must be"):
        create_metric("psnr", reduction="median")


# ---------------------------------------------------------------------------------------------
# DDP: per-pair states gather across processes (gloo, 2 CPU processes)
# ---------------------------------------------------------------------------------------------
def _ddp_worker(rank: int, world: int, port: int, queue) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        x, y = torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16)
        metric = create_metric("psnr", reduction="none")
        metric.update(x[rank * 2:(rank + 1) * 2], y[rank * 2:(rank + 1) * 2])
        gathered = metric.compute()
        mean_metric = create_metric("psnr", reduction="mean")
        mean_metric.update(x[rank * 2:(rank + 1) * 2], y[rank * 2:(rank + 1) * 2])
        queue.put((rank, sorted(gathered.tolist()), float(mean_metric.compute())))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_states_sync_under_ddp():
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    torch.manual_seed(0)
    x, y = torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16)
    expected = create_metric("psnr", reduction="none").pairwise(x, y)
    for _, values, mean in results:
        assert values == pytest.approx(sorted(expected.tolist()), abs=1e-5)
        assert mean == pytest.approx(float(expected.mean()), abs=1e-5)
