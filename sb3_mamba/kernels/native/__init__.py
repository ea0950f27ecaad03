"""sb3-mamba's CPU kernels as PyTorch custom ops, built on first use and cached.

The RSSM posterior unroll runs one step at a time, on 16 rows: through ATen
each step is ~30 small ops forward and ~35 backward, whose dispatch costs more
than the step's two matmuls. ``posterior_scan.cpp`` fuses each step's
elementwise work, layer norms and small layers into one call of a custom
class, ``torch.classes.sb3_mamba.PosteriorScan`` (it holds the unroll's buffers,
each checked for dtype and shape); the GRU's matmuls stay in torch (oneDNN).
Its GRU gates also serve imagination: ``torch.ops.sb3_mamba.gru_cell`` and
``gru_cell_backward``. These split their rows over torch's threads with ``at::parallel_for``: built with
``-fopenmp``, the library shares the OpenMP runtime torch loaded (one thread pool), so,
like every parallel ATen op, not in a child forked after its parent ran parallel work:
GNU OpenMP does not survive such a fork; start such children with "spawn".

The source is compiled against this torch (include and library paths from
``torch.utils.cpp_extension``) on the machine it runs on (``-O3 -march=native``; :func:`compile_flags`),
once: the library is cached under ``$SB3_MAMBA_CACHE_DIR`` (default
``~/.cache/sb3_mamba``), keyed by the source, flags, compiler, torch and CPU,
and written atomically; a process loads it once. Once loaded, a self-check against
the eager GRU cell on fixed inputs refuses a miscompiled build.

Without a C++ compiler (or with ``SB3_MAMBA_NATIVE=0``) everything runs on
ATen ops instead, with the same results (``tests/test_kernels.py``,
``tests/test_native.py``); a missing compiler, a failed build or a failed
self-check says so once with a warning.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

SOURCE = Path(__file__).with_name("posterior_scan.cpp")
#: no -ffast-math: NaNs must survive the kernels so MAMBA's finite checks still see them.
#: -fno-trapping-math (floating-point exceptions are never read) lets the compiler turn the
#: exponential's clamps into blends: without it, AVX2 builds left the GRU gates' loop scalar.
#: -fopenmp: at::parallel_for is inline OpenMP code; without it, it runs the rows on one thread.
FLAGS = ("-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math", "-Wno-vla", "-Wno-unused-function")


def compile_flags() -> tuple[str, ...]:
    """:data:`FLAGS` and ``-march=native``, or ``-march=$SB3_MAMBA_NATIVE_ARCH`` (e.g. ``x86-64-v3``:
    AVX2 code on an AVX-512 machine, to measure what an AVX2-only CPU runs)."""
    return (*FLAGS, "-march=" + (os.environ.get("SB3_MAMBA_NATIVE_ARCH") or "native"))


NAME = "sb3_mamba_kernels"

_DISABLED_DEPTH = 0


def enabled() -> bool:
    """Whether the kernels may be used (``SB3_MAMBA_NATIVE=0`` or :func:`disabled` turns them off)."""
    return not _DISABLED_DEPTH and os.environ.get("SB3_MAMBA_NATIVE", "1") != "0" and platform.system() == "Linux"


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Run on ATen ops only inside the block."""
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
    """The C++ compiler cpp_extension will use (``CXX``, else ``c++``), or None."""
    for candidate in (os.environ.get("CXX"), "c++", "g++"):
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
    """Compile ``posterior_scan.cpp`` against this torch (if not cached) and return the shared library's path.

    The include and library paths come from ``torch.utils.cpp_extension``; the library is compiled next to
    its cache entry and renamed into place, so concurrent processes never load a half-written file.
    """
    from torch.utils import cpp_extension

    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256(
        "\0".join(
            [
                SOURCE.read_text(),
                " ".join(compile_flags()),
                compiler,
                version,
                torch.__version__,
                _cpu_signature(),
                platform.machine(),
            ]
        ).encode()
    ).hexdigest()[:16]
    target = cache_dir() / f"{NAME}-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    command = [
        compiler,
        *compile_flags(),
        "-std=c++17",
        "-shared",
        "-fPIC",
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        *(f"-I{path}" for path in cpp_extension.include_paths()),
        str(SOURCE),
        "-o",
        tmp,
        *(f"-L{path}" for path in cpp_extension.library_paths()),
        "-lc10",
        "-ltorch_cpu",
        "-ltorch",
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} failed:\n{result.stderr.strip()[-2000:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


#: the library this process loaded (its ops register once per process: a second copy would abort)
_LOADED: Path | None = None


def _load(path: Path) -> None:
    global _LOADED
    if _LOADED is None:
        torch.ops.load_library(str(path))
        _LOADED = path


def posterior_scan_library() -> Any | None:
    """``torch.ops.sb3_mamba`` with the kernels loaded, or None (disabled, no compiler, or the build or its
    self-check failed: warned once)."""
    return None if _DISABLED_DEPTH else _library()


@functools.cache
def _library() -> Any | None:
    if not enabled():
        return None
    compiler = _compiler()
    if compiler is None:
        warnings.warn(
            "sb3-mamba: no C++ compiler found (set CXX): the RSSM unroll runs on slower ATen ops. "
            "SB3_MAMBA_NATIVE=0 silences this.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    try:
        _load(build(compiler))
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        message = str(error).strip()[-2000:]
        warnings.warn(
            f"sb3-mamba: could not build its C++ kernels ({message}); the RSSM unroll runs on slower "
            "ATen ops. SB3_MAMBA_NATIVE=0 silences this.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    if not _agrees_with_eager(torch.ops.sb3_mamba.gru_cell):
        warnings.warn(
            "sb3-mamba: its C++ kernels disagree with the eager cell on this machine (compiler or CPU "
            "issue); the RSSM unroll runs on slower ATen ops.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    return torch.ops.sb3_mamba


def _agrees_with_eager(gru_cell_kernel: Any) -> bool:
    """A miscompiled kernel must not train silently wrong: the GRU cell (LayerNorm, exp-based gates and
    update, which the scan's kernels share) on fixed inputs (no RNG draw) against the eager cell."""
    from sb3_mamba.networks import UPDATE_OFFSET, gru_update  # (the eager cell: the definition checked against)

    D = 24
    pre = torch.linspace(-3.0, 3.0, 5 * 3 * D).reshape(5, 3 * D).sin() * 4
    h = torch.linspace(-1.0, 1.0, 5 * D).reshape(5, D)
    weight, bias = torch.linspace(0.5, 1.5, 3 * D), torch.linspace(-0.5, 0.5, 3 * D)
    folded = bias.clone()
    folded[2 * D :] += UPDATE_OFFSET
    out = gru_cell_kernel(pre, h, weight, folded, 1e-3)
    expected = gru_update(torch.nn.functional.layer_norm(pre, (3 * D,), weight, bias, 1e-3), h)
    return bool(torch.allclose(out, expected, rtol=1e-5, atol=1e-5))


def gru_cell(
    pre: torch.Tensor,
    h_prev: torch.Tensor,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
    eps: float,
    state_pre: torch.Tensor | None = None,
    rows: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """DreamerV3's GRU cell after its gate layer, without gradients, in C++: ``None`` where it does not apply.

    ``pre`` (N, 3D) the gate layer's output (float32 or bfloat16), ``h_prev`` (N, D)
    float32 -> (N, D): LayerNorm, gates, update as :class:`sb3_mamba.networks.LayerNormGRUCell`
    (``norm_bias`` with the update gate's offset folded in:
    :func:`sb3_mamba.kernels.gru.folded_norm_bias`). With ``rows`` (N,), ``h_prev`` (P, D) holds
    distinct states that ``rows`` indexes, and ``pre`` is only the input's half of the gate
    layer: the state's half ``state_pre`` (P, 3D, ``pre``'s dtype) is added row by row, so
    neither is gathered to N rows first. One pass over the rows instead of ~8 full-size
    ATen ops (imagination's 8192 x 1536 gates are memory-bound there), the rows split over
    torch's intra-op threads.
    """
    if not gru_cell_applies(pre, h_prev, state_pre, rows):
        return None
    weight, bias = norm_weight.detach().float(), norm_bias.detach().float()
    return torch.ops.sb3_mamba.gru_cell(
        pre,
        h_prev,
        weight,
        bias,
        eps,
        None if state_pre is None else state_pre.to(pre.dtype),
        None if rows is None else rows.to(torch.int64),
    )


def gru_cell_applies(
    pre: torch.Tensor, h_prev: torch.Tensor, state_pre: torch.Tensor | None = None, rows: torch.Tensor | None = None
) -> bool:
    """Whether :func:`gru_cell` runs in C++ for these inputs (CPU tensors of its dtypes and shapes, kernels built)."""
    # (checked first: a GPU run never builds the kernels)
    if (
        pre.device.type != "cpu"
        or h_prev.device.type != "cpu"
        or pre.dim() != 2
        or pre.dtype not in (torch.float32, torch.bfloat16)
        or h_prev.dtype != torch.float32
        or 3 * h_prev.shape[-1] != pre.shape[1]
        or h_prev.stride(-1) != 1
    ):
        return False
    if rows is None:
        rows_fit = h_prev.shape[0] == pre.shape[0]
    else:  # shared states: the state's gate half for each of them, rows indexing them
        rows_fit = (
            state_pre is not None
            and rows.shape == pre.shape[:1]
            and state_pre.dtype == pre.dtype
            and state_pre.shape == (h_prev.shape[0], pre.shape[1])
        )
    return rows_fit and posterior_scan_library() is not None


def gru_cell_backward(
    pre: torch.Tensor,
    h_prev: torch.Tensor,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
    eps: float,
    d_h: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`gru_cell`'s backward (no shared rows), the norm's parameters frozen: ``d_h`` (N, D) ->
    ``d_pre`` (N, 3D, ``pre``'s dtype) and ``d_h_prev`` (N, D) float32 through the update gate's mix
    alone (the gate layer's share of the state's gradient comes from ``d_pre``). The gates are
    recomputed from ``pre``."""
    if not gru_cell_applies(pre, h_prev):
        raise RuntimeError("gru_cell_backward needs the C++ kernels and gru_cell's inputs")
    return torch.ops.sb3_mamba.gru_cell_backward(
        pre, h_prev, norm_weight.detach().float(), norm_bias.detach().float(), eps, d_h
    )
