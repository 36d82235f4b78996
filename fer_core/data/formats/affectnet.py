"""AffectNet, manually annotated part (Mollahosseini et al., "AffectNet: A Database for Facial
Expression, Valence, and Arousal Computing in the Wild", IEEE TAC 2017).

SOURCE is the release as unpacked, ``Manually_Annotated_file_lists/{training,validation}.csv``
beside ``Manually_Annotated_Images/`` (or ``Manually_Annotated/Manually_Annotated_Images/``), or a
flat folder with the two CSVs at its top. The CSVs have the columns ``subDirectory_filePath,
face_x, face_y, face_width, face_height, facial_landmarks, expression, valence, arousal``; images
are read from ``<images folder>/<subDirectory_filePath>`` (the images folder is SOURCE itself
when none of those exists).
Expressions 0 neutral, 1 happy, 2 sad, 3 surprise, 4 fear, 5 disgust, 6 anger, 7 contempt are
kept; 8 none, 9 uncertain and 10 no-face are dropped and counted. The face box is cropped and
re-encoded (JPEG quality 95 from JPEG, else PNG). Each sample keeps its valence and arousal
(floats in [-1, 1]) in the shard field ``va.json`` = ``{"valence": v, "arousal": a}``; the
manifest lists ``"extras": ["va"]`` and summarises them per split (``fer_core.data.va``). A row
whose valence or arousal is outside [-1, 1] (AffectNet writes -2 where they were not annotated)
keeps its image and class but gets no ``va.json``: affect tasks skip it.

AffectNet's test set is not public, so ``validation.csv`` becomes the test split (as in the
literature) and val is carved out of ``training.csv``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from fer_core.data.formats.base import SourceSample, crop_reader, safe_key
from fer_core.data.formats.fer2013 import read_csv
from fer_core.data.va import VA_FIELD, annotated, encode_va
from fer_core.errors import DataError

EXTRAS = ["va"]
LISTS = {"training.csv": "train", "validation.csv": "test"}
LIST_FOLDER = "Manually_Annotated_file_lists"
IMAGE_FOLDERS = ("Manually_Annotated_Images", "Manually_Annotated/Manually_Annotated_Images")
COLUMNS = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "expression",
           "valence", "arousal")
EMOTIONS = ("neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger", "contempt")
DROPPED = {8: "none", 9: "uncertain", 10: "no_face"}


def scan(source: Path, dropped: Counter) -> list[SourceSample]:
    source = Path(source)
    lists = _lists_folder(source)
    image_root = next((source / f for f in IMAGE_FOLDERS if (source / f).is_dir()), source)
    for reason in DROPPED.values():
        dropped.setdefault(reason, 0)
    samples = []
    for name, split in LISTS.items():
        for index, row in enumerate(read_csv(lists / name, COLUMNS)):
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
            extras = {VA_FIELD: encode_va(va["valence"], va["arousal"])} if annotated(**va) else {}
            reader = crop_reader(image_root / rel, box)
            samples.append(SourceSample(safe_key(str(Path(rel).with_suffix(""))), EMOTIONS[expression], split,
                                        reader, extras))
    return samples


def _lists_folder(source: Path) -> Path:
    """The folder that holds training.csv and validation.csv: the release's file-list folder, or SOURCE."""
    for folder in (source / LIST_FOLDER, source):
        if all((folder / name).is_file() for name in LISTS):
            return folder
    raise DataError(f"{source}: no training.csv and validation.csv, neither in {LIST_FOLDER}/ nor at the top; "
                    f"pass the AffectNet folder as unpacked ({LIST_FOLDER}/ beside Manually_Annotated_Images/)")


def _parse(row: dict[str, str]):
    """(expression, (x, y, w, h), {"valence", "arousal"}) or None when a field is malformed."""
    try:
        expression = int(float(row["expression"]))
        box = tuple(int(round(float(row[k]))) for k in ("face_x", "face_y", "face_width", "face_height"))
        va = {"valence": float(row["valence"]), "arousal": float(row["arousal"])}
    except (TypeError, ValueError):
        return None
    return expression, box, va
