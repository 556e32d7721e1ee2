"""What the hardware computes natively, read once: bfloat16 on this CPU / GPU, and the CPU's name and ISA.

Why: ``ed_precision: auto`` used to pick a bfloat16 teacher table for D >= 1024 everywhere. On a CPU without native
bf16 (AVX2 only, or AVX-512 without AVX512_BF16/AMX) the bf16 matmuls are emulated, and the full DLLM2Rec step ran
at half the float32 speed (2,299 vs 4,834 samples/s measured). So bf16 is chosen only where it is native.
"""
from __future__ import annotations

import functools
import platform


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags (Linux /proc/cpuinfo); empty where unknown."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.lru_cache(maxsize=None)
def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def native_bf16(device: str = "cpu") -> bool:
    """True where bfloat16 matmuls run in hardware: a CUDA GPU that supports bf16, or a CPU with AVX512_BF16 / AMX
    (x86) or BF16 (Arm ``bf16``). Emulated bf16 is slower than float32, so it does not count."""
    import torch

    if str(device).startswith("cuda"):
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    flags = cpu_flags()
    return bool({"avx512_bf16", "amx_bf16", "bf16"} & flags)


def describe() -> str:
    """``CPU name (ISA torch uses; native bf16 yes/no)`` — every speed figure names it."""
    import torch

    return f"{cpu_name()} ({torch.backends.cpu.get_cpu_capability()}; native bf16: {'yes' if native_bf16() else 'no'})"
