"""What a training run leaves behind as it goes, shared by `train` and `pretrain`: seeding, the metrics.jsonl log
(one line per finished epoch, fsynced; lines of epochs after a resumed checkpoint dropped), the flattened config
a resume is compared on, and the epoch progress bar."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from reidkit.atomic import atomic_write_text


def seed_all(seed: int) -> None:
    import random
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rewrite_metrics(path: Path, keep_until_epoch: int) -> list[dict]:
    """Drop metric lines of epochs after the checkpoint (they are about to be redone)."""
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("epoch", 0) <= keep_until_epoch]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


def append_metrics(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def flat_config(d: dict, prefix: str = "") -> dict:
    """{'augment': {'pad': 10}} -> {'augment.pad': 10}: a changed augmentation value is named on its own."""
    out: dict = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def epoch_progress(console, enabled: bool):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[ips]:.1f} img/s"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=not enabled,
                    transient=True)
