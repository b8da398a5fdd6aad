"""percepbench.weights: cache-dir rule, presence (zip archives via extract_to), ensure_files online/offline,
files shipped inside an installed package (found, verified, never downloaded, tampering caught), the one
verification function with its published-prefix check."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import zipfile
from pathlib import Path

import pytest
import torch.hub

from percepbench.download import sha256_sidecar
from percepbench.errors import OfflineError, WeightsError
from percepbench.specs import MetricSpec, WeightFile
from percepbench.weights import (
    cache_dir,
    ensure_files,
    ensure_weights,
    is_present,
    missing_weights,
    package_dir,
    usable_offline,
    verify_weight,
    weight_path,
)

from local_http import closed_port_url

pytestmark = pytest.mark.usefixtures("weights_env")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def lora_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ensemble_lora/adapter_config.json", b'{"r": 16, "lora_alpha": 1.0}')
        zf.writestr("ensemble_lora/adapter_model.safetensors", b"\x00" * 4096)
    return buf.getvalue()


@pytest.fixture
def dreamsim_like(server):
    """A zip that extracts ``ensemble_lora/`` and a plain backbone file, as WeightFiles on the server."""
    zip_bytes, backbone = lora_zip(), b"backbone-weights" * 1000
    files = (
        WeightFile("dreamsim_ensemble_checkpoint.zip", server.add("ens.zip", zip_bytes), sha256=sha(zip_bytes),
                   size=len(zip_bytes), extract_to="ensemble_lora"),
        WeightFile("dino_vitb16_pretrain.pth", server.add("dino.pth", backbone), sha256=sha(backbone)),
    )
    return files, zip_bytes, backbone


def test_cache_dir_resolved_at_call_time(monkeypatch, tmp_path):
    assert cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.setenv("PERCEPBENCH_CACHE", str(tmp_path / "env"))
    assert cache_dir() == tmp_path / "env"
    monkeypatch.delenv("PERCEPBENCH_CACHE")
    assert cache_dir() == Path(torch.hub.get_dir()) / "percepbench"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    assert cache_dir() == tmp_path / "hub" / "percepbench"


def test_ensure_files_downloads_extracts_and_then_stays_offline(server, dreamsim_like, monkeypatch, weights_env):
    files, zip_bytes, backbone = dreamsim_like
    root = weights_env
    spec = MetricSpec(name="fake.ens", target="helpers_metrics:MeanAbs", description="x", weights=files)
    assert missing_weights(spec) == ["dreamsim_ensemble_checkpoint.zip", "dino_vitb16_pretrain.pth"]
    assert not usable_offline(spec)

    assert ensure_files(files, progress=False) == root
    assert (root / "ensemble_lora" / "adapter_config.json").read_bytes() == b'{"r": 16, "lora_alpha": 1.0}'
    assert (root / "dino_vitb16_pretrain.pth").read_bytes() == backbone
    assert (root / "dreamsim_ensemble_checkpoint.zip.sha256").read_text().split()[0] == sha(zip_bytes)
    assert (root / "dino_vitb16_pretrain.pth.sha256").read_text().split()[0] == sha(backbone)
    assert not list(root.glob("*.part")) and not list(root.glob(".extracting-*"))
    assert missing_weights(spec) == [] and usable_offline(spec)
    assert len(server.requests) == 2

    monkeypatch.setenv("PERCEPBENCH_OFFLINE", "1")
    assert ensure_weights(spec, progress=False) == root  # present: verified, no network
    assert len(server.requests) == 2


def test_ensure_files_offline_lists_every_missing_file_at_once(server, dreamsim_like, monkeypatch, weights_env):
    files, _, _ = dreamsim_like
    root = weights_env
    present = b"already here"
    root.mkdir(parents=True)
    (root / "present.pth").write_bytes(present)
    extra = WeightFile("checkpoints/other.pth", f"{server.base}/other.pth")
    all_files = [*files, WeightFile("present.pth", f"{server.base}/present.pth", sha256=sha(present)), extra]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError) as info:
        ensure_files(all_files, progress=False)
    msg = str(info.value)
    assert "cannot download 3 weight file(s)" in msg and "HF_HUB_OFFLINE=1" in msg
    for w in (*files, extra):
        assert str(root / w.filename) in msg and w.url in msg
    assert str(root / "ensemble_lora") in msg  # what the zip must produce
    assert "present.pth" not in msg
    assert [p for p, _ in info.value.files] == [root / w.filename for w in (*files, extra)]
    assert server.requests == []


def test_ensure_files_offline_extracts_a_zip_placed_by_hand(server, dreamsim_like, monkeypatch, weights_env):
    files, zip_bytes, _ = dreamsim_like
    root = weights_env
    root.mkdir(parents=True)
    (root / files[0].filename).write_bytes(zip_bytes)
    monkeypatch.setenv("PERCEPBENCH_OFFLINE", "1")
    ensure_files(files[:1], progress=False)
    assert (root / "ensemble_lora" / "adapter_config.json").is_file()
    assert is_present(files[0])
    assert server.requests == []


def test_ensure_files_network_failure_lists_all_missing(weights_env):
    files = [WeightFile("a.pth", closed_port_url("a.pth")), WeightFile("b.zip", closed_port_url("b.zip"),
                                                                       extract_to="b_lora")]
    with pytest.raises(OfflineError) as info:
        ensure_files(files, progress=False)
    msg = str(info.value)
    assert "network failed" in msg and "cannot download 2 weight file(s)" in msg
    for w in files:
        assert str(weights_env / w.filename) in msg and w.url in msg


def test_ensure_files_catches_a_file_modified_after_download(server, weights_env):
    buf = io.BytesIO()
    torch.save({"w": torch.ones(100)}, buf)  # a real torch file: without a known sha256 the format is checked
    files = [WeightFile("w.pth", server.add("w.pth", buf.getvalue()))]  # no known sha256: the recorded one is used
    ensure_files(files, progress=False)
    (weights_env / "w.pth").write_bytes(b"tampered" * 100)
    with pytest.raises(WeightsError, match="changed since it was downloaded") as info:
        ensure_files(files, progress=False)
    assert str(weights_env / "w.pth") in str(info.value)


def test_ensure_files_wrong_hash_of_hand_placed_file(weights_env):
    weights_env.mkdir(parents=True)
    (weights_env / "w.pth").write_bytes(b"wrong")
    with pytest.raises(WeightsError, match="fails its checksum"):
        ensure_files([WeightFile("w.pth", "http://127.0.0.1:9/w.pth", sha256="0" * 64)], progress=False)


def test_zip_without_the_expected_target_is_an_error(server, weights_env):
    zip_bytes = lora_zip()
    w = WeightFile("x.zip", server.add("x.zip", zip_bytes), extract_to="single_lora")
    with pytest.raises(WeightsError, match="does not contain 'single_lora'"):
        ensure_files([w], progress=False)


def test_missing_weights_honours_extract_to(weights_env):
    w = WeightFile("pretrained.zip", "https://example.invalid/p.zip", extract_to="ensemble_lora")
    spec = MetricSpec(name="fake.zip", target="helpers_metrics:MeanAbs", description="x", weights=(w,))
    assert missing_weights(spec) == ["pretrained.zip"]
    (weights_env / "ensemble_lora").mkdir(parents=True)
    assert missing_weights(spec) == [] and usable_offline(spec)
    assert weight_path(w) == weights_env / "pretrained.zip"
    assert w.to_dict()["extract_to"] == "ensemble_lora"


@pytest.mark.parametrize("name", ["../escape.pth", "/abs.pth", "a/../../b.pth", "C:/w.pth"])
def test_weight_paths_must_stay_inside_the_cache(name):
    with pytest.raises(WeightsError, match="relative path inside the cache"):
        ensure_files([WeightFile(name, "https://example.invalid/w")], progress=False)


# ------------------------------------------------------------------------------ files shipped in a package


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """An importable package ``pb_shipped_pkg`` on sys.path with a data file, and its WeightFile."""
    data = b"head weights " * 50
    pkg = tmp_path / "site" / "pb_shipped_pkg"
    (pkg / "weights").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "weights" / "head.pth").write_bytes(data)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    w = WeightFile("weights/head.pth", "https://pypi.org/project/pb-shipped-pkg/1.2/", sha256=sha(data),
                   cache="package", package="pb_shipped_pkg", package_version="1.2")
    return w, pkg / "weights" / "head.pth"


def test_package_file_is_found_verified_and_never_downloaded(shipped, monkeypatch, weights_env):
    w, path = shipped
    assert package_dir("pb_shipped_pkg") == path.parent.parent.resolve()
    assert weight_path(w) == path.resolve() and is_present(w)
    assert w.source == "shipped in pb_shipped_pkg 1.2"
    spec = MetricSpec(name="fake.pkg", target="helpers_metrics:MeanAbs", description="x", weights=(w,))
    assert missing_weights(spec) == [] and usable_offline(spec)
    monkeypatch.setenv("PERCEPBENCH_OFFLINE", "1")  # never needs the network
    ensure_files([w], progress=False)
    assert verify_weight(w) == sha(path.read_bytes())
    assert sorted(p.name for p in path.parent.iterdir()) == ["head.pth"]  # no .sha256 sidecar written
    assert not weights_env.exists()  # nothing went to the weights cache


def test_tampered_package_file_fails_naming_file_and_versions(shipped):
    w, path = shipped
    path.write_bytes(b"tampered")
    with pytest.raises(WeightsError) as info:
        ensure_files([w], progress=False)
    message = str(info.value)
    assert str(path.resolve()) in message and f"has sha256 {sha(b'tampered')}, expected {w.sha256}" in message
    # no distribution metadata for the test package: the installed version is unknown
    assert "shipped in pb_shipped_pkg (version unknown)" in message and "the file of pb_shipped_pkg 1.2" in message
    assert "pip install --force-reinstall pb_shipped_pkg==1.2" in message
    assert not sha256_sidecar(path).exists()


def test_package_without_the_file_or_not_installed(shipped, monkeypatch):
    w, path = shipped
    path.unlink()
    assert not is_present(w)
    monkeypatch.setenv("PERCEPBENCH_OFFLINE", "1")  # a WeightsError (install), not an OfflineError (download)
    with pytest.raises(WeightsError, match=r"does not exist: the installed pb_shipped_pkg .* does not ship "
                                           r"weights/head\.pth"):
        ensure_files([w], progress=False)
    gone = WeightFile("weights/head.pth", w.url, sha256=w.sha256, cache="package", package="pb_not_installed_pkg",
                      package_version="3.0")
    assert package_dir("pb_not_installed_pkg") is None and not is_present(gone)
    with pytest.raises(WeightsError, match=r"'pb_not_installed_pkg', which is not installed: "
                                           r"pip install pb_not_installed_pkg==3\.0"):
        weight_path(gone)


def test_offline_error_lists_only_downloadable_files(shipped, monkeypatch, weights_env):
    w, _ = shipped
    trunk = WeightFile("trunk.pth", "https://example.invalid/trunk.pth")
    monkeypatch.setenv("PERCEPBENCH_OFFLINE", "1")
    with pytest.raises(OfflineError) as info:
        ensure_files([trunk, w], progress=False)
    assert info.value.files == [(weights_env / "trunk.pth", "https://example.invalid/trunk.pth")]
    assert "head.pth" not in str(info.value)


@pytest.mark.parametrize("kwargs, problem", [
    ({"cache": "package", "package": "lpips", "package_version": "0.1.4"}, "needs `package`"),
    ({"cache": "package", "sha256": "0" * 64, "package_version": "0.1.4"}, "needs `package`"),
    ({"package": "lpips", "package_version": "0.1.4"}, "need cache='package'"),
    ({"cache": "package", "package": "lpips", "package_version": "1", "sha256": "0" * 64, "extract_to": "x"},
     "not an archive"),
    ({"sha256": "ABC"}, "64 lower-case hex digits"),
    ({"cache": "elsewhere"}, "cache must be"),
])
def test_weight_file_fields_are_checked(kwargs, problem):
    with pytest.raises(ValueError, match=problem):
        WeightFile("w.pth", "https://example.invalid/w.pth", **kwargs)


def test_verify_weight_checks_the_published_prefix(weights_env):
    weights_env.mkdir(parents=True)
    path = weights_env / "net-abcdef12.pth"
    path.write_bytes(b"not the published file")
    w = WeightFile(path.name, "https://example.invalid/net-abcdef12.pth", sha256_prefix="abcdef12")
    with pytest.raises(WeightsError, match=r"does not start with the published prefix abcdef12; delete it"):
        verify_weight(w)
    assert path.is_file()  # a check alone deletes nothing
    with pytest.raises(WeightsError, match="the file was deleted"):
        ensure_files([w], progress=False)  # ensure_files deletes it so that the next use downloads it again
    assert not path.exists() and not sha256_sidecar(path).exists()
    good = b"some bytes"
    path.write_bytes(good)
    assert verify_weight(dataclasses.replace(w, sha256_prefix=sha(good)[:8])) == sha(good)
