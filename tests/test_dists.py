"""DISTS (metrics_registry/dists.py): parity with torchmetrics on a shared random VGG16, alpha/beta from
torchmetrics (a sha256-verified file shipped in the package; a tampered copy is caught), the official
resize option, strict loading, the trunk in torch hub's checkpoints dir."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import inspect
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torchmetrics.functional.image.dists as tm_dists
from torchmetrics.image import DeepImageStructureAndTextureSimilarity

from percepbench import create_metric
from percepbench.download import sha256_file, sha256_sidecar
from percepbench.errors import OfflineError, WeightsError
from percepbench.metrics_registry import dists as dm
from percepbench.registry import METRICS
from percepbench.specs import IMAGENET
from percepbench.weights import ensure_files, weight_path


def torchmetrics_alpha_beta() -> Path:
    """Where torchmetrics itself reads alpha/beta: ``dists_models/weights.pt`` beside its DISTS module."""
    return Path(inspect.getfile(tm_dists)).resolve().parent / "dists_models" / "weights.pt"


def torchvision_features(metric: dm.DISTSMetric) -> torch.nn.Sequential:
    """torchvision's VGG16 ``features`` (max-pooling layout) holding the metric's trunk weights."""
    from torchvision.models.vgg import cfgs, make_layers

    features = make_layers(cfgs["D"], batch_norm=False)
    features.load_state_dict(metric.network.features.state_dict(), strict=False)
    for i, layer in enumerate(metric.network.features):
        if isinstance(layer, torch.nn.Conv2d):
            torch.testing.assert_close(features[i].weight, layer.weight, rtol=0, atol=0)
    return features


@pytest.fixture(scope="module")
def random_dists():
    torch.manual_seed(0)
    return dm.DISTSMetric(pretrained=False, reduction="none")


@pytest.fixture
def torchmetrics_uses(monkeypatch, random_dists):
    """torchmetrics' DISTS network built on the same random VGG16 (no download)."""
    features = torchvision_features(random_dists)
    monkeypatch.setattr(tm_dists, "vgg16", lambda **kw: SimpleNamespace(features=copy.deepcopy(features)))


def images(n: int = 2, h: int = 32, w: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, h, w, generator=g)
    y = (x + 0.2 * torch.randn(n, 3, h, w, generator=g)).clamp(0, 1)
    return x, y


def test_spec(torchmetrics_uses):
    spec = METRICS.get("dists")
    assert dict(spec.kwargs) == {"resize": None}
    trunk, alpha_beta = spec.weights
    assert trunk == dm.VGG16_WEIGHTS and trunk.cache == "torch_hub"
    assert alpha_beta == dm.ALPHA_BETA_WEIGHTS and alpha_beta.cache == "package"
    assert alpha_beta.package == "torchmetrics"
    assert spec.inputs.min_size == 16 and alpha_beta.sha256 in spec.reference
    # the recorded normalisation is what torchmetrics' DISTS applies (its own buffers are the oracle)
    assert spec.inputs.normalization == (IMAGENET,)
    ref = tm_dists.DISTSNetwork(load_weights=False)
    torch.testing.assert_close(torch.tensor(IMAGENET.mean).view(1, 3, 1, 1), ref.mean, rtol=0, atol=0)
    torch.testing.assert_close(torch.tensor(IMAGENET.std).view(1, 3, 1, 1), ref.std, rtol=0, atol=0)
    with pytest.raises(ValueError, match="resize must be None or 'official'"):
        dm.DISTSMetric(resize="pil", pretrained=False)


def test_alpha_beta_come_from_torchmetrics(random_dists):
    weight = dm.ALPHA_BETA_WEIGHTS
    path = weight_path(weight)
    assert path == torchmetrics_alpha_beta() and weight.source == "shipped in torchmetrics 1.9.0"
    # the full hash recorded in percepbench starts with the published prefix (REFERENCE.md §5)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == weight.sha256 and weight.sha256.startswith("f5e65c96")
    shipped = torch.load(path, map_location="cpu", weights_only=True)
    assert random_dists.network.alpha.shape == (1, 1475, 1, 1)
    torch.testing.assert_close(random_dists.network.alpha, shipped["alpha"], rtol=0, atol=0)
    torch.testing.assert_close(random_dists.network.beta, shipped["beta"], rtol=0, atol=0)


def test_parity_with_torchmetrics_functional_and_class(random_dists, torchmetrics_uses):
    x, y = images()
    expected = tm_dists.deep_image_structure_and_texture_similarity(x, y)
    got = random_dists.pairwise(x, y)
    assert got.shape == (2,)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    tm_class = DeepImageStructureAndTextureSimilarity(reduction="mean")
    tm_class.update(x, y)
    torch.testing.assert_close(got.mean(), tm_class.compute(), rtol=1e-5, atol=1e-5)


