"""`percepbench weights list|download|verify|path` over the one weights manager, with real HTTP on 127.0.0.1."""

from __future__ import annotations

import hashlib

import pytest

from percepbench.cli import main
from percepbench.specs import MetricSpec, WeightFile

pytestmark = pytest.mark.usefixtures("weights_env")


def run(capsys, *args):
    code = main(["weights", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def served_metric(server, register_temp):
    data = b"fake weights " * 1000
    url = server.add("toy.pth", data)
    spec = register_temp(MetricSpec(
        name="toyweights", target="helpers_metrics:MeanAbs", description="toy with a weight file",
        weights=(WeightFile("toy/toy.pth", url, sha256=hashlib.sha256(data).hexdigest(), size=len(data)),),
    ))
    return spec, url


def test_list_shows_missing_files_with_urls(capsys, weights_env):
    code, out, _ = run(capsys, "list", "dreamsim.dino_vitb16")
    assert code == 0
    assert f"[MISSING] {weights_env / 'dreamsim_dino_vitb16_checkpoint.zip'}" in out
    assert "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth" in out


def test_download_verify_path_round_trip(capsys, served_metric, weights_env, server):
    spec, url = served_metric
    target = weights_env / "toy" / "toy.pth"
    code, out, _ = run(capsys, "download", "toyweights", "-q")
    assert code == 0 and "toyweights: ready" in out and target.is_file()
    code, out, _ = run(capsys, "list", "toyweights")
    assert f"[present] {target}" in out and url in out and spec.weights[0].sha256 in out
    code, out, _ = run(capsys, "verify", "toyweights")
    assert code == 0 and f"ok       {target}" in out
    code, out, _ = run(capsys, "path", "toyweights")
    assert str(target) in out
    code, out, _ = run(capsys, "path")
    assert out.strip() == str(weights_env)
    n = len(server.requests)
    assert run(capsys, "download", "toyweights", "-q")[0] == 0 and len(server.requests) == n  # cached

    # a run records each weight file with the sha256 it was verified against
    from percepbench.results import load_results

    out = weights_env.parent / "run"
    assert main(["run", "-m", "toyweights", "--task-args", "severity2afc:per_family=1,size=32", "-q",
                 "--n-boot", "5", "-o", str(out)]) == 0
    capsys.readouterr()
    (entry,) = load_results(out).meta["weights"]["toyweights"]
    assert entry["sha256"] == spec.weights[0].sha256 and entry["path"] == str(target)

    target.write_bytes(b"tampered")
    code, out, err = run(capsys, "verify", "toyweights")
    assert code == 1 and "FAILED" in out and str(target) in out and "failing verification" in err


def test_download_offline_lists_what_to_place(capsys, served_metric, weights_env, monkeypatch, server):
    _, url = served_metric
    monkeypatch.setenv("PERCEPBENCH_OFFLINE", "1")
    code, _, err = run(capsys, "download", "toyweights")
    assert code == 1 and url in err and str(weights_env / "toy" / "toy.pth") in err
    assert server.requests == []


def test_verify_missing_and_unknown(capsys):
    code, out, _ = run(capsys, "verify", "dreamsim.dino_vitb16")
    assert code == 1 and "MISSING" in out and "dino_vitb16_single_lora" in out
    code, _, err = run(capsys, "download", "dreamsimm")
    assert code == 2 and "did you mean" in err
    code, out, _ = run(capsys, "verify", "psnr")
    assert code == 0 and "no weight files needed" in out
