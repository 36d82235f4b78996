"""Dry build: every component of a recipe built and run once on a tiny dummy batch.

Each output is checked against its kind's contract (DESIGN.md, ``fer_core.hookspecs``), and a
fault is reported in one line that names the component, its plugin distribution and version,
the contract it broke and the shapes seen::

    model.backbone 'hogcnn' (fer-hogcnn 0.1.0) returned [2, 64] but declares num_features 65
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from fer_core.affect import build_affect_loss, head_slices
from fer_core.errors import FerError, PluginError
from fer_core.model import build_model, build_sample_augments
from fer_core.outputs import TASK_OUTPUTS, split
from fer_core.registry import Component, Registry

BATCH = 2


class ContractError(PluginError):
    """A component whose output breaks its kind's contract."""


def _shape(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return "[" + ", ".join(map(str, value.shape)) + "]"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_shape(v) for v in value) + ")"
    return type(value).__name__


class _Part:
    """One component of the recipe: how to blame it, and its calls guarded."""

    def __init__(self, registry: Registry, kind: str, spec: Mapping[str, Any], path: str):
        self.component: Component = registry.get(kind, spec["name"], f"{path}.name")
        self.path = path

    @property
    def who(self) -> str:
        return self.component.blame(self.path)

    def fail(self, problem: str) -> ContractError:
        return ContractError(f"{self.who} {problem}")

    def call(self, fn: Callable[..., Any], *args: Any, what: str) -> Any:
        try:
            return fn(*args)
        except FerError:
            raise
        except Exception as exc:
            message = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            raise self.fail(f"failed on {what}: {type(exc).__name__}: {message}") from exc

    def tensor(self, out: Any, shape: tuple[int, ...], contract: str) -> torch.Tensor:
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(shape):
            raise self.fail(f"returned {_shape(out)} but {contract} [{', '.join(map(str, shape))}]")
        if out.is_floating_point() and not torch.isfinite(out).all():
            raise self.fail(f"returned non-finite values {_shape(out)}")
        return out


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def dry_build(recipe: Mapping[str, Any], registry: Registry, classes: list[str]) -> str:
    """Build the recipe's model, loss and augments and run each once; returns a one-line summary."""
    data, spec = recipe["data"], recipe["model"]
    size, channels, n = data["image_size"], data["channels"], len(classes)
    images = torch.rand(BATCH, channels, size, size, generator=torch.Generator().manual_seed(0))
    what = f"images {_shape(images)}"
    if recipe["task"] == "pretrain":
        encoder = registry.build("encoder", spec["encoder"], "model.encoder", {"image_size": size, "in_chans": channels})
        _check_encoder(_Part(registry, "encoder", spec["encoder"], "model.encoder"), encoder, images, what)
        return f"encoder {_shape(images)} checked"
    parts = {k: _Part(registry, k, spec[k], f"model.{k}") for k in ("encoder", "backbone", "head")}
    encoder = registry.build("encoder", spec["encoder"], "model.encoder", {"image_size": size, "in_chans": channels})
    with torch.no_grad():
        latents = _check_encoder(parts["encoder"], encoder, images, what)
    latent_shape = getattr(encoder, "latent_shape", None)
    backbone = registry.build("backbone", spec["backbone"], "model.backbone", {
        "latent_shape": tuple(latent_shape) if latent_shape else None,
        "image_size": getattr(encoder, "input_size", size), "in_chans": channels})
    features_n = getattr(backbone, "num_features", None)
    if not _positive_int(features_n):
        raise parts["backbone"].fail(f"declares num_features {features_n!r}; it must be a positive int")
    model = build_model(recipe, registry, classes)  # the head, batch augments and the model's own rules
    model.eval()
    with torch.no_grad():
        features = parts["backbone"].call(backbone.eval(), latents, what=f"inputs {_shape(latents)}")
        parts["backbone"].tensor(features, (BATCH, features_n), f"declares num_features {features_n}: expected")
        logits = parts["head"].call(model.head, features, what=f"features {_shape(features)}")
        slices = dict(getattr(model.head, "outputs", None) or {"logits": n})  # fer_core.outputs.layout
        width = sum(slices.values())
        contract = f"the head of {n} classes must return" if slices == {"logits": n} else \
            f"its outputs {slices} add up to"
        parts["head"].tensor(logits, (BATCH, width), contract)
    head_slices(recipe, model.head, TASK_OUTPUTS[recipe["task"]], registry)
    outputs = split(logits, slices)
    targets = torch.arange(BATCH) % n
    model.train()
    for i, augment in enumerate(model.batch_augments):
        part = _Part(registry, "augment", recipe["augment"]["batch"][i], f"augment.batch[{i}]")
        out = part.call(augment, latents, targets, what=f"a batch {_shape(latents)} with targets {_shape(targets)}")
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], torch.Tensor)
                and out[0].shape == latents.shape and isinstance(out[1], torch.Tensor) and len(out[1]) == BATCH):
            raise part.fail(f"returned {_shape(out)} but a batch augment returns (inputs {_shape(latents)}, "
                            f"targets [{BATCH}] or [{BATCH}, {n}])")
    counts = [1] * n
    if "logits" in TASK_OUTPUTS[recipe["task"]]:
        _check_loss(_Part(registry, "loss", recipe["loss"], "loss"),
                    registry.build("loss", recipe["loss"], "loss", {"num_classes": n, "class_counts": counts}),
                    "logits", outputs["logits"], (("class indices", targets),
                                                  ("soft targets", torch.full((BATCH, n), 1.0 / n))))
    if "va" in TASK_OUTPUTS[recipe["task"]]:
        spec = recipe["affect"]["loss"]
        va = torch.linspace(-0.9, 0.9, 2 * BATCH).reshape(BATCH, 2)
        loss_fn = registry.build("loss", spec, "affect.loss", {"num_classes": n, "class_counts": counts})
        build_affect_loss(recipe, registry, classes, None)  # says so when it is not a valence/arousal loss
        _check_loss(_Part(registry, "loss", spec, "affect.loss"), loss_fn, "valence/arousal", outputs["va"],
                    (("valence/arousal targets", va),))
    for i, augment in enumerate(build_sample_augments(recipe, registry, n)):
        sample_part = _Part(registry, "augment", recipe["augment"]["sample"][i], f"augment.sample[{i}]")
        image = images[0]
        out = sample_part.call(augment, image, what=f"an image {_shape(image)}")
        if not isinstance(out, torch.Tensor) or out.ndim != 3 or out.shape[0] != channels:
            raise sample_part.fail(f"returned {_shape(out)} for an image {_shape(image)}; a sample augment "
                                   f"returns an image [{channels}, H, W]")
    return f"{what} -> {_shape(latents)} -> {_shape(features)} -> {_shape(logits)}, loss checked"


