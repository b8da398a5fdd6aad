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

#: How far a fresh CPU run may sit from the committed baseline, in items whose 2AFC score changed. A
#: baseline is tied to a machine kind (CPU and its instruction set, torch version, device): on the kind that
#: made it a run reproduces it exactly; on another, kernels that round differently can flip a near-tie
#: (piq.dss on color_shift flipped one item of 32 on a Xeon with AMX: 81.25 -> 78.125). One item moves a
#: record by 100 / n points: 3.125 on a 32-item family, 0.39 pooled over 256. So: at most one changed item
#: per family record, and at most two per metric in all (two families with one flip each; 0.78 points).
MAX_CHANGED_PER_FAMILY = 1
MAX_CHANGED_PER_METRIC = 2


@pytest.mark.slow
def test_default_run_end_to_end(tmp_path):
    """`percepbench run` with no arguments but ``--device cpu`` (the committed baseline is a CPU baseline),
    then the CI recipe: `percepbench compare` against the committed baseline passes."""
    env = dict(os.environ, PERCEPBENCH_CACHE=str(tmp_path / "cache"))
    res = subprocess.run([PYTHON, "-m", "percepbench.cli", "run", "--quiet", "--device", "cpu"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=900)
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

    # the CI recipe: the committed baseline passes `percepbench compare` with zero regressions ...
    from percepbench.reports.compare import compare_runs

    comparison = compare_runs(BASELINE, run_dir)
    assert comparison.exit_code == 0, comparison.to_text()
    assert set(comparison.rows["status"]) == {"ok"}, comparison.to_text()
    assert set(comparison.rows["method"]) == {"paired"}
    # ... on the same items, whose scores differ from the baseline's in at most a few near-ties
    base = load_results(BASELINE).samples
    new = results.samples
    key = ["task", "metric", "item"]
    assert not base.duplicated(key).any() and not new.duplicated(key).any()
    both = base.merge(new, on=key, suffixes=("_base", "_new"), validate="one_to_one")
    assert len(both) == len(base) == len(new), "the run scored other items than the baseline"
    assert (both["subset_base"] == both["subset_new"]).all()
    changed = both[both["score_base"] != both["score_new"]]
    per_family = changed.groupby(["metric", "subset_base"]).size()
    per_metric = changed.groupby("metric").size()
    shown = changed[[*key, "d0_base", "d1_base", "d0_new", "d1_new", "score_base", "score_new"]].to_string()
    assert (per_family <= MAX_CHANGED_PER_FAMILY).all() and (per_metric <= MAX_CHANGED_PER_METRIC).all(), shown
    # the records' deltas are those item changes (a changed item moves a record by at most 100 / n)
    allowed = comparison.rows["subset"].map(lambda s: MAX_CHANGED_PER_METRIC if s == "all" else
                                            MAX_CHANGED_PER_FAMILY)
    assert (comparison.rows["delta"].abs() <= 100 * allowed / comparison.rows["n"] + 1e-9).all(), \
        comparison.to_text()


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
