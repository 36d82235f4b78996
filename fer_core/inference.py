"""Loading a trained model back from a run directory or checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from torch import nn

from fer_core.calibration import stored_temperature
from fer_core.errors import CheckpointError, FerError
from fer_core.model import FerModel, build_model, load_model_state
from fer_core.outputs import has_logits, layout, recipe_task, split
from fer_core.plugins import get_registry
from fer_core.providers import recorded
from fer_core.runs import load_checkpoint, resolve_checkpoint


@dataclass
class Trained:
    model: FerModel
    recipe: dict
    classes: list[str]
    checkpoint: Path
    temperature: float = 1.0  # fitted by `fer calibrate` for this checkpoint; logits / temperature are calibrated

    @property
    def slices(self) -> dict[str, int]:
        """The model's output slices (``fer_core.outputs``): {"logits": C} and/or {"va": 2}."""
        return layout(self.model.head)

    @property
    def task(self) -> str:
        return recipe_task(self.recipe)

    def classifier(self, purpose: str) -> nn.Module:
        """The model as a classifier (its logits slice alone); a FerError when it has no class outputs."""
        slices = self.slices
        if not has_logits(slices):
            raise FerError(f"'{self.recipe['name']}' predicts valence and arousal only (task {self.task}); "
                           f"{purpose} needs class outputs")
        return self.model if list(slices) == ["logits"] else OutputPart(self.model, "logits")


class OutputPart(nn.Module):
    """A FerModel that returns one named slice of its output (e.g. the logits of a multi-task head)."""

    def __init__(self, model: FerModel, name: str):
        super().__init__()
        self.model, self.name = model, name
        self.slices = layout(model.head)

    def forward(self, inputs: torch.Tensor, targets=None, encoded: bool = False):
        output, targets = self.model(inputs, targets, encoded=encoded)
        return split(output, self.slices)[self.name], targets


def load_trained(run_or_checkpoint: str | Path, device: str | torch.device = "cpu",
                 use_ema: bool = True) -> Trained:
    """Rebuild the recipe's model and load the best (or given) checkpoint's weights."""
    path = resolve_checkpoint(run_or_checkpoint)
    state = load_checkpoint(path)
    recipe, classes = state["recipe"], state["classes"]
    if recipe.get("task") == "pretrain":
        raise CheckpointError(f"{path}: a pretraining run (task: pretrain) has no classifier; run `fer generate` on it, "
                              f"or train a classifier on its encoder (point model.encoder.checkpoint at this run)")
    torch.manual_seed(recipe["seed"])  # frozen random encoders are rebuilt identically
    with recorded(state.get("versions")):  # a missing plugin is named with the version it recorded
        model = build_model(recipe, get_registry(), classes)
    load_model_state(recipe, model, state["ema"] if use_ema and state.get("ema") else state["model"])
    return Trained(model.to(device).eval(), recipe, classes, path, stored_temperature(path))
