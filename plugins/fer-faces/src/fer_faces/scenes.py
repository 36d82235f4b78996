"""Test scenes with known faces: real faces pasted at known boxes and scales onto face-free photos.

Every photo ships inside a registry package, so tests and ``benchmarks/faces.py`` need no
download: faces from matplotlib's grace_hopper.jpg, scikit-image's astronaut.png (both with
hand-marked boxes and five landmarks) and lfw_subset.npy (25x25 crops of real faces, box
only); backgrounds from scikit-learn's china.jpg and flower.jpg and scikit-image's chelsea.png
and coffee.png, which hold no human face. ``synthetic_scene`` pastes faces drawn by
``fer_core.data.synth`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SCENE_SIZE = (640, 480)  # width, height
# source photo -> (face box x1, y1, x2, y2, five landmarks), marked by hand
MARKED = {
    "grace_hopper": ((165, 145, 370, 330), ((222, 189), (298, 186), (270, 247), (228, 277), (310, 276))),
    "astronaut": ((178, 70, 272, 177), ((203, 101), (245, 102), (224, 124), (203, 141), (246, 141))),
}


@dataclass
class Truth:
    box: tuple[float, float, float, float]
    landmarks: np.ndarray | None = None  # [5, 2], or None when not marked
    source: str = ""


@dataclass
class Scene:
    image: np.ndarray  # uint8 RGB [480, 640, 3]
    faces: list[Truth] = field(default_factory=list)
    background: str = ""


def _skimage_data(name: str) -> Path:
    import skimage

    return Path(skimage.__file__).parent / "data" / name


def face_free_photos() -> dict[str, np.ndarray]:
    """The four photos without a human face, resized to 640x480, uint8 RGB."""
    from sklearn.datasets import load_sample_image

    photos = {"china": load_sample_image("china.jpg"), "flower": load_sample_image("flower.jpg")}
    for name in ("chelsea", "coffee"):
        photos[name] = np.asarray(Image.open(_skimage_data(f"{name}.png")).convert("RGB"))
    return {k: np.asarray(Image.fromarray(v).resize(SCENE_SIZE, Image.BILINEAR)) for k, v in photos.items()}


def marked_photo(name: str) -> np.ndarray:
    if name == "grace_hopper":
        from matplotlib import cbook

        with cbook.get_sample_data("grace_hopper.jpg") as f, Image.open(f) as image:
            return np.asarray(image.convert("RGB"))
    return np.asarray(Image.open(_skimage_data(f"{name}.png")).convert("RGB"))


def lfw_faces() -> np.ndarray:
    """The 100 face crops of lfw_subset.npy as uint8 RGB [100, 25, 25, 3]."""
    grey = np.load(_skimage_data("lfw_subset.npy"))[:100]
    return np.repeat((grey * 255).round().astype(np.uint8)[..., None], 3, axis=-1)


def _feathered_mask(w: int, h: int) -> Image.Image:
    mask = Image.new("L", (w, h), 0)
    inset = max(1, min(w, h) // 12)
    ImageDraw.Draw(mask).ellipse((inset, inset, w - 1 - inset, h - 1 - inset), fill=255)
    return mask.filter(ImageFilter.GaussianBlur(inset / 2))


class _Canvas:
    """A background that takes patches at free, non-overlapping places."""

    def __init__(self, background: np.ndarray, rng: np.random.Generator):
        self.image = Image.fromarray(background.copy())
        self.rng, self.taken = rng, []

    def place(self, w: int, h: int) -> tuple[int, int] | None:
        W, H = self.image.size
        for _ in range(200):
            x, y = int(self.rng.integers(0, W - w + 1)), int(self.rng.integers(0, H - h + 1))
            box = (x - 8, y - 8, x + w + 8, y + h + 8)
            if all(box[2] <= t[0] or box[0] >= t[2] or box[3] <= t[1] or box[1] >= t[3] for t in self.taken):
                self.taken.append(box)
                return x, y
        return None

    def paste(self, patch: Image.Image, x: int, y: int) -> None:
        self.image.paste(patch, (x, y), _feathered_mask(*patch.size))


def _paste_marked(canvas: _Canvas, name: str, photo: np.ndarray, face_width: int) -> Truth | None:
    (x1, y1, x2, y2), points = MARKED[name]
    scale = face_width / (x2 - x1)
    pad = 0.45 * (x2 - x1)  # hair, ears and some background around the face
    left, top = max(0, x1 - pad), max(0, y1 - pad)
    right, bottom = min(photo.shape[1], x2 + pad), min(photo.shape[0], y2 + pad)
    w, h = round((right - left) * scale), round((bottom - top) * scale)
    spot = canvas.place(w, h)
    if spot is None:
        return None
    patch = Image.fromarray(photo).crop((round(left), round(top), round(right), round(bottom))).resize((w, h), Image.BICUBIC)
    canvas.paste(patch, *spot)
    to_scene = lambda x, y: (spot[0] + (x - left) * scale, spot[1] + (y - top) * scale)  # noqa: E731
    box = (*to_scene(x1, y1), *to_scene(x2, y2))
    return Truth(box, np.array([to_scene(x, y) for x, y in points]), name)


def _paste_tile(canvas: _Canvas, tile: np.ndarray, size: int, inset: float, source: str) -> Truth | None:
    spot = canvas.place(size, size)
    if spot is None:
        return None
    canvas.image.paste(Image.fromarray(tile).resize((size, size), Image.BICUBIC), spot)
    x, y, d = spot[0], spot[1], inset * size
    return Truth((x + d, y + d, x + size - d, y + size - d), None, source)


def real_scene(seed: int, faces: int = 3, sizes: tuple[int, int] = (50, 170)) -> Scene:
    """A 640x480 face-free photo with ``faces`` real faces (marked photos and LFW crops) pasted on it."""
    rng = np.random.default_rng(seed)
    backgrounds = face_free_photos()
    name = sorted(backgrounds)[seed % len(backgrounds)]
    canvas = _Canvas(backgrounds[name], rng)
    lfw, truths = lfw_faces(), []
    for i in range(faces):
        width = int(rng.integers(*sizes))
        kind = ("grace_hopper", "astronaut", "lfw")[(seed + i) % 3]
        if kind == "lfw":
            truth = _paste_tile(canvas, lfw[int(rng.integers(len(lfw)))], width, 0.0, "lfw")
        else:
            truth = _paste_marked(canvas, kind, marked_photo(kind), width)
        if truth is not None:
            truths.append(truth)
    return Scene(np.asarray(canvas.image), truths, name)


def synthetic_scene(seed: int, faces: int = 3, sizes: tuple[int, int] = (70, 170)) -> Scene:
    """A face-free photo with ``faces`` synthetic faces of ``fer data synth`` (box: the tile less 10 %)."""
    from fer_core.data import synth

    rng = np.random.default_rng(seed)
    backgrounds = face_free_photos()
    name = sorted(backgrounds)[seed % len(backgrounds)]
    canvas = _Canvas(backgrounds[name], rng)
    tiles = [pixels for _, pixels in synth.synthesize(n=faces, size=128, seed=seed)]
    truths = [t for t in (_paste_tile(canvas, tile, int(rng.integers(*sizes)), 0.1, "synth") for tile in tiles) if t]
    return Scene(np.asarray(canvas.image), truths, name)
