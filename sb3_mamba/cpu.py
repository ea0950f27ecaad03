"""CPU process settings that MAMBA's update needs to run at full speed.

An update allocates and frees temporaries of tens of MB (8192 imagination
starts x 1536 GRU gates is 50 MB in float32). glibc's malloc serves every
block above its mmap threshold (at most 32 MB) with a fresh ``mmap`` and
returns it to the OS on ``free``, so each such temporary is page-faulted in
again, page by page, at every update: on a 2-core machine that is a quarter
of the actor-critic step (0.59 -> 0.44 s at Rooms-3 H' = 200). jemalloc or
tcmalloc (``LD_PRELOAD``) keep freed memory for reuse; this does the same with
glibc's own ``mallopt``, the way PyTorch's CUDA caching allocator keeps freed
GPU memory: the process keeps its peak heap instead of returning it to the OS.

Set ``SB3_MAMBA_TUNE_MALLOC=0`` to leave malloc alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
#: blocks up to this size come from the heap (above it, e.g. large replay arrays, still mmap)
MMAP_THRESHOLD = 1 << 30
#: free memory at the top of the heap kept for reuse instead of returned to the OS
TRIM_THRESHOLD = (1 << 31) - 1


@functools.cache
def tune_allocator() -> bool:
    """Keep freed memory in the process heap (glibc on Linux); once per process. Returns whether it applied."""
    if not sys.platform.startswith("linux") or os.environ.get("SB3_MAMBA_TUNE_MALLOC", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
