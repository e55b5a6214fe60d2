"""Process-wide runtime settings that make CPU training faster (applied by the command line and the benchmarks).

On Linux, glibc maps large blocks fresh from the kernel and returns freed memory at the top of the heap once
it exceeds the trim threshold, so in a training loop many new activations and Gram matrices of a few MB pay a
page fault per 4 KiB page before any arithmetic. :func:`keep_freed_memory` raises glibc's mmap and trim
thresholds so freed blocks are reused instead; the process keeps its peak heap until exit, which is what a
loop allocating the same shapes every iteration wants. Measured on the SBN with
``benchmarks/bench_ddc_vs_vimco.py --iters 10 --cases 1000:linear --sleep-every 10``, once with
``WAKESLEEP_MALLOC=default`` and once without (one thread, 2-core machine otherwise idle): a VIMCO K = 50
iteration 115 -> 85 ms, DDC-HM's recognition fit 150 -> 124 ms. A loop repeating one operation alone shows no
difference (glibc's dynamic thresholds already cover it). ``WAKESLEEP_MALLOC=default`` in the environment
leaves the allocator alone.
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
