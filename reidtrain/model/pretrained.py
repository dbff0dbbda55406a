"""ImageNet weights for the project's ResNet-50 from a local state-dict file (`train --backbone-weights FILE`).

    read_state_dict(path) -> {name: Tensor}     a torch file (torch.load, weights_only=True) or a .safetensors
                                                file; a checkpoint wrapper {"state_dict": ...} / {"model": ...}
                                                is unwrapped
    resnet50_keys(state) -> (state, dropped)    the keys in torchvision naming: a "module." (DDP), "model." or
                                                "backbone." prefix shared by every key is stripped, the ImageNet
                                                classifier (`fc.*`) dropped
    load_resnet50(backbone, path, prefix) -> report   checked and copied into `backbone` (a reidtrain ResNet50)

torchvision's and timm's `resnet50` name their parameters alike (conv1, bn1, layer1..layer4 with conv1-3 / bn1-3 /
downsample.0-1 per bottleneck, and a classifier `fc`), so one mapping serves both; variants with another stem or
block layout (timm's resnet50d, ResNet-18 / -101, ...) fail the check with the keys that do not fit. Only the
BatchNorm `num_batches_tracked` counters may be absent (older torchvision files lack them).
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .contract import BackboneWeightsError

WRAPPER_KEYS: tuple[str, ...] = ("state_dict", "model", "state_dict_ema")
"""Checkpoint entries that hold the state dict itself (tried in this order)."""
SHARED_PREFIXES: tuple[str, ...] = ("module.", "model.", "backbone.")
"""Prefixes stripped when every key of the file carries them (DDP / training-framework checkpoints)."""
IMAGENET_HEAD: tuple[str, ...] = ("fc.",)
"""The 1000-way ImageNet classifier of torchvision's and timm's ResNet-50: never loaded."""
OPTIONAL_SUFFIX = "num_batches_tracked"

_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


def _names(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _count(keys) -> str:
    return f"{len(keys)} key" + ("" if len(keys) == 1 else "s")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A .safetensors file (8-byte little-endian header length, JSON header, raw little-endian data)."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    data = memoryview(raw)[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES[info["dtype"]]
        start, end = info["data_offsets"]
        buf = bytes(data[start:end])
        t = torch.frombuffer(bytearray(buf), dtype=dtype) if buf else torch.empty(0, dtype=dtype)
        out[name] = t.reshape(info["shape"]).clone()
    return out


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The name -> tensor mapping stored in `path` (BackboneWeightsError naming the file when it has none)."""
    path = Path(path)
    if not path.is_file():
        raise BackboneWeightsError(f"{path}: no such file (--backbone-weights)")
    try:
        if path.suffix == ".safetensors":
            obj = _read_safetensors(path)
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle with code objects, a truncated file, a foreign format
        raise BackboneWeightsError(f"{path}: cannot read a state dict ({type(exc).__name__}: "
                                   f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise BackboneWeightsError(f"{path}: holds {type(obj).__name__}, not a state dict (name -> tensor)")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise BackboneWeightsError(f"{path}: not a state dict, entries that are not tensors: {_names(bad)}")
    return dict(obj)


def resnet50_keys(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(`state` in torchvision naming, the dropped ImageNet-classifier keys as they were named in the file)."""
    keys = dict(state)
    prefix = ""
    changed = True
    while changed:
        changed = False
        for p in SHARED_PREFIXES:
            if keys and all(k.startswith(p) for k in keys):
                keys = {k[len(p):]: v for k, v in keys.items()}
                prefix += p
                changed = True
    head = [k for k in keys if k.startswith(IMAGENET_HEAD)]
    return {k: v for k, v in keys.items() if k not in head}, [prefix + k for k in head]


def load_resnet50(backbone: nn.Module, path: str | os.PathLike, prefix: str = "") -> dict[str, list[str]]:
    """Copy the ResNet-50 weights of `path` into `backbone` (the project's ResNet50, built without `fc`).

    Every parameter and buffer of `backbone` must be in the file with its shape (but `num_batches_tracked`),
    and the file may hold nothing else but the ImageNet classifier; otherwise BackboneWeightsError names the
    file and the missing / unexpected / mis-shaped keys, and `backbone` is left unchanged. Returns
    {"loaded": [...], "missing": [...], "unexpected": [...]} with the model's names (`prefix` + key): missing are
    the tolerated absent counters, unexpected the file's ignored classifier keys."""
    state, head = resnet50_keys(read_state_dict(path))
    own = backbone.state_dict()
    missing = [k for k in own if k not in state and not k.endswith(OPTIONAL_SUFFIX)]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_count(missing)}: {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected {_count(unexpected)}: {_names(unexpected)}")
        raise BackboneWeightsError(f"{path}: not a torchvision/timm ResNet-50 state dict; " + "; ".join(parts))
    shapes = [f"{k} {tuple(state[k].shape)} (model {tuple(v.shape)})" for k, v in own.items()
              if k in state and state[k].shape != v.shape]
    if shapes:
        raise BackboneWeightsError(f"{path}: ResNet-50 weights of the wrong shape: {_names(shapes, 4)}")
    floats = {k: state[k].to(own[k].dtype) for k in own if k in state}
    backbone.load_state_dict(floats, strict=False)
    absent = [k for k in own if k not in state]
    return {"loaded": [prefix + k for k in floats], "missing": [prefix + k for k in absent],
            "unexpected": head}
