"""Models: the architecture registry (:mod:`~omnifer.models.registry`), the FER CNN
(:mod:`~omnifer.models.fercnn`), checkpoints and model cards (:mod:`~omnifer.models.checkpoints`),
model files and their sha256 (:mod:`~omnifer.models.modelfiles`), and model versions in the
catalog (:mod:`~omnifer.models.versions`). Import from the submodules."""