def test_distance_is_zero_for_identical_images_and_differentiable(random_dists):
    x, y = images(n=1)
    assert abs(random_dists.pairwise(x, x).item()) < 1e-5
    x = x.clone().requires_grad_(True)
    random_dists.pairwise(x, y).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_official_resize_rule():
    x = torch.rand(1, 3, 260, 300)
    small = dm.official_resize(x)
    assert small.shape[-2:] == (256, 295)  # shorter side 256, longer int(256 * 300 / 260) as torchvision
    assert dm.official_resize(x.transpose(-1, -2)).shape[-2:] == (295, 256)
    expected = torch.nn.functional.interpolate(x, size=(256, 295), mode="bilinear", antialias=True)
    torch.testing.assert_close(small, expected, rtol=0, atol=0)
    for h, w in ((256, 400), (300, 256), (16, 16)):  # min(H, W) <= 256: untouched
        x = torch.rand(1, 3, h, w)
        assert dm.official_resize(x) is x


def test_official_resize_option_end_to_end(random_dists, monkeypatch):
    metric = dm.DISTSMetric(pretrained=False, resize="official", reduction="none")
    metric.network.load_state_dict(random_dists.network.state_dict())
    monkeypatch.setattr(dm, "OFFICIAL_SIZE", 24)  # the same rule at a size that keeps the test fast
    x, y = images(n=1, h=30, w=40)
    small_x, small_y = dm.official_resize(x), dm.official_resize(y)
    assert small_x.shape[-2:] == (24, 32)
    torch.testing.assert_close(metric.pairwise(x, y), random_dists.pairwise(small_x, small_y), rtol=0, atol=0)
    assert not torch.equal(metric.pairwise(x, y), random_dists.pairwise(x, y))
    x, y = images(n=1, h=20, w=40)  # shorter side <= 24: compared as is
    torch.testing.assert_close(metric.pairwise(x, y), random_dists.pairwise(x, y), rtol=0, atol=0)


def test_trunk_loads_strictly_from_torch_hub_checkpoints(random_dists, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("PERCEPBENCH_OFFLINE", "1")  # the file is in place: no network needed
    path = tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth"
    path.parent.mkdir(parents=True)
    state = {f"features.{k}": v for k, v in random_dists.network.features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # a full torchvision checkpoint: only features are used
    torch.save(state, path)
    monkeypatch.setattr(dm, "VGG16_WEIGHTS", dataclasses.replace(dm.VGG16_WEIGHTS, sha256=sha256_file(path)))
    metric = create_metric("dists", reduction="none")  # pretrained
    x, y = images()
    torch.testing.assert_close(metric.pairwise(x, y), random_dists.pairwise(x, y), rtol=0, atol=0)

    del state["features.28.bias"]
    torch.save(state, path)
    monkeypatch.setattr(dm, "VGG16_WEIGHTS", dataclasses.replace(dm.VGG16_WEIGHTS, sha256=sha256_file(path)))
    with pytest.raises(WeightsError, match=r"vgg16-397923af\.pth.*missing keys \['28\.bias'\]"):
        dm.DISTSMetric()


def test_alpha_beta_file_is_loaded_strictly(tmp_path):
    shipped = torch.load(torchmetrics_alpha_beta(), map_location="cpu", weights_only=True)
    bad = tmp_path / "weights_extra.pt"
    torch.save({**shipped, "gamma": torch.zeros(1)}, bad)
    network = dm.DISTSNetwork()
    with pytest.raises(WeightsError, match=r"weights_extra\.pt.*unexpected keys \['gamma'\]"):
        network.load_alpha_beta(bad)


def test_tampered_alpha_beta_in_torchmetrics_fails_naming_file_and_version(monkeypatch, tmp_path):
    import percepbench.weights as weights

    fake = tmp_path / "site" / "torchmetrics"
    path = fake / "functional" / "image" / "dists_models" / "weights.pt"
    path.parent.mkdir(parents=True)
    shipped = torch.load(torchmetrics_alpha_beta(), map_location="cpu", weights_only=True)
    torch.save({"alpha": shipped["alpha"] * 0.5, "beta": shipped["beta"]}, path)  # valid keys, other values
    real = weights.package_dir
    monkeypatch.setattr(weights, "package_dir", lambda name: fake if name == "torchmetrics" else real(name))
    with pytest.raises(WeightsError) as info:
        dm.DISTSMetric(pretrained=False)
    message = str(info.value)
    assert str(path) in message and "shipped in torchmetrics 1.9.0" in message
    assert f"has sha256 {hashlib.sha256(path.read_bytes()).hexdigest()}, expected f5e65c96" in message
    assert "pip install --force-reinstall torchmetrics==1.9.0" in message
    assert not sha256_sidecar(path).exists()
    path.unlink()  # a torchmetrics without the file
    with pytest.raises(WeightsError, match=r"weights\.pt does not exist: the installed torchmetrics .* does not "
                                           r"ship functional/image/dists_models/weights\.pt"):
        ensure_files([dm.ALPHA_BETA_WEIGHTS])


def test_offline_error_lists_torchvision_path_and_url(monkeypatch, tmp_path):
    monkeypatch.setenv("PERCEPBENCH_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(OfflineError) as info:
        create_metric("dists")
    path = tmp_path / "torch" / "hub" / "checkpoints" / "vgg16-397923af.pth"
    url = "https://download.pytorch.org/models/vgg16-397923af.pth"
    assert str(path) in str(info.value) and url in str(info.value)
    assert info.value.files == [(path, url)]
    with pytest.raises(OfflineError) as info:  # the spec's files: only the trunk needs the network
        ensure_files(METRICS.get("dists").weights)
    assert info.value.files == [(path, url)] and "torchmetrics" not in str(info.value)
