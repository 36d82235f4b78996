"""The recipe schema: every key once, with its type, range or choices, default and meaning.

``SCHEMA`` is the single declaration; ``DEFAULTS`` is derived from it, ``check`` enforces it
and ``docs/recipes.md`` is generated from it (``fer recipe docs``). Component sections
(``model.backbone``, ``loss``, ``augment.*``) are checked against the factories' signatures
by the registry instead.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fer_core.constraints import OneOf, Range, is_number, short
from fer_core.errors import RecipeError
from fer_core.outputs import CLASSIFICATION_METRICS, FLAT_AFFECT_METRICS
from fer_core.registry import suggest

MISSING: Any = object()  # no default: the key is absent unless the recipe sets it
METRICS = CLASSIFICATION_METRICS + ("loss",) + FLAT_AFFECT_METRICS  # which ones a task computes: outputs.task_metrics
SEED = Range(0, 2**32 - 1)
WORDS = {int: "an integer", float: "a number", bool: "true/false", str: "a string", list: "a list"}


@dataclass(frozen=True)
class Key:
    """A leaf value: accepted types, an optional constraint, a default and a meaning."""

    types: tuple[type, ...]
    doc: str
    default: Any = MISSING
    constraint: Range | OneOf | None = None
    nullable: bool = False
    pattern: str | None = None  # strings: a full-match regular expression
    items: Key | None = None  # lists: the rule for each item
    length: tuple[int, int] | None = None  # lists: (min, max) number of items

    def type_words(self) -> str:
        types = [t for t in self.types if not (t is int and float in self.types)]
        words = [WORDS.get(t, t.__name__) for t in types] + (["null"] if self.nullable else [])
        return " or ".join(words)

    def check(self, value: Any, where: str) -> None:
        if value is None and self.nullable:
            return
        if isinstance(self.constraint, OneOf):
            problem = self.constraint.problem(value)
            if problem:
                close = suggest(value, [str(c) for c in self.constraint.choices]) if isinstance(value, str) else ""
                raise RecipeError(f"{where}: {problem}; got {short(value)}{close}")
            return
        if not _is_type(value, self.types):
            raise RecipeError(f"{where}: expected {self.type_words()}, got {short(value)}")
        problem = self.constraint.problem(value) if self.constraint else None
        if problem is None and isinstance(value, float) and value != value:
            problem = "must be a number, not nan"
        if problem:
            raise RecipeError(f"{where}: {problem}, got {short(value)}")
        if self.pattern and isinstance(value, str) and not re.fullmatch(self.pattern, value):
            raise RecipeError(f"{where}: {short(value)} is not valid here; {self.doc}")
        if isinstance(value, list):
            lo, hi = self.length or (0, 10**6)
            if not lo <= len(value) <= hi:
                count = f"exactly {lo}" if lo == hi else f"{lo} to {hi}"
                raise RecipeError(f"{where}: expected {count} items, got {len(value)}")
            for i, item in enumerate(value):
                if self.items is not None:
                    self.items.check(item, f"{where}[{i}]")

    def describe(self) -> str:
        """Type and range in words, for the docs."""
        if isinstance(self.constraint, OneOf):
            return self.constraint.describe()
        text = self.type_words()
        if self.items is not None:
            plural = {"a string": "strings", "a number": "numbers", "an integer": "integers"}
            item = self.items.describe()
            text += f" of {plural.get(item.partition(',')[0], item.partition(',')[0])}{item[len(item.partition(',')[0]):]}"
        if self.length:
            lo, hi = self.length
            text += f" ({lo} items)" if lo == hi else (f" ({lo}+ items)" if hi >= 10**6 else f" ({lo}-{hi} items)")
        if self.constraint is not None:
            text += f", {self.constraint.describe()}"
        return text


@dataclass(frozen=True)
class Section:
    """A mapping of keys. An ``optional`` section exists only when the recipe writes it."""

    keys: dict[str, Any]
    doc: str
    optional: bool = False


@dataclass(frozen=True)
class Component:
    """``{name: ..., freeze: ..., **params}``: the parameters are the factory's (see the registry)."""

    kind: str
    doc: str
    default: Any = MISSING


@dataclass(frozen=True)
class ComponentList:
    kind: str
    doc: str
    default: Any = field(default_factory=list)


