"""FER2013, the Kaggle file ``fer2013.csv`` (Goodfellow et al., "Challenges in Representation
Learning", 2013).

Header ``emotion,pixels,Usage``: ``emotion`` 0..6 = angry, disgust, fear, happy, sad, surprise,
neutral; ``pixels`` = 2304 space-separated grey levels of a 48x48 face; ``Usage`` = Training /
PublicTest / PrivateTest -> train / val / test. Images are stored as 1-channel PNGs; sample keys
are ``fer0000123`` (the row index, as FER+ names its images).
"""

from __future__ import annotations

import csv
import math
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fer_core.data.formats.base import SourceSample, pixels_reader
from fer_core.errors import DataError

EXTRAS: list[str] = []
CSV_NAME = "fer2013.csv"
EMOTIONS = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")
USAGE_SPLITS = {"training": "train", "publictest": "val", "privatetest": "test"}


def scan(source: Path, dropped: Counter) -> list[SourceSample]:
    samples = []
    for index, row in enumerate(read_csv(find_csv(source, CSV_NAME), ("emotion", "pixels", "Usage"))):
        split = usage_split(row["Usage"])
        label = _emotion(row["emotion"])
        pixels = parse_pixels(row["pixels"])
        where = f"{CSV_NAME} data row {index + 1}"
        if split is None:
            dropped.add("bad_usage", where)
        elif label is None:
            dropped.add("bad_label", where)
        elif pixels is None:
            dropped.add("corrupt_image", where)
        else:
            samples.append(SourceSample(image_key(index), label, split, pixels_reader(pixels)))
    return samples


def find_csv(source: Path, name: str) -> Path:
    """SOURCE itself when it is a file, else SOURCE/name."""
    source = Path(source)
    path = source if source.is_file() else source / name
    if not path.is_file():
        raise DataError(f"{path} not found; pass the {name} file or the folder that holds it")
    return path


def read_csv(path: Path, required: tuple[str, ...]) -> Iterator[dict[str, str]]:
    """Rows as dicts (header names stripped); a DataError when a required column is missing."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [name.strip() for name in next(reader, [])]
        missing = [name for name in required if name not in header]
        if missing:
            raise DataError(f"{path} lacks the column(s) {', '.join(missing)}; expected a header with "
                            f"{','.join(required)} (found {','.join(header) or 'nothing'})")
        for values in reader:
            if values:
                yield dict(zip(header, values))


def usage_split(usage: str) -> str | None:
    return USAGE_SPLITS.get(usage.strip().lower())


def parse_pixels(text: str) -> np.ndarray | None:
    """Space-separated grey levels of a square image -> uint8 [H, W]; None when malformed."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # numpy only warns about trailing junk
            values = np.fromstring(text, dtype=np.int32, sep=" ")
    except (ValueError, DeprecationWarning):
        return None
    side = math.isqrt(values.size)
    if values.size == 0 or side * side != values.size or values.min() < 0 or values.max() > 255:
        return None
    return values.astype(np.uint8).reshape(side, side)


def image_key(row_index: int) -> str:
    return f"fer{row_index:07d}"


def _emotion(text: str) -> str | None:
    try:
        return EMOTIONS[int(text)] if 0 <= int(text) < len(EMOTIONS) else None
    except ValueError:
        return None
