"""PieAPP (metrics_registry/pieapp.py): parity with piq 0.8.0's PieAPP on random weights in the released key
layout (served over HTTP, downloaded, sha256-checked, loaded strictly), at the default and the dense
stride; the patch grid against hand-listed corners; strict loading; offline error; random weights."""

from __future__ import annotations

import dataclasses
from unittest import mock

import pytest
import torch

from percepbench import create_metric
from percepbench.download import sha256_file, sha256_sidecar
from percepbench.errors import OfflineError, UsageError, WeightsError
from percepbench.metrics_registry import pieapp as pa
from percepbench.metrics_registry.catalog import pieapp as catalog
from percepbench.registry import METRICS

piq = pytest.importorskip("piq")

BGR = [2, 1, 0]


@pytest.fixture(scope="module")
def released_state() -> dict[str, torch.Tensor]:
    """Random PieAPP weights in the released file's layout: ``ref_score_subtract.weight`` of shape (1,)."""
    torch.manual_seed(0)
    network = pa.PieAPPNetwork()
    network.randomize()
    state = {k: v.clone() for k, v in network.state_dict().items()}
    state["ref_score_subtract.weight"] = state["ref_score_subtract.weight"].reshape(1)
    return state


def piq_model(state: dict[str, torch.Tensor], stride: int) -> torch.nn.Module:
    """piq's PieAPP, whose constructor downloads its weights through torch.hub: handed ``state`` instead
    (a copy: piq reshapes ``ref_score_subtract.weight`` in place)."""
    with mock.patch("torch.hub.load_state_dict_from_url", side_effect=lambda *args, **kwargs: dict(state)):
        return piq.PieAPP(reduction="none", stride=stride, data_range=1.0)


