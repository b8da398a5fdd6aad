"""`percepbench weights list|download|verify|path` over the one weights manager, with real HTTP on 127.0.0.1;
files shipped in installed packages (LPIPS heads, DISTS alpha/beta) listed, verified and recorded in runs."""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path

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


def test_verify_says_what_each_hash_was_checked_against(capsys, server, register_temp, weights_env):
    published, unpublished = b"published weights " * 100, b"unpublished weights " * 100
    register_temp(MetricSpec(
        name="tofuweights", target="helpers_metrics:MeanAbs", description="toy with two weight files",
        weights=(WeightFile("pub.bin", server.add("pub.bin", published), sha256=hashlib.sha256(published).hexdigest()),
                 WeightFile("tofu.bin", server.add("tofu.bin", unpublished))),
    ))
    assert run(capsys, "download", "tofuweights", "-q")[0] == 0
    code, out, _ = run(capsys, "verify", "tofuweights")
    assert code == 0
    assert (f"ok       {weights_env / 'pub.bin'}  sha256 {hashlib.sha256(published).hexdigest()}  "
            "(checked against a published sha256)") in out
    assert (f"ok       {weights_env / 'tofu.bin'}  sha256 {hashlib.sha256(unpublished).hexdigest()}  "
            "(recorded on first use, never checked against a published value)") in out


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


#: sha256 prefixes published for the files shipped in lpips 0.1.4 and torchmetrics (REFERENCE.md §5)
PUBLISHED = {"lpips.alex": "df73285e", "lpips.squeeze": "4a5350f2", "lpips.vgg": "a78928a0",
             "dists": "f5e65c96"}


def shipped_path(metric: str) -> Path:
    """Where lpips / torchmetrics themselves read the file (beside their own source files)."""
    if metric == "dists":
        import torchmetrics.functional.image.dists as tm_dists

        return Path(inspect.getfile(tm_dists)).resolve().parent / "dists_models" / "weights.pt"
    import lpips

    net = metric.split(".")[1]
    return Path(inspect.getfile(lpips.LPIPS)).resolve().parent / "weights" / "v0.1" / f"{net}.pth"


def test_list_and_verify_show_files_shipped_in_packages(capsys):
    code, out, _ = run(capsys, "list", "lpips.*", "dists")
    assert code == 0
    for metric, prefix in PUBLISHED.items():
        path = shipped_path(metric)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert digest.startswith(prefix)
        assert f"[present] {path}" in out and digest in out
    assert out.count("shipped in lpips 0.1.4;") == 3 and out.count("shipped in torchmetrics 1.9.0;") == 1

    code, out, err = run(capsys, "verify", "lpips.*", "dists")
    assert code == 1 and "4 file(s) missing or failing verification" in err  # the 4 trunks are not downloaded
    for metric in PUBLISHED:
        path = shipped_path(metric)
        assert f"ok       {path}  sha256 {hashlib.sha256(path.read_bytes()).hexdigest()}" in out
        assert not path.with_name(path.name + ".sha256").exists()  # nothing written into site-packages
    code, out, _ = run(capsys, "path", "lpips.squeeze")
    assert str(shipped_path("lpips.squeeze")) in out


def test_verify_catches_a_tampered_shipped_file(capsys, monkeypatch, tmp_path):
    import percepbench.weights as weights

    fake = tmp_path / "site" / "lpips"
    head = fake / "weights" / "v0.1" / "alex.pth"
    head.parent.mkdir(parents=True)
    head.write_bytes(shipped_path("lpips.alex").read_bytes()[:-1] + b"\x00")
    monkeypatch.setattr(weights, "package_dir", lambda name: fake if name == "lpips" else None)
    code, out, err = run(capsys, "verify", "lpips.alex")
    assert code == 1 and "2 file(s) missing or failing verification" in err
    failed = next(line for line in out.splitlines() if "FAILED" in line)
    assert str(head) in failed and "shipped in lpips 0.1.4" in failed and "expected df73285e" in failed
    assert "pip install --force-reinstall lpips==0.1.4" in failed
    monkeypatch.setattr(weights, "package_dir", lambda name: None)  # lpips not installed at all
    code, out, _ = run(capsys, "list", "lpips.alex")
    assert "[MISSING] weights/v0.1/alex.pth ships inside the Python package 'lpips', which is not installed: " \
           "pip install lpips==0.1.4" in out


def test_run_records_shipped_files_in_meta_weights(capsys, tmp_path):
    from percepbench.results import load_results

    out = tmp_path / "run"
    assert main(["run", "-m", "lpips.squeeze,dists", "--metric-args", "lpips.squeeze:pretrained=false",
                 "--metric-args", "dists:pretrained=false", "--task-args", "severity2afc:per_family=1,size=32",
                 "-q", "--n-boot", "5", "-o", str(out)]) == 0
    capsys.readouterr()
    weights = load_results(out).meta["weights"]
    # only the files each metric read: LPIPS with pretrained=false reads none (random trunk and heads), DISTS
    # reads its shipped alpha/beta but not the VGG16 trunk
    assert "lpips.squeeze" not in weights
    shipped = "functional/image/dists_models/weights.pt"
    by_name = {entry["filename"]: entry for entry in weights["dists"]}
    assert set(by_name) == {shipped}
    path = shipped_path("dists")
    assert by_name[shipped]["path"] == str(path)
    assert by_name[shipped]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert by_name[shipped]["sha256"].startswith(PUBLISHED["dists"])
