"""YAML recipes: loading with ``extends``, ``-s`` overrides, and validation.

Every error is one line that starts with the key path (or file:line) and says
what would be valid. Component sections are checked against the factories'
signatures through the registry.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from fer_core.errors import RecipeError
from fer_core.registry import Registry, suggest

COMPONENT = "component"  # a {name: ..., **params} mapping checked by the registry
COMPONENTS = "components"  # a list of such mappings

# Leaf types: a tuple of accepted Python types, or a list of allowed values.
NUM = (int, float)
SCHEMA: dict[str, Any] = {
    "name": (str,),
    "description": (str,),
    "extends": (str, list),
    "seed": (int,),
    "task": ["classify", "pretrain"],
    "data": {
        "root": (str,),
        "classes": (list,),
        "image_size": (int,),
        "channels": [1, 3],
        "balance": (bool,),
        "sources": (list,),
        "soft_labels": (bool,),
        "cache_latents": (bool,),
        "train_fraction": NUM,
        "num_workers": (int,),
        "shuffle_buffer": (int,),
        "max_corrupt_fraction": NUM,
        "synth": {"n": (int,), "size": (int,), "seed": (int,)},
    },
    "model": {"encoder": COMPONENT, "backbone": COMPONENT, "head": COMPONENT},
    "loss": COMPONENT,
    "augment": {"sample": COMPONENTS, "batch": COMPONENTS},
    "optim": {
        "name": ["adamw", "adam", "sgd"],
        "lr": NUM,
        "weight_decay": NUM,
        "momentum": NUM,
        "betas": (list,),
        "nesterov": (bool,),
        "layer_decay": NUM + (type(None),),
    },
    "schedule": {
        "name": ["cosine", "step", "plateau", "none"],
        "warmup_epochs": NUM,
        "warmup_lr": NUM,
        "min_lr": NUM,
        "step_size": (int,),
        "gamma": NUM,
        "factor": NUM,
        "patience": (int,),
    },
    "train": {
        "epochs": (int,),
        "batch_size": (int,),
        "amp": (bool,),
        "accumulate": (int,),
        "clip_grad": NUM + (type(None),),
        "ema": (bool,),
        "ema_decay": NUM,
        "ema_warmup": (bool,),
        "early_stopping": {"metric": (str,), "patience": (int,), "mode": ["max", "min"]},
        "device": (str,),
        "log_every": (int,),
        "keep": (int,),
    },
    "eval": {"batch_size": (int,), "metric": (str,), "tta": [None, "flip"]},
    "output": {"dir": (str,)},
}

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "task": "classify",
    "data": {
        "image_size": 48,
        "channels": 3,
        "balance": False,
        "soft_labels": False,
        "cache_latents": False,
        "train_fraction": 1.0,
        "num_workers": 2,
        "shuffle_buffer": 1000,
        "max_corrupt_fraction": 0.01,
    },
    "model": {"encoder": {"name": "identity"}, "head": {"name": "linear"}},
    "loss": {"name": "cross_entropy"},
    "augment": {"sample": [], "batch": []},
    "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05, "momentum": 0.9,
              "betas": [0.9, 0.999], "nesterov": False, "layer_decay": None},
    "schedule": {"name": "cosine", "warmup_epochs": 0, "warmup_lr": 1e-6, "min_lr": 1e-6,
                 "step_size": 10, "gamma": 0.1, "factor": 0.1, "patience": 3},
    "train": {"epochs": 10, "batch_size": 64, "amp": False, "accumulate": 1, "clip_grad": None,
              "ema": False, "ema_decay": 0.999, "device": "auto", "log_every": 10, "keep": 0,
              "ema_warmup": True},
    "eval": {"batch_size": 256, "metric": "accuracy", "tta": None},
    "output": {"dir": "runs"},
}

METRICS = ("accuracy", "f1_macro", "f1_weighted", "loss")


# -- loading ----------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` as a float (YAML 1.2), the way researchers write rates."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _parse(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        data = _parse(path.read_text())
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
        raise RecipeError(f"{path}:{line}: malformed YAML: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: malformed YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    return data


def deep_merge(base: Mapping[str, Any], top: Mapping[str, Any], path: tuple[str, ...] = ()) -> dict[str, Any]:
    """Mappings merge key by key; lists and scalars from ``top`` replace.

    A component (``model.backbone``, ``loss``...) whose ``name`` changes is replaced
    whole: the old factory's parameters mean nothing to the new one.
    """
    out = copy.deepcopy(dict(base))
    for key, value in top.items():
        old, here = out.get(key), (*path, key)
        if isinstance(value, Mapping) and isinstance(old, Mapping) and not _renamed(here, old, value):
            out[key] = deep_merge(old, value, here)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _renamed(path: tuple[str, ...], old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    rule: Any = SCHEMA
    for key in path:
        if not isinstance(rule, dict) or key not in rule:
            return False
        rule = rule[key]
    return rule == COMPONENT and "name" in new and new["name"] != old.get("name")


def load_chain(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a recipe and everything it ``extends`` (relative to the file), merged."""
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(p.name for p in (*seen, path))
        raise RecipeError(f"extends: cycle {chain}")
    data = read_yaml(path)
    parents = data.pop("extends", None) or []
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise RecipeError(f"{path.name}: extends: expected a file name or a list of them, got {parents!r}")
    merged: dict[str, Any] = {}
    for parent in parents:
        parent_path = path.parent / str(parent)
        if not parent_path.is_file():
            raise RecipeError(f"{path.name}: extends: {parent} not found (looked in {path.parent})")
        merged = deep_merge(merged, load_chain(parent_path, (*seen, path)))
    return deep_merge(merged, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=VALUE`` with VALUE parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"-s {text}: overrides look like key.path=value, e.g. train.epochs=5")
    try:
        value = _parse(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise RecipeError(f"-s {text}: the value is not valid YAML") from None
    return key.strip().split("."), value


def apply_overrides(recipe: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    recipe = copy.deepcopy(recipe)
    for text in overrides:
        keys, value = parse_override(text)
        node = recipe
        for i, key in enumerate(keys[:-1]):
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise RecipeError(f"-s {text}: {'.'.join(keys[: i + 1])} is not a section")
            node = child
        node[keys[-1]] = value
    return recipe


def load_recipe(
    path: str | Path, overrides: Iterable[str] = (), registry: Registry | None = None
) -> dict[str, Any]:
    """The fully resolved, validated recipe (defaults < extends < file < overrides)."""
    user = apply_overrides(load_chain(Path(path)), overrides)
    user.setdefault("name", Path(path).stem)
    validate_structure(user)
    recipe = {"name": user["name"], **deep_merge(DEFAULTS, user)}
    if recipe["task"] == "pretrain" and "head" not in user.get("model", {}):
        del recipe["model"]["head"]  # the default head means nothing to an encoder trained alone
    validate_semantics(recipe)
    if registry is not None:
        validate_components(recipe, registry)
    return recipe


# -- validation -------------------------------------------------------------
def validate_structure(node: Mapping[str, Any], schema: Mapping[str, Any] = SCHEMA, path: str = "") -> None:
    for key, value in node.items():
        where = f"{path}{key}"
        if key not in schema:
            section = f"section '{path[:-1]}'" if path else "a recipe"
            raise RecipeError(f"{where}: unknown key in {section}{suggest(key, list(schema))}")
        rule = schema[key]
        if rule == COMPONENT:
            _check_component_shape(value, where)
        elif rule == COMPONENTS:
            if not isinstance(value, list):
                raise RecipeError(f"{where}: expected a list of components, got {value!r}")
            for i, item in enumerate(value):
                _check_component_shape(item, f"{where}[{i}]")
        elif isinstance(rule, dict):
            if not isinstance(value, dict):
                raise RecipeError(f"{where}: expected a section (mapping), got {value!r}")
            validate_structure(value, rule, f"{where}.")
        elif isinstance(rule, list):
            if value not in rule:
                raise RecipeError(f"{where}: must be one of {', '.join(map(str, rule))}; got {value!r}"
                                  f"{suggest(value, [str(r) for r in rule])}")
        elif not _is_type(value, rule):
            raise RecipeError(f"{where}: expected {_type_words(rule)}, got {value!r}")


def _is_type(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool) and bool not in types:
        return False
    return isinstance(value, types)


def _type_words(types: tuple[type, ...]) -> str:
    words = {int: "an integer", float: "a number", bool: "true/false", str: "a string",
             list: "a list", type(None): "null"}
    if set(types) >= {int, float}:
        types = tuple(t for t in types if t is not int)
    return " or ".join(words.get(t, t.__name__) for t in types)


def _check_component_shape(value: Any, where: str) -> None:
    if isinstance(value, str):
        raise RecipeError(f"{where}: write components as a mapping, e.g. {{name: {value}}}")
    if not isinstance(value, dict):
        raise RecipeError(f"{where}: expected a component mapping with a name, got {value!r}")
    if "name" not in value:
        raise RecipeError(f"{where}.name: missing; every component needs a name")
    if "freeze" in value and not isinstance(value["freeze"], bool):
        raise RecipeError(f"{where}.freeze: expected true/false, got {value['freeze']!r}")


def validate_semantics(recipe: Mapping[str, Any]) -> None:
    """Cross-key rules that the schema alone cannot say."""
    data, train = recipe["data"], recipe["train"]
    if recipe["task"] == "classify" and "backbone" not in recipe["model"]:
        raise RecipeError("model.backbone: missing; a classification recipe needs a backbone")
    if recipe["task"] == "pretrain":
        for part in ("backbone", "head"):
            if part in recipe["model"]:
                raise RecipeError(f"model.{part}: a pretraining recipe (task: pretrain) trains the encoder alone; "
                                  f"remove model.{part}")
        if recipe["model"]["encoder"]["name"] == "identity":
            raise RecipeError("model.encoder: task: pretrain needs an encoder that trains itself (the pretraining protocol of fer_core.pretrain)")
    if "root" not in data and "sources" not in data:
        raise RecipeError("data.root: missing; point it at a directory made by `fer data pack` or `fer data synth`")
    for i, source in enumerate(data.get("sources") or []):
        if not isinstance(source, dict) or "root" not in source:
            raise RecipeError(f"data.sources[{i}]: expected {{root: DIR, weight: NUMBER}}, got {source!r}")
        extra = set(source) - {"root", "weight"}
        if extra:
            raise RecipeError(f"data.sources[{i}].{sorted(extra)[0]}: unknown key; sources take root and weight")
    classes = data.get("classes")
    if classes is not None and (not classes or not all(isinstance(c, str) for c in classes)):
        raise RecipeError("data.classes: expected a non-empty list of class names")
    if not 0 < data["train_fraction"] <= 1:
        raise RecipeError(f"data.train_fraction: must be in (0, 1], got {data['train_fraction']}")
    for key in ("epochs", "batch_size", "accumulate"):
        if train[key] < 1:
            raise RecipeError(f"train.{key}: must be at least 1, got {train[key]}")
    metrics = {"eval.metric": recipe["eval"]["metric"]}
    if "early_stopping" in train:
        metrics["train.early_stopping.metric"] = train["early_stopping"].get("metric", recipe["eval"]["metric"])
    for where, metric in metrics.items():
        if metric not in METRICS:
            raise RecipeError(f"{where}: unknown metric {metric!r}; choose from {', '.join(METRICS)}"
                              f"{suggest(metric, METRICS)}")
    if recipe["optim"]["lr"] <= 0:
        raise RecipeError(f"optim.lr: must be positive, got {recipe['optim']['lr']}")


def validate_components(recipe: Mapping[str, Any], registry: Registry) -> None:
    model = recipe["model"]
    for kind in ("encoder", "backbone", "head"):
        if kind in model:
            registry.check_params(kind, model[kind], f"model.{kind}")
    if recipe["task"] == "classify":
        registry.check_params("loss", recipe["loss"], "loss")
    for stage in ("sample", "batch"):
        for i, spec in enumerate(recipe["augment"][stage]):
            registry.check_params("augment", spec, f"augment.{stage}[{i}]")


def dump(recipe: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(recipe), sort_keys=False, default_flow_style=None)
