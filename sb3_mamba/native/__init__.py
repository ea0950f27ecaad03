"""sb3-mamba's C kernels, built on first use with the system C compiler and cached.

The RSSM posterior unroll runs one step at a time, on 16 rows: through ATen
each step is ~30 small ops forward and ~35 backward at 3-15 us each, more
than the step's two matmuls. ``posterior_scan.c`` fuses each step's
elementwise work, layer norms and small layers into one call; the GRU's
matmuls stay in torch (oneDNN). Like torch's own inductor or
``cpp_extension``, the source is compiled on the machine it runs on
(``-march=native``), once: the shared library is cached under
``$SB3_MAMBA_CACHE_DIR`` (default ``~/.cache/sb3_mamba``), keyed by the
source, flags, compiler and CPU, and written atomically.

Without a C compiler (or with ``SB3_MAMBA_NATIVE=0``) everything runs on
ATen ops instead, with the same results (``tests/test_rssm_scan.py``); a
failed build says so once with a warning.
"""

from __future__ import annotations

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
from pathlib import Path

SOURCE = Path(__file__).with_name("posterior_scan.c")
#: no -ffast-math: NaNs must survive the kernels so MAMBA's finite checks still see them
FLAGS = ("-O3", "-march=native", "-std=gnu11", "-fopenmp-simd", "-fno-math-errno", "-fPIC", "-shared")
#: the kernels and how many data pointers (torch matmul outputs) each takes after (Scan*, t)
FUNCTIONS = {"forward_input": 0, "forward_output": 1, "backward_output": 1, "backward_input": 2}


def enabled() -> bool:
    """Whether the C kernels may be used (``SB3_MAMBA_NATIVE=0`` turns them off)."""
    return os.environ.get("SB3_MAMBA_NATIVE", "1") != "0" and platform.system() == "Linux"


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


@functools.cache
def posterior_scan_library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (disabled, no compiler, or the build failed: warned once)."""
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
    return library
