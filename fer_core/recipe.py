"""YAML recipes: loading with ``extends``, ``-s`` overrides, and validation.

Every error is one line that starts with the key path (or file:line) and says
what would be valid. Component sections are checked against the factories'
signatures through the registry.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from fer_core import safe_yaml, schema
from fer_core.constraints import clip, short
from fer_core.errors import RecipeError
from fer_core.outputs import AFFECT_TASKS, task_metrics
from fer_core.recipes import locate
from fer_core.registry import Registry, suggest
from fer_core.schema import Component, ComponentList, Key, Section

METRICS = schema.METRICS
DEFAULTS = schema.DEFAULTS


# -- loading ----------------------------------------------------------------
def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        data = safe_yaml.load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        line, problem = safe_yaml.problem(exc)
        raise RecipeError(f"{path}:{line or '?'}: malformed YAML: {problem}") from None
    except safe_yaml.YamlTooBig as exc:
        raise RecipeError(f"{path}: refused: the YAML {exc}") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: not a text file (a recipe is UTF-8 YAML)") from None
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
    return (isinstance(schema.rule_at(path), Component) and "name" in new
            and new["name"] != old.get("name"))


def load_chain(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a recipe and everything it ``extends`` (files beside it, else packaged names), merged."""
    path = locate(path).resolve()
    if path in seen:
        chain = " -> ".join(p.name for p in (*seen, path))
        raise RecipeError(f"extends: cycle {chain}")
    data = read_yaml(path)
    parents = data.pop("extends", None) or []
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise RecipeError(f"{path.name}: extends: expected a file name or a list of them, got {short(parents)}")
    merged: dict[str, Any] = {}
    for parent in parents:
        parent_path = locate(parent, near=path.parent, context=f"{path.name}: extends: ")
        merged = deep_merge(merged, load_chain(parent_path, (*seen, path)))
    return deep_merge(merged, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=VALUE`` with VALUE parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"-s {clip(text)}: overrides look like key.path=value, e.g. train.epochs=5")
    try:
        value = safe_yaml.load(raw) if raw.strip() else None
    except (yaml.YAMLError, safe_yaml.YamlTooBig):
        raise RecipeError(f"-s {clip(text)}: the value is not valid YAML") from None
    return key.strip().split("."), value


