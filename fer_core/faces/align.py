"""Alignment: a similarity transform from five landmarks onto a canonical template, one square crop.

``align_face`` is the one function every face path uses (``fer predict`` on photos and video,
``fer serve``, ``fer data pack --detect``), so a model sees at prediction time exactly the crops
it was trained on. The transform is estimated by scikit-image (least squares over the five
points) and applied by PIL. Pixel (i, j) has its centre at x=j, y=i.

The template is in unit coordinates of a crop without margin (the order of
``fer_core.faces.face.LANDMARKS``): eyes on a line at 38 % of the height, the nose tip at 58 %,
the mouth corners at 76 %. ``margin`` adds that fraction of the face on every side, so
``margin=0.2`` shows more forehead, chin and background around the same face.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from fer_core.errors import FerError

TEMPLATE = np.array([[0.32, 0.38], [0.68, 0.38], [0.50, 0.58], [0.36, 0.76], [0.64, 0.76]], dtype=np.float64)
DEFAULT_MARGIN = 0.1


@dataclass(frozen=True)
class Aligned:
    """An aligned crop [size, size, 3] (uint8 RGB) and the 3x3 matrix from image to crop pixels."""

    crop: np.ndarray
    matrix: np.ndarray

    def to_crop(self, points: np.ndarray) -> np.ndarray:
        """Image pixels [N, 2] -> crop pixels [N, 2]."""
        return apply(self.matrix, points)


def template_points(size: int, margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """Where the five landmarks land in a ``size`` x ``size`` crop with ``margin``, in pixels [5, 2]."""
    if size < 1:
        raise FerError(f"crop size must be a positive number of pixels, got {size}")
    if not 0 <= margin <= 2:
        raise FerError(f"margin must be between 0 and 2 (a fraction of the face per side), got {margin}")
    return (TEMPLATE + margin) / (1 + 2 * margin) * size


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 3x3 similarity (rotation, uniform scale, shift) taking points ``src`` [N, 2] closest to ``dst``."""
    from skimage.transform import SimilarityTransform  # scikit-image comes with the fer-faces plugin

    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        transform = SimilarityTransform.from_estimate(src, dst)
        ok = bool(transform)
    else:
        transform = SimilarityTransform()
        ok = transform.estimate(src, dst)
    if not ok or not np.isfinite(transform.params).all():
        raise FerError("these landmarks admit no alignment (the points coincide)")
    return np.asarray(transform.params, dtype=np.float64)


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Points [N, 2] through a 3x3 similarity or affine matrix."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return pts @ matrix[:2, :2].T + matrix[:2, 2]


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int, margin: float = DEFAULT_MARGIN) -> Aligned:
    """Warp the RGB ``image`` [H, W, 3] uint8 so that ``landmarks`` sit on the template of a ``size`` crop."""
    matrix = estimate_similarity(landmarks, template_points(size, margin))
    # PIL maps each crop position back to the image, with pixel centres at +0.5
    half = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    inverse = np.linalg.inv(half @ matrix @ np.linalg.inv(half))
    source = Image.fromarray(np.ascontiguousarray(image))
    crop = source.transform((size, size), Image.Transform.AFFINE, data=tuple(inverse[:2].ravel()),
                            resample=Image.Resampling.BILINEAR)
    return Aligned(np.asarray(crop, dtype=np.uint8), matrix)
