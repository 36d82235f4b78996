"""Optimiser parameter groups, optimisers and schedules: the ``param_groups`` contract, stated once.

The contract of a component's optional method::

    param_groups(lr: float, weight_decay: float, layer_decay: float | None = None) -> list[dict]

Each group is ``{"name": str, "params": [...], "lr": float, "weight_decay": float}`` with its
*final* learning rate (never timm's ``lr_scale``), and holds only trainable parameters, each
exactly once. Components build their groups with :func:`timm_param_groups` (timm's
``param_groups_weight_decay`` / ``param_groups_layer_decay``); a component without the method gets
the same helper's decay / no-decay groups. On top, the recipe's ``model.<part>.lr_mult`` multiplies
the learning rate of every group of that part (:func:`apply_lr_mult`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from timm.models import group_parameters
from timm.optim import param_groups_layer_decay, param_groups_weight_decay
from timm.scheduler import create_scheduler_v2
from torch import nn

from fer_core.errors import FerError

# (group name prefix, lr multiplier) for a parameter whose lr the component sets itself, or None
OwnLr = Callable[[str], "tuple[str, float] | None"]


def timm_param_groups(module: nn.Module, lr: float, weight_decay: float, layer_decay: float | None = None,
                      own_lr: OwnLr | None = None, order: Sequence[str] = ()) -> list[dict]:
    """Groups of ``module``'s trainable parameters built with timm's helpers, each with its final ``lr``.

    No weight decay on 1-d parameters, biases and ``module.no_weight_decay()``. With ``layer_decay``,
    timm's layer decay (layer ids from ``module.group_matcher()``) scales the lr: groups
    ``layer_<id>_decay`` / ``layer_<id>_no_decay``; otherwise ``decay`` / ``no_decay``. ``own_lr(name)``
    takes a parameter out of that scheme: it trains at ``lr * multiplier`` in group ``<prefix>_decay`` /
    ``<prefix>_no_decay``. Groups come top layer first, then own groups in ``order``.
    """
    no_decay = sorted(module.no_weight_decay()) if hasattr(module, "no_weight_decay") else []
    if layer_decay is None:
        timm_groups = param_groups_weight_decay(module, weight_decay, no_weight_decay_list=no_decay)
    else:
        timm_groups = param_groups_layer_decay(module, weight_decay=weight_decay, no_weight_decay_list=no_decay,
                                               layer_decay=layer_decay)
    layer_of = (group_parameters(module, module.group_matcher(coarse=False), reverse=True)
                if layer_decay is not None and hasattr(module, "group_matcher") else {})
    names = {id(p): n for n, p in module.named_parameters()}
    groups: dict[str, dict] = {}
    rank: dict[str, tuple] = {}
    for timm_group in timm_groups:
        scale = timm_group.get("lr_scale", 1.0)  # timm's lr_scale becomes a final lr here, and only here
        suffix = "decay" if timm_group["weight_decay"] else "no_decay"
        for param in timm_group["params"]:
            name = names[id(param)]
            own = own_lr(name) if own_lr else None
            if own is not None:
                prefix, mult = own
                key, group_lr = f"{prefix}_{suffix}", lr * mult
                rank[key] = (1, list(order).index(prefix) if prefix in order else len(order), key)
            elif layer_decay is not None:
                layer = layer_of.get(name, max(layer_of.values(), default=0))
                key, group_lr = f"layer_{layer}_{suffix}", lr * scale
                rank[key] = (0, -layer, key)
            else:
                key, group_lr = suffix, lr
                rank[key] = (0, 0, key)
            group = groups.setdefault(key, {"name": key, "params": [], "lr": group_lr,
                                            "weight_decay": timm_group["weight_decay"]})
            group["params"].append(param)
    return sorted((g for g in groups.values() if g["params"]), key=lambda g: rank[g["name"]])


def apply_lr_mult(groups: Iterable[dict], part: str, lr_mult: float) -> list[dict]:
    """A part's groups with ``model.<part>.lr_mult`` applied and the part's name in front of each group name."""
    out = []
    for group in groups:
        group = {**group, "params": [p for p in group["params"] if p.requires_grad]}
        if "lr_scale" in group:
            raise FerError(f"model.{part}: param_groups returned a group with lr_scale; the contract "
                           f"(fer_core.optim) wants the final lr in 'lr'")
        group["lr"] = group["lr"] * lr_mult
        group["name"] = f"{part}.{group.get('name', 'params')}"
        if group["params"]:
            out.append(group)
    return out


def make_optimizer(groups: list[dict], optim: dict) -> torch.optim.Optimizer:
    """The recipe's optimiser over ``groups``; fused kernels where :func:`use_fused` says so."""
    if not groups:
        raise FerError("nothing to train: every component is frozen; unfreeze the backbone or head")
    fused = {"fused": True} if use_fused(groups, optim.get("fused")) else {}
    if optim["name"] == "sgd":
        return torch.optim.SGD(groups, lr=optim["lr"], momentum=optim["momentum"], nesterov=optim["nesterov"],
                               **fused)
    cls = torch.optim.AdamW if optim["name"] == "adamw" else torch.optim.Adam
    return cls(groups, lr=optim["lr"], betas=tuple(optim["betas"]), **fused)


FUSED_DEVICES = ("cpu", "cuda")


def use_fused(groups: list[dict], wanted: bool | None = None) -> bool:
    """Whether the optimiser runs PyTorch's fused kernels: one pass over each parameter instead of a
    loop of per-tensor operations (AdamW's step on resnet10t: about 6 instead of 40 ms on one CPU core;
    on CUDA it also lets a GradScaler skip its host sync). ``wanted`` None (``optim.fused: null``)
    means: when every trainable parameter is a floating-point tensor on one CPU or CUDA device."""
    if wanted is not None:
        return wanted
    params = [p for group in groups for p in group["params"]]
    devices = {p.device.type for p in params}
    return len(devices) == 1 and devices <= set(FUSED_DEVICES) and all(p.is_floating_point() for p in params)


def make_scheduler(optimizer, schedule: dict, epochs: int, updates_per_epoch: int, metric_mode: str):
    """timm's scheduler for the recipe's ``schedule`` (None for ``name: none``)."""
    if schedule["name"] == "none":
        return None
    kind = schedule["name"]
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=kind, num_epochs=epochs, decay_epochs=schedule["step_size"],
        decay_rate=schedule["factor"] if kind == "plateau" else schedule["gamma"],
        patience_epochs=schedule["patience"], min_lr=schedule["min_lr"], warmup_lr=schedule["warmup_lr"],
        warmup_epochs=schedule["warmup_epochs"], plateau_mode=metric_mode,
        step_on_epochs=kind == "plateau", updates_per_epoch=updates_per_epoch,
    )
    return scheduler
