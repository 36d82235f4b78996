"""``POST /faces`` of ``fer serve``: detect and align every face of an upload (the crops are then batched)."""

from __future__ import annotations

import threading

import numpy as np

from fer_core.errors import FerError
from fer_core.faces.detect import read_rgb
from fer_core.faces.face import Face
from fer_core.faces.photos import FaceMode, face_mode
from fer_core.plugins import get_registry
from fer_core.predictor import Predictor


class NoDetector(FerError):
    """No face detector is installed."""


class FaceService:
    """Builds the detector on first use (the run's, else the first installed), one request at a time."""

    unavailable = NoDetector
    bad_image = FerError

    def __init__(self, predictor: Predictor, mode: FaceMode | None = None):
        self.predictor, self.mode = predictor, mode
        self.lock = threading.Lock()  # detectors need not be thread-safe

    def _mode(self) -> FaceMode:
        if self.mode is None:
            try:
                self.mode = face_mode(self.predictor, True)
            except FerError as exc:
                raise NoDetector(str(exc)) from None
        return self.mode

    def info(self) -> dict:
        detectors = get_registry().names("detector")
        return {"detectors": detectors, "detector": self.mode.detector.name if self.mode else None,
                "margin": self.mode.margin if self.mode else None}

    def prepare(self, data: bytes, name: str) -> tuple[np.ndarray, list[np.ndarray], list[Face]]:
        """Image bytes -> (RGB image, one model input per face, the faces), best score first."""
        image = read_rgb(data, name)
        with self.lock:
            mode = self._mode()
            found = mode.detector(image)
        crops = [mode.align(image, f, self.predictor) for f in found]
        return image, crops, found
