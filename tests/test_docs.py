"""Docstring examples run, and the README's quick start matches what CI runs."""

from __future__ import annotations

import doctest
import importlib
import re

import pytest

from conftest import REPO

MODULES_WITH_EXAMPLES = [
    "percepbench",
    "percepbench.stats",
    "percepbench.metrics_registry.classical",
    "percepbench.metrics_registry.dreamsim",
    "percepbench.models.dreamsim",
    "percepbench.tasks.base",
    "percepbench.tasks.things",
]


@pytest.mark.parametrize("name", MODULES_WITH_EXAMPLES)
def test_doctests(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", readme, flags=re.S)
    commands = [line.strip() for block in blocks[:2] for line in block.splitlines() if line.strip()]
    assert len(commands) == 2, "the README opens with exactly two copy-paste commands"
    run_cmd, test_cmd = commands
    assert run_cmd.endswith("percepbench run") and "pytest" in test_cmd
    ci = (REPO / ".ci" / "run").read_text()
    assert test_cmd in ci.splitlines()


def _python_blocks() -> list[str]:
    readme = (REPO / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", readme, flags=re.S)


@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_readme_python_examples_run(index, tmp_path, monkeypatch):
    """Every README Python example runs, except those that say on their first line what they need."""
    code = _python_blocks()[index]
    if code.startswith("# needs "):
        pytest.skip(code.splitlines()[0])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PERCEPBENCH_CACHE", str(tmp_path / "cache"))
    exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "readme_example"})
