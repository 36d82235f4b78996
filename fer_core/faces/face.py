"""What a detector returns: ``Face`` (box, score, five landmarks in image pixels), and checks on it.

Landmark order is fixed by image position, not by the subject's left/right: the eye on the
image's left, the eye on the image's right, the nose tip, the mouth corner on the image's
left, the mouth corner on the image's right.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

LANDMARKS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclass(frozen=True)
class Face:
    """One detected face; ``box`` is (x1, y1, x2, y2), ``landmarks`` five (x, y), all in image pixels."""

    box: tuple[float, float, float, float]
    score: float
    landmarks: tuple[tuple[float, float], ...]

    @property
    def points(self) -> np.ndarray:
        """The landmarks as float32 [5, 2]."""
        return np.asarray(self.landmarks, dtype=np.float32).reshape(len(LANDMARKS), 2)

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)

    def as_dict(self) -> dict:
        return {"box": [round(float(v), 1) for v in self.box], "score": round(float(self.score), 4),
                "landmarks": {name: [round(float(x), 1), round(float(y), 1)]
                              for name, (x, y) in zip(LANDMARKS, self.landmarks)}}


def make_face(box: Sequence[float], score: float, landmarks: Sequence[Sequence[float]]) -> Face:
    """A Face from any numbers (numpy scalars, arrays), as plain floats."""
    points = tuple((float(x), float(y)) for x, y in np.asarray(landmarks, dtype=np.float64).reshape(-1, 2))
    return Face(tuple(float(v) for v in box), float(score), points)  # type: ignore[arg-type]


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def main_face(faces: Sequence[Face]) -> Face | None:
    """The largest face (ties: the higher score), or None."""
    return max(faces, key=lambda f: (f.area, f.score), default=None)


def face_problem(face: object, width: int, height: int) -> str | None:
    """Why ``face`` breaks the detector contract for a ``width`` x ``height`` image, or None."""
    if not isinstance(face, Face):
        return f"returned {type(face).__name__}, not fer_core.faces.face.Face"
    if len(face.box) != 4 or not all(math.isfinite(v) for v in face.box):
        return f"box {face.box} is not four finite numbers"
    x1, y1, x2, y2 = face.box
    if not (x1 < x2 and y1 < y2):
        return f"box {face.box} is empty or not (x1, y1, x2, y2)"
    slack = 0.5 * max(x2 - x1, y2 - y1)  # a box may reach past the border by half a face
    if x2 < -slack or y2 < -slack or x1 > width + slack or y1 > height + slack:
        return f"box {face.box} lies outside the {width}x{height} image"
    if not (math.isfinite(face.score) and 0.0 <= face.score <= 1.0):
        return f"score {face.score} is not in [0, 1]"
    if len(face.landmarks) != len(LANDMARKS):
        return f"{len(face.landmarks)} landmarks, expected {len(LANDMARKS)} ({', '.join(LANDMARKS)})"
    if not np.isfinite(face.points).all():
        return "landmarks are not finite"
    return None
