"""The CPU speed modes: int8 dynamic quantisation (``--precision int8``), ``--compile``, the CPU facts that
``results.json`` records, and the CLS-only last block of the ViT feature path."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from test_embed_cache import write_2afc_csv

from percepbench import cpu_info
from percepbench.cli import main
from percepbench.config import RunConfig
from percepbench.errors import UsageError
from percepbench.metrics_registry.dreamsim import DreamSimMetric
from percepbench.models.vit import cls_through_block
from percepbench.registry import METRICS
from percepbench.results import load_results
from percepbench.runner import build_metric, precision_context

# ------------------------------------------------------------------------------------------- CPU facts


def test_cpu_flags_are_the_speed_flags_proc_cpuinfo_lists():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            line = next(x for x in fh if x.startswith("flags"))
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo flags here")
    have = set(line.split(":", 1)[1].split())
    assert cpu_info.cpu_flags() == [f for f in cpu_info.SPEED_FLAGS if f in have]
    facts = cpu_info.cpu_facts()
    assert facts["flags"] == cpu_info.cpu_flags() and facts["model"] == cpu_info.cpu_model()
    assert facts["native_bf16"] == bool(have & {"avx512_bf16", "amx_bf16"})
    assert ("AMX" in facts["accelerators"]) == ("amx_tile" in have)


@pytest.mark.parametrize(("flags", "bf16", "int8"), [
    (["avx2", "fma"], False, False),                                           # AVX2-only EPYC
    (["avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"], True, True),     # Zen 4 / Cooper Lake
    (["avx2", "avx512f", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8"], True, True),  # Sapphire Rapids
    (["avx2", "avx_vnni"], False, True),                                        # Alder Lake
])
def test_which_precisions_are_native(flags, bf16, int8):
    assert cpu_info.native_bf16(flags) is bf16 and cpu_info.int8_dot_product(flags) is int8
    advice = cpu_info.precision_advice("bf16", flags)
    assert (advice is None) is bf16
    if advice:
        assert "slower than fp32" in advice and "--precision int8" in advice
    assert (cpu_info.precision_advice("int8", flags) is None) is int8
    assert cpu_info.precision_advice("fp32", flags) is None


# ------------------------------------------------------------------------------------------------- int8


def _int8_linear_by_hand(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The int8 product in numpy: symmetric per-row scales for x, per-output-channel scales for w (float32
    like the module, half-to-even rounding), integer matmul in int64, then rescaled."""
    def quantise(a):
        scale = np.abs(a).max(axis=1, keepdims=True).astype(np.float32) / np.float32(127)
        return np.clip(np.round(a / scale), -127, 127).astype(np.int64), scale

    qx, sx = quantise(x.astype(np.float32))
    qw, sw = quantise(w.astype(np.float32))
    return (qx @ qw.T).astype(np.float64) * sx.astype(np.float64) * sw.reshape(1, -1).astype(np.float64) + b


