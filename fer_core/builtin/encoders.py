"""The identity encoder: images go straight to an image backbone."""

from __future__ import annotations

from typing import Annotated

import torch
from torch import nn

from fer_core.constraints import Range


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


class PatchEncoder(nn.Module):
    """Non-overlapping image patches as tokens: [B,C,H,W] -> [B, (S/p)^2, C*p*p].

    Parameter-free and deterministic, so it is cacheable; it turns a latent
    backbone into a plain ViT over pixels and needs no download.
    """

    trainable = False
    cacheable = True

    def __init__(self, image_size: int, patch_size: int, in_chans: int):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"patch_size {patch_size} must divide the image size {image_size}")
        self.input_size, self.patch_size = image_size, patch_size
        self.latent_shape = ((image_size // patch_size) ** 2, in_chans * patch_size * patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.input_size or images.shape[-2] != self.input_size:
            images = nn.functional.interpolate(images, size=(self.input_size,) * 2, mode="bilinear",
                                               antialias=True, align_corners=False)
        patches = nn.functional.unfold(images, self.patch_size, stride=self.patch_size)
        return patches.transpose(1, 2)


def build_patches(patch_size: Annotated[int, Range(1, 1024)] = 8, image_size: int = 48, in_chans: int = 3) -> PatchEncoder:
    from fer_core.errors import RecipeError

    if patch_size < 1 or image_size % patch_size:
        raise RecipeError(f"model.encoder.patch_size: {patch_size} must divide data.image_size {image_size}")
    return PatchEncoder(image_size, patch_size, in_chans)
