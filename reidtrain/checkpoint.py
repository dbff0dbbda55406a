"""Checkpoints: atomic save, safe load (weights_only), RNG states, initialisation from another checkpoint.

A training checkpoint is a dict of tensors and plain values only (so `torch.load(weights_only=True)` reads it):
    format, epoch (completed epochs), model, optimizer, scheduler, scaler, rng, meta
`meta` says how to rebuild the model (name, num_classes, sizes, normalisation, input columns) and holds the
training config, so `evaluate` / `extract` / `export` need nothing but the file.
"""
from __future__ import annotations

import errno
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from reidkit.pause import pause_point
from reidkit.atomic import atomic_path, looks_like_torch_file
from reidkit.errors import ReidError

FORMAT = "reidtrain-checkpoint-v1"


class CheckpointError(ReidError, ValueError):
    """A checkpoint file is missing, unreadable, or does not fit; the message names the file."""


class CheckpointWriteError(ReidError, OSError):
    """A checkpoint could not be written (full or read-only disk); the message names the file."""


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save through a temporary file + rename: a kill never leaves a half-written checkpoint. A failed
    write (torch reports a full disk as a RuntimeError of its zip writer) is a CheckpointWriteError naming the
    file; the temporary is removed."""
    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
            pause_point("checkpoint-temp")
    except RuntimeError as e:  # PytorchStreamWriter: "file write failed" / "unexpected pos" on a full disk
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointWriteError(errno.EIO, f"cannot write the checkpoint ({first}); is the disk full?",
                                   str(path)) from e


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint on the CPU with weights_only=True (no arbitrary code from pickles)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if not looks_like_torch_file(path):
        raise CheckpointError(f"{path}: not a loadable checkpoint (not a torch file: neither a zip archive nor a "
                              f"pickle, {path.stat().st_size} bytes)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError / RuntimeError / EOFError for bad files
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(f"{path}: not a loadable checkpoint ({type(e).__name__}: {first})") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(obj).__name__}")
    return obj


def model_state(obj: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The parameter dict of a checkpoint: ours ("model"), common {"state_dict": ...}, or a bare state dict;
    a DistributedDataParallel "module." prefix is removed."""
    for key in ("model", "state_dict", "model_state_dict"):
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


# ------------------------------------------------------------------------------------------------- RNG states
def rng_state() -> dict:
    """torch / CUDA / numpy / python RNG states as tensors and plain values (weights_only-safe)."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what `rng_state` saved."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------- initialisation
@dataclass
class InitReport:
    """What an initialisation from a checkpoint did, key by key."""

    source: str
    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)          # in the model, not in the checkpoint
    unexpected: list[str] = field(default_factory=list)       # in the checkpoint, not in the model
    shape_mismatched: list[tuple[str, list[int], list[int]]] = field(default_factory=list)  # key, ckpt, model

    def as_dict(self) -> dict:
        return {"source": self.source, "matched": self.matched, "missing": self.missing,
                "unexpected": self.unexpected,
                "shape_mismatched": [{"key": k, "checkpoint": a, "model": b} for k, a, b in self.shape_mismatched]}

    def summary(self) -> str:
        return (f"init from {self.source}: {len(self.matched)} tensors loaded, {len(self.missing)} missing "
                f"(kept their fresh init), {len(self.unexpected)} unexpected (ignored), "
                f"{len(self.shape_mismatched)} with another shape (kept their fresh init)")


def init_from_checkpoint(model: nn.Module, path: Path) -> InitReport:
    """Copy every tensor of `path` whose name and shape match into `model`; report the rest.

    Typical use: ImageNet-pretrained or another dataset's weights, where the identity classifiers differ in
    size (reported as shape-mismatched). A checkpoint sharing no tensor with the model is an error.
    """
    ckpt = model_state(load_checkpoint(path))
    own = model.state_dict()
    report = InitReport(source=str(path))
    to_load = {}
    for key, value in ckpt.items():
        if key not in own:
            report.unexpected.append(key)
        elif tuple(own[key].shape) != tuple(value.shape):
            report.shape_mismatched.append((key, list(value.shape), list(own[key].shape)))
        else:
            to_load[key] = value
            report.matched.append(key)
    report.missing = [k for k in own if k not in ckpt]
    if not to_load:
        raise CheckpointError(f"{path}: none of its {len(ckpt)} tensors matches the model by name and shape "
                              f"(first checkpoint keys: {list(ckpt)[:3]}, first model keys: {list(own)[:3]})")
    model.load_state_dict(to_load, strict=False)
    return report
