"""Valence/arousal losses: predictions [B, 2] against targets [B, 2], both in [-1, 1].

They declare ``target = "va"``: the affect tasks give them the ``va`` slice of the model's output
and the batch's valence/arousal (``fer_core.outputs``), not logits and class ids.
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch import nn

from fer_core.constraints import Range


def concordance(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Lin's concordance correlation per column of [N, D] (population moments): [D]."""
    pred, target = pred.double(), target.double()
    pm, tm = pred.mean(0), target.mean(0)
    cov = ((pred - pm) * (target - tm)).mean(0)
    return 2 * cov / (pred.var(0, unbiased=False) + target.var(0, unbiased=False) + (pm - tm) ** 2 + eps)


class CCCLoss(nn.Module):
    """1 - CCC, averaged over valence and arousal (a batch statistic: use batches of 16 or more)."""

    target = "va"

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (1 - concordance(pred, target)).mean().float()


class MSELoss(nn.Module):
    target = "va"

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(pred.float(), target.float())


class CCCMSELoss(nn.Module):
    """(1 - CCC) + mse_weight * MSE: CCC for agreement in spread and mean, MSE for per-sample error."""

    target = "va"

    def __init__(self, mse_weight: float):
        super().__init__()
        self.ccc, self.mse, self.mse_weight = CCCLoss(), MSELoss(), mse_weight

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.ccc(pred, target) + self.mse_weight * self.mse(pred, target)


def build_ccc() -> CCCLoss:
    return CCCLoss()


def build_mse() -> MSELoss:
    return MSELoss()


def build_ccc_mse(mse_weight: Annotated[float, Range(0, 1000)] = 1.0) -> CCCMSELoss:
    return CCCMSELoss(mse_weight)
