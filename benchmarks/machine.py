"""What machine a figure was measured on: CPU model, vector extensions, cores, torch and its threads."""

from __future__ import annotations

import os
import platform
from typing import cast

import torch

_VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")


def _machine_info() -> dict[str, object]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return {
        "cpu": model,
        "vector_extensions": [flag for flag in _VECTOR_FLAGS if flag in flags],
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


#: environment variables that limit the instruction set torch, oneDNN, MKL and our kernels use
ISA_LIMITS = ("ATEN_CPU_CAPABILITY", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "SB3_MAMBA_NATIVE_ARCH")


def machine_info() -> dict[str, object]:
    """The CPU, its vector extensions, cores, torch, its threads and ISA limits in effect."""
    return {**_machine_info(), "isa_limits": {k: os.environ[k] for k in ISA_LIMITS if os.environ.get(k)}}


def describe(info: dict[str, object] | None = None) -> str:
    info = info or machine_info()
    extensions = ", ".join(cast(list, info["vector_extensions"])) or "none of " + ", ".join(_VECTOR_FLAGS[:3])
    limits = cast(dict, info.get("isa_limits") or {})
    return (
        f"{info['cpu']} ({extensions}); {info['cores']} cores; torch {info['torch']}, "
        f"{info['torch_threads']} threads"
        + (f"; GPU {info['cuda']}" if info["cuda"] else "")
        + ("; instruction set limited by " + ", ".join(f"{k}={v}" for k, v in limits.items()) if limits else "")
    )