def apply_overrides(recipe: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    recipe = copy.deepcopy(recipe)
    for text in overrides:
        keys, value = parse_override(text)
        node = recipe
        for i, key in enumerate(keys[:-1]):
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise RecipeError(f"-s {clip(text)}: {'.'.join(keys[: i + 1])} is not a section")
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
    schema.fill_optional(recipe)
    if recipe["task"] == "pretrain" and "head" not in user.get("model", {}):
        del recipe["model"]["head"]  # the default head means nothing to an encoder trained alone
    if recipe["task"] in AFFECT_TASKS:
        recipe.setdefault("affect", schema.defaults(schema.SCHEMA["affect"].keys))
        if "metric" not in user.get("eval", {}) and recipe["task"] == "affect":
            recipe["eval"]["metric"] = "ccc_mean"  # no accuracy without classes
    validate_semantics(recipe)
    if registry is not None:
        validate_components(recipe, registry)
    return recipe


# -- validation -------------------------------------------------------------
def validate_structure(node: Mapping[str, Any], rules: Mapping[str, Any] = schema.SCHEMA, path: str = "") -> None:
    """Every key known, every value of its declared type and range (``fer_core.schema``)."""
    for key, value in node.items():
        where = f"{path}{key}"
        if key not in rules:
            section = f"section '{path[:-1]}'" if path else "a recipe"
            raise RecipeError(f"{clip(where, 80)}: unknown key in {section}{suggest(key, list(rules))}")
        rule = rules[key]
        if isinstance(rule, Component):
            _check_component_shape(value, where)
        elif isinstance(rule, ComponentList):
            if not isinstance(value, list):
                raise RecipeError(f"{where}: expected a list of components, got {short(value)}")
            for i, item in enumerate(value):
                _check_component_shape(item, f"{where}[{i}]")
        elif isinstance(rule, Section):
            if value is None:
                raise RecipeError(f"{where}: empty section; give it keys (see docs/recipes.md) or delete the line")
            if not isinstance(value, dict):
                raise RecipeError(f"{where}: expected a section (mapping), got {short(value)}")
            validate_structure(value, rule.keys, f"{where}.")
        elif isinstance(rule, Key):
            rule.check(value, where)


def _check_component_shape(value: Any, where: str) -> None:
    if isinstance(value, str):
        raise RecipeError(f"{where}: write components as a mapping, e.g. {{name: {clip(value, 40)}}}")
    if not isinstance(value, dict):
        raise RecipeError(f"{where}: expected a component mapping with a name, got {short(value)}")
    if "name" not in value:
        raise RecipeError(f"{where}.name: missing; every component needs a name")
    if not isinstance(value["name"], str) or not value["name"]:
        raise RecipeError(f"{where}.name: expected a component name, got {short(value['name'])}")
    if "freeze" in value and not isinstance(value["freeze"], bool):
        raise RecipeError(f"{where}.freeze: expected true/false, got {short(value['freeze'])}")
    bad = [k for k in value if not isinstance(k, str)]
    if bad:
        raise RecipeError(f"{where}: parameter names must be strings, got {short(bad[0])}")


def validate_semantics(recipe: Mapping[str, Any]) -> None:
    """Cross-key rules that the schema alone cannot say."""
    data = recipe["data"]
    if recipe["task"] == "classify" and "backbone" not in recipe["model"]:
        raise RecipeError("model.backbone: missing; a classification recipe needs a backbone")
    if recipe["task"] == "pretrain":
        for part in ("backbone", "head"):
            if part in recipe["model"]:
                raise RecipeError(f"model.{part}: a pretraining recipe (task: pretrain) trains the encoder alone; "
                                  f"remove model.{part}")
        if recipe["model"]["encoder"]["name"] == "identity":
            raise RecipeError("model.encoder: task: pretrain needs an encoder that trains itself (the pretraining protocol of fer_core.pretrain)")
    if recipe["task"] in AFFECT_TASKS:
        _check_affect(recipe)
    elif "affect" in recipe:
        raise RecipeError(f"affect: only tasks affect and expression+affect use it; remove it or set task "
                          f"(now {recipe['task']})")
    computed = task_metrics(recipe["task"])
    stop = recipe["train"].get("early_stopping") or {}
    for where, metric in (("eval.metric", recipe["eval"]["metric"]), ("train.early_stopping.metric",
                                                                      stop.get("metric"))):
        if metric is not None and recipe["task"] != "pretrain" and metric not in computed:
            raise RecipeError(f"{where}: task {recipe['task']} does not compute {metric}; pick one of "
                              f"{', '.join(computed)}")
    if "root" not in data and "sources" not in data:
        raise RecipeError("data.root: missing; point it at a directory made by `fer data pack` or `fer data synth`")
    for i, source in enumerate(data.get("sources") or []):
        if not isinstance(source, dict) or "root" not in source:
            raise RecipeError(f"data.sources[{i}]: expected {{root: DIR, weight: NUMBER}}, got {short(source)}")
        extra = sorted(map(str, set(source) - {"root", "weight"}))
        if extra:
            raise RecipeError(f"data.sources[{i}].{clip(extra[0], 40)}: unknown key; sources take root and weight")
        SOURCE_ROOT.check(source["root"], f"data.sources[{i}].root")
        SOURCE_WEIGHT.check(source.get("weight", 1.0), f"data.sources[{i}].weight")
    classes = data.get("classes")
    if classes is not None and len(set(classes)) != len(classes):
        raise RecipeError("data.classes: each class name may appear once")


def _check_affect(recipe: Mapping[str, Any]) -> None:
    if "backbone" not in recipe["model"]:
        raise RecipeError(f"model.backbone: missing; task {recipe['task']} needs a backbone")
    if recipe["augment"]["batch"]:
        raise RecipeError(f"augment.batch: batch augments (mixup, cutmix) mix class targets only; task "
                          f"{recipe['task']} cannot mix valence/arousal with them: remove augment.batch")
    if recipe["data"]["soft_labels"] and recipe["task"] == "affect":
        raise RecipeError("data.soft_labels: task affect has no classes to soften; remove it")


SOURCE_ROOT = Key((str,), "a packed data set's directory", pattern=r"(?s).+")
SOURCE_WEIGHT = schema.number(1.0, "its sampling weight", 0, 1e6, lo_open=True)


def validate_components(recipe: Mapping[str, Any], registry: Registry) -> None:
    model = recipe["model"]
    for kind in ("encoder", "backbone", "head"):
        if kind in model:
            registry.check_params(kind, model[kind], f"model.{kind}")
    if recipe["task"] in ("classify", "expression+affect"):
        registry.check_params("loss", recipe["loss"], "loss")
    if recipe["task"] in AFFECT_TASKS:
        registry.check_params("loss", recipe["affect"]["loss"], "affect.loss")
    for stage in ("sample", "batch"):
        for i, spec in enumerate(recipe["augment"][stage]):
            registry.check_params("augment", spec, f"augment.{stage}[{i}]")


def dump(recipe: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(recipe), sort_keys=False, default_flow_style=None)
