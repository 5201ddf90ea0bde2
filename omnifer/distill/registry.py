"""The distillation method registry: a leaf that method modules import to register.

A method is ``fn(syn, sampler, num_classes, config, generator, device, steps) -> MethodResult``
registered by name (``@register_method("dm")``); :class:`omnifer.distill.config.DistillConfig`
accepts only registered names. Built-in methods (``dm``, ``gm``) are in
:mod:`omnifer.distill.methods`, which ``omnifer.distill`` imports, so they are always registered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class MethodResult:
    """What a method reports besides the images it optimised in place."""

    losses: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


MethodFn = Callable[..., MethodResult]
METHODS: dict[str, MethodFn] = {}


def register_method(name: str) -> Callable[[MethodFn], MethodFn]:
    """Register a distillation method under ``name``.

    The function is called as ``fn(syn, sampler, num_classes, config, generator, device,
    steps)`` where ``syn`` is a leaf tensor ``(C*ipc, 3, H, W)`` with ``requires_grad`` that
    the method optimises in place, and ``steps`` an iterable to loop over (progress-wrapped).
    """

    def wrap(fn: MethodFn) -> MethodFn:
        METHODS[name] = fn
        return fn

    return wrap
