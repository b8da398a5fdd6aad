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
    EXTRACT_RATIO_ENV,
    RangeReader,
    check_safetensors,
    check_torch_file,
    download,
    extract_tar,
    extract_zip,
    fetch_zip_member,
    is_offline,
    recorded_sha256,
    safe_member_parts,
    sha256_file,
    sha256_sidecar,
    trust_level,
    verify_file,
)
from percepbench.errors import DataError, DiskFullError, OfflineError, UsageError, WeightsError

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
    assert server.requests == [{"path": "/w.bin", "range": None, "if_range": None}]


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


def interrupted(server, url: str, dest: Path, after: int) -> Path:
    """Leave ``<dest>.part`` (with its validator record) as a download cut after ``after`` bytes leaves it."""
    server.drop_after = after
    with pytest.raises(OfflineError, match="bytes kept in"):
        download(url, dest, progress=False, retries=0)
    part = dest.with_name(dest.name + ".part")
    assert part.stat().st_size == after
    return part


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    data = payload()
    url = server.add("w.bin", data)
    dest = tmp_path / "w.bin"
    part = interrupted(server, url, dest, 5000)
    part.write_bytes(b"x" * 5000)  # bytes that must not end up in the file
    server.ignore_range = True
    download(url, dest, sha256=sha(data), progress=False)
    assert [r["range"] for r in server.requests] == [None, "bytes=5000-"]
    assert dest.read_bytes() == data


def test_stale_part_failing_checksum_is_downloaded_again_from_zero(server, tmp_path):
    data = payload()
    url = server.add("w.bin", data)
    dest = tmp_path / "w.bin"
    interrupted(server, url, dest, 1000).write_bytes(b"y" * 1000)  # damaged locally: not a prefix of the file
    download(url, dest, sha256=sha(data), progress=False)
    assert [r["range"] for r in server.requests] == [None, "bytes=1000-", None]
    assert dest.read_bytes() == data


def test_part_longer_than_file_restarts(server, tmp_path):
    data = payload(10_000)
    url = server.add("w.bin", data)
    dest = tmp_path / "w.bin"
    interrupted(server, url, dest, 1000).write_bytes(b"z" * 20_000)
    assert download(url, dest, progress=False).read_bytes() == data
    assert server.requests[-1]["range"] is None


# --------------------------------------------------------------------------------- trust on first use


def test_part_without_a_validator_record_is_not_resumed(server, tmp_path):
    """A leftover .part of unknown origin (another server, another file) is never resumed."""
    data = payload()
    url = server.add("w.bin", data)
    dest = tmp_path / "w.bin"
    (tmp_path / "w.bin.part").write_bytes(b"from another server" * 100)
    assert download(url, dest, progress=False).read_bytes() == data  # no known hash: nothing else catches it
    assert [r["range"] for r in server.requests] == [None]
    assert recorded_sha256(dest) == sha(data)


def test_part_is_resumed_only_while_its_validator_matches(server, tmp_path):
    old, new = payload(seed=1), payload(seed=2)
    url = server.add("w.bin", old)
    dest = tmp_path / "w.bin"
    part = interrupted(server, url, dest, 50_000)
    record = json.loads(part.with_name("w.bin.part.json").read_text())
    assert record["url"] == url and record["etag"] == f'"{sha(old)[:16]}"'
    server.add("w.bin", new)  # the file changed on the server since the .part was started
    assert download(url, dest, progress=False).read_bytes() == new
    assert server.requests[-1]["range"] == "bytes=50000-" and server.requests[-1]["if_range"] == record["etag"]
    assert recorded_sha256(dest) == sha(new) and not part.exists() and not part.with_name("w.bin.part.json").exists()
    # unchanged: the resume is honoured (206), so only the rest is fetched
    dest2 = tmp_path / "w2.bin"
    interrupted(server, url, dest2, 70_000)
    assert download(url, dest2, progress=False).read_bytes() == new
    assert server.requests[-1]["range"] == "bytes=70000-" and server.bodies["/w.bin"] == 4


