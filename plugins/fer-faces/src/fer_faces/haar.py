"""``haar``: OpenCV's bundled Haar cascades, a face cascade plus an eye cascade for the landmarks.

The cascades ship inside the opencv-python-headless wheel (``cv2.data``, OpenCV < 5), under the
Intel License Agreement (BSD-style), so nothing is downloaded. The face cascade gives boxes; the
eye cascade, run on the upper half of each box, gives the eye centres when it finds one eye on
each side. Nose and mouth corners (and eyes the cascade misses) come from the mean positions of
``BOX_TEMPLATE`` carried along by the found eyes, so they are estimates, not measurements.

The score is ``n / (n + min_neighbors)`` for a face supported by ``n`` overlapping raw
detections (OpenCV's confidence for cascades), so it lies in [0, 1) and rises with support.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fer_core.faces.align import apply, estimate_similarity
from fer_core.faces.face import Face, make_face

# five landmarks in units of the face cascade's box (fitted on the hand-marked photos of fer_faces.scenes)
BOX_TEMPLATE = np.array([[0.30, 0.38], [0.68, 0.38], [0.51, 0.62], [0.31, 0.77], [0.71, 0.77]])


def _cascade(filename: str):
    import cv2

    path = Path(cv2.data.haarcascades) / filename
    cascade = cv2.CascadeClassifier(str(path))
    if cascade.empty():
        raise RuntimeError(f"{path}: OpenCV's cascade is missing; install opencv-python-headless<5, which ships it")
    return cascade


class HaarDetector:
    def __init__(self, scale_factor: float = 1.1, min_neighbors: int = 8, min_size: int = 24, eyes: bool = True,
                 cascade: str = "haarcascade_frontalface_default.xml"):
        self.scale_factor, self.min_neighbors, self.min_size = scale_factor, min_neighbors, min_size
        self.faces = _cascade(cascade)
        self.eyes = _cascade("haarcascade_eye.xml") if eyes else None

    def detect(self, image: np.ndarray) -> list[Face]:
        import cv2

        if image.shape[0] < self.min_size or image.shape[1] < self.min_size:
            return []
        grey = cv2.equalizeHist(cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY))
        boxes, support = self.faces.detectMultiScale2(grey, scaleFactor=self.scale_factor,
                                                      minNeighbors=self.min_neighbors,
                                                      minSize=(self.min_size, self.min_size))
        faces = []
        for (x, y, w, h), n in zip(np.asarray(boxes).reshape(-1, 4), np.asarray(support).reshape(-1)):
            points = self._landmarks(grey, int(x), int(y), int(w), int(h))
            faces.append(make_face((x, y, x + w, y + h), n / (n + self.min_neighbors), points))
        return sorted(faces, key=lambda f: -f.score)

    def _landmarks(self, grey: np.ndarray, x: int, y: int, w: int, h: int) -> np.ndarray:
        points = BOX_TEMPLATE * (w, h) + (x, y)
        if self.eyes is None:
            return points
        found = self.eyes.detectMultiScale(grey[y:y + h // 2, x:x + w], scaleFactor=1.1, minNeighbors=3,
                                           minSize=(max(4, w // 8), max(4, w // 8)), maxSize=(w // 2, w // 2))
        centres = [(ex + ew / 2 + x, ey + eh / 2 + y, ew) for ex, ey, ew, eh in np.asarray(found).reshape(-1, 4)]
        left = max((c for c in centres if c[0] < x + w / 2), key=lambda c: c[2], default=None)
        right = max((c for c in centres if c[0] >= x + w / 2), key=lambda c: c[2], default=None)
        if left is None or right is None:
            return points
        eyes = np.array([left[:2], right[:2]])
        # carry the template along the similarity that takes its eyes onto the found eyes
        return np.vstack([eyes, apply(estimate_similarity(points[:2], eyes), points[2:])])
