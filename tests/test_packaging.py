"""The wheel holds the three mapped packages, and they import from an install of it."""

from __future__ import annotations

import ast
import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from percepbench.registry import METRICS, TASKS

from conftest import PYTHON, REPO


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([PYTHON, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(REPO)],
                   check=True, capture_output=True, text=True, timeout=300)
    (whl,) = dist.glob("percepbench-*.whl")
    return whl


@pytest.mark.slow
def test_wheel_contains_mapped_packages(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ["percepbench/__init__.py", "percepbench/cli.py", "percepbench/registry.py",
                   "percepbench/metrics_registry/__init__.py", "percepbench/metrics_registry/classical.py",
                   "percepbench/tasks/__init__.py", "percepbench/tasks/severity.py",
                   "percepbench/reports/__init__.py", "percepbench/reports/summary.py"]:
        assert module in names, module
    assert not any(n.startswith(("tasks/", "reports/", "metrics_registry/", "tests/")) for n in names)
    # every module of the source tree is in the wheel (a subpackage missing from pyproject's list is not)
    mapping = {"percepbench": "percepbench", "metrics_registry": "percepbench/metrics_registry",
               "tasks": "percepbench/tasks", "reports": "percepbench/reports"}
    for folder, target in mapping.items():
        for src in (REPO / folder).rglob("*.py"):
            rel = src.relative_to(REPO / folder).as_posix()
            assert f"{target}/{rel}" in names, f"{folder}/{rel} is missing from the wheel"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "percepbench = percepbench.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


@pytest.mark.slow
def test_mapped_packages_import_from_installed_wheel(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([PYTHON, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target", str(site),
                    str(wheel)], check=True, capture_output=True, text=True, timeout=300)
    code = (
        "import sys\n"
        "import percepbench, percepbench.metrics_registry, percepbench.tasks, percepbench.reports\n"
        "import percepbench.cli, percepbench.models.dreamsim, percepbench.reports.build\n"
        "from percepbench.registry import METRICS, TASKS\n"
        "print(percepbench.__file__)\n"
        "print(percepbench.tasks.__file__)\n"
        "print(METRICS.names())\n"
        "print(TASKS.names())\n"
        # the development checkout's editable finder must not have supplied any module
        "print(sorted(m.__file__ for n, m in list(sys.modules.items())\n"
        "             if n.startswith('percepbench') and getattr(m, '__file__', None)))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(site))
    res = subprocess.run([PYTHON, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.split("\n")
    assert lines[0].startswith(str(site)) and lines[1].startswith(str(site / "percepbench" / "tasks"))
    # the installed wheel registers exactly the metrics and tasks of the checkout
    assert ast.literal_eval(lines[2]) == METRICS.names() and ast.literal_eval(lines[3]) == TASKS.names()
    files = ast.literal_eval(lines[4])  # the printed list of module paths
    assert [f for f in files if not f.startswith(str(site))] == []
    loaded = {Path(f).relative_to(site).as_posix() for f in files}
    assert {"percepbench/__init__.py", "percepbench/metrics_registry/__init__.py", "percepbench/tasks/__init__.py",
            "percepbench/reports/__init__.py", "percepbench/reports/build.py", "percepbench/cli.py",
            "percepbench/models/dreamsim.py"} <= loaded
