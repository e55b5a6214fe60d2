"""Process-wide runtime settings that make CPU training faster (applied by the command line and the benchmarks).

On Linux with glibc, every tensor larger than the allocator's mmap threshold is mapped fresh from the kernel
and unmapped when freed, so each new activation or Gram matrix of a few MB pays a page fault per 4 KiB page
before any arithmetic: on the 2-core benchmark machine a 1085 x 1085 float32 sum took 3.2 ms with a fresh
output and 0.2 ms into an existing one, and a sigmoid of a 5000 x 784 array (one VIMCO K = 50 layer) 7.4 ms
against 3.3 ms (``benchmarks/bench_allocator.py``). :func:`keep_freed_memory` raises glibc's mmap and trim
thresholds so freed blocks are reused instead: the process keeps its peak heap (freed memory is not returned
to the system until exit), which is what a training loop that allocates the same shapes every iteration
wants. ``WAKESLEEP_MALLOC=default`` in the environment leaves the allocator alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 1024 * 1024 * 1024

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Let glibc reuse freed blocks of up to 32 MiB instead of unmapping them (see the module docstring).

    Returns
    -------
    bool
        True when the thresholds are set (now or by an earlier call); False on other platforms or C
        libraries, or when ``WAKESLEEP_MALLOC=default``.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("WAKESLEEP_MALLOC", "").lower() == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _applied
