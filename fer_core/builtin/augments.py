"""Sample-stage image augments: torchvision v2 transforms on one image [C,H,W] in [0,1]."""

from __future__ import annotations

from typing import Annotated

import numpy as np
import torch
from torch import nn
from torchvision.transforms import v2

from fer_core.constraints import OneOf, Range


class SampleAugment(nn.Module):
    """Wraps a torchvision v2 transform as a sample-stage augment (picklable for workers)."""

    stage = "sample"
    spaces = ("image",)

    def __init__(self, transform: nn.Module, deterministic: bool = False):
        super().__init__()
        self.transform = transform
        self.deterministic = deterministic  # the same image in gives the same image out (no randomness)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.transform(image)


def _uint8_policy(transform: nn.Module) -> nn.Module:
    # AutoAugment-family ops quantise colours; run them on uint8 and return floats in [0,1].
    return v2.Compose([v2.ToDtype(torch.uint8, scale=True), transform, v2.ToDtype(torch.float32, scale=True)])


def resize(size: Annotated[int, Range(1, 4096)] = 224) -> SampleAugment:
    return SampleAugment(v2.Resize((size, size), antialias=True), deterministic=True)


def random_resized_crop(size: Annotated[int, Range(1, 4096)] = 224, scale: list[float] = (0.8, 1.0), ratio: list[float] = (0.9, 1.1)) -> SampleAugment:
    return SampleAugment(v2.RandomResizedCrop(size, scale=tuple(scale), ratio=tuple(ratio), antialias=True))


class HorizontalFlip(SampleAugment):
    """torchvision's random horizontal flip, and the same flip on uint8 pixels (``on_pixels``)."""

    def __init__(self, p: float):
        super().__init__(v2.RandomHorizontalFlip(p))
        self.p = p

    def on_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 [H, W, C] -> flipped with probability ``p``: the transform's draw (``torch.rand(1) < p``), so
        the loader gets the same images while it batches uint8 pixels (a view; the input is not modified)."""
        if torch.rand(1) >= self.p:
            return pixels
        return pixels[:, ::-1]


def hflip(p: Annotated[float, Range(0, 1)] = 0.5) -> SampleAugment:
    return HorizontalFlip(p)


def rotation(degrees: Annotated[float, Range(0, 180)] = 10.0) -> SampleAugment:
    return SampleAugment(v2.RandomRotation(degrees))


def color_jitter(brightness: Annotated[float, Range(0, 10)] = 0.2, contrast: Annotated[float, Range(0, 10)] = 0.2,
                 saturation: Annotated[float, Range(0, 10)] = 0.2, hue: Annotated[float, Range(0, 0.5)] = 0.0) -> SampleAugment:
    return SampleAugment(v2.ColorJitter(brightness, contrast, saturation, hue))


def random_erasing(p: Annotated[float, Range(0, 1)] = 0.25, scale: list[float] = (0.02, 0.2)) -> SampleAugment:
    return SampleAugment(v2.RandomErasing(p, scale=tuple(scale)))


def randaugment(num_ops: Annotated[int, Range(0, 20)] = 2, magnitude: Annotated[int, Range(0, 30)] = 9) -> SampleAugment:
    return SampleAugment(_uint8_policy(v2.RandAugment(num_ops, magnitude)))


def autoaugment(policy: Annotated[str, OneOf("imagenet", "cifar10", "svhn")] = "imagenet") -> SampleAugment:
    return SampleAugment(_uint8_policy(v2.AutoAugment(v2.AutoAugmentPolicy(policy.lower()))))


def grayscale(p: Annotated[float, Range(0, 1)] = 0.1) -> SampleAugment:
    return SampleAugment(v2.RandomGrayscale(p))