def test_no_validator_means_no_resume(server, tmp_path):
    data = payload()
    url = server.add("w.bin", data)
    server.validators = False
    dest = tmp_path / "w.bin"
    interrupted(server, url, dest, 40_000)
    assert download(url, dest, progress=False).read_bytes() == data
    assert [r["range"] for r in server.requests] == [None, None]


def test_html_error_page_served_with_200_is_refused(server, tmp_path):
    page = b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>quota exceeded</body></html>"
    url = server.add("weights.zip", page)
    server.content_types["weights.zip"] = "text/html; charset=utf-8"
    with pytest.raises(WeightsError, match="HTML page") as info:
        download(url, tmp_path / "weights.zip", progress=False)
    assert url in str(info.value) and str(tmp_path / "weights.zip") in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".lock") == ["served"]  # nothing kept, no hash recorded
    # the same page without the telling Content-Type is refused by its content
    server.content_types.clear()
    with pytest.raises(WeightsError, match="not a zip archive"):
        download(url, tmp_path / "weights.zip", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".lock") == ["served"]


def _torch_bytes(tmp_path: Path, *, legacy: bool) -> bytes:
    f = tmp_path / f"t{legacy}.pth"
    torch.save({"w": torch.arange(4.0)}, f, _use_new_zipfile_serialization=not legacy)
    return f.read_bytes()


def _safetensors_bytes() -> bytes:
    from safetensors.torch import save

    return save({"w": torch.arange(4.0)})


def _tar_gz_bytes() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("a.txt")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
    return buf.getvalue()


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.txt", b"abc")
    return buf.getvalue()


@pytest.mark.parametrize(("name", "fmt", "problem"), [
    ("m.zip", None, "not a zip archive"),
    ("m.tar.gz", None, "not a tar archive"),
    ("m.pth", None, "not a torch checkpoint"),
    ("m.safetensors", None, "not a valid safetensors file"),
    ("m.bin", "zip", "not a zip archive"),
    ("m.bin", "tar", "not a tar archive"),
])
def test_declared_format_is_checked_before_a_download_is_accepted(server, tmp_path, name, fmt, problem):
    good = {"zip": _zip_bytes(), "tar": _tar_gz_bytes(), "torch": _torch_bytes(tmp_path, legacy=False),
            "safetensors": _safetensors_bytes()}
    kind = fmt or {".zip": "zip", ".gz": "tar", ".pth": "torch", ".safetensors": "safetensors"}[Path(name).suffix]
    url = server.add(name, b"\x00garbage that is no archive and no checkpoint" * 50)
    dest = tmp_path / "cache" / name
    with pytest.raises(WeightsError, match=problem) as info:
        download(url, dest, progress=False, format=fmt)
    assert str(dest) in str(info.value) and url in str(info.value)
    assert [p.name for p in dest.parent.iterdir()] == [f"{name}.lock"]  # the lock file stays, empty
    server.add(name, good[kind])
    assert download(url, dest, progress=False, format=fmt).read_bytes() == good[kind]


def test_legacy_torch_checkpoint_is_accepted(server, tmp_path):
    data = _torch_bytes(tmp_path, legacy=True)
    url = server.add("old.pth", data)
    assert download(url, tmp_path / "cache" / "old.pth", progress=False).read_bytes() == data


def test_trust_levels_say_what_was_checked():
    assert trust_level("ab" * 32) == "checked against a published sha256"
    assert trust_level(None) == "recorded on first use, never checked against a published value"
    assert trust_level(None, "abcd1234") == ("recorded on first use, checked only against the published sha256 "
                                             "prefix abcd1234")


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
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".lock") == ["served"]


def test_size_mismatch_leaves_nothing(server, tmp_path):
    data = payload(1000)
    url = server.add("w.bin", data)
    with pytest.raises(WeightsError, match="has 1000 bytes, expected 999"):
        download(url, tmp_path / "w.bin", size=999, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".lock") == ["served"]


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
    with pytest.raises(OfflineError, match="bytes kept in"):
        download(url, dest, progress=False, retries=0)
    assert (tmp_path / "w.bin.part").stat().st_size == 40_000
    download(url, dest, sha256=sha(data), progress=False)
    assert server.requests[-1]["range"] == "bytes=40000-" and dest.read_bytes() == data


# ------------------------------------------------------------------------------------ one member of a zip


def test_range_reader_serves_any_span_of_the_remote_file(server):
    data = payload(50_000, seed=3)
    url = server.add("big.bin", data)
    reader = RangeReader(url)
    assert reader.size == len(data) and reader.seekable()
    for start, n in ((0, 10), (49_990, 10), (12_345, 20_000), (49_999, 100)):
        reader.seek(start)
        buf = bytearray(n)
        got = reader.readinto(buf)
        assert bytes(buf[:got]) == data[start:start + n]
    assert reader.seek(-5, io.SEEK_END) == len(data) - 5
    assert all(r["range"] and r["range"].startswith("bytes=") for r in server.requests)


def test_range_reader_resumes_a_dropped_read(server):
    data = payload(200_000, seed=4)
    url = server.add("big.bin", data)
    reader = RangeReader(url)  # the probe is the first GET; the drop hits the first read after it
    server.drop_after = 1000
    reader.seek(5000)
    buf = bytearray(150_000)
    assert reader.readinto(buf) == 150_000 and bytes(buf) == data[5000:155_000]


@pytest.mark.parametrize("var", ["PERCEPBENCH_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_mode_refuses_range_reads(server, tmp_path, monkeypatch, var):
    member = payload(5000, seed=5)
    url = server.add("a.zip", make_zip(tmp_path / "a.zip", {"nights/data.csv": member}).read_bytes())
    reader = RangeReader(url)  # opened online
    before = len(server.requests)
    monkeypatch.setenv(var, "1")
    with pytest.raises(OfflineError, match=f"{var}=1"):
        reader.readinto(bytearray(10))  # the switch is read at every request
    with pytest.raises(OfflineError, match=f"cannot read {re.escape(url)}"):
        RangeReader(url)
    dest = tmp_path / "out" / "data.csv"
    with pytest.raises(OfflineError) as info:
        fetch_zip_member(url, "nights/data.csv", dest, progress=False)
    assert info.value.files == [(dest, url)] and "only the member nights/data.csv" in str(info.value)
    assert len(server.requests) == before and not dest.parent.exists()


def test_fetch_zip_member_network_failure_names_the_file_to_place(tmp_path):
    url, dest = closed_port_url("a.zip"), tmp_path / "out" / "data.csv"
    with pytest.raises(OfflineError) as info:
        fetch_zip_member(url, "nights/data.csv", dest, progress=False, retries=1)
    assert info.value.files == [(dest, url)] and "network failed after 2 attempt(s)" in str(info.value)
    assert not dest.exists()


def test_fetch_zip_member_reads_one_member_with_range_requests(server, tmp_path):
    wanted, filler = payload(20_000, seed=6), payload(400_000, seed=7)
    z = make_zip(tmp_path / "a.zip", {"nights/ref/000.png": filler, "nights/data.csv": wanted,
                                      "other/data.csv": b"x"}, zipfile.ZIP_STORED)
    url = server.add("a.zip", z.read_bytes())
    dest = tmp_path / "out" / "data.csv"
    assert fetch_zip_member(url, "nights/data.csv", dest, progress=False) == dest
    assert dest.read_bytes() == wanted and sha256_file(dest) == sha(wanted)
    assert all(r["range"] for r in server.requests)  # never the whole archive
    assert [p.name for p in dest.parent.iterdir()] == ["data.csv"]  # no temporary file left
    with pytest.raises(DataError, match=r"has no member 'data\.csv' \(members with that name: nights/data\.csv, "
                                        r"other/data\.csv\)"):
        fetch_zip_member(url, "data.csv", tmp_path / "x.csv", progress=False)
    server.ignore_range = True
    with pytest.raises(DataError, match="does not support HTTP range requests"):
        fetch_zip_member(url, "nights/data.csv", tmp_path / "y.csv", progress=False)
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "y.csv").exists()


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
    # a link to an earlier file is extracted as a copy of it, like a hard link: the tree holds no links
    assert not (target / "dataset/jnd/link.png").is_symlink()
    assert (target / "dataset/jnd/link.png").read_bytes() == b"A" * 3000
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
    # links to folders are refused, even ones that stay inside: nothing can be written through a link
    t = make_tar(tmp_path / "evil.tar", [tar_link("up", "."), tar_link("sub/up2", ".."),
                                         ("sub/up2/up/x.txt", b"inside is fine")], "w")
    with pytest.raises(WeightsError, match=re.escape("'up' is a link to '.', which is not an earlier file")):
        extract_tar(t, tmp_path / "target")
    assert list(outside.iterdir()) == [] and list((tmp_path / "target").iterdir()) == []


def test_tar_symlink_chain_from_issue_12_cannot_reach_outside(tmp_path):
    """``p/q -> ..`` then ``p/q/p/q/.../dataset -> ../../../victim``: each member looks inside when judged by
    its path in the archive, but in the real tree the chain climbs out to ``victim``."""
    victim = tmp_path / "victim"
    (victim / "jnd").mkdir(parents=True)
    (victim / "jnd" / "keep.txt").write_bytes(b"mine")
    target = tmp_path / "a" / "b" / "target"
    chain = "/".join(["p/q"] * 10)
    t = make_tar(tmp_path / "evil.tar.gz", [tar_link("p/q", ".."), tar_link(f"{chain}/dataset", "../" * 3 + "victim")])
    with pytest.raises(WeightsError, match="refusing to extract it") as info:
        extract_tar(t, target)
    assert "'p/q' is a link to '..'" in str(info.value)
    assert sorted(p.relative_to(victim).as_posix() for p in victim.rglob("*")) == ["jnd", "jnd/keep.txt"]
    assert (victim / "jnd" / "keep.txt").read_bytes() == b"mine" and list(target.iterdir()) == []


def test_tar_links_to_files_and_links_to_links_become_copies(tmp_path):
    t = make_tar(tmp_path / "a.tar", [("d/a.txt", b"A"), tar_link("d/l1", "a.txt"), tar_link("e/l2", "../d/l1"),
                                      tar_link("e/h", "e/l2", tarfile.LNKTYPE), tar_link("l3", "./e/./l2")], "w")
    target = tmp_path / "out"
    extract_tar(t, target)
    for rel in ("d/a.txt", "d/l1", "e/l2", "e/h", "l3"):
        assert not (target / rel).is_symlink() and (target / rel).read_bytes() == b"A", rel
    assert not any(p.is_symlink() for p in target.rglob("*"))


@pytest.mark.parametrize(("members", "problem"), [
    ([("d/a.txt", b"A"), tar_link("l", "d")], "'l' is a link to 'd', which is not an earlier file"),
    ([tar_link("l", "d/a.txt"), ("d/a.txt", b"A")], "'l' is a link to 'd/a.txt', which is not an earlier file"),
    ([("d/a.txt", b"A"), tar_link("l", "missing.txt")], "'l' is a link to 'missing.txt', which is not"),
    ([("d/a.txt", b"A"), tar_link("h", "d", tarfile.LNKTYPE)], "hard link to 'd', which is not an earlier file"),
    ([("d/a.txt", b"A"), tar_link("d/l", "."), tar_link("d/m", "l/a.txt")], "'d/l' is a link to '.'"),
])
def test_tar_links_to_folders_later_or_missing_members_are_refused(tmp_path, members, problem):
    target = tmp_path / "out"
    with pytest.raises(WeightsError, match="refusing to extract it") as info:
        extract_tar(make_tar(tmp_path / "a.tar", members, "w"), target)
    assert problem in str(info.value)
    assert list(target.iterdir()) == []


# ------------------------------------------------------------------------------------ bombs and full disks


BOMB = 80 << 20  # 80 MiB of zeros: compresses about a thousandfold, above the 64 MiB floor of the limit


def _bomb(tmp_path: Path, fmt: str) -> Path:
    if fmt == "zip":
        path = tmp_path / "bomb.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("zeros.bin", "w") as fh:
            for _ in range(BOMB >> 20):
                fh.write(bytes(1 << 20))
        return path
    path = tmp_path / "bomb.tar.gz"
    info = tarfile.TarInfo("zeros.bin")
    info.size = BOMB
    with tarfile.open(path, "w:gz", compresslevel=1) as tf:
        tf.addfile(info, io.BytesIO(bytes(BOMB)))
    return path


@pytest.mark.parametrize("fmt", ["zip", "tar"])
def test_archive_bomb_is_refused_and_the_limit_can_be_raised(tmp_path, monkeypatch, fmt):
    archive = _bomb(tmp_path, fmt)
    size = archive.stat().st_size
    assert size * 100 < BOMB  # really a bomb: it expands more than a hundredfold
    extract = extract_zip if fmt == "zip" else extract_tar
    target = tmp_path / "out"
    monkeypatch.delenv(EXTRACT_RATIO_ENV, raising=False)
    with pytest.raises(WeightsError) as info:
        extract(archive, target)
    msg = str(info.value)
    limit = max(10 * size, 64 << 20)
    assert msg.startswith(f"{fmt} {archive} expands to more than {limit} bytes")
    assert f"{EXTRACT_RATIO_ENV}" in msg and "refusing to extract it" in msg
    assert not target.exists() or list(target.iterdir()) == []  # all or nothing
    monkeypatch.setenv(EXTRACT_RATIO_ENV, "2000")
    (out,) = extract(archive, target)
    assert out.stat().st_size == BOMB
    out.unlink()
    (out,) = extract(archive, target, max_ratio=2000)
    monkeypatch.setenv(EXTRACT_RATIO_ENV, "ten")
    with pytest.raises(UsageError, match=f"{EXTRACT_RATIO_ENV}='ten' is not a number"):
        extract(archive, target)


class _FullDisk:
    """A file whose writes fail as on a full disk."""

    def __init__(self, fh):
        self._fh = fh

    def write(self, data):
        import errno
        import os

        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()


def _fill_disk_on_write(monkeypatch):
    import builtins

    from percepbench import download as dl

    def fake_open(path, mode="r", *args, **kwargs):
        fh = builtins.open(path, mode, *args, **kwargs)  # noqa: SIM115 (closed by the caller)
        return _FullDisk(fh) if any(c in mode for c in "wax") else fh

    monkeypatch.setattr(dl, "open", fake_open, raising=False)


@pytest.mark.parametrize("fmt", ["zip", "tar"])
def test_full_disk_during_extraction_names_the_file(tmp_path, monkeypatch, fmt):
    archive = (make_tar(tmp_path / "a.tar.gz", [("d/x.bin", b"x" * 1000)]) if fmt == "tar"
               else tmp_path / "a.zip")
    if fmt == "zip":
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("d/x.bin", b"x" * 1000)
    target = tmp_path / "out"
    _fill_disk_on_write(monkeypatch)
    with pytest.raises(DiskFullError) as info:
        (extract_zip if fmt == "zip" else extract_tar)(archive, target)
    msg = str(info.value)
    assert "no space left on the device" in msg and "/new/d/x.bin" in msg and str(target) in msg
    assert list(target.iterdir()) == []


def test_full_disk_during_download_names_the_file_and_keeps_the_part(server, tmp_path, monkeypatch):
    url = server.add("w.bin", payload())
    dest = tmp_path / "w.bin"
    _fill_disk_on_write(monkeypatch)
    with pytest.raises(DiskFullError) as info:
        download(url, dest, progress=False)
    msg = str(info.value)
    assert f"no space left on the device writing {dest}.part" in msg and url in msg
    assert not dest.exists() and len(server.requests) == 1  # not retried: a full disk is no network error


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


# ------------------------------------------------------------------------------------------ member safety


def _zip_special(name: str, mode: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = mode << 16
    return info


#: each unsafe member kind: (zip member, tar member, message fragment for zip, message fragment for tar)
UNSAFE = {
    "dotdot": (("../evil.txt", b"evil"), ("../evil.txt", b"evil"), "outside the target folder", None),
    "nested dotdot": (("ok/../../evil.txt", b"evil"), ("ok/../../evil.txt", b"evil"), "outside the target folder",
                      None),
    "backslash dotdot": (("ok\\..\\..\\evil.txt", b"evil"), ("ok\\..\\..\\evil.txt", b"evil"),
                         "outside the target folder", None),
    "absolute": (("/abs.txt", b"evil"), ("/abs.txt", b"evil"), "has an absolute path", None),
    "drive letter": (("C:/evil.txt", b"evil"), ("C:/evil.txt", b"evil"), "has an absolute path", None),
    "link leaving": ((_zip_special("link", stat.S_IFLNK | 0o777), b"../../evil.txt"),
                     tar_link("link", "../../evil.txt"), "is a symbolic link",
                     "is a link to '../../evil.txt', outside the target folder"),
    "device file": ((_zip_special("dev", stat.S_IFCHR | 0o644), b""), _special("dev", tarfile.CHRTYPE),
                    "is a device file", None),
    "fifo": ((_zip_special("fifo", stat.S_IFIFO | 0o644), b""), _special("fifo", tarfile.FIFOTYPE), "is a FIFO",
             None),
}


@pytest.mark.parametrize("fmt", ["zip", "tar"])
@pytest.mark.parametrize("kind", list(UNSAFE))
def test_every_unsafe_member_kind_is_refused_by_both_extractors(tmp_path, fmt, kind):
    zip_member, tar_member, zip_problem, tar_problem = UNSAFE[kind]
    box = tmp_path / "box"
    target = box / "out"
    target.mkdir(parents=True)
    if fmt == "zip":
        archive = tmp_path / "evil.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("fine.txt", b"fine")
            zf.writestr(*zip_member)
        name, problem = (zip_member[0].filename if isinstance(zip_member[0], zipfile.ZipInfo)
                         else zip_member[0]), zip_problem
        extract = extract_zip
    else:
        archive = make_tar(tmp_path / "evil.tar.gz", [("fine.txt", b"fine"), tar_member])
        name = tar_member.name if isinstance(tar_member, tarfile.TarInfo) else tar_member[0]
        problem, extract = tar_problem or zip_problem, extract_tar
    with pytest.raises(WeightsError) as info:
        extract(archive, target)
    msg = str(info.value)
    assert msg.startswith(f"{fmt} {archive} member {name!r}") and problem in msg
    assert msg.endswith("refusing to extract it")
    assert list(target.iterdir()) == []  # all or nothing
    assert [p.name for p in box.iterdir()] == ["out"]
    assert not any(p.name in ("evil.txt", "abs.txt") for p in tmp_path.rglob("*"))


@pytest.mark.parametrize(("name", "link", "problem"), [
    ("a\x00b", None, "has an absolute path"),
    ("", None, "has an absolute path"),
    ("\\\\server\\share", None, "has an absolute path"),
    ("a/D:evil", None, "outside the target folder"),
    ("a/b/link", "../../../x", "is a link to '../../../x', outside"),
    ("link", "", "is a link to '', outside"),
    ("link", "C:\\x", "is a link to 'C:\\\\x', outside"),
])
def test_safe_member_parts_refusals(name, link, problem):
    with pytest.raises(WeightsError, match="refusing to extract it") as info:
        safe_member_parts("tar t.tar", name, link=link)
    assert problem in str(info.value) and str(info.value).startswith(f"tar t.tar member {name!r}")


def test_safe_member_parts_accepts_what_stays_inside():
    # components by hand: '.' and empty components dropped, '\\' separates as '/' does
    assert safe_member_parts("zip z", "./a//b/./c.png") == ("a", "b", "c.png")
    assert safe_member_parts("zip z", "a\\b.png") == ("a", "b.png")
    assert safe_member_parts("zip z", "./") == ()
    # a link two folders down may climb two levels and no more
    assert safe_member_parts("tar t", "a/b/link", link="../../x") == ("a", "b", "link")
    assert safe_member_parts("tar t", "a/link", link="./b/../c") == ("a", "link")
