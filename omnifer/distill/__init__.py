"""Dataset distillation: a curated set → a few synthetic images per class.

The entry point is :func:`distill` ``(sampler, classes, config) -> DistilledSet``; the catalog
stage around it is :func:`omnifer.distill.stage.distill_curated`. Modules, leaves first:
:mod:`~omnifer.distill.registry` (methods by name), :mod:`~omnifer.distill.config`,
:mod:`~omnifer.distill.networks` (ConvNet), :mod:`~omnifer.distill.augmentation` (DSA),
:mod:`~omnifer.distill.samplers` (real images per class), :mod:`~omnifer.distill.result`
(:class:`DistilledSet`), :mod:`~omnifer.distill.methods` (DM, gradient matching, and
:func:`distill`), :mod:`~omnifer.distill.evaluation` (the literature's protocol and baselines),
:mod:`~omnifer.distill.stage` (curated versions → the ``distilled`` dataset).

Importing this package registers the built-in methods (it imports ``methods``).
"""

from omnifer.distill.config import DistillConfig, make_config
from omnifer.distill.methods import distill
from omnifer.distill.registry import METHODS, MethodResult, register_method
from omnifer.distill.result import DistilledSet, save_grids
from omnifer.distill.samplers import (
    ClassSampler,
    ParquetClassSampler,
    TensorClassSampler,
    image_folder_tensors,
)

__all__ = [
    "METHODS", "ClassSampler", "DistillConfig", "DistilledSet", "MethodResult",
    "ParquetClassSampler", "TensorClassSampler", "distill", "image_folder_tensors",
    "make_config", "register_method", "save_grids",
]
