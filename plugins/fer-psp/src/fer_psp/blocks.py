"""Building blocks of the pSp and e4e encoders.

* IR-SE bottleneck: the improved residual unit with squeeze-and-excitation of
  ArcFace / InsightFace (Deng et al. 2019, "ArcFace: Additive Angular Margin Loss
  for Deep Face Recognition"), stacked 3-4-14-3 into the IR-SE-50 body.
* EqualLinear: the equalized-learning-rate linear layer of StyleGAN (Karras et al.
  2018/2020); its weight is stored unscaled and scaled by 1/sqrt(in_dim) on use.
* GradualStyleBlock: the map-to-style head of pSp (Richardson et al. 2021,
  "Encoding in Style: a StyleGAN Encoder for Image-to-Image Translation"), a stack
  of stride-2 convs that pools a feature map to 1x1, then an EqualLinear.

Attribute names (``res_layer``, ``shortcut_layer``, ``convs``, ``linear``, ...)
and their order follow the official checkpoints, so the state dicts load as is.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import SEModule
from torch import nn

# (channels, units) of the four IR-SE-50 stages; each stage starts with stride 2.
IR_SE_50_STAGES: tuple[tuple[int, int], ...] = ((64, 3), (128, 4), (256, 14), (512, 3))


class BottleneckIRSE(nn.Module):
    """IR-SE unit: ``res_layer(x) + shortcut_layer(x)``.

    res_layer = BN(in), Conv3x3(in->d), PReLU(d), Conv3x3(d->d, stride), BN(d), SE(d/16).
    The shortcut is a parameter-free MaxPool2d(1, stride) (a strided pick) when the
    width does not change, else Conv1x1(stride) + BN.
    """

    def __init__(self, in_chs: int, depth: int, stride: int) -> None:
        super().__init__()
        if in_chs == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_chs, depth, 1, stride, bias=False),
                nn.BatchNorm2d(depth),
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_chs),
            nn.Conv2d(in_chs, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
            SEModule(depth, rd_channels=depth // 16, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


def ir_se_stem(in_chans: int = 3, width: int = 64) -> nn.Sequential:
    """The ``input_layer``: Conv3x3 (no bias), BN, PReLU at full resolution."""
    return nn.Sequential(
        nn.Conv2d(in_chans, width, 3, 1, 1, bias=False),
        nn.BatchNorm2d(width),
        nn.PReLU(width),
    )


def ir_se_body(stages: tuple[tuple[int, int], ...] = IR_SE_50_STAGES, in_chs: int = 64) -> nn.Sequential:
    """The ``body``: a flat Sequential of IR-SE units (24 for IR-SE-50)."""
    units = []
    for depth, num_units in stages:
        for i in range(num_units):
            units.append(BottleneckIRSE(in_chs, depth, stride=2 if i == 0 else 1))
            in_chs = depth
    return nn.Sequential(*units)


class EqualLinear(nn.Module):
    """Linear layer with equalized learning rate: ``x @ (w * lr_mul / sqrt(in)).T + b * lr_mul``."""

    def __init__(self, in_dim: int, out_dim: int, lr_mul: float = 1.0, bias_init: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.lr_mul = lr_mul
        self.scale = lr_mul / math.sqrt(in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}, lr_mul={self.lr_mul}"


class GradualStyleBlock(nn.Module):
    """Map a [B, C, S, S] feature map to one style vector [B, out_chs].

    log2(S) convs (3x3, stride 2, with bias) each followed by LeakyReLU(0.01)
    bring the map to 1x1; an EqualLinear follows. Conv modules sit at the even
    indices of ``convs`` (the activations hold no parameters).
    """

    def __init__(self, in_chs: int, out_chs: int, spatial: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(int(math.log2(spatial))):
            layers += [nn.Conv2d(in_chs if i == 0 else out_chs, out_chs, 3, 2, 1), nn.LeakyReLU(0.01)]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(out_chs, out_chs, lr_mul=1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.convs(x).flatten(1))


def upsample_add(top: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
    """FPN merge: bilinear upsampling (align_corners=True) of ``top`` to ``lateral``'s size, plus ``lateral``."""
    return F.interpolate(top, size=lateral.shape[-2:], mode="bilinear", align_corners=True) + lateral
