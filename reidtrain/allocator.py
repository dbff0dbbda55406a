"""Keep freed batch-sized buffers in the process instead of handing them back to the kernel (glibc malloc).

glibc serves every allocation above its mmap threshold (128 KiB at start, at most 32 MiB as it adapts) with a fresh
`mmap` and returns it with `munmap` when freed, so each new batch-sized tensor - a float copy of a uint8 batch,
an activation, a decoded 384x192 crop in a loader worker - pays one page fault per 4 KiB touched. On the CPU that
fault cost dominated input normalisation (42 ms -> 11 ms per batch of 32 at 384x192, `benchmarks/bench_loader.py`).
Raising the mmap and trim thresholds makes glibc reuse freed heap memory, which is what PyTorch's CPU tuning
guide gets from jemalloc/tcmalloc. The price: memory the process freed is kept for reuse rather than returned
to the system (the peak stays resident).

No-op off glibc, and when the user tuned malloc already (MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ set, or
an allocator preloaded with LD_PRELOAD).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30   # allocations below 1 GiB come from the reusable heap
TRIM_THRESHOLD = 1 << 30   # keep up to 1 GiB of free memory at the top of the heap

_done = False


def keep_freed_memory() -> bool:
    """Apply the thresholds once per process; True when they are in effect."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux") or os.environ.get("LD_PRELOAD") or any(
            k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):   # musl and other C libraries without mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return _done
