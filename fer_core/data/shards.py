"""WebDataset shards and the dataset.json manifest that describes them.

A data set directory holds ``<split>-<6-digit index>.tar`` shards and ``dataset.json``::

    {"format": "fer-shards", "version": 1, "source_format": "fer2013-csv",
     "classes": ["anger", ...],                   # index = the ``cls`` value of a sample
     "image": {"channels": 1, "size": [48, 48]},  # size is null when images vary
     "splits": {"train": {"shards": [...], "shard_counts": [...], "count": N,
                          "class_counts": {...}, "bytes": B,
                          "shard_class_counts": [[n per class index] per shard],
                          "va": {"count": N, "valence": {...}, "arousal": {...}}}, ...},  # optional
     "extras": ["votes", "va", "meta"], "dropped": {"corrupt_image": 0, ...},
     "meta": {"gender": {"kind": "category", "values": [...], "splits": {...}}, ...},  # optional
     "seed": 0, "created_by": "fer-core 0.1.0"}

A sample is ``__key__`` (unique, no dots), the image bytes under ``png`` or ``jpg``, ``cls``
(class index as ASCII text) and optional extra fields (``votes.json``, ``va.json`` with
valence and arousal summarised by each split's ``va``, see ``fer_core.data.va``; ``meta.json``
with per-sample attributes described by the manifest's ``meta``, see ``fer_core.data.meta``;
``latent.npy``...).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

from fer_core.errors import DataError

MANIFEST_NAME = "dataset.json"
MANIFEST_FORMAT = "fer-shards"
MANIFEST_VERSION = 1
DEFAULT_SHARD_SIZE = 1000
SHARD_RE = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-(?P<index>\d{6})\.tar$")
_SPLIT_KEYS = ("shards", "shard_counts", "count", "class_counts", "bytes")


def shard_name(split: str, index: int) -> str:
    """``train``, 3 -> ``train-000003.tar``."""
    return f"{split}-{index:06d}.tar"


class SplitWriter:
    """Writes the samples of one split into numbered tar shards.

    Use as a context manager; after it closes, ``entry`` is the split's manifest entry
    (shards, shard_counts, count, class_counts, bytes, shard_class_counts)::

        with SplitWriter(out_dir, "train", classes) as writer:
            writer.write("train-000000", "happiness", {"png": png_bytes})
        manifest["splits"]["train"] = writer.entry

    Samples go into shards in the order they are written: shuffle them before.
    """

    def __init__(self, out_dir: str | os.PathLike, split: str, classes: list[str],
                 shard_size: int = DEFAULT_SHARD_SIZE):
        if not re.fullmatch(r"[A-Za-z0-9_]+", split):
            raise ValueError(f"split name {split!r} must be letters, digits or _")
        if shard_size < 1:
            raise ValueError("shard_size must be at least 1")
        self.out_dir = Path(out_dir)
        self.split = split
        self.classes = list(classes)
        self.shard_size = shard_size
        self.shards: list[str] = []
        self.shard_counts: list[int] = []
        self.shard_class_counts: list[list[int]] = []
        self.class_counts = {name: 0 for name in self.classes}
        self.entry: dict | None = None
        self._tar = None

    def __enter__(self) -> SplitWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def write(self, key: str, label: int | str, fields: Mapping[str, bytes]) -> None:
        """Write one sample: ``label`` is a class name or index; ``fields`` maps extensions to bytes."""
        if "." in key or not key:
            raise ValueError(f"sample key {key!r} must be non-empty and contain no dots")
        index = label if isinstance(label, int) else self.classes.index(label)
        if self._tar is None or self.shard_counts[-1] >= self.shard_size:
            self._next_shard()
        sample = {"__key__": key, "cls": str(index).encode("ascii")}
        sample.update({name: bytes(data) for name, data in fields.items()})
        self._tar.write(sample)
        self.shard_counts[-1] += 1
        self.shard_class_counts[-1][index] += 1
        self.class_counts[self.classes[index]] += 1

    def close(self) -> dict:
        """Finish the last shard and return the split entry."""
        if self._tar is not None:
            self._tar.close()
            self._tar = None
        if self.entry is None:
            self.entry = {
                "shards": list(self.shards),
                "shard_counts": list(self.shard_counts),
                "count": sum(self.shard_counts),
                "class_counts": dict(self.class_counts),
                "bytes": sum((self.out_dir / name).stat().st_size for name in self.shards),
                "shard_class_counts": [list(row) for row in self.shard_class_counts],
            }
        return self.entry

    def _next_shard(self) -> None:
        from webdataset import TarWriter  # imports torch: only when writing

        if self._tar is not None:
            self._tar.close()
        name = shard_name(self.split, len(self.shards))
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # fixed owner and mtime: packing the same data twice gives identical shards
        self._tar = TarWriter(str(self.out_dir / name), encoder=False, mtime=0, user="fer", group="fer")
        self.shards.append(name)
        self.shard_counts.append(0)
        self.shard_class_counts.append([0] * len(self.classes))


def write_manifest(out_dir: str | os.PathLike, manifest: dict) -> Path:
    """Write ``out_dir/dataset.json`` atomically (temp file + os.replace)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / MANIFEST_NAME
    fd, tmp = tempfile.mkstemp(prefix=".dataset-", suffix=".json", dir=out_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_manifest(dir: str | os.PathLike) -> dict:
    """Read and check ``dir/dataset.json`` (``dir`` may also be the json file itself)."""
    path = Path(dir)
    if path.name != MANIFEST_NAME or path.is_dir():
        path = path / MANIFEST_NAME
    if not path.is_file():
        raise DataError(f"{path.parent} has no {MANIFEST_NAME}; create one with `fer data pack` or `fer data synth`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is not readable JSON ({_first_line(e)}); re-create it with `fer data pack`") from None
    problem = _manifest_problem(manifest)
    if problem:
        raise DataError(f"{path} is not a valid fer-shards manifest: {problem}; re-create it with `fer data pack`")
    return manifest


def split_shard_paths(dir: str | os.PathLike, split: str, manifest: dict | None = None) -> list[Path]:
    """Paths of the shards of ``split``; a DataError names the splits there are when it is missing."""
    manifest = manifest if manifest is not None else read_manifest(dir)
    if split not in manifest["splits"]:
        have = ", ".join(manifest["splits"]) or "none"
        raise DataError(f"{dir} has no {split!r} split (it has: {have})")
    return [Path(dir) / name for name in manifest["splits"][split]["shards"]]


def _manifest_problem(m) -> str | None:
    if not isinstance(m, dict):
        return "the top level is not an object"
    if m.get("format") != MANIFEST_FORMAT:
        return f"'format' is {m.get('format')!r}, expected {MANIFEST_FORMAT!r}"
    if not isinstance(m.get("version"), int) or m["version"] > MANIFEST_VERSION:
        return f"version {m.get('version')!r} is not supported by this fer-core (reads {MANIFEST_VERSION})"
    classes = m.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        return "'classes' must be a non-empty list of names"
    splits = m.get("splits")
    if not isinstance(splits, dict):
        return "'splits' must be an object"
    for name, entry in splits.items():
        missing = [k for k in _SPLIT_KEYS if not isinstance(entry, dict) or k not in entry]
        if missing:
            return f"split {name!r} lacks {', '.join(missing)}"
        if len(entry["shards"]) != len(entry["shard_counts"]):
            return f"split {name!r} lists {len(entry['shards'])} shards but {len(entry['shard_counts'])} shard_counts"
    image = m.get("image")
    if not isinstance(image, dict) or image.get("channels") not in (1, 3):
        return "'image.channels' must be 1 or 3"
    return None


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__
