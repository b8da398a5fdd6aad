"""Two real processes fetching the same file or dataset part at once, against a slow server on 127.0.0.1.

Every rank of a multi-GPU job builds its metric at the same moment, so ``ensure_files`` and ``data download``
must let one process download while the others wait for it and then verify what it wrote. Each test starts
two Python processes that wait at a barrier (a file the test creates) and then call percepbench together,
while the server sends the file slowly enough that the two calls overlap.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import tarfile
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

from percepbench.download import download, recorded_sha256

from conftest import PYTHON, REPO

pytestmark = pytest.mark.usefixtures("weights_env")

RATE = 200_000  # bytes per second: the bodies below take about 1.5 s to send


def body(n: int = 300_000) -> bytes:
    return hashlib.sha256(b"seed").digest() * (n // 32)


def start(code: str, tmp_path: Path, name: str, env: dict[str, str]) -> subprocess.Popen:
    """A Python process that runs ``code``; ``code`` calls ``wait_go()`` after its imports, which says it is
    ready and waits for ``<tmp_path>/go``, so that the calls after it start together."""
    script = textwrap.dedent(f"""
        import time
        from pathlib import Path

        def wait_go():
            Path({str(tmp_path / f"ready-{name}")!r}).touch()
            while not Path({str(tmp_path / "go")!r}).exists():
                time.sleep(0.01)
    """) + textwrap.dedent(code)
    return subprocess.Popen([PYTHON, "-c", script], cwd=REPO, env={**os.environ, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def run_together(tmp_path: Path, codes: dict[str, str], env: dict[str, str]) -> dict[str, subprocess.CompletedProcess]:
    procs = {name: start(code, tmp_path, name, env) for name, code in codes.items()}
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready-{name}").exists() for name in procs):
        assert time.monotonic() < deadline, "the processes did not start"
        assert all(p.poll() is None for p in procs.values()), [p.communicate() for p in procs.values()]
        time.sleep(0.05)
    (tmp_path / "go").touch()
    out = {}
    for name, p in procs.items():
        stdout, stderr = p.communicate(timeout=180)
        out[name] = subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)
    return out


def overlapped(done: dict[str, subprocess.CompletedProcess]) -> None:
    """Both processes succeeded, and their calls ran at the same time (else the test proves nothing)."""
    spans = []
    for r in done.values():
        assert r.returncode == 0 and r.stdout.split()[0] == "ok", r.stderr
        spans.append([float(t) for t in r.stdout.split()[1:3]])
    assert max(b for b, _ in spans) < min(e for _, e in spans), spans


ENSURE = """
    from percepbench.specs import WeightFile
    from percepbench.weights import ensure_files
    wait_go()
    began = time.time()
    ensure_files([WeightFile(filename={filename!r}, url={url!r}{extra})], {cache!r}, progress=False)
    print("ok", began, time.time())
