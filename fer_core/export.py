"""Export a trained Encoder -> Backbone -> Head model to ONNX.

The exported graph takes ``images`` float32 [batch, channels, image_size, image_size] in
[0, 1] (the recipe's data size; encoders resize and normalise inside the graph, as they
do in PyTorch) and returns one named output per slice of the head's outputs
(``fer_core.outputs``), in their order: ``logits`` [batch, num_classes] for a classifier,
``va`` [batch, 2] (valence, arousal in [-1, 1]) for a valence/arousal model, both for a
multi-task one; the batch axis is dynamic. Logits rather than probabilities keep the graph
identical to ``FerModel.forward`` (the predictors apply the softmax). A run calibrated by
``fer calibrate`` is exported with the division of the logits (never ``va``) by its
temperature inside the graph, so every consumer of the file gets calibrated probabilities
from a plain softmax; ``fer.temperature`` records the value (1.0: none). Everything needed to
use the file alone is stored in the model's metadata_props as JSON values under ``fer.*``:
classes, recipe_name, task (classify, affect, expression+affect), outputs (each output's
name and width, in order), output (the first output's name, for older readers), image_size,
channels, parameters, temperature, and the resolved recipe.

Uses the TorchScript-based exporter (``torch.onnx.export(dynamo=False)``): it handles
timm CNNs and ViTs and needs no extra package (the dynamo exporter needs onnxscript).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fer_core.errors import FerError
from fer_core.inference import Trained, load_trained
from fer_core.lora import has_lora, merge_lora
from fer_core.model import count_parameters
from fer_core.outputs import layout, split
from fer_core.predictor import METADATA_PREFIX
from fer_core.runs import run_dir_of

DEFAULT_OPSET = 18


class NamedOutputs(nn.Module):
    """FerModel in evaluation: images -> its output slices in order (logits / temperature, va), dropping the
    targets of ``forward``."""

    def __init__(self, model: nn.Module, temperature: float = 1.0):
        super().__init__()
        self.model = model
        self.temperature = temperature
        self.slices = layout(model.head)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        parts = split(self.model(images)[0], self.slices)
        if self.temperature != 1.0 and "logits" in parts:
            parts["logits"] = parts["logits"] / self.temperature
        return tuple(parts.values())


def expected_outputs(trained: Trained, images: torch.Tensor) -> dict[str, np.ndarray]:
    """What the exported graph should return for ``images``: PyTorch's outputs by name (calibrated logits)."""
    with torch.no_grad():
        values = NamedOutputs(trained.model.cpu().eval(), trained.temperature)(images)
    return {name: value.numpy() for name, value in zip(trained.slices, values)}


def default_onnx_path(run_or_checkpoint: str | Path) -> Path:
    """``RUN/model.onnx`` for a run directory or a checkpoint inside one; else ``X.onnx`` beside the file."""
    run_dir = run_dir_of(run_or_checkpoint)
    return run_dir / "model.onnx" if run_dir is not None else Path(run_or_checkpoint).with_suffix(".onnx")


def export_onnx(run_or_checkpoint: str | Path | Trained, out: str | Path, opset: int = DEFAULT_OPSET,
                batch_size: int = 2) -> Path:
    """Write the whole model as ONNX with a dynamic batch axis and fer metadata; returns ``out``."""
    import onnx

    trained = run_or_checkpoint if isinstance(run_or_checkpoint, Trained) else load_trained(run_or_checkpoint)
    data = trained.recipe["data"]
    size, channels = int(data["image_size"]), int(data["channels"])
    if has_lora(trained.model):  # the file holds plain linear layers with the LoRA updates folded in
        merge_lora(trained.model)
    wrapper = NamedOutputs(trained.model.cpu().eval(), trained.temperature).eval()
    names = list(wrapper.slices)
    example = torch.rand(batch_size, channels, size, size, generator=torch.Generator().manual_seed(0))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's tracer and deprecation chatter
        try:
            torch.onnx.export(wrapper, (example,), str(out), input_names=["images"], output_names=names,
                              dynamic_axes={name: {0: "batch"} for name in ["images", *names]},
                              opset_version=opset, dynamo=False)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise FerError(f"ONNX export of '{trained.recipe['name']}' failed: {type(exc).__name__}: {first}") from None
    model = onnx.load(str(out))
    metadata = {
        "classes": trained.classes, "recipe_name": trained.recipe["name"], "image_size": size,
        "channels": channels, "parameters": count_parameters(trained.model)[0], "task": trained.task,
        "outputs": wrapper.slices, "output": names[0], "temperature": trained.temperature,
        "checkpoint": str(trained.checkpoint), "recipe": trained.recipe,
    }
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_PREFIX + key, json.dumps(value, default=str)
    onnx.save(model, str(out))
    return out


def max_differences(trained: Trained, onnx_path: str | Path, batch_size: int = 3) -> dict[str, float]:
    """Largest absolute difference of each output (calibrated logits, va) between PyTorch and ONNX Runtime on a
    random batch."""
    from fer_core.predictor import OnnxPredictor

    data = trained.recipe["data"]
    images = torch.rand(batch_size, data["channels"], data["image_size"], data["image_size"],
                        generator=torch.Generator().manual_seed(1))
    expected = expected_outputs(trained, images)
    predictor = OnnxPredictor(onnx_path)
    got = dict(zip(predictor.output_names, predictor.session.run(None, {predictor.input_name: images.numpy()})))
    return {name: float(np.abs(got[name] - value).max()) for name, value in expected.items()}


def max_difference(trained: Trained, onnx_path: str | Path, batch_size: int = 3) -> float:
    """The largest of ``max_differences``."""
    return max(max_differences(trained, onnx_path, batch_size).values())
