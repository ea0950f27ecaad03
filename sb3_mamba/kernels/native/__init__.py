"""sb3-mamba's C kernels, built on first use with the system C compiler and cached.

The RSSM posterior unroll runs one step at a time, on 16 rows: through ATen
each step is ~30 small ops forward and ~35 backward, whose dispatch costs more
than the step's two matmuls. ``posterior_scan.c`` fuses each step's
elementwise work, layer norms and small layers into one call; the GRU's
matmuls stay in torch (oneDNN). Its GRU gates also serve imagination's GRU
cell without gradients (:func:`gru_cell`: 8192 x 1536 gates in one pass).
Like torch's own inductor or ``cpp_extension``, the source is compiled on
the machine it runs on (``-march=native``), once: the shared library is
cached under ``$SB3_MAMBA_CACHE_DIR`` (default ``~/.cache/sb3_mamba``),
keyed by the source, flags, compiler and CPU, and written atomically. Once
loaded, a self-check against ATen on fixed inputs refuses a miscompiled build.

Without a C compiler (or with ``SB3_MAMBA_NATIVE=0``) everything runs on
ATen ops instead, with the same results (``tests/test_kernels.py``,
``tests/test_native.py``); a missing compiler, a failed build or a failed
self-check says so once with a warning.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sysconfig
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

SOURCE = Path(__file__).with_name("posterior_scan.c")
#: no -ffast-math: NaNs must survive the kernels so MAMBA's finite checks still see them
FLAGS = ("-O3", "-march=native", "-std=gnu11", "-fopenmp-simd", "-fno-math-errno", "-fPIC", "-shared")
#: the kernels and how many data pointers (torch matmul outputs) each takes after (Scan*, t)
FUNCTIONS = {"forward_input": 0, "forward_output": 1, "backward_output": 1, "backward_input": 2}


_DISABLED_DEPTH = 0


def enabled() -> bool:
    """Whether the C kernels may be used (``SB3_MAMBA_NATIVE=0`` or :func:`disabled` turns them off)."""
    return (not _DISABLED_DEPTH and os.environ.get("SB3_MAMBA_NATIVE", "1") != "0"
            and platform.system() == "Linux")


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Run on ATen ops only inside the block (graph capture such as ONNX export cannot trace C calls)."""
    global _DISABLED_DEPTH
    _DISABLED_DEPTH += 1
    try:
        yield
    finally:
        _DISABLED_DEPTH -= 1


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sb3_mamba"
    return Path(os.environ.get("SB3_MAMBA_CACHE_DIR", default))


