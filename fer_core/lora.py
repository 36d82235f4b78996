"""LoRA fine-tuning through PEFT.

LoRA: Low-Rank Adaptation of Large Language Models (Hu et al., 2021, arXiv:2106.09685).
Each chosen linear layer ``W`` becomes ``W x + (alpha / rank) * B A x`` with ``A``
[rank, in] and ``B`` [out, rank] trainable and ``W`` frozen; ``B`` starts at zero, so
training starts from the pretrained function. The layers are PEFT's
(``peft.inject_adapter_in_model``); this module only turns a recipe's ``lora:`` mapping
into a ``LoraConfig`` and folds the updates back into plain linear layers for export.

A recipe sets, on a component that accepts it (the timm backbone, hybrid_vit)::

    lora: {rank: 8, alpha: 16, dropout: 0.0, target_modules: [qkv, proj]}

``target_modules`` are the last names of ``nn.Linear`` layers (timm's attention: ``qkv``,
``proj``; its MLP: ``fc1``, ``fc2``); only linear layers are adapted, never a convolution
of the same name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from fer_core.errors import RecipeError

DEFAULTS: dict[str, Any] = {"rank": 8, "alpha": 16.0, "dropout": 0.0, "target_modules": ["qkv", "proj"]}


def lora_settings(spec: Mapping[str, Any] | None, where: str) -> dict[str, Any] | None:
    """A recipe's ``lora:`` mapping checked and completed with the defaults (None: no LoRA)."""
    if spec is None:
        return None
    if not isinstance(spec, Mapping):
        raise RecipeError(f"{where}: expected a mapping such as {{rank: 8, alpha: 16}}, got {type(spec).__name__}")
    unknown = sorted(set(spec) - set(DEFAULTS))
    if unknown:
        raise RecipeError(f"{where}.{unknown[0]}: unknown LoRA setting (accepted: {', '.join(DEFAULTS)})")
    settings = {**DEFAULTS, **spec}
    rank, alpha, dropout, targets = (settings[k] for k in ("rank", "alpha", "dropout", "target_modules"))
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise RecipeError(f"{where}.rank: expected an integer >= 1, got {rank!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
        raise RecipeError(f"{where}.alpha: expected a number > 0, got {alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise RecipeError(f"{where}.dropout: expected a number in [0, 1), got {dropout!r}")
    if isinstance(targets, str) or not isinstance(targets, Sequence) or not targets \
            or not all(isinstance(t, str) and t for t in targets):
        raise RecipeError(f"{where}.target_modules: expected a list of layer names such as [qkv, proj]")
    return {"rank": rank, "alpha": float(alpha), "dropout": float(dropout), "target_modules": list(targets)}


def add_lora(module: nn.Module, settings: Mapping[str, Any], where: str = "lora") -> nn.Module:
    """Inject LoRA layers into ``module`` (in place) and freeze everything else in it; returns ``module``."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise RecipeError(f"{where}: LoRA needs PEFT: pip install 'fer-core[lora]'") from None
    linear = {name: name.rsplit(".", 1)[-1] for name, m in module.named_modules() if isinstance(m, nn.Linear)}
    missing = [t for t in settings["target_modules"] if t not in linear.values()]
    if missing:
        raise RecipeError(f"{where}.target_modules: no linear layer named {missing[0]!r} "
                          f"(linear layers here: {', '.join(sorted(set(linear.values()))) or 'none'})")
    # full names, so that a convolution sharing a suffix (timm's patch_embed.proj) is left alone
    chosen = [name for name, suffix in linear.items() if suffix in settings["target_modules"]]
    config = LoraConfig(r=settings["rank"], lora_alpha=settings["alpha"], lora_dropout=settings["dropout"],
                        target_modules=chosen, bias="none")
    return inject_adapter_in_model(config, module)


def merge_lora(module: nn.Module) -> int:
    """Fold every LoRA update into its base linear layer and drop the LoRA layers; returns how many."""
    from peft.tuners.lora import LoraLayer

    merged = 0
    for name, child in list(module.named_modules()):
        if isinstance(child, LoraLayer):
            child.merge()
            parent_name, _, attr = name.rpartition(".")
            setattr(module.get_submodule(parent_name) if parent_name else module, attr, child.get_base_layer())
            merged += 1
    return merged


def has_lora(module: nn.Module) -> bool:
    return any(".lora_" in name for name, _ in module.named_parameters())
