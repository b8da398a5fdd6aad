"""What the host CPU is and which of the precisions percepbench offers it runs natively (no torch import).

The machines percepbench runs on differ: an AVX2-only CPU computes bf16 by emulation (slower than fp32),
one with AVX512-BF16 or AMX computes it natively (about twice fp32); int8 matrix products use VNNI
(AVX512-VNNI, AVX-VNNI) or AMX-INT8 where present. :func:`cpu_facts` reads the model name and these
feature flags (Linux ``/proc/cpuinfo``; elsewhere only the model); ``results.json`` records them
(``meta.cpu_flags``) and :func:`precision_advice` says when a requested precision is a poor fit.
"""

from __future__ import annotations

import platform
from functools import lru_cache
from typing import Any

#: The feature flags that decide which precisions are fast on a CPU, as ``/proc/cpuinfo`` names them
SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
               "amx_bf16", "amx_fp16", "amx_int8")


@lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str | None, frozenset[str]]:
    model, flags = None, frozenset()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, sep, value = line.partition(":")
                key = key.strip()
                if not sep:
                    continue
                if key == "model name" and model is None and value.strip():
                    model = value.strip()
                elif key == "flags" and not flags:
                    flags = frozenset(value.split())
                if model is not None and flags:
                    break
    except OSError:
        pass
    return model, flags


def cpu_model() -> str | None:
    """The host CPU's model name: ``model name`` in ``/proc/cpuinfo`` (Linux), else ``platform.processor()``
    (macOS ``"arm"``/``"i386"``, Windows the full name); None when neither says anything."""
    return _cpuinfo()[0] or platform.processor() or None


def cpu_flags() -> list[str]:
    """The :data:`SPEED_FLAGS` this CPU has (sorted as listed there); empty where ``/proc/cpuinfo`` is absent."""
    flags = _cpuinfo()[1]
    return [f for f in SPEED_FLAGS if f in flags]


def native_bf16(flags: list[str] | None = None) -> bool:
    """True where bf16 matrix products run natively (AVX512-BF16 or AMX-BF16)."""
    have = set(cpu_flags() if flags is None else flags)
    return bool(have & {"avx512_bf16", "amx_bf16"})


def int8_dot_product(flags: list[str] | None = None) -> bool:
    """True where int8 matrix products have dot-product instructions (VNNI or AMX-INT8)."""
    have = set(cpu_flags() if flags is None else flags)
    return bool(have & {"avx512_vnni", "avx_vnni", "amx_int8"})


def cpu_facts() -> dict[str, Any]:
    """Model, speed flags, and which reduced precisions are native here (recorded with every benchmark)."""
    flags = cpu_flags()
    accelerators = [name for name, present in (
        ("AMX", "amx_tile" in flags), ("AVX-512", "avx512f" in flags), ("AVX512-BF16", "avx512_bf16" in flags),
        ("VNNI", bool({"avx512_vnni", "avx_vnni"} & set(flags))), ("AVX2", "avx2" in flags)) if present]
    return {"model": cpu_model(), "flags": flags, "accelerators": accelerators, "native_bf16": native_bf16(flags),
            "int8_dot_product": int8_dot_product(flags), "machine": platform.machine()}


def precision_advice(precision: str, flags: list[str] | None = None) -> str | None:
    """A warning for a CPU run in ``precision`` that this CPU does not run natively, else None."""
    flags = cpu_flags() if flags is None else flags
    if not flags and platform.machine().lower() not in ("x86_64", "amd64"):
        return None  # no flags to judge by (not Linux/x86): say nothing rather than guess
    model = cpu_model() or "this CPU"
    native = native_bf16(flags) if precision == "bf16" else bool(set(flags) & {"avx512_fp16", "amx_fp16"})
    if precision in ("bf16", "fp16") and not native:
        return (f"--precision {precision} on the CPU: {model} has no {precision} matrix instructions (AVX-512 or AMX), so {precision} is "
                "emulated and usually slower than fp32; --precision int8 (dynamic quantisation) is the faster "
                "reduced precision here")
    if precision == "int8" and not int8_dot_product(flags):
        return (f"--precision int8 on the CPU: {model} has no VNNI or AMX-INT8 instructions, so int8 gains less "
                "than on CPUs that have them")
    return None
