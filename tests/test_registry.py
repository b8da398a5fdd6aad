"""The generic registry: names, defaults, globs, typos, duplicates, plugins."""

from __future__ import annotations

import os
import subprocess
import warnings

import pytest

from percepbench.errors import UnknownNameError, UsageError
from percepbench.registry import METRICS, TASKS, PluginWarning, Registry
from percepbench.specs import MetricSpec, TaskSpec

from conftest import PYTHON, REPO


def toy(name: str, **kw) -> MetricSpec:
    return MetricSpec(name=name, target="helpers_metrics:MeanAbs", description="toy", **kw)


def fresh() -> Registry:
    reg = Registry("metric", MetricSpec, "percepbench.specs", "percepbench.test-no-such-group")
    return reg


def test_builtin_metrics_and_tasks_registered():
    names = METRICS.names()
    for expected in ["psnr", "ssim", "ms_ssim", "piq.fsim", "piq.vif", "piq.gmsd", "piq.ms_gmsd",
                     "piq.haarpsi", "piq.mdsi", "piq.vsi", "piq.srsim", "piq.dss", "piq.iw_ssim"]:
        assert expected in names
    assert "severity2afc" in TASKS.names()


def test_family_resolves_to_default_variant():
    reg = fresh()
    reg.register(toy("fam.a"))
    reg.register(toy("fam.b", default=True))
    assert reg.get("fam").name == "fam.b"
    assert reg.resolve("fam.a") == "fam.a"


def test_family_without_default_lists_its_variants():
    reg = fresh()
    reg.register(toy("fam.a"))
    reg.register(toy("fam.b"))
    with pytest.raises(UnknownNameError, match=r"no default variant; choose one of: fam\.a, fam\.b"):
        reg.get("fam")


def test_typo_suggests_close_names():
    with pytest.raises(UnknownNameError, match=r"did you mean 'ssim'"):
        METRICS.get("ssmi")
    with pytest.raises(UnknownNameError, match=r"did you mean 'piq.fsim'"):
        METRICS.get("piq.fsm")
    with pytest.raises(UnknownNameError, match="unknown task 'nigths'") as exc:
        TASKS.get("nigths")
    assert "percepbench list tasks" in str(exc.value)


def test_glob_selection_and_comma_lists():
    piq = METRICS.select("piq.*")
    assert len(piq) == 13 and all(s.name.startswith("piq.") for s in piq)
    mixed = METRICS.select("psnr, piq.*ssim, psnr")
    assert [s.name for s in mixed] == ["psnr", "piq.iw_ssim", "piq.ms_ssim", "piq.ssim"]
    with pytest.raises(UnknownNameError, match="matches nothing"):
        METRICS.select("nothing.*")
    with pytest.raises(UsageError, match="no metric names"):
        METRICS.select(" , ")


def test_duplicates_rejected():
    reg = fresh()
    reg.register(toy("dup"))
    with pytest.raises(UsageError, match="duplicate metric name 'dup'"):
        reg.register(toy("dup"))
    with pytest.raises(UsageError, match="already a plain metric name"):
        reg.register(toy("dup.x"))
    reg.register(toy("fam.x", default=True))
    with pytest.raises(UsageError, match="two defaults"):
        reg.register(toy("fam.y", default=True))
    with pytest.raises(UsageError, match="already has variants"):
        reg.register(toy("fam"))


def test_builtin_duplicate_is_an_error():
    with pytest.raises(UsageError, match="duplicate metric name 'psnr'"):
        METRICS.register(toy("psnr"))


@pytest.mark.parametrize("bad", ["UPPER", "a.b.c", "", "-x", "sp ace"])
def test_invalid_names(bad):
    with pytest.raises(ValueError, match="invalid registry name"):
        toy(bad)


def test_specs_are_frozen_and_record_direction():
    spec = METRICS.get("ssim")
    with pytest.raises(AttributeError):
        spec.name = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.kwargs["a"] = 1  # type: ignore[index]
    assert spec.higher_is_better is False and spec.distance == "1 - SSIM"
    with pytest.raises(ValueError, match="distances"):
        toy("up", higher_is_better=True)


def test_lazy_target_errors_name_the_target():
    spec = toy("lazy", )
    object.__setattr__(spec, "target", "percepbench.metrics_registry.classical:Nope")
    with pytest.raises(ImportError, match="has no attribute 'Nope'"):
        spec.load()


