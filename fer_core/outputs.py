"""What a model's output tensor holds: named slices, declared by its head.

A head returns one tensor [B, W]. Its ``outputs`` attribute names the slices of W in order,
e.g. ``{"logits": 7, "va": 2}`` for an expression + valence/arousal head; a head without it
gives ``{"logits": num_classes}``. Keeping one tensor keeps every consumer of a model (EMA,
DDP, checkpoints, ONNX export, LoRA, INT8) unchanged; whoever needs the parts splits it here.

``va`` holds (valence, arousal) in [-1, 1]. Each task names the slices it needs
(``TASK_OUTPUTS``); the head of a run must give them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# task -> the output slices it trains and scores
TASK_OUTPUTS: dict[str, tuple[str, ...]] = {
    "classify": ("logits",),
    "affect": ("va",),
    "expression+affect": ("logits", "va"),
}

AFFECT_TASKS = ("affect", "expression+affect")  # the tasks whose data must carry valence/arousal
VA_NAMES = ("valence", "arousal")
CLASSIFICATION_METRICS = ("accuracy", "f1_macro", "f1_weighted")
# per valence/arousal dimension: metric -> whether larger is better
AFFECT_METRICS = {"ccc": True, "pcc": True, "rmse": False, "sagr": True}
# the flat affect metrics of an evaluation: valence_ccc ... arousal_sagr, then the means
FLAT_AFFECT_METRICS = tuple(f"{dim}_{m}" for dim in VA_NAMES for m in AFFECT_METRICS) + ("ccc_mean", "rmse_mean")


def layout(head: Any) -> dict[str, int]:
    """The head's output slices in order: its ``outputs``, or ``{"logits": num_classes}``."""
    outputs = getattr(head, "outputs", None)
    return dict(outputs) if outputs else {"logits": int(head.num_classes)}


def split(output: Any, slices: Mapping[str, int]) -> dict[str, Any]:
    """``{name: output[:, a:b]}`` for each slice of ``slices`` (tensors or numpy arrays [B, W])."""
    parts, start = {}, 0
    for name, width in slices.items():
        parts[name] = output[:, start:start + width]
        start += width
    if start != output.shape[1]:
        raise ValueError(f"output has width {output.shape[1]} but the head's outputs {dict(slices)} add up to {start}")
    return parts


def task_metrics(task: str) -> tuple[str, ...]:
    """The validation metrics a task computes (any of them may pick best.pt), ``loss`` included."""
    slices = TASK_OUTPUTS.get(task, ("logits",))
    return ((CLASSIFICATION_METRICS if "logits" in slices else ()) + (FLAT_AFFECT_METRICS if "va" in slices else ())
            + ("loss",))


def metric_mode(metric: str) -> str:
    """'min' or 'max': which way ``metric`` improves."""
    return "min" if metric == "loss" or metric.endswith("rmse") or metric == "rmse_mean" else "max"


def recipe_task(recipe: Mapping[str, Any]) -> str:
    return recipe.get("task", "classify")


def has_affect(slices: Mapping[str, int]) -> bool:
    return "va" in slices


def has_logits(slices: Mapping[str, int]) -> bool:
    return "logits" in slices
