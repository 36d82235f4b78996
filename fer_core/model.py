"""Encoder -> Backbone -> Head assembly, freezing, and optimiser parameter groups."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from fer_core.contracts import declared
from fer_core.errors import CheckpointError, RecipeError
from fer_core.optim import apply_lr_mult, timm_param_groups
from fer_core.registry import Registry

PARTS = ("encoder", "backbone", "head")
FREEZE_DEFAULT = {"encoder": True, "backbone": False, "head": False}


class FerModel(nn.Module):
    """images -> encoder -> [batch augments, training only] -> backbone -> head -> logits."""

    def __init__(self, encoder: nn.Module, backbone: nn.Module, head: nn.Module,
                 batch_augments: list[nn.Module] = (), frozen: Mapping[str, bool] | None = None,
                 lr_mults: Mapping[str, float] | None = None):
        super().__init__()
        self.encoder, self.backbone, self.head = encoder, backbone, head
        self.batch_augments = nn.ModuleList(batch_augments)
        self.frozen = dict(frozen or {})
        self.lr_mults = dict(lr_mults or {})  # model.<part>.lr_mult
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
        """The ``param_groups`` contract (``fer_core.optim``) for the whole model: each trainable part's own
        groups when it offers ``param_groups``, else timm's decay / no-decay groups; times its ``lr_mult``."""
        groups: list[dict] = []
        for part in PARTS:
            module = getattr(self, part)
            if not any(p.requires_grad for p in module.parameters()):
                continue
            if hasattr(module, "param_groups"):
                part_groups = module.param_groups(lr, weight_decay, layer_decay)
            else:
                part_groups = timm_param_groups(module, lr, weight_decay)
            groups += apply_lr_mult(part_groups, part, self.lr_mults.get(part, 1.0))
        return groups


def count_parameters(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def installed(registry: Registry, kind: str, exclude: str = "") -> str:
    """'identity (fer-core), patches (fer-core), ...': the installed components of a kind, with their
    distributions, for messages that name a requirement rather than a plugin."""
    names = [n for n in registry.names(kind) if n != exclude]
    return ", ".join(f"{n} ({registry.get(kind, n).plugin})" for n in names) or "none"


def build_component(registry: Registry, kind: str, spec: Mapping[str, Any], where: str,
                    context: Mapping[str, Any]) -> tuple[Any, Any]:
    """(module, attribute reader): the reader returns a declared attribute or names the component's plugin."""
    module = registry.build(kind, spec, where, context)
    plugin = registry.get(kind, spec["name"]).plugin
    return module, lambda attribute: declared(module, kind, attribute, where, spec["name"], plugin)


def build_encoder(recipe: Mapping[str, Any], registry: Registry) -> tuple[nn.Module, Any]:
    data = recipe["data"]
    return build_component(registry, "encoder", recipe["model"]["encoder"], "model.encoder",
                           {"image_size": data["image_size"], "in_chans": data["channels"]})


def build_model(recipe: Mapping[str, Any], registry: Registry, classes: list[str],
                class_counts: list[int] | None = None) -> FerModel:
    data, spec = recipe["data"], recipe["model"]
    channels, num_classes = data["channels"], len(classes)
    encoder, encoder_attr = build_encoder(recipe, registry)
    latent_shape = encoder_attr("latent_shape")
    backbone, backbone_attr = build_component(registry, "backbone", spec["backbone"], "model.backbone", {
        "latent_shape": tuple(latent_shape) if latent_shape else None,
        "image_size": encoder_attr("input_size"),
        "in_chans": channels,
    })
    kind = backbone_attr("input_kind")
    if kind == "latent" and latent_shape is None:
        raise RecipeError(f"model.encoder: backbone '{spec['backbone']['name']}' reads latent tokens; it needs an "
                          f"encoder with a latent_shape, not '{spec['encoder']['name']}'; installed encoders: "
                          f"{installed(registry, 'encoder', spec['encoder']['name'])}")
    if kind == "image" and latent_shape is not None:
        raise RecipeError(f"model.encoder: backbone '{spec['backbone']['name']}' reads images; it needs an encoder "
                          f"whose latent_shape is None, or a backbone with input_kind 'latent'; installed "
                          f"backbones: {installed(registry, 'backbone', spec['backbone']['name'])}")
    head, _ = build_component(registry, "head", spec["head"], "model.head",
                              {"num_features": backbone_attr("num_features"), "num_classes": num_classes})
    batch_augments = [build_augment(registry, aug_spec, f"augment.batch[{i}]", num_classes, "batch", kind)
                      for i, aug_spec in enumerate(recipe["augment"]["batch"])]
    frozen = {part: spec[part].get("freeze", FREEZE_DEFAULT[part]) for part in FREEZE_DEFAULT}
    if not any(p.numel() for p in encoder.parameters()):
        frozen["encoder"] = True
    return FerModel(encoder, backbone, head, batch_augments, frozen, lr_mults(spec))


def lr_mults(spec: Mapping[str, Any]) -> dict[str, float]:
    """``model.<part>.lr_mult`` of every part (1 when left out): the part trains at ``optim.lr * lr_mult``."""
    out = {}
    for part, component in spec.items():
        mult = component.get("lr_mult", 1.0)
        if isinstance(mult, bool) or not isinstance(mult, (int, float)) or mult < 0:
            raise RecipeError(f"model.{part}.lr_mult: expected a number >= 0, got {mult!r}")
        out[part] = float(mult)
    return out


def build_augment(registry: Registry, spec: Mapping[str, Any], where: str, num_classes: int, stage: str,
                  input_kind: str = "image") -> nn.Module:
    augment, attr = build_component(registry, "augment", spec, where, {"num_classes": num_classes})
    if attr("stage") != stage:
        other = "augment.batch" if stage == "sample" else "augment.sample"
        raise RecipeError(f"{where}.name: '{spec['name']}' is a {attr('stage')} augment; list it under {other}")
    if stage == "batch" and input_kind not in attr("spaces"):
        raise RecipeError(f"{where}.name: '{spec['name']}' is not a batch augment for {input_kind} inputs; "
                          f"move it or pick one that works on {input_kind}s")
    return augment


def build_sample_augments(recipe: Mapping[str, Any], registry: Registry, num_classes: int) -> list[nn.Module]:
    return [build_augment(registry, spec, f"augment.sample[{i}]", num_classes, "sample")
            for i, spec in enumerate(recipe["augment"]["sample"])]


# -- the model's weights in a checkpoint ---------------------------------------------------------
def _encoder_weights_external(recipe: Mapping[str, Any], model: FerModel) -> bool:
    """Frozen encoders loaded from their own file are rebuilt from it, not stored again."""
    return bool(model.frozen.get("encoder") and recipe["model"]["encoder"].get("checkpoint"))


def model_state(recipe: Mapping[str, Any], model: FerModel) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    if _encoder_weights_external(recipe, model):
        state = {k: v for k, v in state.items() if not k.startswith("encoder.")}
    return state


def load_model_state(recipe: Mapping[str, Any], model: FerModel, state: Mapping[str, torch.Tensor]) -> None:
    strict = not _encoder_weights_external(recipe, model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if strict or not k.startswith("encoder.")]
    if missing or unexpected:
        raise CheckpointError(f"checkpoint does not fit the recipe's model: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}")
