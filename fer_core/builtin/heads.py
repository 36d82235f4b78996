"""Classification heads: features [B,F] -> logits [B,C]."""

from __future__ import annotations

from typing import Annotated

import torch
from timm.layers import Mlp
from torch import nn

from fer_core.constraints import Range


class LinearHead(nn.Module):
    def __init__(self, num_features: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.num_classes = num_classes
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(num_features, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(features))


class MlpHead(nn.Module):
    def __init__(self, num_features: int, num_classes: int, hidden: int, dropout: float):
        super().__init__()
        self.num_classes = num_classes
        self.mlp = Mlp(num_features, hidden, num_classes, act_layer=nn.GELU, drop=(dropout, 0.0))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(features)


def build_linear(num_features: int, num_classes: int, dropout: Annotated[float, Range(0, 1, hi_open=True)] = 0.0) -> LinearHead:
    return LinearHead(num_features, num_classes, dropout)


def build_mlp(num_features: int, num_classes: int, hidden: Annotated[int, Range(1, 65536)] = 512,
              dropout: Annotated[float, Range(0, 1, hi_open=True)] = 0.1) -> MlpHead:
    return MlpHead(num_features, num_classes, hidden, dropout)
