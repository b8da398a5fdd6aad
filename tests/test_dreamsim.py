"""DreamSim: the real official LoRA adapter, the drop-in API, DreamSimMetric, weights download/offline."""

from __future__ import annotations

import io
import zipfile

import pytest
import torch

from percepbench import DreamSimMetric, dreamsim
from percepbench.errors import OfflineError, WeightsError
from percepbench.models.dreamsim import (
    VARIANTS,
    DreamSimModel,
    normalize_embedding,
    read_adapter_config,
)
from percepbench.registry import METRICS

from conftest import SHARED_FIXTURES
from dreamsim_official import official_vit
from local_http import LocalServer

REAL_ADAPTER = SHARED_FIXTURES / "dreamsim" / "dino_vitb16_single_lora"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("PERCEPBENCH_CACHE", str(tmp_path / "cache"))
    for var in ("PERCEPBENCH_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def real_adapter(tmp_path):
    """A copy of the real adapter: loading records a sha256 sidecar, never into ../shared."""
    import shutil

    return shutil.copytree(REAL_ADAPTER, tmp_path / "dino_vitb16_single_lora")


def random_model(variant: str, seed: int = 0, **kwargs) -> DreamSimModel:
    torch.manual_seed(seed)
    return DreamSimModel(variant, **kwargs).eval()


def test_real_official_adapter_loads_strictly_and_changes_the_output(real_adapter):
    model = random_model("dino_vitb16", normalize_embeds=False)
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model.embed(x)
    model.load_lora(real_adapter)  # raises on any missing or unexpected LoRA key
    assert model.lora_config["lora_alpha"] == 32.0 and model.lora_config["r"] == 16
    assert model.lora_config["lora_dropout"] == 0.2 and model.lora_config["target_modules"] == ["qkv"]
    lora_keys = [k for k in model.state_dict() if ".lora_" in k]
    assert len(lora_keys) == 24  # A and B for the qkv of 12 blocks
    qkv = model.extractor_list[0].model.blocks[0].attn.qkv
    assert qkv.lora_A["default"].weight.shape == (16, 768) and qkv.lora_B["default"].weight.shape == (2304, 16)
    assert qkv.scaling["default"] == pytest.approx(32.0 / 16)
    with torch.no_grad():
        after = model.embed(x)
    assert (after - before).abs().max() > 1e-3


def test_alpha_comes_from_the_file_never_a_default():
    assert read_adapter_config(SHARED_FIXTURES / "dreamsim" / "ensemble_lora")["lora_alpha"] == 1.0
    assert read_adapter_config(REAL_ADAPTER)["lora_alpha"] == 32.0


def test_adapter_for_another_variant_is_refused(real_adapter):
    model = random_model("ensemble")
    with pytest.raises(WeightsError, match=r"LoRA keys do not match the ensemble model: 48 missing"):
        model.load_lora(real_adapter)


def test_missing_adapter_files_name_the_path(tmp_path):
    model = random_model("dino_vitb16")
    with pytest.raises(WeightsError, match=r"adapter_config\.json: LoRA adapter config not found"):
        model.load_lora(tmp_path)


@pytest.mark.parametrize(("dreamsim_type", "patch", "shape"), [
    ("ensemble", False, (2, 1792)),
    ("clip_vitb32", False, (2, 512)),
    ("dino_vitb16", True, (2, 197, 768)),
])
def test_drop_in_api_shapes(dreamsim_type, patch, shape):
    torch.manual_seed(0)
    model, preprocess = dreamsim(pretrained=False, dreamsim_type=dreamsim_type, use_patch_model=patch, device="cpu")
    assert next(model.parameters()).device.type == "cpu"  # CPU inputs below (tests/test_gpu.py: on CUDA)
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        assert model.embed(x).shape == shape
        d = model(x, x.flip(0))
        pooled = model.embed_pooled(x) if patch else model.embed(x)
    # the distance is 1 - cosine of the (pooled) embeddings
    torch.testing.assert_close(d, 1 - torch.nn.functional.cosine_similarity(pooled, pooled.flip(0)),
                               rtol=0, atol=1e-6)
    assert d.shape == (2,) and torch.isclose(d[0], d[1], rtol=0, atol=1e-6) and d[0] > 1e-4
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    from PIL import Image

    red = preprocess(Image.new("RGB", (300, 100), (255, 0, 0)))  # resized to 224x224, [0, 1], not normalised
    assert red.shape == (1, 3, 224, 224) and red[0, 0].eq(1).all() and red[0, 1:].eq(0).all()


def test_drop_in_api_errors():
    with pytest.raises(ValueError, match="no patch model for dreamsim_type 'clip_vitb32'"):
        dreamsim(pretrained=False, dreamsim_type="clip_vitb32", use_patch_model=True)
    with pytest.raises(ValueError, match="unknown dreamsim_type 'dino'"):
        dreamsim(pretrained=False, dreamsim_type="dino")
    model, _ = dreamsim(pretrained=False, dreamsim_type="dino_vitb16")
    with pytest.raises(ValueError, match=r"expects \(B, 3, 224, 224\)"):
        model.embed(torch.rand(1, 3, 64, 64))


def test_normalize_embedding_is_centred_unit_norm():
    e = torch.randn(3, 10) + 5
    n = normalize_embedding(e)
    torch.testing.assert_close(n.mean(-1), torch.zeros(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(n.norm(dim=-1), torch.ones(3))


def test_registry_entries():
    assert METRICS.get("dreamsim").name == "dreamsim.ensemble"
    assert {s.name for s in METRICS.select("dreamsim.*")} == {f"dreamsim.{v}" for v in VARIANTS}
    spec = METRICS.get("dreamsim")
    assert spec.inputs.size == 224 and spec.inputs.interpolation == "bicubic" and spec.load().embeds
    urls = {w.url for w in spec.weights}
    assert "https://github.com/ssundaram21/dreamsim/releases/download/v0.2.0-checkpoints/dreamsim_ensemble_checkpoint.zip" in urls
    assert "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth" in urls


# ---------------------------------------------------------------------------------------------
# DreamSimMetric
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def metric():
    torch.manual_seed(0)
    return DreamSimMetric(variant="dino_vitb16", pretrained=False, reduction="none")


def test_metric_resizes_inside_with_antialiased_bicubic(metric):
    x, y = torch.rand(2, 3, 96, 128), torch.rand(2, 3, 96, 128)
    rx = torch.nn.functional.interpolate(x, size=(224, 224), mode="bicubic", antialias=True).clamp(0, 1)
    ry = torch.nn.functional.interpolate(y, size=(224, 224), mode="bicubic", antialias=True).clamp(0, 1)
    with torch.no_grad():
        torch.testing.assert_close(metric.pairwise(x, y), metric.model(rx, ry))


def test_metric_minus_one_one_flag():
    torch.manual_seed(0)
    m = DreamSimMetric(variant="dino_vitb16", pretrained=False, reduction="none", input_range=(-1, 1))
    torch.manual_seed(0)
    ref = DreamSimMetric(variant="dino_vitb16", pretrained=False, reduction="none")
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(m.pairwise(x * 2 - 1, y * 2 - 1), ref.pairwise(x, y))
    with pytest.raises(ValueError, match=r"must lie in \[-1, 1\]"):
        m.pairwise(x * 3, y)
    with pytest.raises(ValueError, match="input_range must be"):
        DreamSimMetric(variant="dino_vitb16", pretrained=False, input_range=(0, 255))


def test_metric_as_a_loss(metric):
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    y = torch.rand(2, 3, 64, 64)
    loss = metric(x, y).mean()
    loss.backward()
    # the same gradient through the resize written out by hand and the model
    x2 = x.detach().clone().requires_grad_(True)
    up = [torch.nn.functional.interpolate(t, size=(224, 224), mode="bicubic", antialias=True).clamp(0, 1)
          for t in (x2, y)]
    metric.model(*up).mean().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-4, atol=1e-7)
    assert x.grad.abs().max() > 0
    assert all(p.grad is None for p in metric.parameters())
    metric.train()
    assert not metric.model.training


def test_metric_under_autocast(metric):
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        d = metric.pairwise(x, y)
    with torch.no_grad():
        ref = metric.pairwise(x, y)
    assert torch.isfinite(d).all()
    torch.testing.assert_close(d.float(), ref, atol=0.05, rtol=0.2)


def test_attention_kernel_choice_keeps_the_numbers():
    """Fused SDPA by default; the plain attention path on the CPU under bf16 autocast (faster there)."""
    model = random_model("dino_vitb16")
    backbone = model.extractor_list[0]
    blocks = backbone.model.blocks
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model.embed(x)
        assert not any(b.attn.fused_attn for b in blocks)
        fused = model.embed(x)  # fp32: back to the fused kernel
        assert all(b.attn.fused_attn for b in blocks)
        for b in blocks:  # the plain path in fp32, bypassing the choice, gives the same embedding
            b.attn.fused_attn = False
        m = backbone.model
        plain = blocks(m.norm_pre(m._pos_embed(m.patch_embed((x - backbone.mean) / backbone.std))))[:, 0]
    torch.testing.assert_close(normalize_embedding(plain), fused, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(low.float(), fused, atol=5e-3, rtol=0)


def test_metric_compiles_whole_as_a_loss(metric):
    """``torch.compile`` captures the distance in one graph (fullgraph), forward and backward equal eager.

    The ``aot_eager`` backend checks graph capture and autograd without code generation (inductor also
    compiled it on the CPU, in 51 s, equal to 6e-8; too slow for a test)."""
    torch._dynamo.reset()
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    xe = x.clone().requires_grad_(True)
    eager = metric.distance(xe, y)
    eager.sum().backward()
    compiled = torch.compile(metric.distance, backend="aot_eager", fullgraph=True)
    xc = x.clone().requires_grad_(True)
    out = compiled(xc, y)
    out.sum().backward()
    torch.testing.assert_close(out, eager.detach())
    torch.testing.assert_close(xc.grad, xe.grad)
    torch._dynamo.reset()


def test_unknown_variant():
    with pytest.raises(ValueError, match="unknown DreamSim variant 'dino'"):
        DreamSimMetric(variant="dino", pretrained=False)


# ---------------------------------------------------------------------------------------------
# Weights: offline error, real HTTP download into the official layout, official cache reuse
# ---------------------------------------------------------------------------------------------
def test_offline_mode_lists_exact_files_and_urls(monkeypatch, tmp_path):
    monkeypatch.setenv("PERCEPBENCH_OFFLINE", "1")
    with pytest.raises(OfflineError) as exc:
        dreamsim(pretrained=True, cache_dir=tmp_path / "empty")
    msg = str(exc.value)
    assert str(tmp_path / "empty" / "dreamsim_ensemble_checkpoint.zip") in msg
    assert "dreamsim_ensemble_checkpoint.zip" in msg and "v0.2.0-checkpoints" in msg
    assert str(tmp_path / "empty" / "checkpoints" / "dino_vitbase16_pretrain.pth") in msg
    assert "dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth" in msg


@pytest.mark.slow
def test_download_from_http_into_official_layout_then_offline(monkeypatch, tmp_path):
    import percepbench.dreamsim_weights as dw

    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    server = LocalServer(tmp_path / "served")
    try:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:  # the release zip: LoRA folder (the real adapter)
            for f in REAL_ADAPTER.iterdir():
                zf.write(f, f"dino_vitb16_single_lora/{f.name}")
        zip_url = server.add("dreamsim_dino_vitb16_checkpoint.zip", buf.getvalue())
        torch.manual_seed(3)
        ckpt = io.BytesIO()
        torch.save(official_vit(16).state_dict(), ckpt)
        hub_url = server.add("dino_vitbase16_pretrain.pth", ckpt.getvalue())
        real = dw.dreamsim_weight_files

        def local_files(variant, *, lora=True):
            files = real(variant, lora=lora)
            return tuple(type(w)(**{**w.to_dict(), "url": zip_url if w.url.endswith(".zip") else hub_url})
                         for w in files)

        monkeypatch.setattr(dw, "dreamsim_weight_files", local_files)
        cache = tmp_path / "cache"
        model, _ = dreamsim(pretrained=True, dreamsim_type="dino_vitb16", cache_dir=cache)
        assert (cache / "dino_vitb16_single_lora" / "adapter_model.safetensors").is_file()
        assert (cache / "checkpoints" / "dino_vitbase16_pretrain.pth.sha256").is_file()
        assert model.lora_config["lora_alpha"] == 32.0
        n_requests = len(server.requests)
        monkeypatch.setenv("PERCEPBENCH_OFFLINE", "1")  # second time: served from the cache
        again, _ = dreamsim(pretrained=True, dreamsim_type="dino_vitb16", cache_dir=cache)
        assert len(server.requests) == n_requests
        x = torch.rand(1, 3, 224, 224)
        with torch.no_grad():
            torch.testing.assert_close(again.embed(x), model.embed(x))
    finally:
        server.close()


# ---------------------------------------------------------------------------------------------
# Through the runner and the CLI
# ---------------------------------------------------------------------------------------------
def test_percepbench_run_with_dreamsim(capsys, tmp_path):
    from percepbench.cli import main
    from percepbench.results import load_results

    out = tmp_path / "run"
    code = main(["run", "-m", "dreamsim.dino_vitb16", "--metric-args", "dreamsim.dino_vitb16:pretrained=false",
                 "--task-args", "severity2afc:per_family=1,size=64", "--n-boot", "20", "-q", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    res = load_results(out)
    (proto,) = res.meta["protocol"]
    assert proto["resize"] == "224x224 bicubic" and proto["metric"] == "dreamsim.dino_vitb16"
    # random weights: no file of the spec was read, so none is listed, and the metric is labelled
    assert "dreamsim.dino_vitb16" not in res.meta["weights"]
    assert res.meta["random_weights"] == ["dreamsim.dino_vitb16"]
    s = res.samples
    assert len(s) == 8 and s["d0"].between(0, 2).all() and s["d1"].between(0, 2).all()
    # the 2AFC rule by hand: p if d1 < d0, 1 - p if d0 < d1, 0.5 on a tie; the record is the mean x 100
    by_hand = [p if d1 < d0 else 1 - p if d0 < d1 else 0.5 for d0, d1, p in zip(s["d0"], s["d1"], s["p"], strict=True)]
    assert s["score"].tolist() == by_hand
    (value,) = res.records.loc[res.records["subset"] == "all", "value"]
    assert value == pytest.approx(100 * sum(by_hand) / 8)


def test_percepbench_run_offline_names_the_files(capsys, tmp_path, monkeypatch):
    from percepbench.cli import main

    monkeypatch.setenv("PERCEPBENCH_OFFLINE", "1")
    code = main(["run", "-m", "dreamsim", "-q", "-o", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1 and "dreamsim_ensemble_checkpoint.zip" in err and "dino_vitbase16_pretrain.pth" in err
    assert not (tmp_path / "run").exists()


def test_extracted_files_are_checked_on_every_later_load(real_adapter):
    lora = real_adapter
    random_model("dino_vitb16").load_lora(lora)  # first load records the sha256
    assert (lora / "adapter_model.safetensors.sha256").is_file()
    random_model("dino_vitb16").load_lora(lora)  # unchanged: fine
    data = bytearray((lora / "adapter_model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # flip bits in the last tensor
    (lora / "adapter_model.safetensors").write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="changed since it was downloaded"):
        random_model("dino_vitb16").load_lora(lora)
    (lora / "adapter_model.safetensors").write_bytes(b"\x08" + b"\x00" * 7 + b"{}")
    with pytest.raises(WeightsError, match=r"adapter_model\.safetensors"):
        random_model("dino_vitb16").load_lora(lora)
