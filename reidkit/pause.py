"""Pause points: freeze a run at a named event, to look at it (or kill it) at an exact place.

With `REID_PAUSE_AT="part-written:3"` in its environment, a process stops itself (SIGSTOP) right after the event
`part-written` happened for the third time; `kill -CONT PID` lets it go on, and a debugger, py-spy or a look at
the files can see it in that state meanwhile. Several points are separated by commas; `name` alone means `name:1`.
The fault tests use this to kill a run at a chosen point (after the n-th part file or training step, while a part
file or a checkpoint is still under its temporary name) instead of after a delay, so they behave the same on a fast
and on a slow CPU.

Events (where `pause_point` is called):
    part-temp       posecrop cache writer: a part file is written under its temporary name, not yet renamed
    part-written    posecrop cache writer: a part file is in place under its final name
    train-step      reidtrain training loop: an optimiser step is done (counted over the process's epochs)
    checkpoint-temp reidtrain checkpoints: a checkpoint is written under its temporary name, not yet renamed
"""
from __future__ import annotations

import os
import signal

from .errors import ReidError

ENV = "REID_PAUSE_AT"
EVENTS = ("part-temp", "part-written", "train-step", "checkpoint-temp")

_counts: dict[str, int] = {}


class PauseSpecError(ReidError, ValueError):
    """REID_PAUSE_AT holds something else than EVENT[:N],..."""


def parse(spec: str) -> dict[str, int]:
    """`"a:2,b"` -> {"a": 2, "b": 1}; PauseSpecError naming the variable for anything else."""
    out: dict[str, int] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, count = item.partition(":")
        if name not in EVENTS or not (count or "1").isdigit() or int(count or "1") < 1:
            raise PauseSpecError(f"{ENV}={spec!r}: expected EVENT[:N] (N >= 1) separated by commas, EVENT one of "
                             f"{', '.join(EVENTS)}; got {item!r}")
        out[name] = int(count or "1")
    return out


def pause_point(name: str) -> None:
    """Count event `name`; stop this process (SIGSTOP) when REID_PAUSE_AT asks for this occurrence."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if parse(spec).get(name) == _counts[name]:
        os.kill(os.getpid(), signal.SIGSTOP)
