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


class FakeEntryPoint:
    """What importlib.metadata.entry_points gives: a name, a value and load()."""

    def __init__(self, name, value, obj=None, exc=None):
        self.name, self.value, self._obj, self._exc = name, value, obj, exc

    def load(self):
        if self._exc:
            raise self._exc
        return self._obj


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

    eps = [FakeEntryPoint("bad", "nowhere:thing", exc=ModuleNotFoundError("No module named 'nowhere'")),
           FakeEntryPoint("good", "x:y", obj=toy("goodplug.m", default=True))]
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


# ---------------------------------------------------------------------------------------------
# Dataset sources: the same registry, entry-point group percepbench.datasets
# ---------------------------------------------------------------------------------------------


def test_builtin_dataset_sources_typos_and_globs():
    from percepbench.data import get_source
    from percepbench.datasets import DatasetSource
    from percepbench.registry import DATASETS

    assert DATASETS.spec_type is DatasetSource and DATASETS.entry_point_group == "percepbench.datasets"
    assert DATASETS.names() == ["bapps", "coco", "csiq", "imagenet_r", "kadid10k", "live", "nights", "pieapp", "pipal",
                               "things", "tid2013"]
    assert all(DATASETS.source(n) == "builtin" for n in DATASETS.names())
    assert get_source(" NIGHTS ").name == "nights"  # case and spaces ignored, as before
    with pytest.raises(UnknownNameError, match=r"unknown dataset 'nigths'; did you mean 'nights'\?") as info:
        get_source("nigths")
    assert "`percepbench data list` shows all 11" in str(info.value)
    assert isinstance(info.value, UsageError)  # the CLI's exit code 2
    assert [s.name for s in DATASETS.select("b*,things")] == ["bapps", "things"]
    with pytest.raises(UnknownNameError, match="dataset pattern 'z\\*' matches nothing"):
        DATASETS.select("z*")


def test_dataset_plugin_is_listed_downloaded_and_verified(monkeypatch, tmp_path, server, capsys):
    """A source from the entry-point group runs through the generic download and verify machinery."""
    import io
    import tarfile

    import percepbench.data as data_mod
    import percepbench.registry as registry_mod
    from percepbench.cli import main
    from percepbench.datasets import DatasetSource, Part

    def verify(source, root, parts, deep):
        image = root / source.folder / "images" / "a.png"
        return [] if image.is_file() else [f"{image}: image missing"]

    source = DatasetSource(name="toyset", title="Toy set", folder="toyset", description="a toy dataset",
                           licence="MIT", citation="nobody", approx_size="1 kB", base_url="https://example.invalid/",
                           parts=(Part("all", "toy.tar.gz", "tar", ("images",)),), default_parts=("all",),
                           verify=verify, layout="toyset/images/a.png")
    eps = {"percepbench.datasets": [FakeEntryPoint("toy", "pb_toy:SOURCE", obj=source),
                                    FakeEntryPoint("bad", "nowhere:SOURCE", exc=ModuleNotFoundError("no 'nowhere'"))]}
    monkeypatch.setattr(registry_mod, "entry_points", lambda group: eps.get(group, []))
    fresh = Registry("dataset", DatasetSource, "percepbench.specs", "percepbench.datasets",
                     list_command="percepbench data list")
    monkeypatch.setattr(registry_mod, "DATASETS", fresh)
    monkeypatch.setattr(data_mod, "DATASETS", fresh)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert fresh.names() == ["toyset"]
    assert any(issubclass(w.category, PluginWarning) and "'bad'" in str(w.message) for w in caught)
    with pytest.raises(UnknownNameError, match="did you mean 'toyset'"):
        data_mod.get_source("toyst")

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("images/a.png")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"png"))
    server.add("toy.tar.gz", buf.getvalue())
    monkeypatch.setenv("PERCEPBENCH_DATA_URL_TOYSET", server.base)
    root = tmp_path / "d"
    assert data_mod.verify_dataset("toyset", root) == [f"{root / 'toyset/images/a.png'}: image missing"]
    assert data_mod.download_dataset("toyset", root, progress=False) == root / "toyset"
    assert (root / "toyset/images/a.png").read_bytes() == b"png"
    assert data_mod.verify_dataset("toyset", root) == []
    assert [r["path"] for r in server.requests] == ["/toy.tar.gz"]

    monkeypatch.setenv("PERCEPBENCH_DATA", str(root))
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "toyset: Toy set (1 kB; present) [plugin 'toy' (pb_toy:SOURCE)]" in out


# ------------------------------------------------------------------------------- preprocessing in the spec

