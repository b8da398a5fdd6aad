"""LPIPS (metrics_registry/lpips_metric.py): parity with the lpips package on random trunks, strict head and
trunk loading, heads as sha256-verified files shipped in the lpips wheel (a tampered copy is caught),
trunks in torch hub's checkpoints dir (offline error, real HTTP download), example images."""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import warnings
from pathlib import Path

import pytest
import torch

from percepbench import create_metric
from percepbench.download import sha256_file, sha256_sidecar
from percepbench.errors import OfflineError, WeightsError
from percepbench.images import load_rgb, pil_to_tensor
from percepbench.metrics_registry import lpips_metric as lm
from percepbench.registry import METRICS
from percepbench.specs import IMAGENET, WeightFile
from percepbench.weights import ensure_files, weight_path

from conftest import SHARED_FIXTURES

lpips = pytest.importorskip("lpips")


def head_path(net: str, version: str) -> Path:
    """Where the lpips package itself reads a head file (``LPIPS.__init__``: beside its own source file)."""
    return Path(inspect.getfile(lpips.LPIPS)).resolve().parent / "weights" / f"v{version}" / f"{net}.pth"


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
        trunk, head = spec.weights
        assert trunk == lm.TRUNK_WEIGHTS[net] and trunk.cache == "torch_hub"
        assert head == lm.HEAD_WEIGHTS[("0.1", net)] and head.cache == "package" and head.package == "lpips"
        assert spec.inputs.min_size == lm.MIN_SIZE[net]
        assert head.sha256 in spec.reference
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
    prefixes = {"alex": "df73285e", "squeeze": "4a5350f2", "vgg": "a78928a0"}  # REFERENCE.md §5 (published)
    assert len(lm.HEAD_WEIGHTS) == 6
    for (version, net), weight in lm.HEAD_WEIGHTS.items():
        path = weight_path(weight)
        assert path == head_path(net, version)  # the file the lpips package loads
        assert hashlib.sha256(path.read_bytes()).hexdigest() == weight.sha256
        assert weight.source == "shipped in lpips 0.1.4"
        if version == "0.1":
            assert weight.sha256.startswith(prefixes[net])


