"""A timm CNN's feature map as latent tokens: images [B,C,H,W] -> [B, h*w, channels].

One token per feature-map position (TransFER-style local CNN features). Without
`pretrained` the CNN starts from random weights and is meant to train with the
backbone (`freeze: false`); with `pretrained: true` (timm download) or a local
`checkpoint` it can stay frozen, and its latents can then be cached.
"""

from __future__ import annotations

import timm
import torch
from torch import nn

from fer_core.builtin.timm_backbone import ImageNormalize, check_timm_name
from fer_core.errors import FerError, RecipeError


class TimmTokens(nn.Module):
    trainable = True
    cacheable = True  # deterministic in eval mode; cached only when frozen with fixed weights

    def __init__(self, net: nn.Module, image_size: int, in_chans: int, normalize: bool):
        super().__init__()
        self.net = net
        self.input_size = image_size
        self.normalize = ImageNormalize(net) if normalize else nn.Identity()
        with torch.no_grad():  # the token count and width at this image size
            probe = net.eval()(torch.zeros(1, in_chans, image_size, image_size))[-1]
        self.latent_shape = (probe.shape[2] * probe.shape[3], probe.shape[1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.net(self.normalize(images))[-1]
        return features.flatten(2).transpose(1, 2)


def build_timm_tokens(model: str = "resnet10t", stage: int = 2, pretrained: bool = False,
                      checkpoint: str | None = None, normalize: bool = True,
                      image_size: int = 224, in_chans: int = 3) -> TimmTokens:
    """``stage`` picks the feature map (timm ``out_indices``; for resnets 2 is stride 8)."""
    check_timm_name(model, "model.encoder.model")
    kwargs: dict = {"features_only": True, "out_indices": (stage,), "in_chans": in_chans}
    if checkpoint:
        kwargs["pretrained_cfg_overlay"] = {"file": checkpoint}
    try:
        net = timm.create_model(model, pretrained=pretrained or bool(checkpoint), **kwargs)
    except (IndexError, AssertionError) as exc:
        raise RecipeError(f"model.encoder.stage: {model} has no feature stage {stage} ({exc})") from exc
    except (OSError, RuntimeError) as exc:
        raise FerError(f"cannot load weights for timm model {model!r}: {exc}") from exc
    return TimmTokens(net, image_size, in_chans, normalize)
