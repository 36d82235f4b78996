"""``fer predict`` on photos: find every face, align it, classify it; or classify whole images.

Whether to detect follows the run (``face_setting``): a run trained on data packed with
``fer data pack --detect`` (its manifest records ``faces: {detector, size, margin}``) detects
and aligns with those settings by default; any other run, or an ``.onnx`` model, classifies
the whole image unless ``--detect`` is given. ``--no-detect`` always classifies whole images.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fer_core.errors import FerError
from fer_core.faces.align import DEFAULT_MARGIN, align_face
from fer_core.faces.detect import FaceDetector, load_detector, read_rgb
from fer_core.faces.face import Face
from fer_core.predictor import Predictor, infer_function, prediction, rows


@dataclass
class FaceMode:
    """How faces are found and cropped for a predictor."""

    detector: FaceDetector
    margin: float = DEFAULT_MARGIN
    size: int | None = None  # crop side of the training data (then resized like it); None: the model's input

    def align(self, image: np.ndarray, face: Face, predictor: Predictor) -> np.ndarray:
        """The model input for ``face``: aligned as the training data were, decoded by the predictor."""
        return crop_input(predictor, align_face(image, face.points, self.size or predictor.image_size,
                                                self.margin).crop)


def face_setting(predictor: Predictor) -> dict | None:
    """The ``faces`` record of the data the run was trained on, or None (whole images, or unknown)."""
    recipe = getattr(getattr(predictor, "trained", None), "recipe", None)
    if recipe is None:
        return (getattr(predictor, "metadata", None) or {}).get("faces")
    data = recipe.get("data", {})
    roots = [s["root"] for s in data.get("sources") or []] or [data.get("root")]
    for root in roots:
        path = Path(str(root)) / "dataset.json"
        if root and path.is_file():
            record = json.loads(path.read_text()).get("faces")
            if record:
                return record
    return None


def face_mode(predictor: Predictor, detect: bool | None, detector: str | None = None,
              margin: float | None = None) -> FaceMode | None:
    """``detect`` True/False forces it; None follows the run (see the module docstring)."""
    record = face_setting(predictor)
    if detect is False or (detect is None and record is None):
        return None
    record = record or {}
    name = detector or record.get("detector")
    chosen = margin if margin is not None else record.get("margin", DEFAULT_MARGIN)
    size = record.get("size") if margin is None or margin == record.get("margin") else None
    return FaceMode(load_detector(name), float(chosen), size)


def crop_input(predictor: Predictor, crop: np.ndarray) -> np.ndarray:
    """An aligned RGB crop -> the predictor's input [C, H, W], through its own decoding (as in training)."""
    buf = io.BytesIO()
    Image.fromarray(crop).save(buf, format="PNG", compress_level=0)
    return predictor.decode(buf.getvalue())


def classify_faces(predictor: Predictor, mode: FaceMode, image: np.ndarray,
                   top_k: int | None = None) -> list[dict[str, Any]]:
    """Every face in the RGB ``image``: box, score, landmarks, label and probabilities (and valence, arousal for
    models that predict them); best score first."""
    faces: list[Face] = mode.detector(image)
    if not faces:
        return []
    crops = [mode.align(image, f, predictor) for f in faces]
    outputs = rows(infer_function(predictor)(np.stack(crops)))
    return [{**face.as_dict(), **prediction(predictor.classes, out, top_k)} for face, out in zip(faces, outputs)]


@dataclass
class PhotoResult:
    path: str
    faces: list[dict] | None = None  # face mode
    whole: dict | None = None  # whole-image mode
    error: str | None = None
    image: np.ndarray | None = None  # kept for --draw

    def as_dict(self) -> dict:
        if self.error:
            return {"image": self.path, "error": self.error}
        if self.faces is not None:
            return {"image": self.path, "faces": self.faces}
        return {"image": self.path, **self.whole}


def _read(path: str) -> tuple[bytes, np.ndarray]:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise FerError(f"{path}: no such image file") from None
    except OSError as exc:
        raise FerError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    return data, read_rgb(data, str(path))


def predict_photos(predictor: Predictor, paths: Sequence[str], mode: FaceMode | None, top_k: int | None = 3,
                   batch_size: int = 64, keep_images: bool = False) -> Iterator[PhotoResult]:
    """One result per path, in order; a file that cannot be read gets its one-line error, the rest go on."""
    if mode is not None:
        for path in paths:
            try:
                _, image = _read(path)
                yield PhotoResult(str(path), faces=classify_faces(predictor, mode, image, top_k),
                                  image=image if keep_images else None)
            except FerError as exc:
                yield PhotoResult(str(path), error=str(exc))
        return
    for start in range(0, len(paths), batch_size):
        chunk, results, inputs = paths[start:start + batch_size], [], []
        for path in chunk:
            try:
                data, image = _read(path)  # checked here: empty, corrupt, too many pixels
                inputs.append(predictor.decode(data))
                results.append(PhotoResult(str(path), image=image if keep_images else None))
            except FerError as exc:
                results.append(PhotoResult(str(path), error=str(exc)))
        ok = [r for r in results if r.error is None]
        if ok:
            for result, out in zip(ok, rows(infer_function(predictor)(np.stack(inputs)))):
                result.whole = prediction(predictor.classes, out, top_k)
        yield from results
