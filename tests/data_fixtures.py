"""Tiny data sets in the real download formats, and a shard reader, for the data-packing tests."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

FER_HEADER = ["emotion", "pixels", "Usage"]
FERPLUS_HEADER = ["Usage", "Image name", "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
                  "contempt", "unknown", "NF"]
AFFECTNET_HEADER = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
                    "expression", "valence", "arousal"]


def pattern(seed: int, size: tuple[int, int] = (24, 20), channels: int = 3) -> np.ndarray:
    """A distinct uint8 image for each seed ([H, W] or [H, W, 3])."""
    rng = np.random.default_rng(seed)
    shape = size if channels == 1 else (*size, 3)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def save_image(path: Path, pixels: np.ndarray, format: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=format)
    return path


def write_corrupt_files(folder: Path) -> list[Path]:
    """A truncated JPEG and a PNG that is not one."""
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(pattern(99, (64, 64))).save(buf, format="JPEG")
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    garbage = folder / "garbage.png"
    garbage.write_bytes(b"this is not an image")
    return [truncated, garbage]


def write_imagefolder(root: Path, counts: dict[str, int], ext: str = "png") -> dict[Path, np.ndarray]:
    """Write n distinct images into each class folder of ``counts`` ({"train/Happy": 4, ...}); path -> pixels."""
    written = {}
    seed = 0
    for folder, n in counts.items():
        for i in range(n):
            seed += 1
            pixels = pattern(seed)
            path = save_image(root / folder / f"img{i:03d}.{ext}", pixels)
            written[path] = pixels
    return written


def fer_pixels(seed: int) -> np.ndarray:
    return pattern(seed, (48, 48), channels=1)


def write_fer2013_csv(path: Path, rows: list[tuple[int, np.ndarray | str, str]]) -> Path:
    """rows = (emotion, pixels [48,48] or a raw string, Usage)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(FER_HEADER)
        for emotion, pixels, usage in rows:
            text = pixels if isinstance(pixels, str) else " ".join(map(str, pixels.reshape(-1)))
            writer.writerow([emotion, text, usage])
    return path


def write_ferplus_csv(path: Path, rows: list[tuple[str, str, list[int]]]) -> Path:
    """rows = (Usage, Image name, ten votes in header order)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(FERPLUS_HEADER)
        for usage, name, votes in rows:
            writer.writerow([usage, name, *votes])
    return path


def write_affectnet_csv(path: Path, rows: list[tuple[str, tuple[int, int, int, int], int, float, float]]) -> Path:
    """rows = (subDirectory_filePath, (x, y, w, h), expression, valence, arousal)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(AFFECTNET_HEADER)
        for rel, (x, y, w, h), expression, valence, arousal in rows:
            landmarks = ";".join(f"{v:.2f}" for v in np.linspace(x, x + w, 136))
            writer.writerow([rel, x, y, w, h, landmarks, expression, valence, arousal])
    return path


def read_shards(out_dir: Path) -> dict[str, list[dict[str, bytes]]]:
    """{split: [sample dict (``__key__`` plus fields) in stored order]} read with tarfile."""
    manifest = json.loads((out_dir / "dataset.json").read_text())
    result = {}
    for split, entry in manifest["splits"].items():
        samples = []
        for shard in entry["shards"]:
            with tarfile.open(out_dir / shard) as tar:
                for member in tar.getmembers():
                    key, field = member.name.split(".", 1)
                    if not samples or samples[-1]["__key__"] != key:
                        samples.append({"__key__": key})
                    samples[-1][field] = tar.extractfile(member).read()
        result[split] = samples
    return result


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def labels_of(out_dir: Path, samples: list[dict[str, bytes]]) -> list[str]:
    classes = json.loads((out_dir / "dataset.json").read_text())["classes"]
    return [classes[int(s["cls"])] for s in samples]


COLOURS = {"happiness": (200, 70, 70), "sadness": (70, 70, 200), "neutral": (70, 190, 70)}


def pack_colour_set(base: Path, per_split: dict[str, int], size: int = 32, noise: float = 70.0) -> Path:
    """A packed set a tiny CNN learns in one or two epochs: three classes told apart by their noisy colour."""
    from fer_core.data.pack import pack_dataset

    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        for split, count in per_split.items():
            folder = base / "src" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(np.array(colour) + rng.normal(0, noise, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    pack_dataset(base / "src", base / "data", "imagefolder", progress=False)
    return base / "data"


AFFECT_POINTS = {"happiness": (0.8, 0.4), "sadness": (-0.7, -0.4), "neutral": (0.0, 0.6)}


def pack_affect_colour_set(base: Path, per_split: dict[str, int], size: int = 24) -> Path:
    """The colour set with valence/arousal: each class's point scaled by the image's brightness (0.3 to 1,
    visible), plus noise 0.03; a tiny CNN learns both within a few epochs."""
    from fer_core.data.formats.base import SourceSample, encode_png
    from fer_core.data.pack import write_dataset

    rng = np.random.default_rng(0)
    splits: dict[str, list] = {split: [] for split in per_split}
    for split, count in per_split.items():
        for i in range(count):
            name = list(COLOURS)[i % len(COLOURS)]
            brightness = rng.uniform(0.3, 1.0)
            colour = np.array(COLOURS[name]) * brightness
            pixels = np.clip(colour + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
            valence, arousal = np.clip(np.array(AFFECT_POINTS[name]) * brightness + rng.normal(0, 0.03, 2), -1, 1)
            va = json.dumps({"valence": round(float(valence), 4), "arousal": round(float(arousal), 4)}).encode()
            image = encode_png(Image.fromarray(pixels))
            splits[split].append(SourceSample(f"{split}_{i:05d}", name, split, lambda image=image: image,
                                              {"va.json": va}))
    write_dataset(base / "data", splits, source_format="imagefolder", extras=["va"], dropped=Counter(), seed=0,
                  progress=False, workers=0)
    return base / "data"
