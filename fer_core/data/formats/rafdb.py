"""RAF-DB basic (Li et al., "Reliable Crowdsourcing and Deep Locality-Preserving Learning for
Expression Recognition in the Wild", CVPR 2017).

SOURCE is the ``basic`` folder of the release: ``EmoLabel/list_patition_label.txt`` (sic) holds
lines ``train_00001.jpg 5`` with labels 1 surprise, 2 fear, 3 disgust, 4 happiness, 5 sadness,
6 anger, 7 neutral; images are ``Image/aligned/train_00001_aligned.jpg`` (used when that folder
exists) or ``Image/original/train_00001.jpg``. ``train_*`` -> train, ``test_*`` -> test; the
packer carves val out of train.

The manual annotations ``Annotation/manual/train_00001_manu_attri.txt`` (five landmark lines
``x y``, then one line each for gender 0 male, 1 female, 2 unsure; race 0 Caucasian,
1 African-American, 2 Asian; age group 0 0-3, 1 4-19, 2 20-39, 3 40-69, 4 70+) become the
sample's ``gender``, ``race`` and ``age_group`` attributes; a sample without a readable file
has none (counted as missing in ``dataset.json``).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from fer_core.data.formats.base import SourceSample, file_reader, safe_key
from fer_core.data.meta import Field
from fer_core.errors import DataError

EXTRAS: list[str] = []
LABEL_FILE = Path("EmoLabel") / "list_patition_label.txt"
EMOTIONS = {1: "surprise", 2: "fear", 3: "disgust", 4: "happiness", 5: "sadness", 6: "anger", 7: "neutral"}
ATTRIBUTE_DIR = Path("Annotation") / "manual"
LANDMARK_LINES = 5
META = {
    "gender": Field("category", "annotated gender (RAF-DB manual attributes)", ("male", "female", "unsure")),
    "race": Field("category", "annotated race (RAF-DB manual attributes)", ("caucasian", "african-american", "asian")),
    "age_group": Field("category", "annotated age group in years (RAF-DB manual attributes)",
                       ("0-3", "4-19", "20-39", "40-69", "70+")),
}


def scan(source: Path, dropped: Counter) -> list[SourceSample]:
    source = Path(source)
    if not (source / LABEL_FILE).is_file() and (source / "basic" / LABEL_FILE).is_file():
        source = source / "basic"  # pointed at the release root
    label_file = source / LABEL_FILE
    if not label_file.is_file():
        raise DataError(f"{label_file} not found; pass RAF-DB's basic/ folder (with EmoLabel/ and Image/)")
    aligned = (source / "Image" / "aligned").is_dir()
    image_dir = source / "Image" / ("aligned" if aligned else "original")
    if not image_dir.is_dir():
        raise DataError(f"{source / 'Image'} has neither aligned/ nor original/; unpack RAF-DB's images there")
    samples = []
    for line in label_file.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if not parts:
            continue
        name, label = parts[0], _label(parts[1:])
        stem = Path(name).stem
        split = "train" if stem.startswith("train") else "test" if stem.startswith("test") else None
        if label is None or split is None:
            dropped.add("bad_label", name)
            continue
        path = image_dir / (f"{stem}_aligned.jpg" if aligned else name)
        if not path.is_file():  # checked now so that splitting sees only images that exist
            dropped.add("missing_image", path)
            continue
        attributes = read_attributes(source / ATTRIBUTE_DIR / f"{stem}_manu_attri.txt")
        samples.append(SourceSample(safe_key(stem), label, split, file_reader(path), meta=attributes))
    return samples


def read_attributes(path: Path) -> dict[str, str]:
    """gender, race and age group of one ``*_manu_attri.txt``; empty when it is missing or malformed."""
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        codes = [int(line) for line in lines[LANDMARK_LINES:LANDMARK_LINES + len(META)]]
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    if len(codes) < len(META) or not all(0 <= code < len(field.values) for code, field in zip(codes, META.values())):
        return {}
    return {name: field.values[code] for (name, field), code in zip(META.items(), codes)}


def _label(fields: list[str]) -> str | None:
    try:
        return EMOTIONS.get(int(fields[0])) if len(fields) == 1 else None
    except ValueError:
        return None
