"""What a source format hands to the packer: labelled samples whose image is read on demand."""

from __future__ import annotations

import io
import re
import warnings
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

SPLITS = ("train", "val", "test")
GRAYSCALE_MODES = {"1", "L", "LA", "I", "I;16", "F"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}


@dataclass(frozen=True)
class EncodedImage:
    """Image bytes ready for a shard: ``ext`` is "png" or "jpg"; ``size`` is (H, W)."""

    data: bytes
    ext: str
    channels: int
    size: tuple[int, int]


class SkipSample(Exception):
    """A sample the packer skips and counts under ``reason`` (e.g. "corrupt_image")."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SourceSample:
    """One labelled sample of a source data set.

    ``split`` is "train"/"val"/"test" when the source says so, None when it has no splits.
    ``read`` returns the encoded image or raises SkipSample. ``extras`` are extra shard
    fields such as ``{"votes.json": b"..."}``; ``meta`` the sample's values of the fields its
    format declares in ``META`` (see ``fer_core.data.meta``), stored as ``meta.json``.
    """

    key: str
    label: str
    split: str | None
    read: Callable[[], EncodedImage]
    extras: Mapping[str, bytes] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)


def safe_key(text: str) -> str:
    """A tar- and WebDataset-safe sample key: letters, digits, - and _ only (no dots, no slashes)."""
    key = re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")
    return key or "sample"


def channels_of(image: Image.Image) -> int:
    return 1 if image.mode in GRAYSCALE_MODES else 3


def encode_png(image: Image.Image) -> EncodedImage:
    if image.mode not in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"):
        image = image.convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return EncodedImage(buf.getvalue(), "png", channels_of(image), (image.height, image.width))


def encode_jpg(image: Image.Image, quality: int = 95) -> EncodedImage:
    if image.mode not in ("L", "RGB", "CMYK"):
        image = image.convert("L" if channels_of(image) == 1 else "RGB")
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return EncodedImage(buf.getvalue(), "jpg", channels_of(image), (image.height, image.width))


def open_image(data: bytes) -> Image.Image:
    """Decode fully (a truncated file fails here, not in training); SkipSample when unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data))
            image.load()
        return image
    except Exception:  # a broken file can make any decoder step fail
        raise SkipSample("corrupt_image") from None


def read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise SkipSample("missing_image") from None
    except OSError:
        raise SkipSample("corrupt_image") from None


def file_reader(path: Path) -> Callable[[], EncodedImage]:
    """Keep a JPEG/PNG file's bytes as given (after checking they decode); re-encode other formats as PNG."""

    def read() -> EncodedImage:
        data = read_file(path)
        image = open_image(data)
        ext = {"JPEG": "jpg", "PNG": "png"}.get(image.format or "")
        if ext is None:
            return encode_png(image)
        return EncodedImage(data, ext, channels_of(image), (image.height, image.width))

    return read


def pixels_reader(pixels: np.ndarray) -> Callable[[], EncodedImage]:
    """Encode a uint8 array ([H,W] grey or [H,W,3] RGB) as PNG when read."""

    def read() -> EncodedImage:
        return encode_png(Image.fromarray(pixels))

    return read


def crop_reader(path: Path, box: tuple[int, int, int, int]) -> Callable[[], EncodedImage]:
    """Crop ``box`` = (x, y, width, height), clipped to the image, and re-encode (jpg q95 from jpg, else png)."""

    def read() -> EncodedImage:
        image = open_image(read_file(path))
        x, y, w, h = box
        left, top = max(0, x), max(0, y)
        right, bottom = min(image.width, x + w), min(image.height, y + h)
        if right <= left or bottom <= top:
            raise SkipSample("bad_face_box")
        crop = image.crop((left, top, right, bottom))
        return encode_jpg(crop) if image.format == "JPEG" else encode_png(crop)

    return read


class Dropped(Counter):
    """Source items left out of a pack: counts per reason, and each item (where it is, why)."""

    def __init__(self) -> None:
        super().__init__()
        self.listing: list[tuple[str, str]] = []

    def add(self, reason: str, where: str | Path) -> None:
        self[reason] += 1
        self.listing.append((str(where), reason))
