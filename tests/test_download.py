"""percepbench.download against a real HTTP server on 127.0.0.1: resume, retries, checksums, offline, zips.

``LocalServer`` serves files from a temporary folder with ``Range`` support and switches to misbehave: drop
or stall the connection part-way through the first response, ignore ``Range``, answer an HTTP error
first, redirect. It records every request it receives.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import stat
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
import torch

from percepbench.download import (
    check_safetensors,
    check_torch_file,
    download,
    extract_tar,
    extract_zip,
    is_offline,
    recorded_sha256,
    sha256_file,
    sha256_sidecar,
    verify_file,
)
from percepbench.errors import OfflineError, WeightsError

from conftest import REPO
from local_http import LocalServer, closed_port_url  # noqa: F401  (LocalServer: used by other test modules)

pytestmark = pytest.mark.usefixtures("weights_env")


def payload(n: int = 300_000, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------------ download


def test_fresh_download_verifies_and_records_sha256(server, tmp_path):
    data = payload()
    url = server.add("w.bin", data)
    dest = tmp_path / "cache" / "sub" / "w.bin"
    assert download(url, dest, sha256=sha(data), size=len(data), progress=False) == dest
    assert dest.read_bytes() == data
    assert not (dest.parent / "w.bin.part").exists()
    assert sha256_sidecar(dest).read_text() == f"{sha(data)}  w.bin\n"
    assert recorded_sha256(dest) == sha(data)
    assert server.requests == [{"path": "/w.bin", "range": None}]


def test_existing_file_is_verified_not_downloaded_again(server, tmp_path):
    data = payload()
    url = server.add("w.bin", data)
    dest = tmp_path / "w.bin"
    download(url, dest, sha256=sha(data), progress=False)
    download(url, dest, sha256=sha(data), progress=False)
    assert len(server.requests) == 1
    with pytest.raises(WeightsError, match="fails its checksum"):
        download(url, dest, sha256="0" * 64, progress=False)
    assert len(server.requests) == 1


def test_redirect_is_followed(server, tmp_path):
    data = payload(50_000)
    server.add("real.bin", data)
    server.redirects["moved.bin"] = "real.bin"
    dest = download(f"{server.base}/moved.bin", tmp_path / "w.bin", sha256=sha(data), progress=False)
    assert dest.read_bytes() == data
    assert [r["path"] for r in server.requests] == ["/moved.bin", "/real.bin"]


def test_resume_after_dropped_connection(server, tmp_path):
    data = payload()
    url = server.add("w.bin", data)
    server.drop_after = 100_000
    dest = tmp_path / "w.bin"
    download(url, dest, sha256=sha(data), size=len(data), progress=False)
    assert [r["range"] for r in server.requests] == [None, "bytes=100000-"]
    assert dest.read_bytes() == data


def test_resume_after_stalled_connection_times_out(server, tmp_path):
    data = payload()
    url = server.add("w.bin", data)
    server.drop_after, server.drop_mode = 70_000, "stall"
    dest = tmp_path / "w.bin"
    download(url, dest, sha256=sha(data), progress=False, timeout=0.5)
    assert [r["range"] for r in server.requests] == [None, "bytes=70000-"]
    assert dest.read_bytes() == data


def test_resume_without_known_checksum(server, tmp_path):
    data = payload()
    url = server.add("w.bin", data)
    server.drop_after = 12_345
    dest = download(url, tmp_path / "w.bin", progress=False)
    assert dest.read_bytes() == data and recorded_sha256(dest) == sha(data)
    assert server.requests[1]["range"] == "bytes=12345-"


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    data = payload()
    url = server.add("w.bin", data)
    server.ignore_range = True
    dest = tmp_path / "w.bin"
    (tmp_path / "w.bin.part").write_bytes(b"x" * 5000)  # a leftover that must not end up in the file
    download(url, dest, sha256=sha(data), progress=False)
    assert [r["range"] for r in server.requests] == ["bytes=5000-"]
    assert dest.read_bytes() == data


def test_stale_part_failing_checksum_is_downloaded_again_from_zero(server, tmp_path):
    data = payload()
    url = server.add("w.bin", data)
    dest = tmp_path / "w.bin"
    (tmp_path / "w.bin.part").write_bytes(b"y" * 1000)  # not a prefix of the file
    download(url, dest, sha256=sha(data), progress=False)
    assert [r["range"] for r in server.requests] == ["bytes=1000-", None]
    assert dest.read_bytes() == data


def test_part_longer_than_file_restarts(server, tmp_path):
    data = payload(10_000)
    url = server.add("w.bin", data)
    (tmp_path / "w.bin.part").write_bytes(b"z" * 20_000)
    dest = download(url, tmp_path / "w.bin", progress=False)  # 416, then a fresh download
    assert dest.read_bytes() == data
    assert [r["range"] for r in server.requests] == ["bytes=20000-", None]


def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    data = payload()
    url = server.add("w.bin", data)
    dest = tmp_path / "w.bin"
    wrong = "ab" * 32
    with pytest.raises(WeightsError) as info:
        download(url, dest, sha256=wrong, progress=False)
    msg = str(info.value)
    assert "checksum mismatch" in msg and "w.bin" in msg and url in msg and wrong in msg and sha(data) in msg
    assert not isinstance(info.value, OfflineError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["served"]


def test_size_mismatch_leaves_nothing(server, tmp_path):
    data = payload(1000)
    url = server.add("w.bin", data)
    with pytest.raises(WeightsError, match="has 1000 bytes, expected 999"):
        download(url, tmp_path / "w.bin", size=999, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["served"]


def test_http_404_fails_at_once(server, tmp_path):
    url = f"{server.base}/nothing.bin"
    with pytest.raises(WeightsError, match="HTTP 404") as info:
        download(url, tmp_path / "w.bin", progress=False)
    assert not isinstance(info.value, OfflineError) and url in str(info.value)
    assert len(server.requests) == 1


def test_transient_http_error_is_retried(server, tmp_path):
    data = payload(1000)
    url = server.add("w.bin", data)
    server.fail_first = 503
    assert download(url, tmp_path / "w.bin", progress=False).read_bytes() == data
    assert len(server.requests) == 2


# ------------------------------------------------------------------------------------------------- sha256


def test_recorded_hash_catches_file_modified_after_download(server, tmp_path):
    data = payload()
    url = server.add("w.bin", data)
    dest = download(url, tmp_path / "w.bin", progress=False)  # no known hash: the recorded one guards it
    assert verify_file(dest) == sha(data)
    with open(dest, "r+b") as fh:
        fh.seek(1234)
        fh.write(bytes([data[1234] ^ 0xFF]))
    with pytest.raises(WeightsError, match="changed since it was downloaded") as info:
        verify_file(dest)
    assert str(dest) in str(info.value)
    with pytest.raises(WeightsError, match="changed since it was downloaded"):
        download(url, dest, progress=False)
    assert len(server.requests) == 1


def test_verify_file_records_hand_placed_file_and_checks_known_hash(tmp_path):
    f = tmp_path / "placed.pth"
    f.write_bytes(b"hello")
    assert recorded_sha256(f) is None
    assert verify_file(f) == sha(b"hello") == recorded_sha256(f)
    assert verify_file(f, sha(b"hello").upper(), size=5) == sha(b"hello")
    with pytest.raises(WeightsError, match=r"placed\.pth has 5 bytes, expected 6"):
        verify_file(f, size=6)
    with pytest.raises(WeightsError, match=r"placed\.pth fails its checksum"):
        verify_file(f, "1" * 64)
    with pytest.raises(WeightsError, match="does not exist"):
        verify_file(tmp_path / "absent.pth")
    sha256_sidecar(f).write_text("not a hash\n")
    with pytest.raises(WeightsError, match="unreadable"):
        verify_file(f)


def test_sha256_file_is_chunked(tmp_path):
    f = tmp_path / "big.bin"
    data = payload(3 * 2**20 + 17)
    f.write_bytes(data)
    assert sha256_file(f, chunk_size=4096) == sha256_file(f) == sha(data)


# ------------------------------------------------------------------------------------------------ offline


@pytest.mark.parametrize("var", ["PERCEPBENCH_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_env_blocks_the_network(server, tmp_path, monkeypatch, var):
    url = server.add("w.bin", b"data")
    dest = tmp_path / "cache" / "w.bin"
    assert not is_offline()
    monkeypatch.setenv(var, "1")
    assert is_offline()
    with pytest.raises(OfflineError) as info:
        download(url, dest, progress=False)
    msg = str(info.value)
    assert str(dest) in msg and url in msg and f"{var}=1" in msg
    assert info.value.files == [(dest, url)]
    assert server.requests == []
    assert not dest.parent.exists()
    monkeypatch.setenv(var, "0")
    assert not is_offline()


def test_network_failure_raises_offline_error_listing_file_and_url(tmp_path):
    url = closed_port_url()
    dest = tmp_path / "w.bin"
    t0 = time.perf_counter()
    with pytest.raises(OfflineError) as info:
        download(url, dest, progress=False, retries=2, timeout=2)
    assert time.perf_counter() - t0 < 5
    msg = str(info.value)
    assert "network failed after 3 attempt(s)" in msg and str(dest) in msg and url in msg
    assert "refused" in msg.lower()
    assert not dest.exists()


def test_network_failure_mid_download_keeps_part_for_resume(server, tmp_path, monkeypatch):
    data = payload()
    url = server.add("w.bin", data)
    server.drop_after = 40_000
    dest = tmp_path / "w.bin"
    with pytest.raises(OfflineError, match="the next attempt resumes"):
        download(url, dest, progress=False, retries=0)
    assert (tmp_path / "w.bin.part").stat().st_size == 40_000
    download(url, dest, sha256=sha(data), progress=False)
    assert server.requests[-1]["range"] == "bytes=40000-" and dest.read_bytes() == data


# ---------------------------------------------------------------------------------------------------- zip


def make_zip(path: Path, members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_extract_zip_puts_files_in_place(tmp_path):
    z = make_zip(tmp_path / "a.zip", {"ensemble_lora/adapter_config.json": b"{}",
                                      "ensemble_lora/adapter_model.safetensors": b"x" * 100,
                                      "top.txt": b"t"})
    target = tmp_path / "cache"
    out = extract_zip(z, target)
    assert sorted(out) == sorted([target / "ensemble_lora" / "adapter_config.json",
                                  target / "ensemble_lora" / "adapter_model.safetensors", target / "top.txt"])
    assert (target / "ensemble_lora" / "adapter_config.json").read_bytes() == b"{}"
    assert sorted(p.name for p in target.iterdir()) == ["ensemble_lora", "top.txt"]  # no staging left


def test_extract_zip_replaces_an_existing_entry(tmp_path):
    target = tmp_path / "cache"
    (target / "ensemble_lora").mkdir(parents=True)
    (target / "ensemble_lora" / "stale.bin").write_bytes(b"old")
    z = make_zip(tmp_path / "a.zip", {"ensemble_lora/adapter_config.json": b"{}"})
    extract_zip(z, target)
    assert sorted(p.name for p in (target / "ensemble_lora").iterdir()) == ["adapter_config.json"]


def test_truncated_zip_is_refused(tmp_path):
    z = make_zip(tmp_path / "a.zip", {"ensemble_lora/adapter_config.json": payload(5000)})
    z.write_bytes(z.read_bytes()[:-300])
    with pytest.raises(WeightsError, match="truncated or corrupt") as info:
        extract_zip(z, tmp_path / "out")
    assert str(z) in str(info.value) and "download it again" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_corrupt_zip_member_is_refused(tmp_path):
    z = make_zip(tmp_path / "a.zip", {"f.bin": b"A" * 1000}, zipfile.ZIP_STORED)
    raw = bytearray(z.read_bytes())
    raw[raw.index(b"A" * 1000) + 500] = ord("B")
    z.write_bytes(bytes(raw))
    with pytest.raises(WeightsError, match=r"'f\.bin' fails its CRC check"):
        extract_zip(z, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _symlink_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "../../evil.txt")
    return path


@pytest.mark.parametrize("member", ["../evil.txt", "/abs.txt", "ok/../../evil.txt", "C:/evil.txt",
                                    "..\\evil.txt", "symlink"])
def test_malicious_zip_members_are_refused(tmp_path, member):
    box = tmp_path / "box"
    target = box / "cache"
    target.mkdir(parents=True)
    if member == "symlink":
        z, shown = _symlink_zip(tmp_path / "evil.zip"), "link"
    else:
        with zipfile.ZipFile(tmp_path / "evil.zip", "w") as zf:
            zf.writestr("fine.txt", b"fine")
            zf.writestr(zipfile.ZipInfo(member), b"evil")
        z, shown = tmp_path / "evil.zip", member
    with pytest.raises(WeightsError, match="refusing to extract") as info:
        extract_zip(z, target)
    assert repr(shown) in str(info.value)
    assert list(target.iterdir()) == []  # all or nothing
    assert [p.name for p in box.iterdir()] == ["cache"]
    assert not any(p.name in ("evil.txt", "abs.txt") for p in tmp_path.rglob("*"))


# ---------------------------------------------------------------------------------------------------- tar


def make_tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tf.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tf.addfile(info, io.BytesIO(m[1]))
    return path


def tar_link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize(("suffix", "mode"), [(".tar", "w"), (".tar.gz", "w:gz"), (".tar.bz2", "w:bz2"),
                                              (".tar.xz", "w:xz")])
def test_extract_tar_puts_files_in_place_and_merges_nothing_it_should_not(tmp_path, suffix, mode):
    d = tarfile.TarInfo("dataset/jnd")
    d.type = tarfile.DIRTYPE
    t = make_tar(tmp_path / f"a{suffix}", [d, ("./dataset/jnd/val/a.png", b"A" * 3000), ("dataset/top.txt", b"t"),
                                            tar_link("dataset/jnd/link.png", "val/a.png"),
                                            tar_link("dataset/hard.png", "dataset/jnd/val/a.png", tarfile.LNKTYPE)],
                 mode)
    target = tmp_path / "out"
    (target / "dataset").mkdir(parents=True)
    (target / "dataset" / "stale.txt").write_bytes(b"old")  # a top-level entry of the same name is replaced
    out = extract_tar(t, target)
    assert sorted(out) == sorted([target / "dataset/jnd/val/a.png", target / "dataset/top.txt",
                                  target / "dataset/jnd/link.png", target / "dataset/hard.png"])
    assert (target / "dataset/jnd/link.png").is_symlink() and (target / "dataset/jnd/link.png").read_bytes() == b"A" * 3000
    assert (target / "dataset/hard.png").read_bytes() == b"A" * 3000
    assert sorted(p.name for p in target.iterdir()) == ["dataset"] and not (target / "dataset/stale.txt").exists()


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_truncated_tar_is_refused(tmp_path, mode):
    t = make_tar(tmp_path / "a.tar", [("d/one.bin", payload(20_000)), ("d/two.bin", payload(20_000, 1))], mode)
    raw = t.read_bytes()
    # mid-member; for gzip also the 8-byte trailer (CRC, size) cut off: the data itself is all there.
    # (Cutting a plain tar's zero padding loses nothing, so that is not refused.)
    for cut in (len(raw) // 2, *([len(raw) - 6] if mode == "w:gz" else [])):
        t.write_bytes(raw[:cut])
        with pytest.raises(WeightsError, match="truncated or corrupt") as info:
            extract_tar(t, tmp_path / "out")
        assert str(t) in str(info.value) and "download it again" in str(info.value)
        assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_tar_cut_at_a_member_boundary_is_refused(tmp_path):
    t = make_tar(tmp_path / "a.tar", [("one.bin", b"x" * 512), ("two.bin", b"y" * 512)], "w")
    t.write_bytes(t.read_bytes()[:1024])  # header + data of the first member, nothing after it
    with pytest.raises(WeightsError, match="no end-of-archive block"):
        extract_tar(t, tmp_path / "out")
    garbage = make_tar(tmp_path / "b.tar", [("one.bin", b"x" * 512)], "w")
    garbage.write_bytes(garbage.read_bytes()[:1024] + b"\x01" * 1024)  # not a header, not the end
    with pytest.raises(WeightsError, match="no end-of-archive block"):
        extract_tar(garbage, tmp_path / "out")


def test_not_a_tar_is_refused(tmp_path):
    f = tmp_path / "a.tar.gz"
    f.write_bytes(b"this is not an archive" * 100)
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        extract_tar(f, tmp_path / "out")
    with pytest.raises(WeightsError, match="does not exist"):
        extract_tar(tmp_path / "missing.tar", tmp_path / "out")


def _special(name: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info


@pytest.mark.parametrize(("member", "problem"), [
    (("../evil.txt", b"evil"), "outside the target folder"),
    (("ok/../../evil.txt", b"evil"), "outside the target folder"),
    (("/abs.txt", b"evil"), "absolute path"),
    (("C:/evil.txt", b"evil"), "absolute path"),
    (tar_link("link", "../../evil.txt"), "is a link to '../../evil.txt', outside"),
    (tar_link("a/b/link", "../../../evil.txt"), "outside the target folder"),
    (tar_link("link", "/etc/passwd"), "is a link to '/etc/passwd', outside"),
    (tar_link("hard", "/etc/passwd", tarfile.LNKTYPE), "absolute path"),
    (tar_link("hard", "fine.txt_not_there", tarfile.LNKTYPE), "not an earlier file"),
    (_special("dev", tarfile.CHRTYPE), "is a device file"),
    (_special("blk", tarfile.BLKTYPE), "is a device file"),
    (_special("fifo", tarfile.FIFOTYPE), "is a FIFO"),
    (("fine.txt", b"again"), "twice"),
])
def test_malicious_tar_members_are_refused(tmp_path, member, problem):
    box = tmp_path / "box"
    target = box / "out"
    target.mkdir(parents=True)
    t = make_tar(tmp_path / "evil.tar.gz", [("fine.txt", b"fine"), member])
    with pytest.raises(WeightsError, match="refusing to extract") as info:
        extract_tar(t, target)
    assert problem in str(info.value)
    assert list(target.iterdir()) == []  # all or nothing
    assert [p.name for p in box.iterdir()] == ["out"]
    assert not any(p.name in ("evil.txt", "abs.txt") for p in tmp_path.rglob("*"))


def test_tar_cannot_write_through_its_own_link(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    # "dir" -> "." is inside; then a file written through a chain that resolves outside must be refused
    t = make_tar(tmp_path / "evil.tar", [tar_link("up", "."), tar_link("sub/up2", ".."),
                                         ("sub/up2/up/x.txt", b"inside is fine")], "w")
    out = extract_tar(t, tmp_path / "target")
    assert (tmp_path / "target" / "x.txt").read_bytes() == b"inside is fine" and len(out) == 3
    assert list(outside.iterdir()) == []


# ------------------------------------------------------------------------------------------- safetensors


def test_check_safetensors_accepts_a_real_file(tmp_path):
    from safetensors.torch import save_file

    f = tmp_path / "m.safetensors"
    save_file({"a": torch.zeros(3, 4), "b": torch.ones(5, dtype=torch.float16), "c": torch.zeros(0)}, f,
              metadata={"format": "pt"})
    header = check_safetensors(f)
    assert header["a"]["shape"] == [3, 4] and header["__metadata__"] == {"format": "pt"}


def _raw_safetensors(header: dict, data: bytes) -> bytes:
    h = json.dumps(header).encode()
    return len(h).to_bytes(8, "little") + h + data


@pytest.mark.parametrize(("content", "problem"), [
    (b"\x01\x02", "too short"),
    (b"\xff" * 8 + b"{}", "does not fit"),
    ((40).to_bytes(8, "little") + b"\x89garbage-not-json" + b"\x00" * 30, "not JSON"),
    ((2).to_bytes(8, "little") + b"[]", "not a JSON object"),
    (_raw_safetensors({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 32]}}, b"\x00" * 16), "outside"),
    (_raw_safetensors({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}}, b"\x00" * 12), "needs 16 bytes"),
    (_raw_safetensors({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\x00" * 8), "expected 0"),
    (_raw_safetensors({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\x00" * 8), "inconsistent"),
    (_raw_safetensors({"a": {"dtype": "F32", "shape": [1]}}, b"\x00" * 4), "data_offsets"),
])
def test_check_safetensors_rejects_bad_headers(tmp_path, content, problem):
    f = tmp_path / "bad.safetensors"
    f.write_bytes(content)
    with pytest.raises(WeightsError, match=problem) as info:
        check_safetensors(f)
    assert str(f) in str(info.value)


def test_check_safetensors_rejects_truncated_file(tmp_path):
    from safetensors.torch import save_file

    f = tmp_path / "m.safetensors"
    save_file({"a": torch.zeros(64, 64)}, f)
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(WeightsError, match=r"m\.safetensors is not a valid safetensors file"):
        check_safetensors(f)


# ---------------------------------------------------------------------------------------------- torch files


class NotAllowed:
    """A pickled object of this class needs weights_only=False, which percepbench never uses."""


def test_check_torch_file(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}}, good)
    assert torch.equal(check_torch_file(good)["state_dict"]["w"], torch.ones(2))
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"obj": NotAllowed()}, unsafe)
    with pytest.raises(WeightsError, match=r"unsafe\.pth"):
        check_torch_file(unsafe)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:50])
    with pytest.raises(WeightsError, match=r"truncated\.pth"):
        check_torch_file(truncated)


def test_no_code_loads_with_weights_only_false():
    pattern = re.compile(r"weights_only\s*=\s*False")
    offenders = [
        str(p.relative_to(REPO))
        for folder in ("percepbench", "metrics_registry", "tasks", "reports")
        for p in (REPO / folder).rglob("*.py")
        if pattern.search(p.read_text(encoding="utf-8", errors="replace"))
    ]
    assert offenders == [], f"torch.load(weights_only=False) in {offenders}"