def _is_type(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in types
    if float in types and is_number(value):
        return True
    return isinstance(value, types)


def integer(default: Any, lo: int | None, hi: int | None, doc: str, **kw: Any) -> Key:
    return Key((int,), doc, default, Range(lo, hi), **kw)


def number(default: Any, doc: str, lo: float | None = None, hi: float | None = None, *,
           lo_open: bool = False, hi_open: bool = False, **kw: Any) -> Key:
    return Key((float,), doc, default, Range(lo, hi, lo_open, hi_open), **kw)


def boolean(default: Any, doc: str) -> Key:
    return Key((bool,), doc, default)


def choice(default: Any, choices: tuple[Any, ...], doc: str) -> Key:
    return Key((object,), doc, default, OneOf(*choices))


NAME = r"[\w][\w.+ -]{0,99}"  # a run's directory name: no path separators, no leading dot
DEVICE = r"auto|cpu|mps|cuda(:\d{1,2})?"
BIG = 10**7

SCHEMA: dict[str, Any] = {
    "name": Key((str,), "the run's name (a folder under output.dir); letters, digits, '.', '_', '-', '+' or "
                "spaces; default: the recipe file's name", pattern=NAME),
    "description": Key((str,), "free text, shown by `fer recipe show`"),
    "extends": Key((str, list), "recipe file(s) this one builds on, relative to it (see Layering)",
                   items=Key((str,), "a recipe file", pattern=r"(?s).+")),
    "seed": integer(0, 0, 2**32 - 1, "seeds Python, NumPy and PyTorch; the same seed and data give the same run"),
    "task": choice("classify", ("classify", "pretrain", "affect", "expression+affect"),
                   "`classify` trains encoder -> backbone -> head on labels; `pretrain` trains the encoder alone; "
                   "`affect` regresses valence and arousal (head `va`); `expression+affect` does both on one "
                   "backbone (head `multitask`)"),
    "data": Section({
        "root": Key((str,), "directory made by `fer data pack` or `fer data synth` (holds dataset.json)",
                    pattern=r"(?s).+"),
        "classes": Key((list,), "class names in label order; default: the manifest's classes",
                       items=Key((str,), "a class name", pattern=r"(?s).+"), length=(1, 10_000)),
        "image_size": integer(48, 8, 4096, "pixels (square) the images are decoded and resized to"),
        "channels": choice(3, (1, 3), "1 (grey) or 3 (RGB)"),
        "balance": boolean(False, "draw training samples so every class is equally likely"),
        "sources": Key((list,), "several packed data sets mixed by weight: a list of {root: DIR, weight: NUMBER}",
                       length=(1, 1000)),
        "soft_labels": boolean(False, "train on the per-class vote distributions stored in the shards"),
        "cache_latents": boolean(False, "cache a frozen encoder's outputs as latent shards and train on them"),
        "train_fraction": number(1.0, "fraction of the training split used", 0, 1, lo_open=True),
        "num_workers": integer(2, 0, 256, "DataLoader worker processes (0: read in the main process)"),
        "persistent_workers": boolean(False, "keep the worker processes from one epoch to the next instead of "
                                      "starting them every epoch"),
        "cache_decoded": integer(2048, 0, 1_048_576, "MiB of decoded images kept in memory across epochs (per "
                                 "process): a training or validation split whose decoded images fit is decoded once, "
                                 "before its first epoch, and read from memory afterwards, with the same batches "
                                 "(made in the main process unless they are pinned for CUDA: no worker processes "
                                 "then); "
                                 "0: decode every epoch"),
        "shuffle_buffer": integer(1000, 0, BIG, "samples held in the streaming shuffle buffer (0 or 1: no "
                                  "shuffling beyond the shard order)"),
        "max_corrupt_fraction": number(0.01, "fraction of unreadable samples per epoch tolerated before the run "
                                       "stops", 0, 1),
        "synth": Section({
            "n": integer(2100, 10, BIG, "number of synthetic faces (70/15/15 train/val/test)"),
            "size": integer(48, 8, 1024, "their size in pixels"),
            "seed": integer(0, 0, 2**32 - 1, "the drawing's seed"),
        }, "draw a synthetic data set into data.root when it is missing or was drawn by an older fer-core",
            optional=True),
    }, "where the images come from and how they are read"),
    "model": Section({
        "encoder": Component("encoder", "images -> images or latent tokens; frozen by default",
                             {"name": "identity"}),
        "backbone": Component("backbone", "images or tokens -> features [B, num_features]; required by "
                              "task: classify"),
        "head": Component("head", "features -> logits [B, num_classes]", {"name": "linear"}),
    }, "the network: encoder -> backbone -> head; each part is a component (see `fer plugins`)"),
    "loss": Component("loss", "logits and class targets -> a scalar loss (the expression loss of "
                      "`expression+affect`)", {"name": "cross_entropy"}),
    "affect": Section({
        "loss": Component("loss", "valence/arousal [B, 2] against their targets -> a scalar loss (a loss with "
                          "target 'va': ccc, mse, ccc_mse)", {"name": "ccc_mse"}),
        "weight": number(1.0, "weight of the valence/arousal loss in the total", 0, 1000),
        "expression_weight": number(1.0, "weight of the expression loss (`expression+affect`)", 0, 1000),
    }, "valence/arousal training (tasks affect and expression+affect); defaults apply when left out",
        optional=True),
    "augment": Section({
        "sample": ComponentList("augment", "per-image augments, run in the loader workers"),
        "batch": ComponentList("augment", "per-batch augments (mixup, cutmix...), run on the device"),
    }, "training-time augmentation"),
    "optim": Section({
        "name": choice("adamw", ("adamw", "adam", "sgd"), "the optimiser"),
        "lr": number(1e-3, "peak learning rate", 0, 10, lo_open=True),
        "weight_decay": number(0.05, "decoupled weight decay (not applied to norms and biases)", 0, 10),
        "momentum": number(0.9, "SGD momentum", 0, 1, hi_open=True),
        "betas": Key((list,), "Adam(W) betas", [0.9, 0.999], items=number(MISSING, "a beta", 0, 1, hi_open=True),
                     length=(2, 2)),
        "nesterov": boolean(False, "Nesterov momentum (SGD)"),
        "layer_decay": number(None, "per-layer learning-rate decay for components that support it", 0, 1,
                              lo_open=True, nullable=True),
        "fused": Key((bool,), "PyTorch's fused optimiser kernels (one pass per parameter; several times faster "
                     "steps); null: on when every trainable parameter is on one CPU or CUDA device", None,
                     nullable=True),
    }, "the optimiser"),
    "schedule": Section({
        "name": choice("cosine", ("cosine", "step", "plateau", "none"), "learning-rate schedule (timm)"),
        "warmup_epochs": number(0, "linear warm-up length in epochs", 0, 10_000),
        "warmup_lr": number(1e-6, "learning rate at the start of warm-up", 0, 10),
        "min_lr": number(1e-6, "floor of the cosine schedule", 0, 10),
        "step_size": integer(10, 1, BIG, "epochs between decays (step)"),
        "gamma": number(0.1, "decay factor (step)", 0, 1, lo_open=True),
        "factor": number(0.1, "decay factor (plateau)", 0, 1, lo_open=True, hi_open=True),
        "patience": integer(3, 0, BIG, "epochs without improvement before a decay (plateau)"),
    }, "the learning-rate schedule"),
    "train": Section({
        "epochs": integer(10, 1, 100_000, "training epochs"),
        "batch_size": integer(64, 1, 65_536, "samples per optimiser step (all processes together)"),
        "amp": boolean(False, "mixed precision (float16 on CUDA, bfloat16 on CPU)"),
        "channels_last": boolean(False, "the model's weights and images in channels-last memory format (faster "
                                 "convolutions on recent GPUs, with amp)"),
        "compile": boolean(False, "train through torch.compile (the first steps compile; where it cannot compile, "
                           "one line says so and training goes on in eager mode)"),
        "accumulate": integer(1, 1, 10_000, "micro-batches per optimiser step"),
        "clip_grad": number(None, "clip the gradient norm to this value", 0, 1e6, lo_open=True, nullable=True),
        "ema": boolean(False, "keep an exponential moving average of the weights and evaluate it"),
        "ema_decay": number(0.999, "EMA decay per step", 0, 1, lo_open=True, hi_open=True),
        "ema_warmup": boolean(True, "EMA warm-up (timm ModelEmaV3): the decay grows towards ema_decay over the first "
                              "steps, so a short run does not score almost its initial weights"),
        "early_stopping": Section({
            "metric": choice(MISSING, METRICS, "the validation metric watched; default: eval.metric"),
            "patience": integer(5, 1, BIG, "epochs without improvement before stopping"),
            "mode": choice(MISSING, ("max", "min"), "direction of improvement; default: the task's for the "
                           "metric (min for loss, max otherwise)"),
        }, "stop when the validation metric stops improving", optional=True),
        "device": Key((str,), "auto, cpu, mps, cuda or cuda:N", "auto", pattern=DEVICE),
        "log_every": integer(10, 1, BIG, "optimiser steps between training log records"),
        "keep": integer(0, 0, BIG, "also keep the last N epoch checkpoints (0: only last.pt and best.pt)"),
    }, "the training loop"),
    "eval": Section({
        "batch_size": integer(256, 1, 65_536, "evaluation batch size"),
        "metric": choice("accuracy", METRICS, "the validation metric that picks best.pt (one the task computes: "
                         "classification metrics, valence_ccc ... ccc_mean, rmse_mean, loss); default: accuracy, "
                         "ccc_mean for task affect"),
        "tta": choice(None, (None, "flip"), "test-time augmentation: null or flip (average with the mirror image)"),
    }, "evaluation"),
    "output": Section({
        "dir": Key((str,), "parent directory of run directories", "runs", pattern=r"(?s).+"),
    }, "where runs are written"),
}


def defaults(schema: Mapping[str, Any] = SCHEMA) -> dict[str, Any]:
    """The default of every key that has one (optional sections are left out)."""
    out: dict[str, Any] = {}
    for key, rule in schema.items():
        if isinstance(rule, Section):
            if not rule.optional:
                out[key] = defaults(rule.keys)
        elif rule.default is not MISSING:
            out[key] = rule.default
    return out


DEFAULTS = defaults()


def fill_optional(recipe: dict[str, Any], rules: Mapping[str, Any] = SCHEMA) -> None:
    """Give an optional section the recipe wrote the defaults of the keys it left out."""
    for key, rule in rules.items():
        if isinstance(rule, Section) and isinstance(recipe.get(key), dict):
            if rule.optional:
                recipe[key] = {**defaults(rule.keys), **recipe[key]}
            fill_optional(recipe[key], rule.keys)


def rule_at(path: tuple[str, ...]) -> Any:
    """The schema node at ``path``, or None."""
    node: Any = Section(SCHEMA, "")
    for key in path:
        if not isinstance(node, Section) or key not in node.keys:
            return None
        node = node.keys[key]
    return node
