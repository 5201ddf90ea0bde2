"""Which torch device a computation runs on: the one resolver every stage uses."""

from __future__ import annotations

import torch

from omnifer.errors import ConfigError


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or None) → CUDA when present, else CPU; anything else as named.

    Raises :class:`ConfigError` when a CUDA device is named and CUDA is not available (a clear
    line at start-up rather than a torch error in the middle of a run).
    """
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {str(name)!r} requested but CUDA is not available")
    return device
