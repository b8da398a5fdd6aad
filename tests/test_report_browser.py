"""report.html in a real browser: headless Debian Chromium driven by Playwright (no browser download).

The module fixture installs Debian's ``chromium`` package with apt-get when ``/usr/bin/chromium`` is missing
and the tests run as root on a system with apt (``apt-get update`` only when apt knows no candidate);
anywhere else the tests skip and say why.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from percepbench.reports import build_report

from report_data import make_run

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]
APT_TIMEOUT_S = 900
pytestmark = pytest.mark.slow


def _say(config: pytest.Config, text: str) -> None:
    """Print past pytest's output capture (installing a browser should never be silent)."""
    capture = config.pluginmanager.getplugin("capturemanager")
    ctx = capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()
    with ctx:
        print(f"[test_report_browser] {text}", flush=True)


def _apt(config: pytest.Config, args: list[str]) -> subprocess.CompletedProcess:
    cmd = ["apt-get", *args]
    _say(config, "running: DEBIAN_FRONTEND=noninteractive " + " ".join(cmd))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=APT_TIMEOUT_S, check=False,
                          env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def _has_candidate() -> bool:
    out = subprocess.run(["apt-cache", "policy", "chromium"], capture_output=True, text=True, timeout=60,
                         check=False).stdout
    return "Candidate:" in out and "Candidate: (none)" not in out


def ensure_chromium(config: pytest.Config) -> str | None:
    """Make ``/usr/bin/chromium`` exist if this machine allows it; return why not, or None."""
    if os.path.exists(CHROMIUM):
        return None
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return f"{CHROMIUM} is missing and the tests do not run as root, so they cannot apt-get install it"
    if shutil.which("apt-get") is None or shutil.which("apt-cache") is None:
        return f"{CHROMIUM} is missing and there is no apt-get on this system to install Debian's chromium"
    t0 = time.monotonic()
    try:
        if not _has_candidate():
            res = _apt(config, ["update"])
            if res.returncode != 0:
                return f"apt-get update failed ({res.returncode}): {res.stderr.strip()[-500:]}"
        res = _apt(config, ["install", "-y", "--no-install-recommends", "chromium"])
    except subprocess.TimeoutExpired as exc:
        return f"installing chromium timed out after {exc.timeout:.0f} s"
    _say(config, f"apt-get install chromium: exit {res.returncode} after {time.monotonic() - t0:.0f} s")
    if res.returncode != 0 or not os.path.exists(CHROMIUM):
        return f"apt-get install chromium failed ({res.returncode}): {res.stderr.strip()[-500:]}"
    return None


@pytest.fixture(scope="module")
def browser(pytestconfig):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a test extra")
    reason = ensure_chromium(pytestconfig)
    if reason:
        pytest.skip(reason)
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def report_url(tmp_path_factory):
    # 4 items per subset: the records table's n column holds 4 (a subset), 12 (pooled) and 40 (odd-one-out)
    run = make_run(tmp_path_factory.mktemp("browser") / "run", per_subset=4,
                   metrics=("alpha", "beta.v1", "<script>alert(1)</script>", "zeta"))
    return build_report(run)["html"].resolve().as_uri()


@pytest.fixture
def loaded(browser, report_url):
    """The report page, loaded, with the console errors, page errors and request URLs it produced."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    state = SimpleNamespace(page=page, errors=[], requests=[])
    page.on("console", lambda msg: state.errors.append(f"console {msg.type}: {msg.text}")
            if msg.type == "error" else None)
    page.on("pageerror", lambda exc: state.errors.append(f"pageerror: {exc}"))
    page.on("request", lambda req: state.requests.append(req.url))
    page.goto(report_url, wait_until="load")
    yield state
    page.close()


def test_page_loads_without_errors_or_network(loaded):
    page = loaded.page
    page.wait_for_timeout(200)
    assert loaded.errors == []
    assert [u for u in loaded.requests if not u.startswith(("file://", "data:"))] == []
    assert page.title().startswith("percepbench report")
    assert page.locator("figure svg").count() == 6  # scores, agreement and margins of two tasks
    assert page.get_by_text("<script>alert(1)</script>").count() >= 1  # shown as text, never run


def _column(page, table: str, col: int) -> list[str]:
    return page.eval_on_selector_all(f"#{table} tbody tr", f"rows => rows.map(r => r.cells[{col}].textContent)")


def test_table_sorts_on_header_click(loaded):
    page = loaded.page
    table = "head-toy2afc"
    before = _column(page, table, 0)
    values = [float(v) for v in _column(page, table, 1)]
    assert values == sorted(values, reverse=True)  # best first as written
    page.click(f"#{table} th:nth-child(1)")
    names = _column(page, table, 0)
    assert names == sorted(before, key=str.lower) and names != before
    page.click(f"#{table} th:nth-child(2)")  # numeric column, ascending
    asc = [float(v) for v in _column(page, table, 1)]
    assert asc == sorted(asc)
    page.click(f"#{table} th:nth-child(2)")  # again: descending
    desc = [float(v) for v in _column(page, table, 1)]
    assert desc == sorted(asc, reverse=True)
    assert page.get_attribute(f"#{table} th:nth-child(2)", "aria-sort") == "descending"
    # numbers sort as numbers, not text: "4" < "12" < "40" in the n column of the records table
    page.click("#records summary")  # the records table sits in a closed <details>
    page.click("#records-table th:nth-child(7)")
    counts = [int(float(v)) for v in _column(page, "records-table", 6)]
    assert counts == sorted(counts) and {4, 12, 40} <= set(counts)
    assert loaded.errors == []


def test_full_page_screenshot_is_not_blank(loaded, tmp_path):
    page = loaded.page
    path = tmp_path / "report.png"
    page.screenshot(path=str(path), full_page=True)
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape[0] > 2000  # a long page with figures, not an empty one
    non_white = float((img.min(axis=2) < 245).mean())
    colours = len(np.unique(img[::4, ::4].reshape(-1, 3), axis=0))
    assert non_white > 0.03 and colours > 100, (non_white, colours)
