"""AffectNet, manually annotated part (Mollahosseini et al., "AffectNet: A Database for Facial
Expression, Valence, and Arousal Computing in the Wild", IEEE TAC 2017).

SOURCE holds ``training.csv`` and ``validation.csv`` (columns ``subDirectory_filePath, face_x,
face_y, face_width, face_height, facial_landmarks, expression, valence, arousal``) and the images
under ``Manually_Annotated_Images/<subDirectory_filePath>`` (or directly under SOURCE).
Expressions 0 neutral, 1 happy, 2 sad, 3 surprise, 4 fear, 5 disgust, 6 anger, 7 contempt are
kept; 8 none, 9 uncertain and 10 no-face are dropped and counted. The face box is cropped and
re-encoded (JPEG quality 95 from JPEG, else PNG); valence and arousal go to ``va.json``.

AffectNet's test set is not public, so ``validation.csv`` becomes the test split (as in the
literature) and val is carved out of ``training.csv``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from fer_core.data.formats.base import SourceSample, crop_reader, safe_key
from fer_core.data.formats.fer2013 import read_csv
from fer_core.errors import DataError

EXTRAS = ["va"]
LISTS = {"training.csv": "train", "validation.csv": "test"}
COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "expression",
           "valence", "arousal")
EMOTIONS = ("neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger", "contempt")
DROPPED = {8: "none", 9: "uncertain", 10: "no_face"}


def scan(source: Path, dropped: Counter) -> list[SourceSample]:
    source = Path(source)
    for name in LISTS:
        if not (source / name).is_file():
            raise DataError(f"{source / name} not found; pass the AffectNet folder with training.csv and validation.csv")
    image_root = source / "Manually_Annotated_Images"
    image_root = image_root if image_root.is_dir() else source
    for reason in DROPPED.values():
        dropped.setdefault(reason, 0)
    samples = []
    for name, split in LISTS.items():
        for index, row in enumerate(read_csv(source / name, COLUMNS)):
            rel = (row.get("subDirectory_filePath") or "").strip()
            where = f"{name} data row {index + 1} ({rel})"
            parsed = _parse(row)
            if parsed is None:
                dropped.add("bad_label", where)
                continue
            expression, box, va = parsed
            if expression in DROPPED:
                dropped.add(DROPPED[expression], where)
                continue
            if not 0 <= expression < len(EMOTIONS):
                dropped.add("bad_label", where)
                continue
            if not (image_root / rel).is_file():  # checked now so that splitting sees only images that exist
                dropped.add("missing_image", image_root / rel)
                continue
            extras = {"va.json": json.dumps(va).encode()}
            reader = crop_reader(image_root / rel, box)
            samples.append(SourceSample(safe_key(str(Path(rel).with_suffix(""))), EMOTIONS[expression], split,
                                        reader, extras))
    return samples


def _parse(row: dict[str, str]):
    """(expression, (x, y, w, h), {"valence", "arousal"}) or None when a field is malformed."""
    try:
        expression = int(float(row["expression"]))
        box = tuple(int(round(float(row[k]))) for k in ("face_x", "face_y", "face_width", "face_height"))
        va = {"valence": float(row["valence"]), "arousal": float(row["arousal"])}
    except (TypeError, ValueError):
        return None
    return expression, box, va
