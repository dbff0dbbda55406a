"""`--device` values: 'auto', 'cpu', 'cuda', 'cuda:N' (and other torch device types when torch has them)."""
from __future__ import annotations

import torch

from reidkit.typedconfig import ConfigError


def torch_device(name: str, local_rank: int = 0) -> torch.device:
    """The torch device of a `--device` value; ConfigError naming the value when it is unknown or absent here."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"device {name!r}: not a device (use 'auto', 'cpu', 'cuda' or 'cuda:N')") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} asked but CUDA is not available (use --device cpu or auto)")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
        if device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type != "cpu":
        backend = getattr(torch, device.type, None)
        if backend is None or not getattr(backend, "is_available", lambda: False)():
            raise ConfigError(f"device {name!r}: no {device.type} device here (use 'auto', 'cpu' or 'cuda')")
    return device
