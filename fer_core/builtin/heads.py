"""Heads: features [B, F] -> logits [B, C], valence/arousal [B, 2], or both (see fer_core.outputs)."""

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


class VaHead(nn.Module):
    """features [B, F] -> (valence, arousal) [B, 2] in (-1, 1): a linear layer and tanh."""

    outputs = {"va": 2}

    def __init__(self, num_features: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.num_classes = num_classes  # the data's classes; this head predicts none of them
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(num_features, 2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(self.drop(features)))


class MultitaskHead(nn.Module):
    """features [B, F] -> [B, C + 2]: C expression logits, then tanh-bounded valence and arousal.

    Two linear layers on shared features; with ``hidden`` > 0, each task first gets its own
    hidden layer (GELU), so the two can use the features differently.
    """

    def __init__(self, num_features: int, num_classes: int, hidden: int = 0, dropout: float = 0.0):
        super().__init__()
        self.num_classes = num_classes
        self.outputs = {"logits": num_classes, "va": 2}
        self.drop = nn.Dropout(dropout)

        def branch(width: int) -> nn.Module:
            if not hidden:
                return nn.Linear(num_features, width)
            return Mlp(num_features, hidden, width, act_layer=nn.GELU)

        self.expression, self.affect = branch(num_classes), branch(2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = self.drop(features)
        return torch.cat([self.expression(features), torch.tanh(self.affect(features))], dim=1)


def build_va(num_features: int, num_classes: int,
             dropout: Annotated[float, Range(0, 1, hi_open=True)] = 0.0) -> VaHead:
    return VaHead(num_features, num_classes, dropout)


def build_multitask(num_features: int, num_classes: int, hidden: Annotated[int, Range(0, 65536)] = 0,
                    dropout: Annotated[float, Range(0, 1, hi_open=True)] = 0.0) -> MultitaskHead:
    return MultitaskHead(num_features, num_classes, hidden, dropout)
