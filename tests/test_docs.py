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
    "percepbench.tasks.base",
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
