"""ImageFolder layouts: one folder per class, optionally inside split folders.

    SOURCE/train/<class>/*.jpg, SOURCE/val/<class>/..., [SOURCE/test/<class>/...]   splits as given
    SOURCE/train/<class>/...,   SOURCE/test/<class>/...                            val carved from train
    SOURCE/<class>/*.jpg                                                           split by the packer

Class folder names map onto canonical names case-insensitively (``Happy`` -> happiness,
``surprised`` -> surprise...). JPEG and PNG files are stored as they are; other image
formats are re-encoded as PNG.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from fer_core.data.formats.base import IMAGE_SUFFIXES, SourceSample, file_reader, safe_key
from fer_core.data.labels import map_class_names
from fer_core.errors import DataError

EXTRAS: list[str] = []
SPLIT_FOLDERS = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "test": "test"}


def scan(source: Path, dropped: Counter, keep_unknown_classes: bool = False) -> list[SourceSample]:
    source = Path(source)
    if not source.is_dir():
        raise DataError(f"{source} is not a directory; imagefolder expects class folders (or train/ val/ test/ folders of them)")
    folders = _subfolders(source)
    splits = _split_folders(source, folders)
    # (split, class folder) pairs; split None for a single folder of class folders
    class_dirs = [(split, d) for split, root in splits.items() for d in _subfolders(root)] if splits \
        else [(None, d) for d in folders]
    for split, root in splits.items():
        if not _subfolders(root):
            raise DataError(f"{root} has no class folders; put its images in one folder per class")
    if not class_dirs:
        raise DataError(f"{source} has no class folders; expected SOURCE/<class>/*.jpg or SOURCE/train/<class>/*.jpg")
    names = map_class_names((d.name for _, d in class_dirs), keep_unknown_classes, where=str(source))
    samples = []
    for split, class_dir in class_dirs:
        for path in _image_files(class_dir):
            key = safe_key(str(path.relative_to(source).with_suffix("")))
            samples.append(SourceSample(key, names[class_dir.name], split, file_reader(path)))
    return samples


def _subfolders(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))


def _split_folders(source: Path, folders: list[Path]) -> dict[str, Path]:
    """{"train": SOURCE/train, ...} when SOURCE is split into folders, else {}."""
    splits, others = {}, []
    for folder in folders:
        split = SPLIT_FOLDERS.get(folder.name.lower())
        if split is None:
            others.append(folder.name)
        elif split in splits:
            raise DataError(f"{source} has two {split} folders: {splits[split].name} and {folder.name}; keep one")
        else:
            splits[split] = folder
    if not splits:
        return {}
    if "train" not in splits:
        raise DataError(f"{source} has {', '.join(p.name for p in splits.values())} but no train/ folder")
    if others:
        raise DataError(f"{source} mixes split folders ({', '.join(p.name for p in splits.values())}) "
                        f"with other folders ({', '.join(others)}); move or remove those")
    return splits


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )
