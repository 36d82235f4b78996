"""Valence/arousal metrics (torchmetrics, plus SAGR) and the evaluation of affect models.

Per dimension: CCC (Lin's concordance correlation), PCC (Pearson), RMSE and SAGR (sign
agreement: the share of samples whose predicted and true values have the same sign). With
the expression logits of a multi-task model, the classification metrics come alongside.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.regression import ConcordanceCorrCoef, MeanSquaredError, PearsonCorrCoef

from fer_core.evaluate import classification_result, metric_collection
from fer_core.outputs import AFFECT_METRICS, VA_NAMES, has_logits, split


class SignAgreement(Metric):
    """SAGR per output column: mean of [sign(prediction) == sign(target)]."""

    full_state_update = False

    def __init__(self, num_outputs: int = 2, **kwargs: Any):
        super().__init__(**kwargs)
        self.add_state("agree", torch.zeros(num_outputs, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self.agree += (torch.sign(pred) == torch.sign(target)).double().sum(0)
        self.total += len(pred)

    def compute(self) -> torch.Tensor:
        return self.agree / self.total.clamp_min(1)


def affect_collection() -> MetricCollection:
    return MetricCollection({
        "ccc": ConcordanceCorrCoef(num_outputs=2),
        "pcc": PearsonCorrCoef(num_outputs=2),
        "rmse": MeanSquaredError(squared=False, num_outputs=2),
        "sagr": SignAgreement(2),
    })


def affect_result(computed: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Flat floats (valence_ccc, ..., ccc_mean, rmse_mean) and the nested ``affect`` block."""
    nested = {dim: {m: float(computed[m][i]) for m in AFFECT_METRICS} for i, dim in enumerate(VA_NAMES)}
    out: dict[str, Any] = {f"{dim}_{m}": v for dim, values in nested.items() for m, v in values.items()}
    out["ccc_mean"] = sum(nested[d]["ccc"] for d in VA_NAMES) / len(VA_NAMES)
    out["rmse_mean"] = sum(nested[d]["rmse"] for d in VA_NAMES) / len(VA_NAMES)
    out["affect"] = nested
    return out


def forward_parts(model: torch.nn.Module, inputs: torch.Tensor, slices: Mapping[str, int], *,
                  encoded: bool = False, tta: str | None = None) -> dict[str, torch.Tensor]:
    """The model's output split into its named slices, float; with flip TTA, logits are averaged as
    probabilities and valence/arousal as values (a mirrored face has the same affect)."""
    output, _ = model(inputs, encoded=encoded)
    parts = {k: v.float() for k, v in split(output, slices).items()}
    if tta == "flip" and not encoded:
        mirrored, _ = model(torch.flip(inputs, dims=[3]))
        other = {k: v.float() for k, v in split(mirrored, slices).items()}
        if "logits" in parts:
            parts["logits"] = (parts["logits"].softmax(1) + other["logits"].softmax(1)).div(2).log()
        if "va" in parts:
            parts["va"] = (parts["va"] + other["va"]) / 2
    return parts


@torch.no_grad()
def evaluate_affect(model: torch.nn.Module, batches: Iterable, slices: Mapping[str, int], num_classes: int,
                    device: torch.device, *, encoded: bool = False, tta: str | None = None,
                    amp_dtype: torch.dtype | None = None, loss_fn: torch.nn.Module | None = None,
                    points: bool = False) -> dict[str, Any]:
    """Metrics of an affect model over batches of (inputs, {"label", "va"}, keys), synced across ranks.

    ``loss_fn(parts, targets)`` returns (total, per-part losses), as the affect tasks' loss does.
    With ``points``, ``va_points`` holds every (predicted, true) valence/arousal pair.
    """
    was_training = model.training
    model.eval()
    classify = metric_collection(num_classes).to(device) if has_logits(slices) else None
    affect = affect_collection().to(device)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    count = torch.zeros((), device=device, dtype=torch.float64)
    predicted, true = [], []
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    for inputs, targets, _ in batches:
        inputs = inputs.to(device, non_blocking=True)
        targets = {k: v.to(device, non_blocking=True) for k, v in targets.items()}
        with autocast:
            parts = forward_parts(model, inputs, slices, encoded=encoded, tta=tta)
        va = targets["va"].float()
        if loss_fn is not None:
            loss_sum += loss_fn(parts, targets)[0].double() * len(va)
        count += len(va)
        if classify is not None:
            label = targets["label"]
            classify.update(parts["logits"], label.argmax(1) if label.is_floating_point() else label)
        affect.update(parts["va"], va)
        if points:
            predicted.append(parts["va"].cpu())
            true.append(va.cpu())
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(loss_sum)
        torch.distributed.all_reduce(count)
    model.train(was_training)
    out = classification_result(classify.compute()) if classify is not None else {}
    out.update(affect_result(affect.compute()))
    if loss_fn is not None:
        out["loss"] = (loss_sum / count.clamp_min(1)).item()
    out["samples"] = int(count.item())
    if points:
        out["va_points"] = {"pred": torch.cat(predicted).tolist() if predicted else [],
                            "true": torch.cat(true).tolist() if true else []}
    return out