def _compiler() -> str | None:
    for candidate in (os.environ.get("CC"), (sysconfig.get_config_var("CC") or "").split(" ")[0], "cc", "gcc"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def _cpu_signature() -> str:
    """-march=native code must not run on another CPU: key the cache by the CPU's model and flags."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    keep = [line for line in lines if line.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(keep)))


def build(compiler: str) -> Path:
    """Compile ``posterior_scan.c`` (if not cached) and return the shared library's path."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), " ".join(FLAGS), compiler, version, _cpu_signature(),
                                    platform.machine()]).encode()).hexdigest()[:16]
    target = cache_dir() / f"posterior_scan-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # compile next to the target, then rename: concurrent processes never load a half-written file
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        result = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True,
                                timeout=300)
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} failed:\n{result.stderr.strip()[-2000:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


def posterior_scan_library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (disabled, no compiler, or the build failed: warned once)."""
    return None if _DISABLED_DEPTH else _library()


@functools.cache
def _library() -> ctypes.CDLL | None:
    if not enabled():
        return None
    compiler = _compiler()
    if compiler is None:
        warnings.warn("sb3-mamba: no C compiler found (set CC): the RSSM unroll runs on slower ATen ops. "
                      "SB3_MAMBA_NATIVE=0 silences this.", RuntimeWarning, stacklevel=2)
        return None
    try:
        library = ctypes.CDLL(str(build(compiler)))
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        warnings.warn(f"sb3-mamba: could not build its C kernels ({error}); the RSSM unroll runs on slower ATen "
                      "ops. SB3_MAMBA_NATIVE=0 silences this.", RuntimeWarning, stacklevel=2)
        return None
    for name, pointers in FUNCTIONS.items():
        function = getattr(library, name)
        function.argtypes = [ctypes.c_void_p, ctypes.c_int] + [ctypes.c_void_p] * pointers
        function.restype = None
    # (row_begin, row_end, D, pre, bf16, state_pre, index, g, bias, eps, h_prev, ld_h, h_out)
    library.gru_cell_forward.argtypes = ([ctypes.c_int] * 3 + [ctypes.c_void_p, ctypes.c_int]
                                         + [ctypes.c_void_p] * 4 + [ctypes.c_float]
                                         + [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p])
    library.gru_cell_forward.restype = None
    # (row_begin, row_end, D, pre, bf16, g, bias, eps, h_prev, ld_h, d_h, d_pre, d_h_prev)
    library.gru_cell_backward.argtypes = ([ctypes.c_int] * 3 + [ctypes.c_void_p, ctypes.c_int]
                                          + [ctypes.c_void_p] * 2 + [ctypes.c_float]
                                          + [ctypes.c_void_p, ctypes.c_int] + [ctypes.c_void_p] * 3)
    library.gru_cell_backward.restype = None
    if not _agrees_with_aten(library):
        warnings.warn("sb3-mamba: its C kernels disagree with ATen on this machine (compiler or CPU issue); "
                      "the RSSM unroll runs on slower ATen ops.", RuntimeWarning, stacklevel=2)
        return None
    return library


def _agrees_with_aten(library: ctypes.CDLL) -> bool:
    """A miscompiled kernel must not train silently wrong: the GRU cell (LayerNorm, exp-based gates and
    update, which the scan's kernels share) on fixed inputs (no RNG draw) against torch's ops."""
    from sb3_mamba.networks import UPDATE_OFFSET, gru_update  # (the eager cell: the definition checked against)

    D = 24
    pre = torch.linspace(-3.0, 3.0, 5 * 3 * D).reshape(5, 3 * D).sin() * 4
    h = torch.linspace(-1.0, 1.0, 5 * D).reshape(5, D)
    weight, bias = torch.linspace(0.5, 1.5, 3 * D), torch.linspace(-0.5, 0.5, 3 * D)
    folded = bias.clone()
    folded[2 * D:] += UPDATE_OFFSET
    out = torch.empty(5, D)
    library.gru_cell_forward(0, 5, D, pre.data_ptr(), 0, None, None, weight.data_ptr(), folded.data_ptr(), 1e-3,
                             h.data_ptr(), D, out.data_ptr())
    expected = gru_update(torch.nn.functional.layer_norm(pre, (3 * D,), weight, bias, 1e-3), h)
    return bool(torch.allclose(out, expected, rtol=1e-5, atol=1e-5))


@functools.cache
def _workers(count: int, pid: int) -> ThreadPoolExecutor:
    # ctypes releases the GIL during a foreign call: these threads run the kernels truly in parallel.
    # Keyed by process: a forked child has none of its parent's threads, so it needs its own pool.
    return ThreadPoolExecutor(max_workers=count, thread_name_prefix="sb3_mamba_native")


def gru_cell(pre: torch.Tensor, h_prev: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor,
             eps: float, state_pre: torch.Tensor | None = None,
             rows: torch.Tensor | None = None) -> torch.Tensor | None:
    """DreamerV3's GRU cell after its gate layer, without gradients, in C: ``None`` where it does not apply.

    ``pre`` (N, 3D) the gate layer's output (float32 or bfloat16), ``h_prev`` (N, D)
    float32 -> (N, D): LayerNorm, gates, update as :class:`sb3_mamba.networks.LayerNormGRUCell`
    (``norm_bias`` with the update gate's offset folded in:
    :func:`sb3_mamba.kernels.gru.folded_norm_bias`). With ``rows`` (N,), ``h_prev`` (P, D) holds
    distinct states that ``rows`` indexes, and ``pre`` is only the input's half of the gate
    layer: the state's half ``state_pre`` (P, 3D, ``pre``'s dtype) is added row by row, so
    neither is gathered to N rows first. One pass over the rows instead of ~8 full-size
    ATen ops (imagination's 8192 x 1536 gates are memory-bound there), the rows split over
    ``torch.get_num_threads()`` threads.
    """
    if not gru_cell_applies(pre, h_prev, state_pre, rows):
        return None
    shared, library = rows is not None, posterior_scan_library()
    pre = pre.contiguous()
    if shared:
        state_pre, rows = state_pre.contiguous(), rows.to(torch.int64).contiguous()
        if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= h_prev.shape[0]):  # never out of bounds
            raise IndexError(f"rows must index the {h_prev.shape[0]} states, "
                             f"got values in [{int(rows.min())}, {int(rows.max())}]")
    D = h_prev.shape[1]
    weight = norm_weight.detach().float().contiguous()
    bias = norm_bias.detach().float().contiguous()
    out = torch.empty(pre.shape[0], D)
    _run_rows(library.gru_cell_forward, pre.shape[0], D, pre.data_ptr(), int(pre.dtype == torch.bfloat16),
              state_pre.data_ptr() if shared else None, rows.data_ptr() if shared else None, weight.data_ptr(),
              bias.data_ptr(), eps, h_prev.data_ptr(), h_prev.stride(0), out.data_ptr())
    return out


def gru_cell_applies(pre: torch.Tensor, h_prev: torch.Tensor, state_pre: torch.Tensor | None = None,
                     rows: torch.Tensor | None = None) -> bool:
    """Whether :func:`gru_cell` runs in C for these inputs (CPU tensors of its dtypes and shapes, kernels built)."""
    shared = rows is not None
    if (pre.device.type != "cpu" or h_prev.device.type != "cpu" or pre.dim() != 2
            or pre.dtype not in (torch.float32, torch.bfloat16) or h_prev.dtype != torch.float32
            or 3 * h_prev.shape[-1] != pre.shape[1] or h_prev.stride(-1) != 1
            or (h_prev.shape[0] != pre.shape[0] if not shared else rows.shape != pre.shape[:1] or state_pre is None
                or state_pre.dtype != pre.dtype or state_pre.shape != (h_prev.shape[0], pre.shape[1]))):
        return False  # (checked first: a GPU run never builds the kernels)
    return posterior_scan_library() is not None


def gru_cell_backward(pre: torch.Tensor, h_prev: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor,
                      eps: float, d_h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`gru_cell`'s backward (no shared rows), the norm's parameters frozen: ``d_h`` (N, D) ->
    ``d_pre`` (N, 3D, ``pre``'s dtype) and ``d_h_prev`` (N, D) float32 through the update gate's mix
    alone (the gate layer's share of the state's gradient comes from ``d_pre``). The gates are
    recomputed from ``pre``."""
    if not gru_cell_applies(pre, h_prev):
        raise RuntimeError("gru_cell_backward needs the C kernels and gru_cell's inputs")
    library = posterior_scan_library()
    pre, d_h = pre.contiguous(), d_h.float().contiguous()
    rows, D = h_prev.shape
    weight = norm_weight.detach().float().contiguous()
    bias = norm_bias.detach().float().contiguous()
    d_pre, d_h_prev = torch.empty(rows, 3 * D, dtype=pre.dtype), torch.empty(rows, D)
    _run_rows(library.gru_cell_backward, rows, D, pre.data_ptr(), int(pre.dtype == torch.bfloat16),
              weight.data_ptr(), bias.data_ptr(), eps, h_prev.data_ptr(), h_prev.stride(0), d_h.data_ptr(),
              d_pre.data_ptr(), d_h_prev.data_ptr())
    return d_pre, d_h_prev


def _run_rows(kernel: Callable[..., None], rows: int, *args: Any) -> None:
    """``kernel(begin, end, *args)`` over rows [0, rows), split over ``torch.get_num_threads()`` threads."""
    threads = max(1, min(torch.get_num_threads(), rows // 256))
    bounds = [rows * i // threads for i in range(threads + 1)]
    pool = _workers(threads - 1, os.getpid()) if threads > 1 else None
    others = [pool.submit(kernel, bounds[i], bounds[i + 1], *args) for i in range(1, threads)]
    kernel(bounds[0], bounds[1], *args)
    for future in others:
        future.result()
