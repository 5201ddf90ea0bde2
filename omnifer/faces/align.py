"""Five-point similarity alignment to a fixed crop.

The pipeline (detected landmarks) and the demo world (true landmarks) both go through this one
function, so labeled crops and mined crops live in the same geometry. The method is
insightface's ``norm_crop`` (``insightface/utils/face_align.py``, MIT licence): ArcFace's
112×112 five-point template, a least-squares similarity transform from the landmarks to it
(Umeyama 1991, as scikit-image's ``SimilarityTransform`` estimates it), then
``cv2.warpAffine`` with a black border.

Why not call insightface: importing ``insightface.utils`` runs the package's ``__init__``
(onnxruntime, onnx, scipy.spatial, requests, its face-analysis app) and scikit-image's
transform module, ~0.5–0.9 s of every ingest process's start for a 20-line computation
(docs/performance.md, "Fixed cost of a run"). The same operations on the same dtypes give the
same crops bit for bit (``tests/test_faces.py`` compares them with ``norm_crop``).
"""

from __future__ import annotations

import cv2
import numpy as np

CROP_SIZE = 112
"""Side of an aligned crop in pixels; the ArcFace template is defined at 112."""

# The template, scaled to CROP_SIZE: left eye, right eye, nose tip, left/right mouth corner
# (insightface's ``face_align.arcface_dst``).
TEMPLATE_5PT: np.ndarray = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
     [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 3×3 similarity (rotation, uniform scale, translation) that maps ``src`` onto
    ``dst`` ((N, 2) points each) in the least-squares sense; all NaN when the points are
    degenerate (rank 0).

    Umeyama, "Least-squares estimation of transformation parameters between two point
    patterns", PAMI 1991; the operations of scikit-image's ``_umeyama`` (0.26, BSD-3) in
    their order, so that the result is the one ``norm_crop`` gets.
    """
    src = np.asarray(src)
    dst = np.asarray(dst)
    num, dim = src.shape
    src_mean = src.mean(axis=0)
    dst_mean = dst.mean(axis=0)
    src_demean = src - src_mean
    dst_demean = dst - dst_mean
    a = dst_demean.T @ src_demean / num  # Eq. (38)
    d = np.ones((dim,), dtype=np.float64)  # Eq. (39)
    if np.linalg.det(a) < 0:
        d[dim - 1] = -1
    t = np.eye(dim + 1, dtype=np.float64)
    u, s, v = np.linalg.svd(a)
    tol = s.max() * np.max(a.shape) * np.finfo(float).eps  # rank, as numpy's matrix_rank
    rank = np.count_nonzero(s > tol)
    if rank == 0:
        return np.nan * t
    if rank == dim - 1:  # Eq. (40) and (43)
        if np.linalg.det(u) * np.linalg.det(v) > 0:
            t[:dim, :dim] = u @ v
        else:
            last = d[dim - 1]
            d[dim - 1] = -1
            t[:dim, :dim] = u @ np.diag(d) @ v
            d[dim - 1] = last
    else:
        t[:dim, :dim] = u @ np.diag(d) @ v
    scale = 1.0 / src_demean.var(axis=0).sum() * (s @ d)  # Eq. (41) and (42)
    t[:dim, dim] = dst_mean - scale * (t[:dim, :dim] @ src_mean.T)
    t[:dim, :dim] *= scale
    return t


def align_face(image: np.ndarray, landmarks5: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """Warp ``image`` (H×W×3 uint8, BGR) so the five landmarks land on the template.

    ``landmarks5`` is (5, 2) in image pixels, in template order (eyes, nose, mouth corners,
    the subject's left-to-right as seen in the image). ``size`` must be a multiple of 112.
    """
    pts = np.asarray(landmarks5, dtype=np.float32).reshape(5, 2)
    if size % 112 != 0:
        raise ValueError(f"crop size must be a multiple of 112, got {size}")
    matrix = similarity_transform(pts, TEMPLATE_5PT * (float(size) / 112.0))[0:2, :]
    return cv2.warpAffine(image, matrix, (size, size), borderValue=0.0)
