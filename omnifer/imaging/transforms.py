"""Image constants and array transforms that every stage shares (numpy/OpenCV, no torch).

One home for each rule: which suffixes name images (:data:`IMAGE_EXTENSIONS`), how an image
is resized (:func:`resize_image`: area when shrinking, linear when enlarging), and the
statistics of the fixed normalised space (:data:`IMAGENET_MEAN` / :data:`IMAGENET_STD`, RGB).
Tensor normalisation is :mod:`omnifer.imaging.tensors`.
"""

from __future__ import annotations

import cv2
import numpy as np

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff",
    ".heic", ".heif", ".avif",
)
"""Common image suffixes (lower case), for a source that opts into an ``extensions`` filter
and for telling a single image file from a folder. Not a filter by default: crawled folders,
buckets and labeled image folders read every file whatever its name, and its bytes decide what
it is (:func:`omnifer.imaging.decode.decode_image`)."""

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""RGB mean/std of the normalised space of distillation (ImageNet statistics: faces are close
enough, and a fixed constant keeps distilled tensors comparable across curated versions).
Models store their own mean/std (from their training data) in their card."""


def is_image_name(name: str) -> bool:
    """Whether a file name has one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def resize_image(img: np.ndarray, size: int) -> np.ndarray:
    """H×W×C uint8 → size×size×C (area when shrinking, linear otherwise; as is when equal)."""
    if img.shape[:2] == (size, size):
        return img
    interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W, 3) uint8 → (N, size, size, 3) uint8 (:func:`resize_image` each)."""
    out = np.empty((len(images), size, size, 3), np.uint8)
    for i, img in enumerate(images):
        out[i] = resize_image(img, size)
    return out


def bgr_to_rgb_chw(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 BGR → (N, 3, H, W) float32 RGB in [0, 1]."""
    rgb = np.asarray(images)[..., ::-1].transpose(0, 3, 1, 2)
    return np.ascontiguousarray(rgb, dtype=np.float32) / 255.0
