"""INT8 ONNX models for deployment, made with ONNX Runtime's quantization tools.

Two modes (``onnxruntime.quantization``):

* ``static``: weights and activations in INT8 (QDQ format, per-channel weights). The
  activation ranges are calibrated on images drawn from the run's own *training* shards,
  read exactly as evaluation reads them (no augmentation). Suits convolutional models.
* ``dynamic``: INT8 weights, activation scales computed per batch at run time. Suits
  transformers, whose MatMul/attention activations calibrate badly with static ranges.

``auto`` picks ``static`` for a graph whose compute is mostly convolutions and ``dynamic``
otherwise. The quantized file keeps every ``fer.*`` metadata entry of the float file
and adds ``fer.quantization`` (mode, calibration images), so ``fer predict`` and ``fer serve``
run it unchanged. Models with valence/arousal outputs quantize the same way; float32 and INT8
are then compared on valence and arousal CCC and their largest difference as well.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchmetrics.functional.classification import multiclass_f1_score
from torchmetrics.functional.regression import concordance_corrcoef

from fer_core.data.sources import make_loader
from fer_core.errors import FerError
from fer_core.outputs import has_affect
from fer_core.predictor import METADATA_PREFIX, OnnxPredictor

MODES = ("auto", "static", "dynamic")


def choose_mode(onnx_path: str | Path) -> str:
    """``static`` when convolutions outnumber matrix products in the graph, else ``dynamic``."""
    import onnx

    ops = [node.op_type for node in onnx.load(str(onnx_path), load_external_data=False).graph.node]
    convs = ops.count("Conv")
    matmuls = ops.count("MatMul") + ops.count("Gemm")
    return "static" if convs > matmuls else "dynamic"


class _Batches:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over fixed image batches."""

    def __init__(self, batches: list[np.ndarray], input_name: str):
        self._batches, self._input = batches, input_name
        self._iter: Iterator[np.ndarray] = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._iter, None)
        return None if batch is None else {self._input: batch}

    def rewind(self) -> None:
        self._iter = iter(self._batches)


def quantize_int8(float_path: str | Path, out: str | Path, mode: str = "auto",
                  calibration: list[np.ndarray] | None = None) -> Path:
    """Write an INT8 copy of the exported model ``float_path`` to ``out``; returns ``out``.

    ``calibration``: float32 image batches [B, C, H, W] in [0, 1], needed for ``static``.
    """
    import onnx
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quantize_dynamic,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if mode not in MODES:
        raise FerError(f"--quantize mode {mode!r} is not one of {', '.join(MODES)}")
    float_path, out = Path(float_path), Path(out)
    mode = choose_mode(float_path) if mode == "auto" else mode
    if mode == "static" and not calibration:
        raise FerError("static INT8 quantization needs calibration images; pass --calibration N with N > 0")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        prepared, written = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        try:
            quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
            if mode == "static":
                reader = _Batches(calibration, OnnxPredictor(float_path).input_name)
                quantize_static(str(prepared), str(written), reader, quant_format=QuantFormat.QDQ,
                                per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                calibrate_method=CalibrationMethod.MinMax)
            else:
                quantize_dynamic(str(prepared), str(written), weight_type=QuantType.QInt8)
        except FerError:
            raise
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise FerError(f"{mode} INT8 quantization of {float_path.name} failed: {type(exc).__name__}: {first}; "
                           f"try --quantize-mode {'dynamic' if mode == 'static' else 'static'}") from None
        model = onnx.load(str(written))
        _copy_metadata(onnx.load(str(float_path), load_external_data=False), model,
                       {"mode": mode, "calibration_images": sum(len(b) for b in calibration or [])
                        if mode == "static" else 0})
        onnx.save(model, str(written))
        written.replace(out)
    return out


def _copy_metadata(source, target, quantization: dict[str, Any]) -> None:
    del target.metadata_props[:]
    for entry in source.metadata_props:
        if entry.key.startswith(METADATA_PREFIX):
            target.metadata_props.add(key=entry.key, value=entry.value)
    target.metadata_props.add(key=METADATA_PREFIX + "quantization", value=json.dumps(quantization))


def images_per_second(predictor: OnnxPredictor, batch_size: int, repeats: int = 5) -> float:
    """Median images/s of ``repeats`` timed forward passes at ``batch_size`` (after one warm-up)."""
    images = np.random.default_rng(0).random(
        (batch_size, predictor.channels, predictor.image_size, predictor.image_size), dtype=np.float32)
    predictor.infer(images)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        predictor.infer(images)
        rates.append(batch_size / (time.perf_counter() - start))
    return round(statistics.median(rates), 1)


