"""LPIPS (metrics_registry/lpips_metric.py): parity with the lpips package on random trunks, strict head and
trunk loading, trunks in torch hub's checkpoints dir (offline error, real HTTP download), example images."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from percepbench import create_metric
from percepbench.download import sha256_file, sha256_sidecar
from percepbench.errors import OfflineError, WeightsError
from percepbench.images import load_rgb, pil_to_tensor
from percepbench.metrics_registry import lpips_metric as lm
from percepbench.registry import METRICS
from percepbench.specs import WeightFile

from conftest import SHARED_FIXTURES

lpips = pytest.importorskip("lpips")


def reference(net: str, version: str = "0.1", **kwargs) -> torch.nn.Module:
    """The lpips package's model: shipped heads, random trunk (pnet_rand=True), eval mode."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lpips.LPIPS(pretrained=True, net=net, version=version, pnet_rand=True, verbose=False, **kwargs)


def torchvision_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The lpips package's trunk as a torchvision checkpoint (``features.<index>.<param>``)."""
    return {f"features.{k.split('.', 1)[1]}": v.clone() for k, v in model.net.state_dict().items()}


def place_trunk(monkeypatch, torch_home, net: str, state: dict[str, torch.Tensor]) -> WeightFile:
    """Save ``state`` where torchvision keeps the trunk of ``net`` and point the metric at it (full sha256)."""
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    weight = lm.TRUNK_WEIGHTS[net]
    path = torch_home / "hub" / "checkpoints" / weight.filename
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    patched = dataclasses.replace(weight, sha256=sha256_file(path))
    monkeypatch.setitem(lm.TRUNK_WEIGHTS, net, patched)
    return patched


def images(n: int = 2, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g)
    y = (x + 0.2 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 1)
    return x, y


# ----------------------------------------------------------------------------------------------- registry


def test_names_options_and_default():
    assert METRICS.resolve("lpips") == "lpips.alex"
    for net in lm.NETS:
        spec = METRICS.get(f"lpips.{net}")
        assert dict(spec.kwargs) == {"net": net, "version": "0.1"}
        assert spec.weights == (lm.TRUNK_WEIGHTS[net],) and spec.weights[0].cache == "torch_hub"
        assert spec.inputs.min_size == lm.MIN_SIZE[net]
        assert lm.HEAD_SHA256[("0.1", net)] in spec.reference
    with pytest.raises(ValueError, match="unknown LPIPS network 'resnet'"):
        lm.LPIPSMetric(net="resnet", pretrained=False)
    with pytest.raises(ValueError, match=r"unknown LPIPS version '0\.2'"):
        lm.LPIPSMetric(version="0.2", pretrained=False)


def test_trunk_files_are_torchvisions():
    from torchvision.models import AlexNet_Weights, SqueezeNet1_1_Weights, VGG16_Weights

    for net, enum in (("alex", AlexNet_Weights), ("vgg", VGG16_Weights), ("squeeze", SqueezeNet1_1_Weights)):
        w = lm.TRUNK_WEIGHTS[net]
        assert w.url == enum.IMAGENET1K_V1.url
        assert w.filename == enum.IMAGENET1K_V1.url.rsplit("/", 1)[1]  # torch.hub's cache file name
        assert w.filename.endswith(f"-{w.sha256_prefix}.pth")


def test_shipped_heads_match_their_recorded_sha256():
    prefixes = {"alex": "df73285e", "squeeze": "4a5350f2", "vgg": "a78928a0"}  # REFERENCE.md §5
    for (version, net), digest in lm.HEAD_SHA256.items():
        assert sha256_file(lm.head_file(net, version)) == digest
        if version == "0.1":
            assert digest.startswith(prefixes[net])


