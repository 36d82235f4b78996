"""Predictors: one interface over a trained run (PyTorch) and an exported model (ONNX Runtime).

``fer predict`` and ``fer serve`` take either a run directory / checkpoint or an ``.onnx``
file written by ``fer export``. The ONNX path never imports torch, so a machine with
only ``fer-core``'s light dependencies, numpy, Pillow and onnxruntime can predict.

Images travel as numpy arrays: ``decode`` turns image bytes into float32 [C, H, W] in
[0, 1] exactly as the training loader does (PIL's L/RGB conversion, bilinear resize,
divide by 255), and ``infer`` turns a stacked batch [B, C, H, W] into the model's outputs:
``{"probabilities": [B, num_classes]}`` for a classifier, ``{"va": [B, 2]}`` (valence, arousal
in [-1, 1]) for a valence/arousal model, both for a multi-task one (``outputs``: the head's
slices, ``fer_core.outputs``). ``predict`` is the probabilities alone. The calibration
temperature divides the logits only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fer_core.data.images import pil_pixels
from fer_core.errors import CheckpointError, FerError
from fer_core.outputs import has_logits, split

ONNX_SUFFIX = ".onnx"
METADATA_PREFIX = "fer."


class Predictor(Protocol):
    classes: list[str]
    name: str  # the recipe's name
    format: str  # "pytorch" or "onnx"
    image_size: int
    channels: int
    temperature: float  # the calibration applied to the logits (1.0: none)
    outputs: dict[str, int]  # the model's output slices: {"logits": C} and/or {"va": 2}

    def info(self) -> dict[str, Any]:
        """What ``GET /info`` reports: classes, recipe name, model format and size."""

    def decode(self, data: bytes) -> np.ndarray:
        """Image bytes -> float32 [C, H, W] in [0, 1]; raises on anything that is not an image."""

    def infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """float32 images [B, C, H, W] -> {"probabilities": [B, num_classes]} and/or {"va": [B, 2]}."""

    def predict(self, images: np.ndarray) -> np.ndarray:
        """float32 images [B, C, H, W] -> probabilities [B, num_classes] (rows sum to 1)."""


def decode_array(data: bytes, size: int, channels: int) -> np.ndarray:
    """numpy twin of ``fer_core.data.loader.decode_image``: same pixels, same scaling, no torch."""
    pixels = pil_pixels(data, size, channels)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.float32) / np.float32(255)


def softmax(logits: np.ndarray) -> np.ndarray:
    """In float64: near-equal logits keep their order, so a temperature never changes the label."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def probabilities_of(predictor: Predictor, result: Mapping[str, np.ndarray]) -> np.ndarray:
    """The class probabilities of an ``infer`` result; a FerError for a model without class outputs."""
    if "probabilities" not in result:
        raise FerError(f"'{predictor.name}' predicts valence and arousal only; it has no class probabilities")
    return result["probabilities"]


def outputs_of(predictor: Predictor) -> dict[str, int]:
    """The predictor's output slices (a predictor that does not say has class logits only)."""
    return dict(getattr(predictor, "outputs", None) or {"logits": len(predictor.classes)})


def infer_function(predictor: Predictor):
    """``predictor.infer``, or for a predictor with ``predict`` only, its probabilities as an ``infer`` result."""
    infer = getattr(predictor, "infer", None)
    return infer if infer is not None else lambda images: {"probabilities": predictor.predict(images)}


def rows(result: np.ndarray | Mapping[str, np.ndarray]) -> list:
    """A batch's ``infer`` result (or probabilities [B, C]) -> one result per image."""
    if not isinstance(result, Mapping):
        return list(result)
    names = list(result)
    return [dict(zip(names, values)) for values in zip(*(result[name] for name in names))]


class TorchPredictor:
    """A run directory or checkpoint, rebuilt with its recipe (see ``fer_core.inference``), or a loaded
    ``fer_core.inference.Trained``."""

    format = "pytorch"

    def __init__(self, run_or_checkpoint, device: str = "cpu"):
        from fer_core.inference import Trained, load_trained

        self.trained = (run_or_checkpoint if isinstance(run_or_checkpoint, Trained)
                        else load_trained(run_or_checkpoint, device=device))
        self.device = device
        data = self.trained.recipe["data"]
        self.classes, self.name = list(self.trained.classes), self.trained.recipe["name"]
        self.image_size, self.channels = int(data["image_size"]), int(data["channels"])
        self.temperature = self.trained.temperature
        self.outputs = self.trained.slices

    def info(self) -> dict[str, Any]:
        from fer_core.model import count_parameters

        path = self.trained.checkpoint
        return _info(self, path, parameters=count_parameters(self.trained.model)[0])

    def decode(self, data: bytes) -> np.ndarray:
        from fer_core.data.loader import decode_image

        return decode_image(data, self.image_size, self.channels).numpy()

    def infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        with torch.inference_mode():
            output, _ = self.trained.model(torch.from_numpy(images).to(self.device))
            parts = split(output, self.outputs)
            result = {}
            if "logits" in parts:  # float64: see softmax
                result["probabilities"] = parts["logits"].double().div(self.temperature).softmax(dim=1).cpu().numpy()
            if "va" in parts:
                result["va"] = parts["va"].float().cpu().numpy()
            return result

    def predict(self, images: np.ndarray) -> np.ndarray:
        return probabilities_of(self, self.infer(images))


