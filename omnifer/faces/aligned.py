"""Pre-aligned face crops: the whole image is the face, no detector runs.

Pools such as MS-Celeb-1M (the paper's unlabeled pool), RAF-DB's ``aligned`` set,
CASIA-WebFace or AffectNet's crops are distributed as face crops that were already detected
and aligned. A source marked ``faces="aligned"`` (:class:`omnifer.sources.base.Source`) sends
its images here instead of to a detector: each decoded image becomes exactly one face, resized
to the crop size, so a multi-million-crop pool does not pay for a detector it does not need
(and no tight crop is lost to a detector that wants context around the face).

What such a face records, so that rows stay comparable with detected ones:

* ``detector = "aligned-input"``, ``detector_version = "resize-<crop size>"``;
* ``bbox`` = the whole image ``(0, 0, W, H)`` and ``face_size`` = ``min(W, H)`` (the input's
  own size, before resizing);
* ``landmarks5`` = the ArcFace template scaled to the image (where an aligned crop's landmarks
  are, by definition of "aligned"); ``det_score`` = 1.0.

The crop is :func:`omnifer.imaging.transforms.resize_image` of the image (area when shrinking,
linear when enlarging): a plain resize, no warp, so a crop already at the crop size passes
through unchanged (non-square inputs are stretched, as RAF-DB/AffectNet loaders do).
"""

from __future__ import annotations

import numpy as np

from omnifer.faces.align import CROP_SIZE, TEMPLATE_5PT
from omnifer.faces.detectors import AlignedFace, Detection
from omnifer.imaging.transforms import resize_image

DETECTOR_NAME = "aligned-input"
"""The ``detector`` column of faces (and images) that came from an aligned source."""


class AlignedInput:
    """Stands where a detector stands for an aligned source: ``name``, ``version``, and the
    one face of each image (:meth:`faces`). Stateless, so one object serves every thread."""

    name = DETECTOR_NAME

    def __init__(self, crop_size: int = CROP_SIZE) -> None:
        if crop_size < 8:
            raise ValueError(f"crop size must be at least 8 px, got {crop_size}")
        self.crop_size = int(crop_size)
        self.version = f"resize-{self.crop_size}"

    def detect(self, image_bgr: np.ndarray) -> list[Detection]:
        """The whole image as one detection (see the module docstring for its fields)."""
        if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
            raise ValueError(f"expected an H×W×3 uint8 BGR image, got {image_bgr.shape} "
                             f"{image_bgr.dtype}")
        h, w = image_bgr.shape[:2]
        bbox = np.array([0.0, 0.0, w, h], np.float32)
        scale = np.array([w / CROP_SIZE, h / CROP_SIZE], np.float32)
        landmarks = (TEMPLATE_5PT * scale).astype(np.float32)
        return [Detection(bbox, landmarks, 1.0)]

    def faces(self, image_bgr: np.ndarray) -> list[AlignedFace]:
        """``[AlignedFace]`` with one face: the image resized to ``crop_size``² (uint8 BGR)."""
        (detection,) = self.detect(image_bgr)
        return [AlignedFace(detection, resize_image(image_bgr, self.crop_size), 0)]
