"""Deprecated alias: the demo world's truth moved to :mod:`omnifer.demo.truth`.

The old README named ``omnifer.truth``; importing it still works and warns once.
"""

import warnings

from omnifer.demo.truth import *  # noqa: F403
from omnifer.demo.truth import iou, label_precision, load_truth, match_faces  # noqa: F401

warnings.warn("omnifer.truth moved to omnifer.demo.truth", DeprecationWarning, stacklevel=2)
