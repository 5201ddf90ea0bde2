"""Every built-in architecture, registered: build one by name from here.

Importing this module registers :mod:`~omnifer.models.fercnn`, :mod:`~omnifer.models.resnet`
and :mod:`~omnifer.models.iresnet` in the leaf registry (:mod:`~omnifer.models.registry`), so
``create_model("resnet18", ...)`` works whichever module asked first.
"""

from __future__ import annotations

from omnifer.models import fercnn, iresnet, resnet  # noqa: F401  (register the architectures)
from omnifer.models.registry import count_parameters, create_model, list_architectures

__all__ = ["count_parameters", "create_model", "list_architectures"]
