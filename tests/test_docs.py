"""Docstring examples run, and the README's quick start matches what CI runs."""

from __future__ import annotations

import doctest
import importlib
import re

import numpy as np
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
    "percepbench.search",
    "percepbench.tasks.retrieval",
    "percepbench.correlation",
    "percepbench.config",
    "percepbench.metrics_registry.flip",
    "percepbench.metrics_registry.stlpips",
    "percepbench.metrics_registry.pieapp",
    "percepbench.tasks.mos_files",
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
    assert commands == [
        "python3.11 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/percepbench run",
        "python3.11 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/pytest",
    ], "the README opens with exactly two copy-paste commands: set up and run, set up and test"
    ci = (REPO / ".ci" / "run").read_text()
    assert commands[1] in ci.splitlines()


#: a fenced block: its language and body; an output block is a ``text`` block that follows a Python block
#: with at most one short paragraph (e.g. "prints:") between them
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", flags=re.S | re.M)
NUMBER = re.compile(r"-?\d+\.\d+(?:e[-+]?\d+)?")


def _python_blocks() -> list[tuple[str, str | None]]:
    """Each README Python block with the output the README shows for it (None: it shows none)."""
    readme = (REPO / "README.md").read_text()
    fences = list(FENCE.finditer(readme))
    blocks = []
    for i, fence in enumerate(fences):
        if fence.group(1) != "python":
            continue
        nxt = fences[i + 1] if i + 1 < len(fences) else None
        between = readme[fence.end():nxt.start()] if nxt else ""
        shown = nxt is not None and nxt.group(1) == "text" and len(between.strip()) < 200 and "#" not in between
        blocks.append((fence.group(2), nxt.group(2) if shown else None))
    return blocks


def same_output(printed: str, shown: str, rel: float = 1e-3, abs_: float = 2e-4) -> bool:
    """``printed`` reads as ``shown``: the same text with every decimal number equal within the tolerance
    (distances computed on another machine may differ in the last printed digit)."""
    if NUMBER.sub("#", printed.strip()) != NUMBER.sub("#", shown.strip()):
        return False
    got, want = (np.array(NUMBER.findall(t), dtype=float) for t in (printed, shown))
    return bool(np.allclose(got, want, rtol=rel, atol=abs_))


def test_output_comparison_can_fail():
    assert same_output("tensor([0.0146, 0.0150])\n", "tensor([0.0146, 0.0149])")
    assert not same_output("tensor([0.0146, 0.0160])", "tensor([0.0146, 0.0149])")
    assert not same_output("tensor([0.0146])", "tensor([0.0146, 0.0149])")
    assert not same_output("['piq.dss']", "['piq.fsim']")
    assert not same_output("", "tensor([0.0146])")


def test_readme_shows_the_output_of_the_printing_example():
    printing = [(code, shown) for code, shown in _python_blocks() if "print(" in code]
    assert printing and all(shown is not None for _, shown in printing), "a Python block that prints shows its output"


@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_readme_python_examples_run(index, tmp_path, monkeypatch, capsys):
    """Every README Python example runs and prints what the README shows after it (nothing when it shows
    nothing), except those that say on their first line what they need."""
    code, shown = _python_blocks()[index]
    if code.startswith("# needs "):
        pytest.skip(code.splitlines()[0])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PERCEPBENCH_CACHE", str(tmp_path / "cache"))
    exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "readme_example"})
    printed = capsys.readouterr().out
    if shown is None:
        assert printed == ""
    else:
        assert same_output(printed, shown), f"README python block {index} printed:\n{printed}\nthe README shows:\n{shown}"
