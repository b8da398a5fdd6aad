"""ST-LPIPS (metrics_registry/stlpips.py): parity with the authors' package ``stlpips-pytorch`` 0.0.2 on
random weights (served over HTTP in the released key layout) and on the released weights that its wheel
ships; the recorded sha256 against the wheel's files; strict loading; offline error; the blur pool against
a numpy computation."""

from __future__ import annotations

import dataclasses
import hashlib
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from percepbench import create_metric
from percepbench.download import sha256_file, sha256_sidecar
from percepbench.errors import OfflineError, WeightsError
from percepbench.images import load_rgb, pil_to_tensor
from percepbench.metrics_registry import stlpips as sl
from percepbench.metrics_registry.catalog import stlpips as catalog
from percepbench.registry import METRICS
from percepbench.specs import WeightFile

from conftest import SHARED_FIXTURES


@pytest.fixture(scope="module")
def package():
    """The authors' ``stlpips_pytorch.stlpips`` module. Its modules import ``IPython`` (``embed``) and
    ``torchsummary`` (``summary``) at the top without declaring them and never call them on the metric's
    path; stand-ins are registered for the import when those packages are absent."""
    pytest.importorskip("stlpips_pytorch")
    added = []
    for name, attr in (("IPython", "embed"), ("torchsummary", "summary")):
        try:
            __import__(name)
        except ImportError:
            stub = types.ModuleType(name)
            setattr(stub, attr, lambda *args, **kwargs: None)
            sys.modules[name] = stub
            added.append(name)
    try:
        from stlpips_pytorch import stlpips
    finally:
        for name in added:
            sys.modules.pop(name, None)
    return stlpips


def official(package, net: str, pretrained: bool) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return package.LPIPS(net=net, variant="shift_tolerant", pretrained=pretrained, verbose=False).eval()