def _check_loss(part: _Part, loss_fn: Any, what: str, pred: torch.Tensor,
                targets: tuple[tuple[str, torch.Tensor], ...]) -> None:
    for label, target in targets:
        loss = part.call(loss_fn, pred, target, what=f"{what} {_shape(pred)} and {label} {_shape(target)}")
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0 or not torch.isfinite(loss):
            raise part.fail(f"returned {_shape(loss)} for {what} {_shape(pred)} and {label}; "
                            f"a loss returns a finite scalar tensor")


def _check_encoder(part: _Part, encoder: torch.nn.Module, images: torch.Tensor, what: str) -> torch.Tensor:
    shape = getattr(encoder, "latent_shape", None)
    if shape is not None and not (isinstance(shape, (tuple, list)) and len(shape) == 2
                                  and all(_positive_int(v) for v in shape)):
        raise part.fail(f"declares latent_shape {shape!r}; it must be (tokens, dim) of positive ints or None")
    with torch.no_grad():
        out = part.call(encoder.eval(), images, what=what)
    if shape is not None:
        return part.tensor(out, (images.shape[0], *shape), f"declares latent_shape {tuple(shape)}: expected")
    if not isinstance(out, torch.Tensor) or out.ndim != 4 or tuple(out.shape[:2]) != tuple(images.shape[:2]):
        raise part.fail(f"returned {_shape(out)} for {what} but declares latent_shape None "
                        f"(passes images [{images.shape[0]}, {images.shape[1]}, H, W] through)")
    return out