def test_int8_linear_matches_a_hand_computation():
    from percepbench.int8 import BLOCK_ROWS, Int8Linear

    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 40)
    x = torch.randn(2, 300, 96) * torch.linspace(0.01, 30, 300).reshape(1, 300, 1)  # rows of very different scale
    assert BLOCK_ROWS < 600  # the 2 x 300 rows cross a block boundary
    got = Int8Linear(linear)(x)
    assert got.shape == (2, 300, 40) and got.dtype == torch.float32
    want = _int8_linear_by_hand(x.reshape(-1, 96).numpy(), linear.weight.detach().numpy(), linear.bias.detach().numpy())
    np.testing.assert_allclose(got.reshape(-1, 40).numpy(), want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    # and close to the fp32 layer: per-row scales keep the small rows as accurate as the large ones
    ref = linear(x).detach()
    rel = ((got - ref).norm(dim=-1) / ref.norm(dim=-1)).max().item()
    assert rel < 0.02, rel
    # bf16 in, bf16 out; a row holding a NaN gives a NaN row, the others are unaffected
    assert Int8Linear(linear)(x.bfloat16()).dtype == torch.bfloat16
    bad = x.clone()
    bad[0, 5, 3] = float("nan")
    out = Int8Linear(linear)(bad)
    assert torch.isnan(out[0, 5]).all() and torch.equal(out[0, 6:], got[0, 6:]) and torch.equal(out[1], got[1])


def test_int8_rows_do_not_depend_on_their_batch():
    """Each row (token) is quantised on its own and the int32 product is exact: a row's output is the same
    whichever rows share its batch (torch's quantize_dynamic used one scale for the whole batch)."""
    from percepbench.int8 import Int8Linear

    torch.manual_seed(1)
    layer = Int8Linear(torch.nn.Linear(64, 32))
    x = torch.randn(700, 64)
    x[:10] *= 1000  # large rows in the batch must not coarsen the others
    whole = layer(x)
    parts = torch.cat([layer(x[i:i + 37]) for i in range(0, 700, 37)])
    assert torch.equal(whole, parts)
    assert torch.equal(layer(x[500:501]), whole[500:501])


def test_int8_quantises_every_linear_layer_and_stays_close():
    from percepbench.int8 import Int8Linear

    torch.manual_seed(0)
    metric = DreamSimMetric(variant="dino_vitb16", pretrained=False, reduction="none")
    linear = sum(isinstance(m, torch.nn.Linear) for m in metric.modules())
    x = torch.rand(4, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        fp32 = metric.embed(x)
    metric.quantize_int8()
    quantised = [m for m in metric.modules() if isinstance(m, Int8Linear)]
    assert linear == 12 * 4 and len(quantised) == linear  # qkv, proj, fc1, fc2 of 12 blocks
    assert not any(type(m) is torch.nn.Linear for m in metric.modules())
    with torch.inference_mode():
        int8 = metric.embed(x)
        # an image's embedding does not depend on its batch (up to fp32 rounding in attention and LayerNorm)
        alone = torch.cat([metric.embed(x[i:i + 1]) for i in range(4)])
    assert not torch.equal(int8, fp32)
    cos = torch.nn.functional.cosine_similarity(int8, fp32, dim=-1)
    assert (cos > 0.99).all(), cos
    np.testing.assert_allclose(alone.numpy(), int8.numpy(), rtol=0, atol=1e-5)


def test_int8_leaves_lora_adapters_and_attention_projections_in_fp32():
    """peft's ``lora_A``/``lora_B`` stay fp32 (an unmerged adapter still adds its term), and so does
    ``nn.MultiheadAttention``'s ``out_proj``, which its owner reads as a weight."""
    from peft import LoraConfig, inject_adapter_in_model

    from percepbench.int8 import Int8Linear, quantize_linears

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = torch.nn.MultiheadAttention(16, 2, batch_first=True)
            self.fc = torch.nn.Linear(16, 8)

        def forward(self, x):
            return self.fc(self.attn(x, x, x, need_weights=False)[0])

    torch.manual_seed(0)
    net = inject_adapter_in_model(LoraConfig(r=4, target_modules=["fc"], init_lora_weights=False), Net())
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        ref = net(x)
        assert quantize_linears(net) == 1
        out = net(x)
    assert isinstance(net.fc.base_layer, Int8Linear)
    assert type(net.fc.lora_A["default"]) is torch.nn.Linear and type(net.attn.out_proj) is not Int8Linear
    torch.testing.assert_close(out, ref, rtol=0.05, atol=0.02)


def test_int8_is_declared_per_metric():
    dreamsim = METRICS.get("dreamsim.dino_vitb16").create(pretrained=False)
    psnr = METRICS.get("psnr").create()
    assert dreamsim.computes_in("int8") == "int8" and psnr.computes_in("int8") == "fp32"
    assert "int8" in METRICS.get("dino.vitb16").precisions  # the zero-shot ViTs share the code
    assert "int8" not in METRICS.get("lpips.alex").precisions
    with pytest.raises(TypeError, match="does not support int8"):
        psnr.quantize_int8()


def test_int8_is_cpu_only():
    with pytest.raises(UsageError, match="CPU only"):
        precision_context(torch.device("cuda"), "int8")
    assert precision_context(torch.device("cpu"), "int8").__class__.__name__ == "nullcontext"


def test_int8_run_records_what_each_metric_computed_in(capsys, tmp_path, clean_env):
    csv = write_2afc_csv(tmp_path)
    common = ["run", "-m", "dreamsim.dino_vitb16,psnr", "-t", "2afc_csv", "--task-args", f"2afc_csv:path={csv}",
              "--metric-args", "dreamsim.dino_vitb16:pretrained=false", "--no-embed-cache", "--no-report",
              "--n-boot", "20", "-q", "--device", "cpu"]
    torch.manual_seed(0)
    assert main([*common, "-o", str(tmp_path / "fp32")]) == 0
    torch.manual_seed(0)
    assert main([*common, "--precision", "int8", "-o", str(tmp_path / "int8")]) == 0
    capsys.readouterr()
    fp32, int8 = load_results(tmp_path / "fp32"), load_results(tmp_path / "int8")
    assert int8.meta["precision"] == "int8"
    assert {p["metric"]: p["precision"] for p in int8.meta["protocol"]} == {"dreamsim.dino_vitb16": "int8",
                                                                             "psnr": "fp32"}
    assert int8.meta["cpu_flags"] == cpu_info.cpu_flags() and int8.meta["cpu_model"] == cpu_info.cpu_model()

    def dist(res, metric):
        s = res.samples
        return s[s["metric"] == metric][["d0", "d1"]].to_numpy()

    np.testing.assert_array_equal(dist(int8, "psnr"), dist(fp32, "psnr"))  # untouched
    a, b = dist(fp32, "dreamsim.dino_vitb16"), dist(int8, "dreamsim.dino_vitb16")
    assert not np.array_equal(a, b) and np.isfinite(b).all()
    np.testing.assert_allclose(b, a, atol=0.01)


def test_bf16_on_a_cpu_without_bf16_instructions_warns(capsys, tmp_path, clean_env, monkeypatch, caplog):
    monkeypatch.setattr(cpu_info, "cpu_flags", lambda: ["avx2", "fma"])
    monkeypatch.setattr(cpu_info.platform, "machine", lambda: "x86_64")
    assert "no bf16 matrix instructions" in cpu_info.precision_advice("bf16")
    import percepbench.runner as runner

    monkeypatch.setattr(runner, "precision_advice", cpu_info.precision_advice)
    csv = write_2afc_csv(tmp_path)
    code = main(["run", "-m", "psnr", "-t", "2afc_csv", "--task-args", f"2afc_csv:path={csv}", "--no-report",
                 "--n-boot", "20", "-q", "--device", "cpu", "--precision", "bf16", "-o", str(tmp_path / "r")])
    assert code == 0
    assert "usually slower than fp32" in capsys.readouterr().err + caplog.text


# ---------------------------------------------------------------------------------------------- compile


def test_compile_wraps_the_embedding_step_of_embedding_metrics(monkeypatch):
    compiled = []

    def fake_compile(fn, **options):
        compiled.append(fn)
        return lambda *a, **k: fn(*a, **k)

    monkeypatch.setattr(torch, "compile", fake_compile)
    config = RunConfig(metrics=["dreamsim.dino_vitb16", "psnr"], compile=True,
                       metric_args={"dreamsim.dino_vitb16": {"pretrained": False}})
    dreamsim = build_metric(METRICS.get("dreamsim.dino_vitb16"), config, torch.device("cpu"))
    psnr = build_metric(METRICS.get("psnr"), config, torch.device("cpu"))
    assert len(compiled) == 1 and compiled[0].__func__ is DreamSimMetric.embed
    assert "embed" in vars(dreamsim) and "embed" not in vars(psnr)
    x = torch.rand(2, 3, 32, 32)
    assert dreamsim.embed_images(x).shape == (2, 768)
    with pytest.raises(TypeError, match="not an embedding metric"):
        psnr.compile_embedding()


def test_compile_is_a_run_setting(capsys):
    from percepbench.config import setting_type_problem

    assert setting_type_problem("compile", True) is None
    assert "true or false" in setting_type_problem("compile", "yes")


# ----------------------------------------------------------------------------- CLS-only last block


@pytest.mark.parametrize("name", ["vit_base_patch16_224.dino", "vit_small_patch14_dinov2.lvd142m",
                                  "vit_base_patch16_clip_224.openai"])
def test_cls_through_block_matches_the_full_block(name):
    torch.manual_seed(0)
    kwargs = {"img_size": 56} if "dinov2" in name else {}
    model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs).eval()
    block = model.blocks[-1]
    if "dinov2" in name:  # LayerScale: make it matter
        torch.nn.init.normal_(block.ls1.gamma, 0.5, 0.1)
        torch.nn.init.normal_(block.ls2.gamma, 0.5, 0.1)
    x = torch.randn(3, 50, model.embed_dim)
    for fused in (True, False):
        block.attn.fused_attn = fused
        with torch.no_grad():
            full = block(x)[:, :1]  # timm's own forward over every token: the oracle
            torch.testing.assert_close(cls_through_block(block, x), full, atol=1e-5, rtol=1e-5)
    # it trains like the full block: gradients reach the input tokens
    x.requires_grad_(True)
    cls_through_block(block, x).sum().backward()
    assert x.grad is not None and x.grad[:, 1:].abs().sum() > 0


# ------------------------------------------------------------------------------------------- read-ahead


def test_prefetched_keeps_order_and_raises_where_the_source_failed():
    from percepbench.prefetch import prefetched

    assert list(prefetched(range(10), depth=2)) == list(range(10))
    assert list(prefetched(iter([]))) == []
    assert list(prefetched("abc", depth=0)) == ["a", "b", "c"]

    def broken():
        yield 1
        yield 2
        raise ValueError("image 3 is unreadable")

    got = []
    with pytest.raises(ValueError, match="image 3 is unreadable"):
        for x in prefetched(broken()):
            got.append(x)
    assert got == [1, 2]  # every batch before the failure arrived first


def test_prefetched_stops_its_thread_when_the_loop_ends_early():
    import threading

    from percepbench.prefetch import prefetched

    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    for x in prefetched(endless(), depth=2):
        if x == 3:
            break
    assert not any(t.name == "percepbench-prefetch" and t.is_alive() for t in threading.enumerate())
    assert len(produced) <= 3 + 1 + 2 + 1  # read ahead by at most depth (+ the one being put)


def _source(n, seconds, threads):
    """``n`` items, each taking ``seconds`` to produce; records the thread that produced each."""
    import threading
    import time

    for i in range(n):
        time.sleep(seconds)
        threads.append(threading.current_thread().name)
        yield i


def test_read_ahead_starts_the_thread_only_where_the_callers_work_dwarfs_the_reading():
    import threading
    import time

    from percepbench.prefetch import THREAD_NAME, read_ahead

    here = threading.current_thread().name
    # producing takes 1 ms and the caller works 40 ms per item (40x; 7x even if every sleep overshot by 5 ms):
    # after the warm-up and 3 timed items, the rest is read ahead by the thread
    threads: list[str] = []
    got = []
    for x in read_ahead(_source(10, 0.001, threads), depth=1, probe=3, min_ratio=4.0):
        time.sleep(0.04)
        got.append(x)
    assert got == list(range(10))
    assert threads[:4] == [here] * 4
    assert set(threads[4:]) == {THREAD_NAME}
    assert not any(t.name == THREAD_NAME and t.is_alive() for t in threading.enumerate())

    # the caller works about as long as producing takes (1x): no thread
    threads = []
    for _ in read_ahead(_source(10, 0.01, threads), depth=1, probe=3, min_ratio=4.0):
        time.sleep(0.01)
    assert threads == [here] * 10

    # a near-free caller: no thread
    threads = []
    assert list(read_ahead(_source(8, 0.005, threads), depth=1, probe=3)) == list(range(8))
    assert threads == [here] * 8

    # depth 0 (DataLoader worker processes already read ahead): never a thread
    threads = []
    for _ in read_ahead(_source(6, 0.001, threads), depth=0):
        time.sleep(0.01)
    assert threads == [here] * 6


def test_read_ahead_short_inputs_errors_and_early_exit():
    import threading

    from percepbench.prefetch import THREAD_NAME, read_ahead

    for n in range(0, 8):  # shorter than, as long as and longer than the probe
        assert list(read_ahead(range(n), probe=3)) == list(range(n))
    assert list(read_ahead(range(10), probe=0)) == list(range(10))  # straight to the thread

    def broken(at):
        yield from range(at)
        raise ValueError(f"image {at} is unreadable")

    for at in (0, 2, 6):  # in the warm-up, in the probe, after the decision (in the thread: min_ratio=0)
        got = []
        with pytest.raises(ValueError, match=f"image {at} is unreadable"):
            for x in read_ahead(broken(at), probe=3, min_ratio=0.0):
                got.append(x)
        assert got == list(range(at))  # every item before the failure arrived first

    def endless():
        i = 0
        while True:
            yield i
            i += 1

    for x in read_ahead(endless(), probe=2, min_ratio=0.0):
        if x == 9:
            break
    assert not any(t.name == THREAD_NAME and t.is_alive() for t in threading.enumerate())
