"""FER+ (Barsoum et al., "Training Deep Networks for Facial Expression Recognition with
Crowd-Sourced Label Distribution", ICMI 2016): ten annotator votes per FER2013 image.

SOURCE holds ``fer2013new.csv`` (header ``Usage,Image name,neutral,happiness,surprise,sadness,
anger,disgust,fear,contempt,unknown,NF``) and ``fer2013.csv`` for the pixels; the rows of the two
files are aligned. Rows with an empty image name are dropped. The label is the majority vote as
in the paper: the column with the most votes, dropping rows whose winner is ``unknown``/``NF``
(counted as ``unknown_or_nf``) or shared by several columns (``tie``). Each sample keeps its vote
counts over the eight emotions in ``votes.json`` ({canonical name: votes}) for soft targets.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from fer_core.data.formats.base import SourceSample, pixels_reader, safe_key
from fer_core.data.formats.fer2013 import CSV_NAME, parse_pixels, read_csv, usage_split
from fer_core.errors import DataError

EXTRAS = ["votes"]
LABELS_NAME = "fer2013new.csv"
EMOTION_COLUMNS = {"neutral": "neutral", "happiness": "happiness", "surprise": "surprise",
                   "sadness": "sadness", "anger": "anger", "disgust": "disgust", "fear": "fear",
                   "contempt": "contempt"}
VOTE_COLUMNS = (*EMOTION_COLUMNS, "unknown", "NF")


def scan(source: Path, dropped: Counter) -> list[SourceSample]:
    source = Path(source)
    labels_csv, pixels_csv = source / LABELS_NAME, source / CSV_NAME
    for path in (labels_csv, pixels_csv):
        if not path.is_file():
            raise DataError(f"{path} not found; ferplus needs a folder with both {LABELS_NAME} and {CSV_NAME}")
    label_rows = read_csv(labels_csv, ("Usage", "Image name", *VOTE_COLUMNS))
    pixel_rows = read_csv(pixels_csv, ("pixels",))
    samples = []
    for index, votes_row in enumerate(label_rows):
        where = f"{LABELS_NAME} data row {index + 1}"
        pixel_row = next(pixel_rows, None)
        if pixel_row is None:
            raise DataError(f"{labels_csv} has more rows than {pixels_csv}; the two files must be row-aligned")
        name = votes_row["Image name"].strip()
        if not name:
            dropped.add("no_image_name", where)
            continue
        split = usage_split(votes_row["Usage"])
        votes = _votes(votes_row)
        if split is None:
            dropped.add("bad_usage", f"{where} ({name})")
            continue
        if votes is None:
            dropped.add("bad_label", f"{where} ({name})")
            continue
        winner = majority(votes)
        if winner in ("unknown", "NF", None):
            dropped.add("tie" if winner is None else "unknown_or_nf", f"{where} ({name})")
            continue
        pixels = parse_pixels(pixel_row["pixels"])
        if pixels is None:
            dropped.add("corrupt_image", f"{where} ({name})")
            continue
        emotion_votes = {EMOTION_COLUMNS[c]: votes[c] for c in EMOTION_COLUMNS}
        extras = {"votes.json": json.dumps(emotion_votes, sort_keys=True).encode()}
        key = safe_key(Path(name).stem)
        samples.append(SourceSample(key, EMOTION_COLUMNS[winner], split, pixels_reader(pixels), extras))
    if next(pixel_rows, None) is not None:
        raise DataError(f"{pixels_csv} has more rows than {labels_csv}; the two files must be row-aligned")
    dropped.setdefault("unknown_or_nf", 0)
    dropped.setdefault("tie", 0)
    return samples


def majority(votes: dict[str, int]) -> str | None:
    """The column with the most votes; None when several columns share the maximum."""
    top = max(votes.values())
    winners = [column for column, n in votes.items() if n == top]
    return winners[0] if len(winners) == 1 else None


def _votes(row: dict[str, str]) -> dict[str, int] | None:
    try:
        votes = {column: int(float(row[column] or 0)) for column in VOTE_COLUMNS}
    except ValueError:
        return None
    return votes if all(n >= 0 for n in votes.values()) else None
