"""Shared test helpers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: the shared upstream fixtures beside the checkout; PERCEPBENCH_FIXTURES points elsewhere (the GPU check
#: carries a copy, see benchmarks/gpu_prepare.sh)
SHARED_FIXTURES = Path(os.environ.get("PERCEPBENCH_FIXTURES") or REPO.parent / "shared" / "fixtures")
PYTHON = sys.executable
#: PERCEPBENCH_TEST_DEVICE as given ("" when unset): ``PERCEPBENCH_TEST_DEVICE=cuda pytest`` runs the whole
#: suite with the device-dependent tests on CUDA
TEST_DEVICE_GIVEN = os.environ.get("PERCEPBENCH_TEST_DEVICE", "").strip()
#: the device of the device-dependent tests (``percepbench run --device TEST_DEVICE``); default ``cpu``.
#: Tests that need the CPU whatever this says (CPU autocast, exact CPU oracles) pass ``--device cpu``;
#: tests/test_gpu.py targets ``cuda`` when this is unset, and is skipped without a CUDA device.
TEST_DEVICE = TEST_DEVICE_GIVEN or "cpu"


def pytest_configure(config):
    """A PERCEPBENCH_TEST_DEVICE that this machine lacks stops the session with one message (rather than
    failing every device-dependent test)."""
    if not TEST_DEVICE_GIVEN:
        return
    import torch

    try:
        device = torch.device(TEST_DEVICE_GIVEN)
    except (RuntimeError, ValueError) as exc:
        raise pytest.UsageError(f"PERCEPBENCH_TEST_DEVICE={TEST_DEVICE_GIVEN!r} is not a torch device: {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError(f"PERCEPBENCH_TEST_DEVICE={TEST_DEVICE_GIVEN!r}, but CUDA is not available here "
                                "(unset it, or set it to cpu)")
    if device.type not in ("cpu", "cuda"):
        raise pytest.UsageError(f"PERCEPBENCH_TEST_DEVICE={TEST_DEVICE_GIVEN!r}: the tests run on cpu or cuda")


def pytest_report_header(config):
    return f"percepbench test device: {TEST_DEVICE} (PERCEPBENCH_TEST_DEVICE {TEST_DEVICE_GIVEN or 'unset'})"


@pytest.fixture
def register_temp():
    """Register specs for one test and remove them afterwards."""
    from percepbench.registry import METRICS, TASKS

    added: list[tuple[object, str]] = []

    def _register(spec):
        reg = METRICS if spec.__class__.__name__ == "MetricSpec" else TASKS
        reg.register(spec, source="test")
        added.append((reg, spec.name))
        return spec

    yield _register
    for reg, name in added:
        reg.unregister(name)


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No user-level cache/data settings leak into a test."""
    monkeypatch.setenv("PERCEPBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PERCEPBENCH_DATA", raising=False)
    return os.environ


@pytest.fixture
def weights_env(monkeypatch, tmp_path):
    """Online mode, no retry waits, and a private weights cache (returned)."""
    from percepbench import download as dl

    monkeypatch.setattr(dl, "_RETRY_WAIT_S", 0.0)
    for var in ("PERCEPBENCH_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PERCEPBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A LocalServer (tests/local_http.py) serving ``tmp_path / "served"``."""
    from local_http import LocalServer

    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    srv = LocalServer(tmp_path / "served")
    yield srv
    srv.close()


@pytest.fixture(scope="session", autouse=True)
def shared_fixtures_stay_untouched():
    """Tests read ../shared/fixtures and never write there (no sidecars, no outputs)."""
    def listing():
        return sorted(str(p.relative_to(SHARED_FIXTURES)) for p in SHARED_FIXTURES.rglob("*")) \
            if SHARED_FIXTURES.is_dir() else []

    before = listing()
    yield
    added = sorted(set(listing()) - set(before))
    assert not added, f"tests wrote into {SHARED_FIXTURES}: {added}"


@pytest.fixture(scope="session", autouse=True)
def private_caches(tmp_path_factory):
    """No test reads or writes the user's caches: torch hub (torchvision trunks), percepbench weights and
    embeddings, and the default data root (under XDG_CACHE_HOME) live in temporary folders for the whole
    session; a PERCEPBENCH_DATA or PERCEPBENCH_EMBED_CACHE of the user is ignored."""
    root = tmp_path_factory.mktemp("caches")
    names = ("TORCH_HOME", "PERCEPBENCH_CACHE", "XDG_CACHE_HOME", "PERCEPBENCH_DATA", "PERCEPBENCH_EMBED_CACHE")
    saved = {k: os.environ.get(k) for k in names}
    os.environ["TORCH_HOME"] = str(root / "torch")
    os.environ["PERCEPBENCH_CACHE"] = str(root / "percepbench")
    os.environ["XDG_CACHE_HOME"] = str(root / "xdg")
    os.environ.pop("PERCEPBENCH_DATA", None)
    os.environ.pop("PERCEPBENCH_EMBED_CACHE", None)
    yield root
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(autouse=True)
def torch_hub_dir_restored():
    """Code under test (the official dreamsim package) calls torch.hub.set_dir; undo it after each test,
    so that TORCH_HOME keeps deciding the hub dir."""
    import torch.hub

    saved = torch.hub._hub_dir
    yield
    torch.hub._hub_dir = saved
