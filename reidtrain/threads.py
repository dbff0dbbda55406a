"""torch intra-op threads for training and evaluation (`--threads`; 0 = automatic).

Automatic: torch's default (one thread per physical core, or OMP_NUM_THREADS) lowered to the cores that are free
now - the cores this process may run on (os.sched_getaffinity) less the 1-minute load average, less the DataLoader
worker processes (they decode and augment on cores of their own) - and at least 1. On a busy machine torch's
default oversubscribes the cores and collapses (issue 14: 0.6 img/s with the default against 72 img/s with one
thread on a loaded 2-core machine); on an idle one it is kept. The load average is a snapshot taken at start.
"""
from __future__ import annotations

import os


def free_cores() -> float:
    """Cores usable by this process minus the 1-minute load average (may be <= 0 on a loaded machine)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    return cores - load


def auto_threads(workers: int = 0, default: int | None = None) -> int:
    """The automatic thread count: min(torch's default, free cores - workers), at least 1."""
    import torch

    default = torch.get_num_threads() if default is None else default
    return max(1, min(default, int(free_cores()) - max(workers, 0)))


def set_threads(threads: int, workers: int = 0) -> int:
    """Apply `threads` (0 = auto_threads) to torch; returns the count in use."""
    import torch

    n = threads if threads > 0 else auto_threads(workers)
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
    return n