def test_spec_normalization_is_the_package_scaling_layer():
    # LPIPS v0.1 maps [-1, 1] input with (x - shift) / scale; on [0, 1] input that is (x - mean) / std with
    # mean = (1 + shift) / 2 and std = scale / 2, the spec's recorded normalisation
    layer = lpips.ScalingLayer()
    shift, scale = layer.shift.reshape(-1).double(), layer.scale.reshape(-1).double()
    for net in lm.NETS:
        (norm,) = METRICS.get(f"lpips.{net}").inputs.normalization
        assert norm == IMAGENET
        torch.testing.assert_close(torch.tensor(norm.mean, dtype=torch.float64), (1 + shift) / 2,
                                   rtol=0, atol=1e-7)
        torch.testing.assert_close(torch.tensor(norm.std, dtype=torch.float64), scale / 2, rtol=0, atol=1e-7)


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
            ref.load_state_dict(torch.load(head_path(net, "0.0"), map_location="cpu", weights_only=True),
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
    state = torch.load(head_path("alex", "0.1"), map_location="cpu", weights_only=True)
    del state["lin4.model.1.weight"]
    bad = tmp_path / "heads_missing.pth"
    torch.save(state, bad)
    with pytest.raises(WeightsError, match=r"heads_missing\.pth.*missing keys \['lin4\.model\.1\.weight'\]"):
        lm.LPIPSMetric(net="alex", pretrained=False, heads_file=bad)


def test_head_file_with_the_dropout_free_layout_fails(tmp_path):
    # the package's silent failure: heads saved without dropout are keyed lin<k>.model.0.weight
    state = torch.load(head_path("squeeze", "0.1"), map_location="cpu", weights_only=True)
    renamed = {k.replace("model.1", "model.0"): v for k, v in state.items()}
    bad = tmp_path / "heads_nodropout.pth"
    torch.save(renamed, bad)
    with pytest.raises(WeightsError, match=r"heads_nodropout\.pth.*missing keys.*unexpected keys"):
        lm.LPIPSMetric(net="squeeze", pretrained=False, heads_file=bad)


def test_wrong_head_shape_and_hash_fail_naming_the_file(tmp_path, monkeypatch):
    state = torch.load(head_path("alex", "0.1"), map_location="cpu", weights_only=True)
    state["lin0.model.1.weight"] = torch.zeros(1, 65, 1, 1)
    bad = tmp_path / "heads_shape.pth"
    torch.save(state, bad)
    with pytest.raises(WeightsError, match=r"heads_shape\.pth.*size mismatch"):
        lm.LPIPSMetric(net="alex", pretrained=False, heads_file=bad)


def tampered_lpips(monkeypatch, tmp_path, net: str) -> Path:
    """A copy of the lpips package directory whose v0.1 ``net`` head is a valid torch file with other
    numbers; percepbench is pointed at it instead of the real package (site-packages stays untouched)."""
    import percepbench.weights as weights

    fake = tmp_path / "site" / "lpips"
    head = fake / "weights" / "v0.1" / f"{net}.pth"
    head.parent.mkdir(parents=True)
    state = torch.load(head_path(net, "0.1"), map_location="cpu", weights_only=True)
    torch.save({k: 2 * v for k, v in state.items()}, head)  # strict loading alone would accept it
    real = weights.package_dir
    monkeypatch.setattr(weights, "package_dir", lambda name: fake if name == "lpips" else real(name))
    return head


def test_tampered_head_in_the_package_fails_naming_file_and_version(monkeypatch, tmp_path):
    torch.manual_seed(0)
    place_trunk(monkeypatch, tmp_path / "torch", "squeeze", torchvision_state(reference("squeeze")))
    head = tampered_lpips(monkeypatch, tmp_path, "squeeze")
    with pytest.raises(WeightsError) as info:
        lm.LPIPSMetric(net="squeeze")
    message = str(info.value)
    assert str(head) in message and "shipped in lpips 0.1.4" in message
    assert f"expected {lm.HEAD_WEIGHTS[('0.1', 'squeeze')].sha256}" in message
    assert hashlib.sha256(head.read_bytes()).hexdigest() in message
    assert "pip install --force-reinstall lpips==0.1.4" in message
    assert not sha256_sidecar(head).exists()  # nothing is written next to a package's files


def test_verifying_a_shipped_head_writes_nothing_into_the_package():
    weight = lm.HEAD_WEIGHTS[("0.1", "alex")]
    path = weight_path(weight)
    before = sorted(p.name for p in path.parent.iterdir())
    ensure_files([weight])
    assert sorted(p.name for p in path.parent.iterdir()) == before and not sha256_sidecar(path).exists()


def test_missing_package_says_what_to_install(monkeypatch):
    import percepbench.weights as weights

    monkeypatch.setattr(weights, "package_dir", lambda name: None)
    weight = lm.HEAD_WEIGHTS[("0.1", "vgg")]
    assert not weights.is_present(weight)
    with pytest.raises(WeightsError, match=r"weights/v0\.1/vgg\.pth ships inside the Python package 'lpips', "
                                           r"which is not installed: pip install lpips==0\.1\.4"):
        ensure_files([weight])


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
    # all of the spec's files at once: only the downloadable trunk is listed, never the shipped head
    with pytest.raises(OfflineError) as info:
        ensure_files(METRICS.get("lpips.vgg").weights)
    assert info.value.files == [(path, "https://download.pytorch.org/models/vgg16-397923af.pth")]
    assert "vgg.pth" not in str(info.value) and "lpips" not in str(info.value)


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
    fake = tmp_path / "fake.pth"
    torch.save({"w": torch.zeros(1)}, fake)  # a torch file (its format is checked), not the real squeezenet
    url = server.add("squeezenet1_1-b8a52dc0.pth", fake.read_bytes())
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
