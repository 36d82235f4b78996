"""Canonical expression names and the spellings that data sets use for them."""

from __future__ import annotations

from collections.abc import Iterable

from fer_core.errors import DataError

# The eight expressions of FER+ / AffectNet; the seven "basic" ones leave out contempt.
CANONICAL_CLASSES: tuple[str, ...] = (
    "anger", "contempt", "disgust", "fear", "happiness", "neutral", "sadness", "surprise",
)
BASIC_CLASSES: tuple[str, ...] = tuple(c for c in CANONICAL_CLASSES if c != "contempt")

# Lower-case spelling -> canonical name.
SYNONYMS: dict[str, str] = {
    "anger": "anger", "angry": "anger",
    "contempt": "contempt", "contemptuous": "contempt",
    "disgust": "disgust", "disgusted": "disgust",
    "fear": "fear", "fearful": "fear", "afraid": "fear", "scared": "fear",
    "happiness": "happiness", "happy": "happiness", "joy": "happiness",
    "neutral": "neutral",
    "sadness": "sadness", "sad": "sadness",
    "surprise": "surprise", "surprised": "surprise",
}


def canonical_name(name: str) -> str | None:
    """The canonical class for a spelling such as "Happy" or "surprised"; None when unknown."""
    return SYNONYMS.get(name.strip().lower())


def map_class_names(names: Iterable[str], keep_unknown: bool = False, where: str = "") -> dict[str, str]:
    """Map folder/label names onto canonical names.

    Unknown names raise a DataError listing them, unless ``keep_unknown``: then they are kept
    under their own lower-cased name.
    """
    mapping, unknown = {}, []
    for name in sorted(set(names)):
        canonical = canonical_name(name)
        if canonical is None:
            if not keep_unknown:
                unknown.append(name)
                continue
            canonical = name.strip().lower()
        mapping[name] = canonical
    if unknown:
        listed = ", ".join(repr(n) for n in unknown)
        place = f" in {where}" if where else ""
        raise DataError(
            f"unknown class names{place}: {listed}; rename them to one of "
            f"{', '.join(CANONICAL_CLASSES)} (or a usual spelling such as happy, sad, angry) "
            "or pass --keep-unknown-classes"
        )
    return mapping
