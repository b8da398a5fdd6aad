"""THINGS odd-one-out on a tree generated in the official layout, scored by hand with a toy metric."""

from __future__ import annotations

import numpy as np
import pytest

from percepbench.cli import main
from percepbench.results import load_results
from percepbench.specs import MetricSpec
from percepbench.tasks.things import score_odd_one_out

import layouts


@pytest.fixture
def toy(register_temp):
    register_temp(MetricSpec(name="toy-things", target="helpers_metrics:MeanAbs", description="mean |a - b|"))
    return "toy-things"


GREYS = {"a": 10, "b": 20, "c": 200, "d": 15, "e": 100, "f": 190}


def make_things(root, lines):
    """``root/<name>.png`` (flat grey ``GREYS``) and ``root/things_valset.txt`` holding ``lines``."""
    return layouts.make_things(root, GREYS, lines, size=16)


def test_score_rule_and_ties():
    d12, d13, d23 = np.array([0.1, 0.3, 0.3]), np.array([0.2, 0.3, 0.1]), np.array([0.2, 0.5, 0.4])
    assert score_odd_one_out(d12, d13, d23).tolist() == [1.0, 1.0, 0.0]


def test_things_through_the_cli(capsys, tmp_path, clean_env, toy):
    # a=10 b=20 c=200: d12=10 < d13=190, d23=180 -> correct
    # a=10 e=100 d=15: d12=90 > d13=5 -> wrong (the odd one is e, not d)
    # d=15 b=20 f=190 written with a comma: d12=5 -> correct
    # b=20 a=10 b=20: d12=10, d13=0 -> wrong
    make_things(tmp_path / "data" / "things", ["a b c", "a e d", "", "d,b,f", "b a b"])
    out = tmp_path / "run"
    code = main(["run", "-m", toy, "-t", "things", "--data-root", str(tmp_path / "data"), "-q",
                 "--n-boot", "50", "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    res = load_results(out)
    (rec,) = res.records.to_dict("records")
    assert rec["measure"] == "odd_one_out_accuracy" and rec["subset"] == "val" and rec["n"] == 4
    assert rec["value"] == pytest.approx(50.0)
    s = res.samples.set_index("item")
    assert s.loc["line1", "d12"] == pytest.approx(10 / 255) and s.loc["line1", "score"] == 1.0
    assert s.loc["line2", "score"] == 0.0 and s.loc["line4", "score"] == 1.0 and s.loc["line5", "score"] == 0.0
    assert "odd_one_out_accuracy" in captured.out


@pytest.mark.parametrize(("lines", "message"), [
    (["a b"], "line 1 (2 names)"),
    (["a b zzz"], "zzz.png"),
])
def test_bad_triplet_files_name_the_problem(capsys, tmp_path, clean_env, toy, lines, message):
    make_things(tmp_path / "things", lines)
    code = main(["run", "-m", toy, "-t", "things", "--task-args", f"things:root={tmp_path / 'things'}", "-q",
                 "-o", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and message in err


def test_missing_triplet_file_and_root(capsys, tmp_path, clean_env, toy):
    code = main(["run", "-m", toy, "-t", "things", "--data-root", str(tmp_path), "-q", "-o", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and str(tmp_path / "things" / "things_valset.txt") in err and "b2a4j" in err
    code = main(["run", "-m", toy, "-t", "things", "-q", "-o", str(tmp_path / "r2")])
    assert code == 2 and "no data root" in capsys.readouterr().err
