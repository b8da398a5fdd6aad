"""The report, compare and data commands, and the report written at the end of ``run``."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET

import pytest
from test_data import bapps_server  # noqa: F401  (fixture)

from percepbench.cli import main
from percepbench.results import load_results
from percepbench.specs import MetricSpec

FAST = ["--n-boot", "30", "-q", "--task-args", "severity2afc:per_family=3"]


def cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two runs of the offline default benchmark with the same settings (psnr, ssim)."""
    root = tmp_path_factory.mktemp("runs")
    for name in ("base", "new"):
        assert main(["run", "-m", "psnr,ssim", "-o", str(root / name), *FAST]) == 0
    return root


def test_run_writes_the_report_and_no_report_skips_it(capsys, two_runs, tmp_path):
    report = two_runs / "base" / "report"
    assert (report / "report.html").is_file() and (report / "report.md").is_file()
    assert (report / "scores_severity2afc.png").stat().st_size > 5000
    md = (report / "report.md").read_text()
    # the headline table holds one row per metric with the pooled value of the records, CI and n
    res = load_results(two_runs / "base")
    for rec in res.records[res.records["subset"] == "all"].itertuples():
        assert f"| {rec.metric} | {rec.value:.1f} | [{rec.ci_low:.1f}, {rec.ci_high:.1f}] | {rec.n} |" in md
    code, out, err = cli(capsys, "run", "-m", "psnr", "-o", str(tmp_path / "r"), "--no-report", *FAST)
    assert code == 0, err
    assert not (tmp_path / "r" / "report").exists() and "report:" not in out


def test_report_command(capsys, two_runs, tmp_path):
    code, out, err = cli(capsys, "report", str(two_runs / "new"), "--out", str(tmp_path / "rep"), "--formats", "svg")
    assert code == 0, err
    assert (tmp_path / "rep" / "report.html").is_file() and (tmp_path / "rep" / "scores_severity2afc.svg").is_file()
    assert not list((tmp_path / "rep").glob("*.png")) and "report:" in out
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "results.json").write_text("{not json")
    code, _, err = cli(capsys, "report", str(tmp_path / "junk"))
    assert code == 2 and str(tmp_path / "junk" / "results.json") in err
    code, _, err = cli(capsys, "report", str(two_runs / "new"), "--out", str(tmp_path / "x"), "--formats", "gif")
    assert code == 2 and "gif" in err


def test_compare_identical_runs_pass_with_junit_and_markdown(capsys, two_runs, tmp_path, monkeypatch):
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    code, out, err = cli(capsys, "compare", str(two_runs / "base"), str(two_runs / "new"),
                         "--junit", str(tmp_path / "j.xml"), "--markdown", str(tmp_path / "c.md"))
    assert code == 0, err + out
    suite = ET.parse(tmp_path / "j.xml").getroot()
    assert int(suite.get("failures", 0)) == 0 and int(suite.get("tests")) > 0
    assert "PASS" in (tmp_path / "c.md").read_text()
    text = summary.read_text()
    assert text.startswith("earlier step\n") and "PASS" in text


def test_compare_flags_a_regression_and_rejects_garbage(capsys, two_runs, tmp_path):
    worse = tmp_path / "worse"
    shutil.copytree(two_runs / "new", worse)
    payload = json.loads((worse / "results.json").read_text())
    payload["samples"] = None  # records only: the z-test on the CIs decides
    for rec in payload["records"]:
        if rec["metric"] == "ssim" and rec["subset"] == "all":
            rec["value"] -= 30
            rec["ci_low"] -= 30
            rec["ci_high"] -= 30
    (worse / "results.json").write_text(json.dumps(payload))
    code, out, err = cli(capsys, "compare", str(two_runs / "base"), str(worse), "--junit", str(tmp_path / "j.xml"))
    assert code == 1, err
    assert "ssim" in out and "regression" in out.lower()
    suite = ET.parse(tmp_path / "j.xml").getroot()
    failures = [tc for tc in suite.iter("testcase") if tc.find("failure") is not None]
    assert [tc.get("name") for tc in failures] == ["ssim 2afc_accuracy"]
    code, _, err = cli(capsys, "compare", str(two_runs / "base"), str(tmp_path / "nowhere"))
    assert code == 2 and "nowhere" in err


def test_data_download_verify_then_run_jnd(capsys, bapps_server, tmp_path, register_temp):  # noqa: F811
    register_temp(MetricSpec(name="toy-meanabs", target="helpers_metrics:MeanAbs", description="test"))
    root = tmp_path / "data"
    code, out, err = cli(capsys, "data", "verify", "bapps", "--root", str(root), "--parts", "jnd")
    assert code == 2 and f"percepbench data download bapps --root {root}" in out and "1 problem(s)" in err
    code, out, err = cli(capsys, "data", "download", "bapps", "--root", str(root), "--parts", "jnd", "-q")
    assert code == 0, err
    assert "ready in" in out
    code, out, err = cli(capsys, "data", "verify", "bapps", "--root", str(root), "--parts", "jnd", "--deep")
    assert code == 0, out + err
    served = len(bapps_server.requests)
    assert cli(capsys, "data", "download", "bapps", "--root", str(root), "--parts", "jnd", "-q")[0] == 0
    assert len(bapps_server.requests) == served  # done: nothing fetched again
    same = root / "bapps" / "dataset" / "jnd" / "val" / "cnn" / "same" / "000001.npy"
    same.write_bytes(b"damaged in place")
    assert cli(capsys, "data", "download", "bapps", "--root", str(root), "--parts", "jnd", "-q", "--force")[0] == 0
    assert len(bapps_server.requests) == served + 1 and same.read_bytes() != b"damaged in place"
    code, out, err = cli(capsys, "run", "-m", "toy-meanabs", "-t", "bapps_jnd", "--data-root", str(root),
                         "-o", str(tmp_path / "run"), "-q", "--n-boot", "20", "--no-report")
    assert code == 0, err
    recs = load_results(tmp_path / "run").records
    assert set(recs["subset"]) == {"traditional", "cnn", "all"} and set(recs["measure"]) == {"jnd_map"}
    code, _, err = cli(capsys, "data", "download", "nightz")
    assert code == 2 and "nights" in err