class OnnxPredictor:
    """A model written by ``fer export --format onnx``, run with ONNX Runtime (no torch)."""

    format = "onnx"

    def __init__(self, path: str | Path, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise FerError("running an .onnx model needs onnxruntime: pip install 'fer-core[infer]'") from None
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"{self.path}: no such ONNX file")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise CheckpointError(f"{self.path}: not a readable ONNX model ({first})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if f"{METADATA_PREFIX}classes" not in meta:
            raise CheckpointError(f"{self.path}: an ONNX model without fer metadata; export it with `fer export`")
        self.metadata = {key[len(METADATA_PREFIX):]: json.loads(value) for key, value in meta.items()
                         if key.startswith(METADATA_PREFIX)}
        self.classes, self.name = list(self.metadata["classes"]), self.metadata["recipe_name"]
        self.image_size, self.channels = int(self.metadata["image_size"]), int(self.metadata["channels"])
        self.temperature = float(self.metadata.get("temperature", 1.0))  # already divided out in the graph
        # files of classifiers exported before valence/arousal have one output, the logits
        self.outputs = {k: int(v) for k, v in (self.metadata.get("outputs") or {"logits": len(self.classes)}).items()}
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]
        if len(self.output_names) == 1 and len(self.outputs) == 1:  # one output, whatever its graph name
            self.output_names = list(self.outputs)
        if sorted(self.output_names) != sorted(self.outputs):
            raise CheckpointError(f"{self.path}: the graph's outputs {self.output_names} are not the ones its "
                                  f"metadata names ({', '.join(self.outputs)}); export it again with `fer export`")

    def info(self) -> dict[str, Any]:
        return _info(self, self.path, parameters=self.metadata.get("parameters"))

    def decode(self, data: bytes) -> np.ndarray:
        return decode_array(data, self.image_size, self.channels)

    def infer(self, images: np.ndarray) -> dict[str, np.ndarray]:
        values = self.session.run(None, {self.input_name: np.ascontiguousarray(images, dtype=np.float32)})
        got = dict(zip(self.output_names, values))
        result = {}
        if "logits" in got:
            result["probabilities"] = softmax(got["logits"])
        if "va" in got:
            result["va"] = np.asarray(got["va"], dtype=np.float32)
        return result

    def predict(self, images: np.ndarray) -> np.ndarray:
        return probabilities_of(self, self.infer(images))


def _info(predictor, path: Path, parameters: int | None) -> dict[str, Any]:
    outputs = outputs_of(predictor)
    return {
        "name": predictor.name, "classes": predictor.classes, "format": predictor.format,
        "outputs": outputs, "classifies": has_logits(outputs), "valence_arousal": "va" in outputs,
        "image_size": predictor.image_size, "channels": predictor.channels,
        "parameters": parameters, "file_bytes": path.stat().st_size, "temperature": predictor.temperature,
        # names only, never the server's paths: the run directory's name and the file's basename
        "run": path.parent.parent.name if path.parent.name == "checkpoints" else None, "file": path.name,
    }


def is_onnx(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ONNX_SUFFIX


def load_predictor(run_checkpoint_or_onnx: str | Path, device: str = "cpu", threads: int | None = None) -> Predictor:
    """An ``.onnx`` file -> OnnxPredictor (no torch); a run directory or checkpoint -> TorchPredictor.

    ``threads`` sets the intra-op threads of ONNX Runtime, or torch's (process-wide) for a run.
    """
    if is_onnx(run_checkpoint_or_onnx):
        return OnnxPredictor(run_checkpoint_or_onnx, threads=threads)
    if threads:
        import torch

        torch.set_num_threads(threads)
    return TorchPredictor(run_checkpoint_or_onnx, device=device)


def read_image_file(predictor: Predictor, path: str | Path) -> np.ndarray:
    try:
        return predictor.decode(Path(path).read_bytes())
    except FileNotFoundError:
        raise FerError(f"{path}: no such image file") from None
    except Exception as exc:
        raise FerError(f"{path}: not a readable image ({type(exc).__name__})") from None


def prediction(classes: Sequence[str], output: np.ndarray | Mapping[str, np.ndarray],
               top_k: int | None = None) -> dict[str, Any]:
    """One image's result: label, confidence, and all probabilities (or the top k) when the model classifies;
    valence and arousal when it has them. ``output``: one row of ``rows`` (or the probabilities alone)."""
    if not isinstance(output, Mapping):
        output = {"probabilities": output}
    result: dict[str, Any] = {}
    probs = output.get("probabilities")
    if probs is not None:
        order = np.argsort(-probs, kind="stable")
        result.update(label=classes[int(order[0])], confidence=round(float(probs[order[0]]), 6))
        if top_k is None:
            result["probabilities"] = {name: round(float(p), 6) for name, p in zip(classes, probs)}
        else:
            result["top_k"] = [{"label": classes[int(i)], "probability": round(float(probs[i]), 6)}
                               for i in order[:min(top_k, len(classes))]]
    va = output.get("va")
    if va is not None:
        result.update(valence=round(float(va[0]), 6), arousal=round(float(va[1]), 6))
    return result


def predict_files(predictor: Predictor, paths: Sequence[str | Path], batch_size: int = 64,
                  top_k: int = 3) -> list[dict[str, Any]]:
    """``fer predict``'s rows for any predictor: image, label, confidence, top-k probabilities (models that
    classify), valence and arousal (models that have them)."""
    infer, results = infer_function(predictor), []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        outputs = rows(infer(np.stack([read_image_file(predictor, path) for path in chunk])))
        results.extend({"image": str(path), **prediction(predictor.classes, out, top_k)}
                       for path, out in zip(chunk, outputs))
    return results
