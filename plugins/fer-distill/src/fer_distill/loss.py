"""The ``distill`` loss: knowledge distillation from a frozen teacher.

Paper:
    Distilling the Knowledge in a Neural Network (Hinton, Vinyals, Dean, 2015)
        - https://arxiv.org/abs/1503.02531

For student logits ``s``, teacher logits ``t``, temperature ``T`` and targets ``y``
(class ids [B], or the soft targets [B, C] of CutMix/MixUp)::

    loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)

KL is summed over classes and averaged over the batch; ``T^2`` keeps the soft term's
gradients on the scale of the hard term's as ``T`` changes. CE is the built-in
cross-entropy (label smoothing, class weights, soft targets).

The training loop calls a loss with ``wants_batch = True`` as
``loss(logits, targets, inputs=inputs, keys=keys)``: ``inputs`` are the student's
backbone inputs after the batch augments (the images of an image model), ``keys`` the
batch's sample keys. The teacher runs on those inputs. Called without ``inputs`` (the
validation loss of ``evaluate``) the loss is the hard-label term alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from fer_core.builtin.losses import CrossEntropy, class_weight_tensor
from fer_core.constraints import Range
from fer_core.errors import RecipeError
from fer_core.model import build_sample_augments
from fer_core.plugins import get_registry
from fer_distill.cache import LogitCache, cache_blocker
from fer_distill.teacher import Teacher, check_teacher_path, load_teacher


def distillation_term(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))``, summed over classes, mean over the batch."""
    log_p_student = F.log_softmax(student.float() / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher.float() / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


class DistillLoss(nn.Module):
    """``forward(logits, targets, inputs=None, keys=None) -> scalar loss``."""

    wants_batch = True

    def __init__(self, teacher: Teacher, hard: nn.Module, temperature: float, alpha: float,
                 cache: LogitCache | None = None):
        super().__init__()
        self.teacher, self.hard = teacher, hard
        self.temperature, self.alpha = float(temperature), float(alpha)
        self.cache = cache

    def teacher_logits(self, inputs: torch.Tensor, keys: Sequence[str] | None) -> torch.Tensor:
        """The teacher's logits for ``inputs``: from the cache where it holds the key, else a fresh pass."""
        cache = self.cache
        if cache is None or keys is None or cache.full:
            return self.teacher(inputs)
        rows = cache.lookup(keys)
        missing = [j for j, row in enumerate(rows) if row is None]
        logits = torch.empty(len(keys), cache.num_classes, device=inputs.device)
        if missing:
            fresh = self.teacher(inputs[missing]).half()  # rounded as the cache stores it: hits and misses agree
            cache.put([keys[j] for j in missing], fresh)
            logits[missing] = fresh.float()
            cache.misses += len(missing)
            if cache.full:
                _note("the teacher logit cache is full (more sample keys than training samples); "
                      "the teacher now runs on every step")
        hits = [j for j, row in enumerate(rows) if row is not None]
        if hits:
            logits[hits] = cache.get([rows[j] for j in hits], inputs.device).float()
            cache.hits += len(hits)
        return logits

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor | None = None,
                keys: Sequence[str] | None = None) -> torch.Tensor:
        hard = self.hard(logits, targets)
        if inputs is None:
            return hard
        soft = distillation_term(logits, self.teacher_logits(inputs, keys), self.temperature)
        return self.alpha * soft + (1.0 - self.alpha) * hard

    def extra_repr(self) -> str:
        return (f"teacher={self.teacher.source!r}, temperature={self.temperature}, alpha={self.alpha}, "
                f"cache={'on' if self.cache is not None else 'off'}")


def _note(text: str) -> None:
    """Print once per run: on the main process only under DDP."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized() and dist.get_rank() != 0):
        print(f"note: {text}", flush=True)


def build_distill(
    teacher: str,
    temperature: Annotated[float, Range(0, None, lo_open=True)] = 4.0,
    alpha: Annotated[float, Range(0, 1)] = 0.5,
    label_smoothing: Annotated[float, Range(0, 1, hi_open=True)] = 0.0,
    class_weights: list[float] | str | None = None,
    cache: bool = True,
    num_classes: int = 7,
    class_counts: list[int] | None = None,
    classes: list[str] | None = None,
    recipe: dict | None = None,
) -> DistillLoss:
    """Distil ``teacher`` (a run directory, checkpoint or exported .onnx file) into the student.

    ``alpha`` weighs the soft teacher term against the hard-label cross-entropy (which takes
    ``label_smoothing`` and ``class_weights`` as the built-in cross_entropy does); ``cache``
    keeps the teacher's logits per sample when the recipe's augmentation allows it."""
    check_teacher_path(str(teacher), "loss.teacher")
    loaded = load_teacher(teacher, classes)
    if classes is None and num_classes != len(loaded.classes):
        raise RecipeError(f"loss.teacher: {teacher} predicts {len(loaded.classes)} classes, the student "
                          f"{num_classes}; distil from a teacher trained on the same classes")
    hard = CrossEntropy(label_smoothing, class_weight_tensor(class_weights, num_classes, class_counts))
    logit_cache = None
    if cache:
        augments = build_sample_augments(recipe, get_registry(), num_classes) if recipe is not None else []
        blocker = cache_blocker(recipe, augments) or (None if class_counts else "the training sample count is unknown")
        if blocker:
            _note(f"teacher logits are not cached: {blocker}; the teacher runs on every training step")
        else:
            logit_cache = LogitCache(sum(class_counts), num_classes)
    return DistillLoss(loaded, hard, temperature, alpha, logit_cache)