def pair(n: int = 2, h: int = 100, w: int = 91, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ref = torch.rand(n, 3, h, w, generator=g)
    dist = (ref + 0.15 * torch.randn(n, 3, h, w, generator=g)).clamp(0, 1)
    return ref, dist


# ----------------------------------------------------------------------------------------------- registry


def test_spec():
    spec = METRICS.get("pieapp")
    assert dict(spec.kwargs) == {"stride": 27} and catalog.DEFAULT_STRIDE == 27 and catalog.DENSE_STRIDE == 6
    assert spec.weights == (catalog.WEIGHTS,) and catalog.WEIGHTS.sha256.startswith("0937b014")
    assert spec.inputs.min_size == 64 and spec.precisions == ("fp32",)
    assert "non-commercial" in spec.licence and "first image = reference" in spec.description
    assert pa.MULTISCALE == 120_832 and pa.COARSE == 2_048  # piq's and the authors' fc1 input sizes
    for value in (0, -6, 2.5, True):
        with pytest.raises(UsageError, match="PieAPP stride must be a positive integer"):
            pa.PieAPPMetric(stride=value, pretrained=False)


def test_patch_grid_is_the_authors_strided_grid():
    # corners at 0, s, 2s, ... <= H - 64: for H = 100, W = 91 and s = 27 that is rows (0, 27), cols (0, 27)
    x = torch.arange(2 * 3 * 100 * 91, dtype=torch.float32).reshape(2, 3, 100, 91)
    got = pa.patches(x, 27)
    corners = [(0, 0), (0, 27), (27, 0), (27, 27)]
    assert got.shape == (2 * len(corners), 3, 64, 64)
    expected = torch.stack([x[n, :, r:r + 64, c:c + 64] for n in range(2) for r, c in corners])
    assert torch.equal(got, expected)
    assert pa.patches(x, 6).shape[0] == 2 * 7 * 5  # rows 0..36 step 6 (7), cols 0..27 step 6 (5)


# ------------------------------------------------------------------------------------------------- parity


def test_download_and_parity_with_piq(released_state, weights_env, server, monkeypatch, tmp_path):
    file = tmp_path / "PieAPPv0.1.pth"
    torch.save(released_state, file)
    url = server.add("PieAPPv0.1.pth", file.read_bytes())
    monkeypatch.setattr(pa, "WEIGHTS", dataclasses.replace(catalog.WEIGHTS, url=url, sha256=sha256_file(file)))
    file.unlink()
    metric = pa.PieAPPMetric(reduction="none")  # pretrained: download, sha256, strict load
    dest = weights_env / "pieapp" / "PieAPPv0.1.pth"
    assert dest.is_file() and sha256_sidecar(dest).is_file()
    assert [r["path"] for r in server.requests] == ["/PieAPPv0.1.pth"]
    assert metric.weight_files_used is None
    ref, dist = pair()
    expected = piq_model(released_state, 27)(dist[:, BGR], ref[:, BGR])  # piq: (distorted, reference)
    got = metric(ref, dist)
    assert got.shape == (2,) and (got > 0).all()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    # not symmetric: the first argument is the reference
    assert not torch.allclose(metric.pairwise(dist, ref), got, rtol=1e-3, atol=0)


def test_dense_stride_and_chunks_match_piq(released_state, tmp_path):
    file = tmp_path / "pieapp_user.pth"
    torch.save(released_state, file)
    ref, dist = pair(n=1, h=76, w=70, seed=1)
    expected = piq_model(released_state, 6)(dist[:, BGR], ref[:, BGR])
    metric = pa.PieAPPMetric(stride=6, weights_file=file, reduction="none")
    assert metric.weight_files_used == []
    for chunk in (1, 5, 128):  # 6 patches per image: one, two and six per forward pass
        metric.chunk = chunk
        torch.testing.assert_close(metric.pairwise(ref, dist), expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------ strict loading


def test_released_shape_quirk_and_plain_shape_both_load(released_state):
    network = pa.PieAPPNetwork()
    network.load_file("cache/PieAPPv0.1.pth", released_state)  # (1,)
    assert network.ref_score_subtract.weight.shape == (1, 1)
    plain = {**released_state, "ref_score_subtract.weight": released_state["ref_score_subtract.weight"].reshape(1, 1)}
    pa.PieAPPNetwork().load_file("cache/PieAPPv0.1.pth", plain)


def test_missing_unexpected_and_misshapen_keys_fail_naming_the_file(released_state):
    network = pa.PieAPPNetwork()
    state = {k: v for k, v in released_state.items() if k != "fc2_weight.bias"}
    with pytest.raises(WeightsError, match=r"cache/PieAPPv0\.1\.pth.*missing keys \['fc2_weight\.bias'\]"):
        network.load_file("cache/PieAPPv0.1.pth", state)
    state = {**released_state, "conv12.weight": torch.zeros(1)}
    with pytest.raises(WeightsError, match=r"PieAPPv0\.1\.pth.*unexpected keys \['conv12\.weight'\]"):
        network.load_file("cache/PieAPPv0.1.pth", state)
    state = {**released_state, "fc1_weight.weight": torch.zeros(512, 1024)}
    with pytest.raises(WeightsError, match=r"PieAPPv0\.1\.pth: not a valid PieAPP v0\.1 file.*fc1_weight\.weight"):
        network.load_file("cache/PieAPPv0.1.pth", state)


def test_user_file_errors(tmp_path):
    with pytest.raises(WeightsError, match=r"PieAPP weight file .*nothere\.pth does not exist"):
        pa.PieAPPMetric(weights_file=tmp_path / "nothere.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match=r"junk\.pth"):
        pa.PieAPPMetric(weights_file=junk)


# --------------------------------------------------------------------------------------- offline, random


def test_offline_error_names_path_and_url(monkeypatch, tmp_path):
    monkeypatch.setenv("PERCEPBENCH_OFFLINE", "1")
    monkeypatch.setenv("PERCEPBENCH_CACHE", str(tmp_path / "cache"))
    with pytest.raises(OfflineError) as info:
        create_metric("pieapp")
    path = tmp_path / "cache" / "pieapp" / "PieAPPv0.1.pth"
    assert info.value.files == [(path, catalog.WEIGHTS.url)]
    assert str(path) in str(info.value) and catalog.WEIGHTS.url in str(info.value)


def test_random_weights_behave_like_a_distance_and_need_no_files(monkeypatch, tmp_path):
    monkeypatch.setenv("PERCEPBENCH_OFFLINE", "1")
    monkeypatch.setenv("PERCEPBENCH_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    metric = create_metric("pieapp", pretrained=False, reduction="none")
    assert metric.weight_files_used == [] and metric.stride == 27
    ref, dist = pair(n=2, h=64, w=64)
    assert torch.equal(metric.pairwise(ref, ref), torch.zeros(2))
    assert (metric.pairwise(ref, dist) > 0).all()
    assert not (tmp_path / "cache").exists()


def test_differentiable_with_respect_to_the_inputs():
    torch.manual_seed(0)
    metric = pa.PieAPPMetric(pretrained=False)
    ref, dist = pair(n=1, h=64, w=64)
    dist.requires_grad_(True)
    metric(ref, dist).backward()
    assert dist.grad is not None and torch.isfinite(dist.grad).all() and dist.grad.abs().sum() > 0
