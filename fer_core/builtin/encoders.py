"""The identity encoder: images go straight to an image backbone."""

from __future__ import annotations

import torch
from torch import nn


class IdentityEncoder(nn.Module):
    latent_shape = None
    trainable = False
    cacheable = False

    def __init__(self, image_size: int):
        super().__init__()
        self.input_size = image_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images


def build_identity(image_size: int = 224) -> IdentityEncoder:
    return IdentityEncoder(image_size)
