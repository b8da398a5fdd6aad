"""Int8 linear layers for scoring on the CPU (``percepbench run --precision int8``).

:class:`Int8Linear` replaces an ``nn.Linear`` for inference:

- weights: int8, symmetric, one scale per output channel (``max |w_row| / 127``), quantised once;
- activations: int8, symmetric, one scale per **row** (per token), quantised at run time;
- the product: exact int32 accumulation (``torch._int_mm``, oneDNN: VNNI or AMX where the CPU has them), then
  ``acc * row_scale * channel_scale + bias`` in fp32.

Why not ``torch.ao.quantization.quantize_dynamic`` (which percepbench used first)? Its activation scale is one
per *tensor*, computed over the whole batch (and 7-bit on x86, ``reduce_range``): an image's embedding then
depends on which other images share its batch (up to 9e-3 on DreamSim with random weights), so results moved
with ``--batch-size``, with the ``torchrun`` shards and with what the embedding cache already held. Per-row
scales make each token's quantisation its own and the int32 product exact, so an image's embedding does not
depend on its batch beyond fp32 rounding in the unquantised layers; the distance error against fp32 is about
halved (``benchmarks/int8_accuracy.py``, ``docs/performance.md``). The torch.ao API is also deprecated upstream.

Rows are processed in blocks of :data:`BLOCK_ROWS` so that the quantise / multiply / rescale steps stay in the
CPU cache: done over the whole (tokens x features) tensor at once, those memory-bound passes cost as much as
the int8 product itself; in blocks DreamSim runs at about 90% of the speed of torch's fbgemm kernel, which
fuses those steps (2.5x fp32 on an AVX-512 VNNI CPU).
"""

from __future__ import annotations

import torch
from torch import nn

#: rows (tokens) quantised and multiplied per step
BLOCK_ROWS = 512
#: what an int8 embedding was computed with; part of the embedding-cache fingerprint of int8 runs
SCHEME = "int8 per-row activations, per-channel weights, int32 accumulation (percepbench.int8 v1)"


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scale)``: ``x`` (n, k) float as int8 with one symmetric scale per row, ``x ~= q * scale``.

    ``scale`` (n, 1) is ``max |row| / 127`` (a row of zeros gets a tiny positive scale and quantises to zeros);
    values are rounded half to even."""
    scale = x.abs().amax(dim=1, keepdim=True).clamp_(min=torch.finfo(torch.float32).tiny).div_(127.0)
    q = torch.div(x, scale).round_().clamp_(-127, 127).to(torch.int8)
    return q, scale


class Int8Linear(nn.Module):
    """An ``nn.Linear`` computed with int8 weights and per-row int8 activations (see the module docstring).

    For inference only: the weights are buffers and carry no gradient. Inputs of any float dtype and any
    leading shape ``(..., in_features)``; the output has the input's dtype.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127.0
        q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_int8_t", q.t().contiguous())  # (in, out): the layout torch._int_mm takes
        self.register_buffer("weight_scale", scale)
        bias = linear.bias.detach().float().clone() if linear.bias is not None else torch.zeros(self.out_features)
        self.register_buffer("bias", bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-row x per-channel"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Int8Linear expects inputs with {self.in_features} features, got shape "
                             f"{tuple(x.shape)}")
        lead = x.shape[:-1]
        rows = x.reshape(-1, self.in_features).float()
        out = torch.empty(rows.shape[0], self.out_features, dtype=torch.float32, device=x.device)
        for start in range(0, rows.shape[0], BLOCK_ROWS):
            block = rows[start:start + BLOCK_ROWS]
            q, scale = quantize_rows(block)
            y = out[start:start + BLOCK_ROWS]
            torch.mul(torch._int_mm(q, self.weight_int8_t), scale, out=y)
            torch.addcmul(self.bias, y, self.weight_scale, out=y)
            bad = ~torch.isfinite(scale)
            if bad.any():  # a NaN or infinite input stays visible in the output (the run reports it)
                y[bad.squeeze(1)] = float("nan")
        return out.reshape(*lead, self.out_features).to(x.dtype)


def quantize_linears(module: nn.Module) -> int:
    """Replace every ``nn.Linear`` under ``module`` by an :class:`Int8Linear`, in place; returns how many.

    LoRA adapter layers (``peft``'s ``lora_A``/``lora_B``) stay fp32: an unmerged adapter keeps working on top
    of its int8 base layer, and a merged one is not called. Subclasses of ``nn.Linear`` stay fp32 too (their
    owners may read ``.weight`` directly, as ``nn.MultiheadAttention`` does)."""
    count = 0
    for name, child in list(module.named_children()):
        if name.startswith("lora_"):
            continue
        if type(child) is nn.Linear:  # subclasses (nn.MultiheadAttention's out_proj) may be read as weights
            setattr(module, name, Int8Linear(child))
            count += 1
        else:
            count += quantize_linears(child)
    return count