#: REFERENCE.md §1.3, copied by hand: the mean/std each DreamSim backbone applies to its [0, 1] input
_IMAGENET_REF = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_CLIP_REF = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
_BACKBONE_REF = {
    "dino_vitb16": _IMAGENET_REF, "dino_vits8": _IMAGENET_REF, "dino_vits16": _IMAGENET_REF,
    "dino_vitb8": _IMAGENET_REF, "dinov2_vitb14": _IMAGENET_REF, "synclr_vitb16": _IMAGENET_REF,
    "mae_vitb16": _IMAGENET_REF, "clip_vitb16": _CLIP_REF, "clip_vitb32": _CLIP_REF, "clip_vitl14": _CLIP_REF,
    "open_clip_vitb16": _CLIP_REF, "open_clip_vitb32": _CLIP_REF, "open_clip_vitl14": _CLIP_REF,
}
#: DreamSim variants' backbones in branch order (REFERENCE.md §1.1 / §1.3: the ensemble is DINO, CLIP, OpenCLIP)
_VARIANT_REF = {
    "ensemble": ("dino_vitb16", "clip_vitb16", "open_clip_vitb16"), "dino_vitb16": ("dino_vitb16",),
    "clip_vitb32": ("clip_vitb32",), "open_clip_vitb32": ("open_clip_vitb32",),
    "dinov2_vitb14": ("dinov2_vitb14",), "synclr_vitb16": ("synclr_vitb16",),
    "dino_vitb16_patch": ("dino_vitb16",), "dinov2_vitb14_patch": ("dinov2_vitb14",),
}


def _expected_inputs(backbones: tuple[str, ...]) -> dict:
    return {"value_range": (0.0, 1.0), "size": 224, "interpolation": "bicubic",
            "normalization": [_BACKBONE_REF[b] for b in backbones]}


def _recorded_inputs(spec: MetricSpec) -> dict:
    inputs = spec.inputs
    return {"value_range": inputs.value_range, "size": inputs.size, "interpolation": inputs.interpolation,
            "normalization": [(n.mean, n.std) for n in inputs.normalization]}


def test_dreamsim_and_zero_shot_specs_record_the_reference_preprocessing():
    assert {n.split(".", 1)[1] for n in METRICS.names() if n.startswith("dreamsim.")} == set(_VARIANT_REF)
    for variant, backbones in _VARIANT_REF.items():
        assert _recorded_inputs(METRICS.get(f"dreamsim.{variant}")) == _expected_inputs(backbones), variant
    zero_shot = [s for s in METRICS.specs() if s.target.endswith("embedding:ZeroShotEmbeddingMetric")]
    assert {s.kwargs["backbone"] for s in zero_shot} == set(_BACKBONE_REF)
    for spec in zero_shot:
        assert _recorded_inputs(spec) == _expected_inputs((spec.kwargs["backbone"],)), spec.name


def test_models_normalise_with_the_numbers_their_spec_records():
    import torch

    from percepbench.models.dreamsim import DreamSimModel

    model = DreamSimModel("ensemble", empty=True)  # no weights allocated
    spec = METRICS.get("dreamsim.ensemble")
    assert len(model.extractor_list) == len(spec.inputs.normalization) == 3
    for backbone, (mean, std) in zip(model.extractor_list, _expected_inputs(_VARIANT_REF["ensemble"])
                                     ["normalization"], strict=True):
        torch.testing.assert_close(backbone.mean.reshape(-1), torch.tensor(mean), rtol=0, atol=0)
        torch.testing.assert_close(backbone.std.reshape(-1), torch.tensor(std), rtol=0, atol=0)
    single = METRICS.get("dreamsim.dino_vitb16")
    metric = single.create(pretrained=False)  # the metric resizes tensors with the spec's record
    assert metric.input_convention == single.inputs


def test_specs_carry_no_unused_fields():
    import dataclasses

    # embedding metrics say so on the class (`embeds`), which the runner reads; tasks need no offline flag
    # (every built-in task runs offline once its data is on disk)
    assert "kind" not in {f.name for f in dataclasses.fields(MetricSpec)}
    assert {f.name for f in dataclasses.fields(TaskSpec)} >= {"kind", "measure", "needs_data"}
    assert "offline" not in {f.name for f in dataclasses.fields(TaskSpec)}
    assert "kind" not in METRICS.get("dreamsim").to_dict() and "offline" not in TASKS.get("nights").to_dict()
    with pytest.raises(TypeError, match="kind"):
        toy("old.kind", kind="embedding")
