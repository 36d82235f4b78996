"""Building a registered detector, running it with the contract checked, and reading photos for it."""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
from PIL import Image

from fer_core.errors import FerError
from fer_core.faces.face import Face, face_problem
from fer_core.plugins import get_registry

MAX_PIXELS = 50_000_000  # larger images are refused as possible decompression bombs


class Detector(Protocol):
    def detect(self, image: np.ndarray) -> list[Face]: ...


class FaceDetector:
    """A registered detector with its outputs checked against the contract (``register_detectors``)."""

    def __init__(self, name: str, impl: Any):
        self.name, self.impl = name, impl
        if not callable(getattr(impl, "detect", None)):
            raise FerError(f"detector '{name}' built a {type(impl).__name__} without a detect(image) method")

    def __call__(self, image: np.ndarray) -> list[Face]:
        faces = list(self.impl.detect(image))
        height, width = image.shape[:2]
        for face in faces:
            problem = face_problem(face, width, height)
            if problem:
                raise FerError(f"detector '{self.name}' broke its contract: {problem}")
        return sorted(faces, key=lambda f: -f.score)


def load_detector(name: str | None = None, params: Mapping[str, Any] | None = None) -> FaceDetector:
    """Build the registered detector ``name`` (default: the first installed, by name)."""
    registry = get_registry()
    name = name or default_detector(registry.names("detector"))
    impl = registry.build("detector", {"name": name, **dict(params or {})}, "detector", {})
    return FaceDetector(name, impl)


def default_detector(installed: list[str]) -> str:
    if not installed:
        raise FerError("no face detector is installed; pip install the fer-faces plugin "
                       "(plugins/fer-faces), or pass --no-detect to classify whole images")
    return installed[0]


def read_rgb(data: bytes, name: str = "image") -> np.ndarray:
    """Image bytes -> uint8 RGB [H, W, 3]; a one-line FerError for empty, corrupt, huge or non-image data."""
    if not data:
        raise FerError(f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise Image.DecompressionBombError("too many pixels")
                return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise FerError(f"{name}: over {MAX_PIXELS // 1_000_000} million pixels (a decompression bomb?); "
                       f"downscale it first") from None
    except Exception as exc:
        raise FerError(f"{name}: not a readable image ({type(exc).__name__}); use PNG, JPEG, WebP, BMP or GIF") from None
