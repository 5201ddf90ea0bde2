"""Which torch device a computation runs on, and with how many CPU threads: the one resolver
and the one thread scope every stage uses."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

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


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch CPU threads (None: as they are), then restore the
    count it had before."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