def released_layout(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The package model's state in the released files' layout: its ``lins.<k>`` aliases of ``lin<k>`` are
    not in those files."""
    return {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("lins.")}


def wheel_file(net: str) -> Path:
    import stlpips_pytorch

    return Path(stlpips_pytorch.__file__).parent / "weights" / "vST0.0" / f"{net}_shift_tolerant.pth"


def images(n: int = 2, size: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g)
    y = (x + 0.2 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)
    return x, y


def serve(server, monkeypatch, tmp_path, net: str, state: dict[str, torch.Tensor]) -> WeightFile:
    """Serve ``state`` as the released file of ``net`` and point the spec's WeightFile at it (its sha256)."""
    file = tmp_path / f"{net}_served.pth"
    torch.save(state, file)
    url = server.add(f"{net}_shift_tolerant.pth", file.read_bytes())
    weight = dataclasses.replace(catalog.WEIGHTS[net], url=url, sha256=sha256_file(file), size=file.stat().st_size)
    monkeypatch.setitem(catalog.WEIGHTS, net, weight)
    return weight


# ----------------------------------------------------------------------------------------------- registry


def test_names_default_and_spec():
    assert METRICS.resolve("stlpips") == "stlpips.alex"
    for net in catalog.NETS:
        spec = METRICS.get(f"stlpips.{net}")
        assert dict(spec.kwargs) == {"net": net}
        assert spec.weights == (catalog.WEIGHTS[net],)
        assert spec.inputs.min_size == catalog.MIN_SIZE[net]
        assert catalog.WEIGHTS[net].sha256 in spec.reference and "BSD-2-Clause" in spec.licence
        assert catalog.COMMIT in catalog.WEIGHTS[net].url
    with pytest.raises(ValueError, match="unknown ST-LPIPS network 'squeeze'"):
        sl.STLPIPSMetric(net="squeeze", pretrained=False)


def test_recorded_sha256_and_size_are_the_authors_wheel_files(package):
    for net in catalog.NETS:
        path = wheel_file(net)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == catalog.WEIGHTS[net].sha256
        assert path.stat().st_size == catalog.WEIGHTS[net].size


def test_blur_pool_matches_numpy():
    # reflection pad 2, [1 2 1]^T [1 2 1] / 16 depthwise, stride 2: computed independently with numpy
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 2, 9, 12, generator=g)
    a = x[0].numpy().astype(np.float64)
    padded = np.pad(a, ((0, 0), (2, 2), (2, 2)), mode="reflect")
    k = np.outer([1, 2, 1], [1, 2, 1]) / 16.0
    rows, cols = (padded.shape[1] - 3) // 2 + 1, (padded.shape[2] - 3) // 2 + 1
    expected = np.zeros((2, rows, cols))
    for c in range(2):
        for i in range(rows):
            for j in range(cols):
                expected[c, i, j] = (padded[c, 2 * i:2 * i + 3, 2 * j:2 * j + 3] * k).sum()
    got = sl.BlurPool(2)(x)[0].double().numpy()
    assert got.shape == (2, 6, 7)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_blur_pool_is_shift_equivariant_for_even_shifts():
    # away from the borders, shifting the input by 2 px shifts the output by exactly 1 px
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 1, 32, 32, generator=g)
    pool = sl.BlurPool(1)
    out, shifted = pool(x), pool(torch.roll(x, shifts=2, dims=3))
    torch.testing.assert_close(shifted[..., 2:-2, 3:-2], out[..., 2:-2, 2:-3], rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("net", catalog.NETS)
def test_parity_with_the_authors_package_on_random_weights_served_over_http(net, package, weights_env, server,
                                                                              monkeypatch, tmp_path):
    torch.manual_seed(3)
    ref = official(package, net, pretrained=False)
    with torch.no_grad():  # non-negative heads, like trained ones
        for k in range(5):
            w = getattr(ref, f"lin{k}").model[1].weight
            w.copy_(w.abs())
    serve(server, monkeypatch, tmp_path, net, released_layout(ref))
    metric = sl.STLPIPSMetric(net=net, reduction="none")  # pretrained: downloads, checks sha256, loads
    dest = weights_env / catalog.WEIGHTS[net].filename
    assert dest.is_file() and sha256_sidecar(dest).is_file()
    assert [r["path"] for r in server.requests] == [f"/{net}_shift_tolerant.pth"]
    assert metric.weight_files_used is None  # the spec's file was used
    x, y = images(size=40)
    expected = ref(x, y, normalize=True).reshape(-1).detach()
    got = metric(x, y)
    assert got.shape == (2,) and (got > 0).all()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    sl.STLPIPSMetric(net=net)  # second time: verified in the cache, no request
    assert len(server.requests) == 1


def test_spatial_map_matches_the_package_spatial_mode(package, tmp_path):
    torch.manual_seed(4)
    ref = official(package, "alex", pretrained=False)
    file = tmp_path / "alex.pth"
    torch.save(released_layout(ref), file)
    ours = sl.STLPIPSMetric(net="alex", weights_file=file, spatial=True, reduction="none")
    assert ours.weight_files_used == []
    x, y = images(size=48)
    ref.spatial = True
    expected = ref(2 * x - 1, 2 * y - 1).detach()
    got = ours.spatial_map(x, y)
    assert got.shape == (2, 1, 48, 48)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    ours.pairwise(x, y)
    torch.testing.assert_close(ours.last_spatial_map, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("net", catalog.NETS)
def test_released_weights_match_the_package_on_the_example_images(net, package):
    """The released file as shipped in the authors' wheel (sha256 = the recorded one), loaded strictly by
    percepbench, against the package's own pretrained model on the LPIPS example images."""
    ref = official(package, net, pretrained=True)
    ours = sl.STLPIPSMetric(net=net, weights_file=wheel_file(net), reduction="none")
    folder = SHARED_FIXTURES / "lpips"
    img_ref, p0, p1 = (pil_to_tensor(load_rgb(folder / f"ex_{n}.png"))[None].float() / 255
                       for n in ("ref", "p0", "p1"))
    for other in (p0, p1):
        expected = ref(img_ref, other, normalize=True).reshape(-1).detach()
        got = ours(img_ref, other)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        assert got.item() > 0
    # the property ST-LPIPS was trained for, on these images: a 1-px shift of the reference is much closer
    # to it than either distorted version
    shifted = torch.cat([img_ref[..., :, 1:], img_ref[..., :, -1:]], dim=-1)
    assert ours(img_ref, shifted).item() < 0.5 * min(ours(img_ref, p0).item(), ours(img_ref, p1).item())


# ------------------------------------------------------------------------------------------ strict loading


@pytest.fixture(scope="module")
def alex_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return dict(sl.STLPIPSNetwork("alex").state_dict())


def test_missing_key_fails_naming_the_file(alex_state, tmp_path):
    state = dict(alex_state)
    del state["lin4.model.1.weight"]
    bad = tmp_path / "st_missing.pth"
    torch.save(state, bad)
    with pytest.raises(WeightsError, match=r"st_missing\.pth.*missing keys \['lin4\.model\.1\.weight'\]"):
        sl.STLPIPSMetric(net="alex", weights_file=bad)


def test_unexpected_key_fails_naming_the_file(alex_state, tmp_path):
    # e.g. the package's own state_dict, which also lists the heads as lins.<k>
    state = {**alex_state, "lins.0.model.1.weight": alex_state["lin0.model.1.weight"]}
    bad = tmp_path / "st_extra.pth"
    torch.save(state, bad)
    with pytest.raises(WeightsError, match=r"st_extra\.pth.*unexpected keys \['lins\.0\.model\.1\.weight'\]"):
        sl.STLPIPSMetric(net="alex", weights_file=bad)


def test_vgg_file_for_alex_fails(tmp_path):
    torch.manual_seed(0)
    bad = tmp_path / "vgg_as_alex.pth"
    torch.save(sl.STLPIPSNetwork("vgg").state_dict(), bad)
    with pytest.raises(WeightsError, match=r"vgg_as_alex\.pth: not a valid ST-LPIPS alex"):
        sl.STLPIPSMetric(net="alex", weights_file=bad)


def test_other_blur_filter_or_scaling_fails(alex_state, tmp_path):
    state = dict(alex_state)
    state["net.slice2.4.filt"] = torch.full_like(state["net.slice2.4.filt"], 1 / 9)  # a box filter
    bad = tmp_path / "st_box.pth"
    torch.save(state, bad)
    with pytest.raises(WeightsError, match=r"st_box\.pth.*net\.slice2\.4\.filt.*binomial blur filter"):
        sl.STLPIPSMetric(net="alex", weights_file=bad)
    state = {**alex_state, "scaling_layer.scale": torch.ones(1, 3, 1, 1)}
    torch.save(state, bad)
    with pytest.raises(WeightsError, match=r"scaling_layer\.scale.*LPIPS input scaling"):
        sl.STLPIPSMetric(net="alex", weights_file=bad)


def test_missing_user_file_fails(tmp_path):
    with pytest.raises(WeightsError, match=r"ST-LPIPS weight file .*nothere\.pth does not exist"):
        sl.STLPIPSMetric(net="alex", weights_file=tmp_path / "nothere.pth")


def test_download_failing_sha256_is_an_error_and_not_kept(alex_state, weights_env, server, monkeypatch,
                                                          tmp_path):
    weight = serve(server, monkeypatch, tmp_path, "alex", alex_state)
    monkeypatch.setitem(catalog.WEIGHTS, "alex", dataclasses.replace(weight, sha256="0" * 64))
    with pytest.raises(WeightsError, match=r"alex_shift_tolerant\.pth"):
        sl.STLPIPSMetric(net="alex")
    assert not (weights_env / catalog.WEIGHTS["alex"].filename).exists()


# --------------------------------------------------------------------------------------- offline, random


def test_offline_error_names_path_and_url(monkeypatch, tmp_path):
    monkeypatch.setenv("PERCEPBENCH_OFFLINE", "1")
    monkeypatch.setenv("PERCEPBENCH_CACHE", str(tmp_path / "cache"))
    with pytest.raises(OfflineError) as info:
        create_metric("stlpips.vgg")
    path = tmp_path / "cache" / "stlpips" / "vST0.0" / "vgg_shift_tolerant.pth"
    assert info.value.files == [(path, catalog.WEIGHTS["vgg"].url)]
    assert str(path) in str(info.value) and catalog.WEIGHTS["vgg"].url in str(info.value)


def test_random_weights_need_no_files(monkeypatch, tmp_path):
    monkeypatch.setenv("PERCEPBENCH_OFFLINE", "1")
    monkeypatch.setenv("PERCEPBENCH_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    metric = create_metric("stlpips", pretrained=False, reduction="none")
    assert metric.weight_files_used == []
    x, y = images(n=1, size=catalog.MIN_SIZE["alex"])
    d = metric(x, y)
    assert d.shape == (1,) and d.item() > 0
    assert metric.pairwise(x, x).item() == 0.0
    torch.testing.assert_close(metric.pairwise(x, y), metric.pairwise(y, x))  # symmetric
    assert not (tmp_path / "cache").exists()


def test_differentiable_with_respect_to_the_inputs():
    torch.manual_seed(0)
    metric = sl.STLPIPSMetric(net="alex", pretrained=False)
    x, y = images(n=2, size=32)
    x.requires_grad_(True)
    metric(x, y).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
