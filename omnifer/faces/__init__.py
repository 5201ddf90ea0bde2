"""Faces: detectors behind one registry (:mod:`~omnifer.faces.detectors`) and the five-point
alignment every crop goes through (:mod:`~omnifer.faces.align`)."""

from omnifer.faces.align import CROP_SIZE, align_face
from omnifer.faces.detectors import (
    AlignedFace,
    Detection,
    FaceDetector,
    available_detectors,
    create_detector,
    detect_and_align,
    face_id,
    register_detector,
)

__all__ = [
    "CROP_SIZE", "AlignedFace", "Detection", "FaceDetector", "align_face", "available_detectors",
    "create_detector", "detect_and_align", "face_id", "register_detector",
]
