"""The demo world: seeded synthetic face photographs whose answers are known, and grading
against them. Modules, leaves first: :mod:`~omnifer.demo.drawing` (primitives),
:mod:`~omnifer.demo.identity` (identity, expression, pose, truth box),
:mod:`~omnifer.demo.face` (drawing one face), :mod:`~omnifer.demo.scene` (backgrounds, camera,
items), :mod:`~omnifer.demo.world` (:func:`generate_world`: the files on disk),
:mod:`~omnifer.demo.truth` (matching found faces to the truth).
"""

from omnifer.demo.face import draw_face
from omnifer.demo.identity import (
    ACTIONS,
    PROTOTYPES,
    DrawnFace,
    Identity,
    Pose,
    sample_expression,
    sample_identity,
)
from omnifer.demo.scene import (
    UNLABELED_CLASS_WEIGHTS,
    encode_image,
    item_rng,
    render_labeled,
    render_scene,
    sample_light,
)
from omnifer.demo.world import (
    BROKEN_KINDS,
    GENERATOR_VERSION,
    WorldSummary,
    broken_bytes,
    generate_world,
    plan_scenes,
)

__all__ = [
    "ACTIONS", "BROKEN_KINDS", "GENERATOR_VERSION", "PROTOTYPES", "UNLABELED_CLASS_WEIGHTS",
    "DrawnFace", "Identity", "Pose", "WorldSummary", "broken_bytes", "draw_face",
    "encode_image", "generate_world", "item_rng", "plan_scenes", "render_labeled",
    "render_scene", "sample_expression", "sample_identity", "sample_light",
]
