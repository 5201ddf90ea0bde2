"""The architecture registry: a leaf that architecture modules import to register themselves.

An architecture is a constructor ``fn(num_classes, **kwargs) -> nn.Module`` registered by name
(``@register_architecture("fercnn_small")``, as timm's ``@register_model``); checkpoints name
their architecture in the card and :func:`create_model` rebuilds it. Built-in architectures:
:mod:`omnifer.models.fercnn` (imported by :mod:`omnifer.models.checkpoints`, so loading a
checkpoint always finds them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from omnifer.errors import ModelFileError

Constructor = Callable[..., nn.Module]
_ARCHITECTURES: dict[str, Constructor] = {}


def register_architecture(name: str) -> Callable[[Constructor], Constructor]:
    """Decorator: make an architecture constructor available to :func:`create_model`."""

    def wrap(fn: Constructor) -> Constructor:
        if name in _ARCHITECTURES:
            raise ValueError(f"architecture {name!r} is already registered")
        _ARCHITECTURES[name] = fn
        return fn

    return wrap


def list_architectures() -> list[str]:
    """Registered architecture names, sorted."""
    return sorted(_ARCHITECTURES)


def create_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build a registered architecture; unknown name → :class:`ModelFileError`."""
    if name not in _ARCHITECTURES:
        raise ModelFileError(f"unknown model architecture {name!r}; known: {list_architectures()}")
    return _ARCHITECTURES[name](num_classes=num_classes, **kwargs)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of ``model`` (trainable or not)."""
    return sum(p.numel() for p in model.parameters())