def score(predictors: dict[str, OnnxPredictor], batches: Iterable[tuple[np.ndarray, Any]],
          num_classes: int) -> dict[str, dict[str, float]]:
    """Each predictor's scores on labelled batches, and its agreement with the first predictor.

    Class outputs: accuracy, macro F1 and ``agreement`` (share of equal labels). Valence/arousal
    outputs (batches whose targets are ``{"label", "va"}``): valence, arousal and mean CCC, and
    ``va_max_difference`` (largest absolute difference from the first predictor's va).
    """
    labels, truth_va = [], []
    predicted: dict[str, dict[str, list]] = {name: {"label": [], "va": []} for name in predictors}
    for images, targets in batches:
        if isinstance(targets, Mapping):
            truth_va.append(targets["va"])
            targets = targets["label"]
        labels.append(targets)
        for name, predictor in predictors.items():
            result = predictor.infer(images)
            if "probabilities" in result:
                predicted[name]["label"].append(result["probabilities"].argmax(axis=1))
            if "va" in result:
                predicted[name]["va"].append(result["va"])
    if not labels:
        raise FerError("the evaluation split is empty; nothing to compare the INT8 model on")
    truth = np.concatenate(labels)
    reference = {kind: np.concatenate(parts) for kind, parts in next(iter(predicted.values())).items() if parts}
    scores = {}
    for name, parts in predicted.items():
        row: dict[str, float] = {}
        if parts["label"]:
            guess = np.concatenate(parts["label"])
            f1 = multiclass_f1_score(torch.from_numpy(guess), torch.from_numpy(truth), num_classes, average="macro")
            row.update(accuracy=float((guess == truth).mean()), f1_macro=float(f1),
                       agreement=float((guess == reference["label"]).mean()))
        if parts["va"]:
            va = np.concatenate(parts["va"])
            row["va_max_difference"] = float(np.abs(va - reference["va"]).max())
            if truth_va:
                ccc = concordance_corrcoef(torch.from_numpy(va).double(),
                                           torch.from_numpy(np.concatenate(truth_va)).double())
                row.update(valence_ccc=float(ccc[0]), arousal_ccc=float(ccc[1]), ccc_mean=float(ccc.mean()))
        scores[name] = row
    return scores


def labelled_batches(trained, split: str, batch_size: int, limit: int | None = None, va: bool = False
                     ) -> Iterator[tuple[np.ndarray, Any]]:
    """(images float32 [B, C, H, W] in [0, 1], class ids [B]) of a run's split, read as evaluation reads them;
    with ``va`` the targets are ``{"label": class ids [B], "va": float32 [B, 2]}``."""
    options = {"va": True} if va else {}
    loader = make_loader(trained.recipe["data"], split, trained.classes, batch_size, train=False,
                         seed=trained.recipe["seed"], num_workers=0, **options)
    taken = 0
    for images, targets, _ in loader:
        if limit is not None and taken >= limit:
            return
        keep = len(images) if limit is None else min(len(images), limit - taken)
        taken += keep
        labels = targets["label"] if va else targets
        hard = (labels.argmax(1) if labels.is_floating_point() else labels)[:keep].numpy()
        out = {"label": hard, "va": targets["va"][:keep].float().numpy()} if va else hard
        yield images[:keep].numpy().astype(np.float32), out


def calibration_batches(trained, n: int, batch_size: int = 32) -> list[np.ndarray]:
    """The first ``n`` images of the run's training shards (shard order, no augmentation) as batches."""
    return [images for images, _ in labelled_batches(trained, "train", batch_size, limit=n)]


def compare_models(trained, paths: dict[str, Path], split: str = "test", threads: int | None = None
                   ) -> dict[str, dict[str, float]]:
    """Side by side for each ONNX file: size, images/s at batch 1 and 32, and scores on ``split``."""
    predictors = {name: OnnxPredictor(path, threads=threads) for name, path in paths.items()}
    scores = score(predictors, labelled_batches(trained, split, 64, va=has_affect(trained.slices)),
                   len(trained.classes))
    return {name: {"file_mb": round(paths[name].stat().st_size / 1e6, 3),
                   "images_per_s_batch1": images_per_second(predictor, 1),
                   "images_per_s_batch32": images_per_second(predictor, 32), **scores[name]}
            for name, predictor in predictors.items()}
