"""Any timm image model as a backbone: images [B,C,H,W] in [0,1] -> pooled features [B,F]."""

from __future__ import annotations

from typing import Annotated

import difflib

import timm
import torch
from torch import nn

from fer_core.errors import FerError, RecipeError
from fer_core.constraints import Range
from fer_core.lora import add_lora, lora_settings


class ImageNormalize(nn.Module):
    """[0,1] images -> the mean/std normalisation a timm model was trained with (0.5/0.5 if unknown)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        cfg = getattr(model, "pretrained_cfg", None) or {}
        mean, std = cfg.get("mean", (0.5, 0.5, 0.5)), cfg.get("std", (0.5, 0.5, 0.5))
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        channels = images.shape[1]
        return (images - self.mean[:, :channels]) / self.std[:, :channels]


class TimmBackbone(nn.Module):
    input_kind = "image"

    def __init__(self, model: nn.Module, normalize: bool):
        super().__init__()
        self.model = model
        # the width of forward's output: models with a pre-logits conv head (MobileNetV3) widen it
        self.num_features = getattr(model, "head_hidden_size", None) or model.num_features
        self.normalize = ImageNormalize(model) if normalize else nn.Identity()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(images))


def check_timm_name(model: str, where: str) -> None:
    """A RecipeError naming similar models when timm has no ``model``."""
    if not timm.is_model(model):
        close = difflib.get_close_matches(model, timm.list_models(), n=5, cutoff=0.7)
        close = close or timm.list_models(f"*{model.split('_')[0]}*")[:5]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise RecipeError(f"{where}: timm has no model {model!r}{hint}")


def build_timm(
    model: str = "resnet18",
    pretrained: bool = False,
    pretrained_file: str | None = None,
    drop_rate: Annotated[float, Range(0, 1, hi_open=True)] = 0.0,
    drop_path_rate: Annotated[float | None, Range(0, 1, hi_open=True)] = None,
    grad_checkpointing: bool = False,
    img_size: Annotated[int | None, Range(8, 4096)] = None,
    normalize: bool = True,
    lora: dict | None = None,
    image_size: int = 224,
    in_chans: int = 3,
) -> TimmBackbone:
    """Build ``timm.create_model(model, num_classes=0)``; ``pretrained_file`` loads local weights.

    ``lora`` (see ``fer_core.lora``) fine-tunes with LoRA: the timm model is frozen but for its
    low-rank updates, so only they and the head train.
    """
    check_timm_name(model, "model.backbone.model")
    settings = lora_settings(lora, "model.backbone.lora")
    kwargs: dict = {"num_classes": 0, "in_chans": in_chans, "drop_rate": drop_rate}
    if drop_path_rate is not None:
        kwargs["drop_path_rate"] = drop_path_rate
    if pretrained_file:
        kwargs["pretrained_cfg_overlay"] = {"file": pretrained_file}
    size = img_size or image_size
    try:
        net = timm.create_model(model, pretrained=pretrained or bool(pretrained_file), img_size=size, **kwargs)
    except TypeError:  # convnets take any input size and no img_size argument
        net = timm.create_model(model, pretrained=pretrained or bool(pretrained_file), **kwargs)
    except (OSError, RuntimeError) as exc:
        raise FerError(f"cannot load weights for timm model {model!r}: {exc}") from exc
    if grad_checkpointing:
        net.set_grad_checkpointing(True)
    if settings is not None:
        add_lora(net, settings, "model.backbone.lora")
    return TimmBackbone(net, normalize)