# ------------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("net", lm.NETS)
def test_parity_with_lpips_package_on_a_random_trunk(net, monkeypatch, tmp_path):
    torch.manual_seed(1)
    ref = reference(net)
    place_trunk(monkeypatch, tmp_path, net, torchvision_state(ref))
    x, y = images(size=32)  # small: SqueezeNet's many small convolutions are slow on some CPUs
    for version in lm.VERSIONS:
        if version == "0.0":  # the package's own switch: version attribute + its head file
            ref.version = "0.0"
            ref.load_state_dict(torch.load(lm.head_file(net, "0.0"), map_location="cpu", weights_only=True),
                                strict=False)
        ours = lm.LPIPSMetric(net=net, version=version, reduction="none")  # pretrained: files as shipped
        for k in range(len(lm.CHANNELS[net])):
            torch.testing.assert_close(ours.network.heads[k].model[1].weight, ref.lins[k].model[1].weight,
                                       rtol=0, atol=0)
        expected = ref(2 * x - 1, 2 * y - 1).reshape(-1)
        got = ours(x, y)
        assert got.shape == (2,)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_spatial_map_matches_package_spatial_mode(monkeypatch, tmp_path):
    torch.manual_seed(2)
    ref = reference("alex")
    place_trunk(monkeypatch, tmp_path, "alex", torchvision_state(ref))
    ours = lm.LPIPSMetric(net="alex", spatial=True, reduction="none")
    x, y = images(size=48)
    ref.spatial = True
    expected = ref(2 * x - 1, 2 * y - 1)
    got = ours.spatial_map(x, y)
    assert got.shape == (2, 1, 48, 48)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    d = ours.pairwise(x, y)
    torch.testing.assert_close(ours.last_spatial_map, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(d, expected.mean(dim=(1, 2, 3)), rtol=0.05, atol=1e-3)  # close, not equal


def test_random_weights_need_no_files(monkeypatch, tmp_path):
    monkeypatch.setenv("PERCEPBENCH_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(0)
    metric = create_metric("lpips.squeeze", pretrained=False, reduction="none")
    x, y = images(n=1, size=17)
    d = metric(x, y)
    assert d.shape == (1,) and d.item() > 0  # per-pair values keep shape (N,) for one pair too
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------ strict loading


def test_head_file_with_a_missing_key_fails_naming_the_file(tmp_path):
    state = torch.load(lm.head_file("alex", "0.1"), map_location="cpu", weights_only=True)
    del state["lin4.model.1.weight"]
    bad = tmp_path / "heads_missing.pth"
    torch.save(state, bad)
    with pytest.raises(WeightsError, match=r"heads_missing\.pth.*missing keys \['lin4\.model\.1\.weight'\]"):
        lm.LPIPSMetric(net="alex", pretrained=False, heads_file=bad)


def test_head_file_with_the_dropout_free_layout_fails(tmp_path):
    # the package's silent failure: heads saved without dropout are keyed lin<k>.model.0.weight
    state = torch.load(lm.head_file("squeeze", "0.1"), map_location="cpu", weights_only=True)
    renamed = {k.replace("model.1", "model.0"): v for k, v in state.items()}
    bad = tmp_path / "heads_nodropout.pth"
    torch.save(renamed, bad)
    with pytest.raises(WeightsError, match=r"heads_nodropout\.pth.*missing keys.*unexpected keys"):
        lm.LPIPSMetric(net="squeeze", pretrained=False, heads_file=bad)


def test_wrong_head_shape_and_hash_fail_naming_the_file(tmp_path, monkeypatch):
    state = torch.load(lm.head_file("alex", "0.1"), map_location="cpu", weights_only=True)
    state["lin0.model.1.weight"] = torch.zeros(1, 65, 1, 1)
    bad = tmp_path / "heads_shape.pth"
    torch.save(state, bad)
    with pytest.raises(WeightsError, match=r"heads_shape\.pth.*size mismatch"):
        lm.LPIPSMetric(net="alex", pretrained=False, heads_file=bad)
    monkeypatch.setitem(lm.HEAD_SHA256, ("0.1", "squeeze"), "0" * 64)
    net = lm.LPIPSNetwork("squeeze")
    with pytest.raises(WeightsError, match=r"v0\.1[/\\]squeeze\.pth has sha256 4a5350f2"):
        net.load_heads(lm.head_file("squeeze", "0.1"), lm.HEAD_SHA256[("0.1", "squeeze")])


def test_trunk_file_with_a_missing_tensor_fails_naming_the_file(monkeypatch, tmp_path):
    torch.manual_seed(0)
    state = torchvision_state(reference("squeeze"))
    del state["features.12.expand3x3.bias"]
    weight = place_trunk(monkeypatch, tmp_path, "squeeze", state)
    with pytest.raises(WeightsError, match=rf"{weight.filename}.*missing keys \['slice7\.12\.expand3x3\.bias'\]"):
        lm.LPIPSMetric(net="squeeze")


# ------------------------------------------------------------------------------------- trunks: cache, HTTP


def test_offline_error_lists_torchvision_path_and_url(monkeypatch, tmp_path):
    monkeypatch.setenv("PERCEPBENCH_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(OfflineError) as info:
        lm.LPIPSMetric(net="vgg")
    path = tmp_path / "torch" / "hub" / "checkpoints" / "vgg16-397923af.pth"
    message = str(info.value)
    assert str(path) in message and "https://download.pytorch.org/models/vgg16-397923af.pth" in message
    assert info.value.files == [(path, "https://download.pytorch.org/models/vgg16-397923af.pth")]


def test_trunk_downloads_over_http_into_torch_hub_checkpoints(weights_env, server, monkeypatch, tmp_path):
    torch.manual_seed(3)
    ref = reference("alex")
    served = tmp_path / "trunk.pth"
    torch.save(torchvision_state(ref), served)
    url = server.add("alexnet-owt-7be5be79.pth", served.read_bytes())
    monkeypatch.setitem(lm.TRUNK_WEIGHTS, "alex", WeightFile(filename="alexnet-owt-7be5be79.pth", url=url,
                                                              sha256=sha256_file(served), cache="torch_hub"))
    torch_home = tmp_path / "torch"
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    metric = lm.LPIPSMetric(net="alex", reduction="none")
    dest = torch_home / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    assert dest.is_file() and sha256_sidecar(dest).is_file()
    assert [r["path"] for r in server.requests] == ["/alexnet-owt-7be5be79.pth"]
    assert not weights_env.exists()  # nothing went to the percepbench cache
    x, y = images(size=32)
    # [0, 1] inputs: the same as the package's normalize=True
    torch.testing.assert_close(metric(x, y), ref(x, y, normalize=True).reshape(-1), rtol=1e-5, atol=1e-5)
    lm.LPIPSMetric(net="alex")  # second time: verified from the cache, no request
    assert len(server.requests) == 1


def test_trunk_failing_the_published_sha256_prefix_is_deleted(weights_env, server, monkeypatch, tmp_path):
    url = server.add("squeezenet1_1-b8a52dc0.pth", b"not the real squeezenet")
    monkeypatch.setitem(lm.TRUNK_WEIGHTS, "squeeze", dataclasses.replace(lm.TRUNK_WEIGHTS["squeeze"], url=url))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsError, match=r"squeezenet1_1-b8a52dc0\.pth.*does not start with the published "
                                           r"prefix b8a52dc0"):
        lm.LPIPSMetric(net="squeeze")
    assert not (tmp_path / "torch" / "hub" / "checkpoints" / "squeezenet1_1-b8a52dc0.pth").exists()


# ---------------------------------------------------------------------------------------- example images


def test_example_images_random_trunk_parity():
    folder = SHARED_FIXTURES / "lpips"
    ref_img, p0, p1 = (pil_to_tensor(load_rgb(folder / f"ex_{n}.png"))[None] for n in ("ref", "p0", "p1"))
    torch.manual_seed(4)
    metric = create_metric("lpips", pretrained=False, reduction="none")
    package = reference("alex")
    package.net.load_state_dict(metric.network.trunk.state_dict())
    for k in range(5):
        package.lins[k].load_state_dict(metric.network.heads[k].state_dict())
    for other in (p0, p1):
        d = metric.pairwise(ref_img, other)
        assert d.shape == (1,) and torch.isfinite(d).all() and d.item() > 0
        expected = package(ref_img.float() / 255, other.float() / 255, normalize=True).reshape(-1)
        torch.testing.assert_close(d, expected, rtol=1e-5, atol=1e-5)
        smap = metric.spatial_map(ref_img, other)
        assert smap.shape == (1, 1, *ref_img.shape[-2:]) and torch.isfinite(smap).all()
    assert metric.pairwise(ref_img, ref_img).item() == 0.0
