"""`percepbench run` with no arguments: every offline metric on the built-in benchmark."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from percepbench.registry import METRICS
from percepbench.results import load_results
from percepbench.weights import usable_offline

from conftest import PYTHON


@pytest.mark.slow
def test_default_run_end_to_end(tmp_path):
    env = dict(os.environ, PERCEPBENCH_CACHE=str(tmp_path / "cache"))
    res = subprocess.run([PYTHON, "-m", "percepbench.cli", "run", "--quiet"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert f"results: {run_dir.relative_to(tmp_path)}" in res.stdout
    results = load_results(run_dir)
    assert results.complete and not results.meta["failed"]
    expected = {s.name for s in METRICS.specs() if usable_offline(s)}
    assert set(results.records["metric"]) == expected
    pooled = results.records[results.records["subset"] == "all"].set_index("metric")["value"]
    # the proxy labels are easy for pixel metrics: PSNR and SSIM agree with them most of the time
    assert pooled["psnr"] > 85 and pooled["ssim"] > 85
    assert (pooled > 60).all(), pooled
    assert results.records["n"].max() == 256
    # the report is written at the end of the run
    assert (run_dir / "report" / "report.html").is_file() and (run_dir / "report" / "scores_severity2afc.png").is_file()

    # the CI recipe: the committed baseline of the default benchmark is reproduced exactly
    from percepbench.reports.compare import compare_runs

    comparison = compare_runs(BASELINE, run_dir)
    assert comparison.exit_code == 0, comparison.to_text()
    assert set(comparison.rows["status"]) == {"ok"}, comparison.to_text()
    assert (comparison.rows["delta"] == 0).all() and set(comparison.rows["method"]) == {"paired"}


BASELINE = Path(__file__).resolve().parents[1] / "reports" / "baselines" / "default"
WORKFLOW = Path(__file__).resolve().parents[1] / "docs" / "ci" / "percepbench-regression.yml"


def test_ci_workflow_runs_commands_that_parse():
    """The documented GitHub Actions workflow: valid YAML whose percepbench commands the CLI accepts."""
    import shlex

    import yaml

    from percepbench.cli import build_parser

    flow = yaml.safe_load(WORKFLOW.read_text())
    steps = flow["jobs"]["benchmark"]["steps"]
    commands = [line.strip().rstrip("\\").strip() for s in steps for line in
                s.get("run", "").replace("\\\n", " ").splitlines() if ".venv/bin/percepbench" in line]
    assert [c.split()[1] for c in commands] == ["run", "compare"]
    for command in commands:
        args = build_parser().parse_args(shlex.split(command)[1:])
        if args.command == "compare":
            assert (Path(__file__).resolve().parents[1] / args.baseline) == BASELINE
            assert args.junit and args.markdown
    assert (BASELINE / "results.json").is_file() and (BASELINE / "samples.parquet").is_file()
