"""Cross-entropy with label smoothing, class weights and soft targets."""

from __future__ import annotations

from typing import Annotated

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fer_core.errors import RecipeError
from fer_core.constraints import Range, short


def class_weight_tensor(
    spec: Sequence[float] | str | None, num_classes: int, class_counts: Sequence[int] | None
) -> torch.Tensor | None:
    """Per-class weights from a list, or ``"auto"``: N / (C * n_c), i.e. inverse frequency with mean 1 on balanced data."""
    if spec is None:
        return None
    if spec == "auto":
        if not class_counts:
            raise RecipeError("class weights 'auto' need the training split's class counts; none were given")
        counts = torch.tensor(class_counts, dtype=torch.float64).clamp_min(1)
        return (counts.sum() / (len(counts) * counts)).float()
    if isinstance(spec, str) or len(spec) != num_classes:
        raise RecipeError(f"class weights must be 'auto' or a list of {num_classes} numbers, got {short(spec)}")
    return torch.tensor([float(w) for w in spec])


class CrossEntropy(nn.Module):
    def __init__(self, label_smoothing: float, weight: torch.Tensor | None):
        super().__init__()
        self.label_smoothing = label_smoothing
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if targets.is_floating_point():
            targets = targets.float()
        return F.cross_entropy(
            logits.float(), targets, weight=self.weight, label_smoothing=self.label_smoothing
        )


def build_cross_entropy(
    num_classes: int,
    label_smoothing: Annotated[float, Range(0, 1, hi_open=True)] = 0.0,
    class_weights: list[float] | str | None = None,
    class_counts: list[int] | None = None,
) -> CrossEntropy:
    return CrossEntropy(label_smoothing, class_weight_tensor(class_weights, num_classes, class_counts))
