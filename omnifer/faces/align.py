"""Five-point similarity alignment to a fixed crop.

The pipeline (detected landmarks) and the demo world (true landmarks) both go through this one
function, so labeled crops and mined crops live in the same geometry. insightface's
``norm_crop`` does the work (ArcFace's 112×112 template, ``cv2.estimateAffinePartial2D`` under
the hood); we only validate shapes.
"""

from __future__ import annotations

import warnings

import numpy as np
from insightface.utils import face_align

# insightface calls scikit-image's deprecated ``SimilarityTransform.estimate`` for every face;
# the warning says nothing a user can act on and floods logs (one line per face). It is
# silenced for that module only; the call still works up to scikit-image 2.2.
warnings.filterwarnings("ignore", message=r"`estimate` is deprecated", category=FutureWarning,
                        module=r"insightface\.utils\.face_align")

CROP_SIZE = 112
"""Side of an aligned crop in pixels; the ArcFace template is defined at 112."""

# The template, scaled to CROP_SIZE: left eye, right eye, nose tip, left/right mouth corner.
TEMPLATE_5PT: np.ndarray = face_align.arcface_dst.astype(np.float32)


def align_face(image: np.ndarray, landmarks5: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """Warp ``image`` (H×W×3 uint8, BGR) so the five landmarks land on the template.

    ``landmarks5`` is (5, 2) in image pixels, in template order (eyes, nose, mouth corners,
    the subject's left-to-right as seen in the image). ``size`` must be a multiple of 112.
    """
    pts = np.asarray(landmarks5, dtype=np.float32).reshape(5, 2)
    if size % 112 != 0:
        raise ValueError(f"crop size must be a multiple of 112, got {size}")
    return face_align.norm_crop(image, pts, image_size=size)