"""


def test_two_processes_ensure_the_same_file_once(server, tmp_path):
    data = body()
    url = server.add("w.bin", data)
    server.rate = RATE
    cache = str(tmp_path / "cache")
    code = ENSURE.format(filename="w.bin", url=url, extra="", cache=cache)
    done = run_together(tmp_path, {"a": code, "b": code}, {})
    overlapped(done)
    dest = Path(cache) / "w.bin"
    assert dest.read_bytes() == data and recorded_sha256(dest) == hashlib.sha256(data).hexdigest()
    assert server.bodies == {"/w.bin": 1}  # one process downloaded, the other waited and verified
    assert sorted(p.name for p in dest.parent.iterdir()) == ["w.bin", "w.bin.lock", "w.bin.sha256"]


def test_two_processes_ensure_the_same_zip_once(server, tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("model_lora/adapter.bin", body())
        zf.writestr("backbone.pth", b"b" * 1000)
    url = server.add("weights.zip", buf.getvalue())
    server.rate = RATE
    cache = str(tmp_path / "cache")
    code = ENSURE.format(filename="weights.zip", url=url, extra=", extract_to='model_lora'", cache=cache)
    done = run_together(tmp_path, {"a": code, "b": code}, {})
    overlapped(done)
    assert (Path(cache) / "model_lora" / "adapter.bin").read_bytes() == body()
    assert (Path(cache) / "backbone.pth").read_bytes() == b"b" * 1000
    assert server.bodies == {"/weights.zip": 1}
    assert not [p for p in Path(cache).iterdir() if p.name.startswith(".extracting")]


def test_two_processes_extract_a_cached_zip_once(tmp_path):
    """The zip is already in the cache (placed by hand): one process extracts it, the other waits and then
    finds the extracted folder. Each process logs its extractions; an extraction takes a second."""
    cache = tmp_path / "cache"
    cache.mkdir()
    with zipfile.ZipFile(cache / "weights.zip", "w") as zf:
        zf.writestr("model_lora/adapter.bin", body())
    log = tmp_path / "extractions.log"
    code = f"""
        import percepbench.weights as W
        from percepbench.specs import WeightFile
        original = W.extract_zip

        def slow_logged(*args, **kwargs):
            with open({str(log)!r}, "a") as fh:
                fh.write("extract\\n")
            time.sleep(1.0)
            return original(*args, **kwargs)

        W.extract_zip = slow_logged
        wait_go()
        began = time.time()
        W.ensure_files([WeightFile(filename="weights.zip", url="http://127.0.0.1:9/weights.zip",
                                   extract_to="model_lora")], {str(cache)!r}, progress=False)
        print("ok", began, time.time())
    """
    overlapped(run_together(tmp_path, {"a": code, "b": code}, {}))
    assert log.read_text().splitlines() == ["extract"]
    assert (cache / "model_lora" / "adapter.bin").read_bytes() == body()


def test_two_processes_download_the_same_dataset_part_once(server, tmp_path):
    from layouts import JNDPair, bapps_jnd_files

    members = bapps_jnd_files({s: [JNDPair(f"{i:06d}", p0=50, p1=60, same=0.5) for i in range(20)]
                               for s in ("traditional", "cnn")}, size=32)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:  # uncompressed: large enough to take a while to send
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tf.addfile(info, io.BytesIO(content))
    server.add("jnd.tar.gz", buf.getvalue())
    server.rate = RATE / 2
    root = str(tmp_path / "data")
    code = f"""
        from percepbench.data import download_dataset
        wait_go()
        began = time.time()
        download_dataset("bapps", {root!r}, parts="jnd", progress=False)
        print("ok", began, time.time())
    """
    done = run_together(tmp_path, {"a": code, "b": code}, {"PERCEPBENCH_DATA_URL_BAPPS": server.base})
    overlapped(done)
    assert server.bodies == {"/jnd.tar.gz": 1}
    from percepbench.data import verify_dataset

    assert verify_dataset("bapps", root, parts="jnd", deep=True) == []
    for rel, content in members.items():
        assert (Path(root) / "bapps" / rel).read_bytes() == content, rel


def test_a_lock_holder_killed_with_sigkill_does_not_block_the_next_download(server, tmp_path):
    data = body(600_000)
    url = server.add("w.bin", data)
    server.rate = RATE / 4  # the holder would need 12 s
    dest = tmp_path / "cache" / "w.bin"
    holder = start(f"""
        from percepbench.download import download
        wait_go()
        download({url!r}, {str(dest)!r}, progress=False)
    """, tmp_path, "holder", {})
    (tmp_path / "go").touch()
    part = dest.with_name("w.bin.part")
    deadline = time.monotonic() + 60
    while not (part.exists() and part.stat().st_size > 0):
        assert time.monotonic() < deadline and holder.poll() is None, holder.communicate()
        time.sleep(0.02)
    assert dest.with_name("w.bin.lock").exists()
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    server.rate = None
    began = time.monotonic()
    assert download(url, dest, progress=False).read_bytes() == data
    assert time.monotonic() - began < 20
    assert server.requests[-1]["range"] is not None  # it resumed what the killed process had written
