"""Encoder -> Backbone -> Head assembly, freezing, and optimiser parameter groups."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from timm.optim import param_groups_weight_decay
from torch import nn

from fer_core.errors import RecipeError
from fer_core.registry import Registry

FREEZE_DEFAULT = {"encoder": True, "backbone": False, "head": False}


class FerModel(nn.Module):
    """images -> encoder -> [batch augments, training only] -> backbone -> head -> logits."""

    def __init__(self, encoder: nn.Module, backbone: nn.Module, head: nn.Module,
                 batch_augments: list[nn.Module] = (), frozen: Mapping[str, bool] | None = None):
        super().__init__()
        self.encoder, self.backbone, self.head = encoder, backbone, head
        self.batch_augments = nn.ModuleList(batch_augments)
        self.frozen = dict(frozen or {})
        for part, is_frozen in self.frozen.items():
            if is_frozen:
                getattr(self, part).requires_grad_(False)

    def train(self, mode: bool = True) -> FerModel:
        super().train(mode)
        for part, is_frozen in self.frozen.items():  # frozen parts keep eval-mode norms and dropout
            if is_frozen:
                getattr(self, part).eval()
        return self

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        if self.frozen.get("encoder"):
            with torch.no_grad():
                return self.encoder(images)
        return self.encoder(images)

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor | None = None, encoded: bool = False,
                return_inputs: bool = False) -> tuple[torch.Tensor, ...]:
        """Logits, and the targets as mixed by batch augments (in training only); with
        ``return_inputs`` also the backbone's input after the batch augments (the images, for
        image models), for losses that read the batch (``wants_batch``)."""
        x = inputs if encoded else self.encode(inputs)
        if self.training and targets is not None:
            for augment in self.batch_augments:
                x, targets = augment(x, targets)
        logits = self.head(self.backbone(x))
        return (logits, targets, x) if return_inputs else (logits, targets)

    def param_groups(self, lr: float, weight_decay: float, layer_decay: float | None = None) -> list[dict]:
        """Optimiser groups: a component's own ``param_groups`` when it has one, else decay / no-decay."""
        groups: list[dict] = []
        for part in ("encoder", "backbone", "head"):
            module = getattr(self, part)
            if not any(p.requires_grad for p in module.parameters()):
                continue
            own = getattr(module, "param_groups", None)
            if callable(own):
                kwargs = {"layer_decay": layer_decay} if layer_decay is not None else {}
                part_groups = own(lr, weight_decay, **kwargs)
            else:
                part_groups = param_groups_weight_decay(module, weight_decay)
            for group in part_groups:
                group["params"] = [p for p in group["params"] if p.requires_grad]
                group.setdefault("name", part)
                group["lr"] = group.get("lr", lr) * group.pop("lr_scale", 1.0)
                if group["params"]:
                    groups.append(group)
        return groups


def count_parameters(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def build_model(recipe: Mapping[str, Any], registry: Registry, classes: list[str],
                class_counts: list[int] | None = None) -> FerModel:
    data, spec = recipe["data"], recipe["model"]
    channels, num_classes = data["channels"], len(classes)
    encoder = registry.build("encoder", spec["encoder"], "model.encoder",
                             {"image_size": data["image_size"], "in_chans": channels})
    latent_shape = getattr(encoder, "latent_shape", None)
    backbone = registry.build("backbone", spec["backbone"], "model.backbone", {
        "latent_shape": tuple(latent_shape) if latent_shape else None,
        "image_size": getattr(encoder, "input_size", data["image_size"]),
        "in_chans": channels,
    })
    kind = getattr(backbone, "input_kind", "image")
    if kind == "latent" and latent_shape is None:
        raise RecipeError(f"model.encoder: backbone '{spec['backbone']['name']}' reads latent tokens; "
                          f"choose a latent encoder (psp, e4e, vaegan) instead of '{spec['encoder']['name']}'")
    if kind == "image" and latent_shape is not None:
        raise RecipeError(f"model.encoder: backbone '{spec['backbone']['name']}' reads images; "
                          f"use encoder 'identity' or a latent backbone such as latent_vit")
    head = registry.build("head", spec["head"], "model.head",
                          {"num_features": backbone.num_features, "num_classes": num_classes})
    batch_augments = []
    for i, aug_spec in enumerate(recipe["augment"]["batch"]):
        augment = registry.build("augment", aug_spec, f"augment.batch[{i}]", {"num_classes": num_classes})
        space = "latent" if kind == "latent" else "image"
        if getattr(augment, "stage", "batch") != "batch" or space not in getattr(augment, "spaces", (space,)):
            raise RecipeError(f"augment.batch[{i}].name: '{aug_spec['name']}' is not a batch augment for "
                              f"{space} inputs; move it or pick one that works on {space}s")
        batch_augments.append(augment)
    frozen = {part: spec[part].get("freeze", FREEZE_DEFAULT[part]) for part in FREEZE_DEFAULT}
    if not any(p.numel() for p in encoder.parameters()):
        frozen["encoder"] = True
    return FerModel(encoder, backbone, head, batch_augments, frozen)


def build_sample_augments(recipe: Mapping[str, Any], registry: Registry, num_classes: int) -> list[nn.Module]:
    augments = []
    for i, spec in enumerate(recipe["augment"]["sample"]):
        augment = registry.build("augment", spec, f"augment.sample[{i}]", {"num_classes": num_classes})
        if getattr(augment, "stage", "sample") != "sample":
            raise RecipeError(f"augment.sample[{i}].name: '{spec['name']}' is a batch augment; "
                              f"list it under augment.batch")
        augments.append(augment)
    return augments