# ---------------------------------------------------------------------------------------------
# Plugins: a real package installed with pip into a temporary site directory
# ---------------------------------------------------------------------------------------------
PLUGIN_PYPROJECT = """
[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "percepbench-toy-plugin"
version = "0.0.1"

[project.entry-points."percepbench.metrics"]
toy = "pb_toy_plugin:SPECS"
broken = "pb_toy_plugin_broken:SPECS"

[project.entry-points."percepbench.tasks"]
toy = "pb_toy_plugin:register_tasks"

[tool.setuptools]
py-modules = ["pb_toy_plugin", "pb_toy_plugin_broken"]
"""

PLUGIN_MODULE = '''
from percepbench.metrics_registry.base import DistanceMetric
from percepbench.specs import MetricSpec, TaskSpec


class ToyL1(DistanceMetric):
    def distance(self, preds, target):
        return (preds - target).abs().flatten(1).mean(1)


SPECS = [MetricSpec(name="toyplug.l1", target="pb_toy_plugin:ToyL1", description="plugin L1 distance",
                    default=True)]


def register_tasks(registry):
    registry.register(TaskSpec(name="toyplug_task", target="percepbench.tasks.severity:Severity2AFC",
                               description="plugin task", kwargs={"per_family": 1, "families": ["blur"]}))
'''


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("plugin")
    src = root / "src"
    src.mkdir()
    (src / "pyproject.toml").write_text(PLUGIN_PYPROJECT)
    (src / "pb_toy_plugin.py").write_text(PLUGIN_MODULE)
    (src / "pb_toy_plugin_broken.py").write_text("raise ImportError('plugin dependency missing')\n")
    site = root / "site"
    subprocess.run(
        [PYTHON, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(site), str(src)],
        check=True, capture_output=True, text=True,
    )
    return site


def _run_with_site(site, *args, cwd):
    env = dict(os.environ, PYTHONPATH=str(site), PYTHONWARNINGS="default")
    return subprocess.run([PYTHON, "-m", "percepbench.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_plugin_listed_runnable_and_broken_plugin_warns(plugin_site, tmp_path):
    listed = _run_with_site(plugin_site, "list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "toyplug.l1" in listed.stdout and "plugin L1 distance" in listed.stdout
    assert "toyplug_task" in listed.stdout
    assert "psnr" in listed.stdout  # built-ins unaffected
    assert "plugin 'broken'" in listed.stderr and "plugin dependency missing" in listed.stderr

    out = tmp_path / "run"
    ran = _run_with_site(plugin_site, "run", "--metrics", "toyplug", "--tasks", "toyplug_task", "-q",
                         "--out", str(out), "--n-boot", "10", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert "toyplug.l1" in ran.stdout
    from percepbench.results import load_results

    res = load_results(out)
    assert set(res.records["metric"]) == {"toyplug.l1"}
    assert res.records["n"].iloc[0] == 1


def test_failing_plugin_warns_in_process(monkeypatch):
    """Entry points are read through importlib.metadata; a failing one warns and the rest loads."""
    import percepbench.registry as registry_mod

    class EP:
        def __init__(self, name, value, obj=None, exc=None):
            self.name, self.value, self._obj, self._exc = name, value, obj, exc

        def load(self):
            if self._exc:
                raise self._exc
            return self._obj

    eps = [EP("bad", "nowhere:thing", exc=ModuleNotFoundError("No module named 'nowhere'")),
           EP("good", "x:y", obj=toy("goodplug.m", default=True))]
    monkeypatch.setattr(registry_mod, "entry_points", lambda group: eps)
    reg = Registry("metric", MetricSpec, "percepbench.specs", "g")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = reg.names()
    assert names == ["goodplug.m"]
    assert reg.source("goodplug") == "plugin 'good' (x:y)"
    assert any(issubclass(w.category, PluginWarning) and "'bad'" in str(w.message) for w in caught)


def test_task_registry_uses_same_mechanism():
    assert isinstance(TASKS, Registry) and isinstance(METRICS, Registry)
    assert TASKS.spec_type is TaskSpec
    assert REPO.joinpath("tasks", "__init__.py").is_file()
