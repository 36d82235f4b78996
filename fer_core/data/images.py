"""Image bytes -> pixels with PIL only (no torch), shared by the loader and the ONNX predictor."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def pil_pixels(data: bytes, size: int, channels: int) -> np.ndarray:
    """uint8 [size, size, channels]: grey (L) or RGB, bilinear-resized when the size differs."""
    mode = "L" if channels == 1 else "RGB"
    with Image.open(io.BytesIO(data)) as image:
        if image.mode != mode:
            image = image.convert(mode)
        if image.size != (size, size):
            image = image.resize((size, size), Image.BILINEAR)
        array = np.array(image, dtype=np.uint8)
    return array.reshape(size, size, channels)
