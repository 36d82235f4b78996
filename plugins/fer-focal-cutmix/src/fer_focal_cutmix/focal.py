"""Softmax focal loss for multi-class classification, with hard or soft targets.

Papers:
    Focal Loss for Dense Object Detection (Lin et al.) - https://arxiv.org/abs/1708.02002

For log-probabilities ``log p = log_softmax(logits)`` (always computed in float32
or wider) and a target distribution ``q`` over C classes (one-hot for class ids,
smoothed when ``label_smoothing > 0``, or the soft targets CutMix/MixUp produce),
the loss of one sample is

    loss = - sum_c  alpha_c * q_c * (1 - p_c) ** gamma * log p_c

i.e. every class carries its own modulating factor ``(1 - p_c) ** gamma``, weighted
by how much target mass it has. For a one-hot target this is the focal loss
``-alpha_y (1 - p_y) ** gamma log p_y``; with ``gamma = 0`` it is exactly
cross-entropy (``torch.nn.functional.cross_entropy`` with the same smoothing, and
with ``weight=alpha`` as torch defines it for probability targets: a plain mean
over the batch). ``reduction="mean"`` always divides by the batch size.

``alpha: auto`` weighs class c by ``N / (C * n_c)`` (n_c: training samples of class
c, N their sum), inverse frequency normalised so that the average weight over the
training samples is 1 — the same rule as the built-in cross_entropy's
``class_weights: auto``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fer_core.errors import RecipeError

__all__ = ["FocalLoss", "auto_class_weights", "build_focal"]

REDUCTIONS = ("mean", "sum", "none")


def auto_class_weights(class_counts: Sequence[int]) -> torch.Tensor:
    """Inverse-frequency weights ``N / (C * n_c)``: mean 1 over the training samples."""
    counts = torch.tensor([float(c) for c in class_counts], dtype=torch.float64)
    if (counts <= 0).any():
        empty = [i for i, c in enumerate(class_counts) if c <= 0]
        raise RecipeError(
            f"loss.alpha: 'auto' needs samples of every class, but class index {empty} has none in the "
            "training split; give alpha as a list of class weights"
        )
    return (counts.sum() / (len(counts) * counts)).float()


def soft_targets(targets: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """Class ids [B] -> one-hot [B,C]; soft targets [B,C] pass through (cast to ``dtype``)."""
    if targets.ndim == 1 and not targets.is_floating_point():
        return F.one_hot(targets.long(), num_classes).to(dtype)
    if targets.ndim == 2 and targets.shape[1] == num_classes:
        return targets.to(dtype)
    raise ValueError(f"focal loss targets must be class ids [B] or soft targets [B,{num_classes}], got "
                     f"{targets.dtype} {list(targets.shape)}")


class FocalLoss(nn.Module):
    """``forward(logits [B,C], targets [B] ids or [B,C] soft) -> loss`` (scalar unless reduction='none')."""

    def __init__(
        self,
        num_classes: int,
        gamma: float = 2.0,
        alpha: torch.Tensor | None = None,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
    ):
        super().__init__()
        self.num_classes = num_classes
        self.gamma = float(gamma)
        self.label_smoothing = float(label_smoothing)
        self.reduction = reduction
        self.register_buffer("alpha", alpha, persistent=False)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # float32 at least (also under autocast); float64 stays float64 for gradcheck
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        log_probs = F.log_softmax(logits, dim=-1)  # stable; never log(softmax)
        weights = soft_targets(targets, self.num_classes, log_probs.dtype)
        if self.label_smoothing:
            weights = weights * (1.0 - self.label_smoothing) + self.label_smoothing / self.num_classes
        if self.gamma:
            # 1 - p_c = -expm1(log p_c), accurate as p_c -> 1; the floor keeps the gradient of
            # (1 - p) ** gamma finite for gamma < 1 where p_c rounds to exactly 1
            weights = weights * (-torch.expm1(log_probs)).clamp_min(1e-12) ** self.gamma
        if self.alpha is not None:
            weights = weights * self.alpha.to(log_probs.dtype)
        loss = -(weights * log_probs).sum(dim=-1)
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, label_smoothing={self.label_smoothing}, reduction={self.reduction!r}"


def _alpha_tensor(
    alpha: Sequence[float] | str | None, num_classes: int, class_counts: Sequence[int] | None, key: str
) -> torch.Tensor | None:
    if alpha is None:
        return None
    if alpha == "auto":
        if not class_counts:
            raise RecipeError(f"loss.{key}: 'auto' needs the training split's class counts; none were given")
        if len(class_counts) != num_classes:
            raise RecipeError(f"loss.{key}: got {len(class_counts)} class counts for {num_classes} classes")
        return auto_class_weights(class_counts)
    if isinstance(alpha, str) or not isinstance(alpha, Sequence) or len(alpha) != num_classes:
        raise RecipeError(f"loss.{key} must be 'auto' or a list of {num_classes} class weights, got {alpha!r}")
    weights = torch.tensor([float(a) for a in alpha])
    if (weights < 0).any():
        raise RecipeError(f"loss.{key} weights must be non-negative, got {list(alpha)}")
    return weights


def build_focal(
    gamma: float = 2.0,
    alpha: list[float] | str | None = None,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    class_weights: list[float] | str | None = None,
    num_classes: int = 7,
    class_counts: list[int] | None = None,
) -> FocalLoss:
    """Focal loss. ``alpha``: per-class weights, a list or ``"auto"`` (``N / (C * n_c)`` from the
    training counts); ``class_weights`` is the same setting under the name cross_entropy uses."""
    if gamma < 0:
        raise RecipeError(f"loss.gamma must be >= 0, got {gamma}")
    if not 0.0 <= label_smoothing < 1.0:
        raise RecipeError(f"loss.label_smoothing must be in [0, 1), got {label_smoothing}")
    if reduction not in REDUCTIONS:
        raise RecipeError(f"loss.reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    if alpha is not None and class_weights is not None:
        raise RecipeError("loss.alpha and loss.class_weights are the same setting; give only one")
    key = "class_weights" if class_weights is not None else "alpha"
    weights = _alpha_tensor(alpha if alpha is not None else class_weights, num_classes, class_counts, key)
    return FocalLoss(num_classes, gamma=gamma, alpha=weights, label_smoothing=label_smoothing, reduction=reduction)
