"""Component registry: per kind, name -> lazy factory, summary and owning plugin.

Nothing is imported until a component is built (or its parameters are checked),
so listing components stays cheap.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fer_core.constraints import OneOf, Range, clip, short
from fer_core.errors import FerError, PluginError, RecipeError

KINDS = ("encoder", "backbone", "head", "loss", "augment", "detector")

# Arguments the core passes to a factory whose signature names them; never set by recipes.
CONTEXT: dict[str, tuple[str, ...]] = {
    "encoder": ("image_size", "in_chans"),
    "backbone": ("latent_shape", "image_size", "in_chans"),
    "head": ("num_features", "num_classes"),
    "loss": ("num_classes", "class_counts", "classes", "recipe"),
    "augment": ("num_classes",),
    "detector": (),
}

# Keys of a component spec that the core reads itself.
RESERVED = ("name", "freeze", "lr_mult")


def normal_dist(name: str) -> str:
    """A distribution or entry-point name compared the way pip does (case, '_' and '-' alike)."""
    return name.lower().replace("_", "-")


def suggest(word: str, choices: Sequence[str]) -> str:
    """'; did you mean 'x'?' when a choice is close to ``word``, else ''."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


@dataclass(frozen=True)
class Component:
    kind: str
    name: str
    target: str | Callable[..., Any]
    summary: str = ""
    plugin: str = ""
    aliases: tuple[str, ...] = ()
    version: str = ""

    def blame(self, path: str = "") -> str:
        """``model.head 'badhead' (fer-badplugin 0.1)``: who to ask when this component misbehaves."""
        where = path or self.kind
        return f"{where} '{self.name}' ({self.plugin or '?'}{' ' + self.version if self.version else ''})"

    def load(self, path: str = "") -> Callable[..., Any]:
        """Import and return the factory; a PluginError names the component and its plugin."""
        if callable(self.target):
            return self.target
        module_name, _, attr = self.target.partition(":")
        try:
            module = importlib.import_module(module_name)
            factory = getattr(module, attr) if attr else module
        except Exception as exc:  # report which plugin broke, not a traceback
            raise PluginError(f"{self.blame(path)}: target {self.target} cannot be loaded: "
                              f"{type(exc).__name__}: {clip(str(exc), 120)}") from exc
        if not callable(factory):
            raise PluginError(f"{self.blame(path)}: target {self.target} is not callable "
                              f"(it is {short(factory, 40)}); the plugin must name a factory function or class")
        return factory

    def signature(self, path: str = "") -> inspect.Signature:
        try:
            return inspect.signature(self.load(path))
        except (TypeError, ValueError) as exc:
            raise PluginError(f"{self.blame(path)}: target {self.target} has no readable signature ({exc})") from exc

    def parameters(self, path: str = "") -> dict[str, inspect.Parameter] | None:
        """Recipe-settable parameters of the factory; None when it takes **kwargs."""
        sig = self.signature(path)
        if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            return None
        context = CONTEXT[self.kind]
        return {
            n: p
            for n, p in sig.parameters.items()
            if n not in context and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }

    def accepts_context(self) -> set[str]:
        sig = self.signature()
        if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            return set(CONTEXT[self.kind])
        return {n for n in CONTEXT[self.kind] if n in sig.parameters}


class Registry:
    """Per kind, name (and alias) -> Component. Only these methods touch the table."""

    def __init__(self) -> None:
        self._table: dict[str, dict[str, Component]] = {k: {} for k in KINDS}
        self.missing_hint: Callable[[str, str], str] = lambda kind, name: ""

    def add(self, component: Component) -> None:
        """Register under its name and aliases; a PluginError (and no change) when one is taken."""
        table = self._table[component.kind]
        names = (component.name, *component.aliases)
        for name in names:
            if not isinstance(name, str) or not name:
                raise PluginError(f"{component.plugin}: component names must be non-empty strings, got {short(name)}")
            other = table.get(name)
            if other is not None:
                raise PluginError(
                    f"{component.kind} '{name}' is registered by both {other.plugin} and {component.plugin}; "
                    f"uninstall one or skip it with FER_DISABLE_PLUGINS"
                )
        for name in names:
            table[name] = component

    def remove(self, component: Component) -> None:
        """Drop the names that point at ``component`` (a name another component holds stays)."""
        table = self._table[component.kind]
        for name in (component.name, *component.aliases):
            if table.get(name) is component:
                del table[name]

    def names(self, kind: str) -> list[str]:
        """Primary names (no aliases), sorted."""
        return sorted({c.name for c in self._table[kind].values()})

    def components(self, kind: str | None = None) -> list[Component]:
        """Every registered component (once, aliases aside), by kind then name."""
        kinds = KINDS if kind is None else (kind,)
        return [c for k in kinds for c in sorted({id(c): c for c in self._table[k].values()}.values(),
                                                 key=lambda c: c.name)]

    def find(self, kind: str, name: Any) -> Component | None:
        """The component called ``name`` (or aliased so), or None."""
        return self._table[kind].get(name) if isinstance(name, str) else None

    def get(self, kind: str, name: Any, path: str = "") -> Component:
        found = self.find(kind, name)
        if found is not None:
            return found
        where = f"{path}: " if path else ""
        installed = ", ".join(self.names(kind)) or "none"
        hint = self.missing_hint(kind, name) if isinstance(name, str) else ""
        raise RecipeError(f"{where}unknown {kind} {short(name, 40)}; installed: {clip(installed, 160)}"
                          f"{suggest(name, list(self._table[kind]))}{hint}")

    def check_params(self, kind: str, spec: Mapping[str, Any], path: str) -> Component:
        """Validate a component spec ``{name: ..., **params}`` without building it."""
        if "name" not in spec:
            raise RecipeError(f"{path}.name: missing; every component needs a name")
        component = self.get(kind, spec["name"], f"{path}.name")
        params = component.parameters(path)
        if params is None:
            return component
        for key, value in spec.items():
            if key in RESERVED:
                continue
            if key in CONTEXT[kind]:
                raise RecipeError(
                    f"{path}.{key}: set by fer-core from the data and model; remove it from the recipe"
                )
            if key not in params:
                raise RecipeError(
                    f"{path}.{clip(key, 40)}: unknown parameter of '{component.name}'{suggest(key, list(params))}"
                    f" (accepted: {', '.join(params) or 'none'})"
                )
            _check_type(component, key, value, path)
        missing = [n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in spec]
        if missing:
            raise RecipeError(f"{path}.{missing[0]}: required parameter of '{component.name}' is missing")
        return component

    def build(self, kind: str, spec: Mapping[str, Any], path: str, context: Mapping[str, Any]) -> Any:
        """Check the spec, then call the factory with its params plus the context it accepts.

        A fault inside the factory is reported as the component's (and its plugin's), in one line.
        """
        component = self.check_params(kind, spec, path)
        kwargs = {k: v for k, v in spec.items() if k not in RESERVED}
        accepted = component.accepts_context()
        kwargs.update({k: v for k, v in context.items() if k in accepted})
        try:
            return component.load(path)(**kwargs)
        except FerError:
            raise
        except Exception as exc:
            detail = clip(str(exc).strip(), 160) or "(no message)"
            raise PluginError(f"{component.blame(path)} failed to build: {type(exc).__name__}: {detail}") from exc


def _check_type(component: Component, key: str, value: Any, path: str) -> None:
    """Check a value against a simple annotation (int, float, bool, str, list, unions, Literal)
    and the constraints (``Range``, ``OneOf``) a factory declares with ``typing.Annotated``."""
    try:
        hints = typing.get_type_hints(component.load(path), include_extras=True)
    except Exception:
        return
    hint = hints.get(key)
    if hint is None:
        return
    constraints = []
    if typing.get_origin(hint) is typing.Annotated:
        hint, *extras = typing.get_args(hint)
        constraints = [c for c in extras if isinstance(c, (Range, OneOf))]
    if not _matches(value, hint):
        raise RecipeError(f"{path}.{key}: expected {_describe(hint)} for '{component.name}', got {short(value)}")
    if isinstance(value, float) and value != value or value in (float("inf"), float("-inf")):
        raise RecipeError(f"{path}.{key}: must be a finite number for '{component.name}', got {short(value)}")
    for constraint in constraints:
        problem = constraint.problem(value) if value is not None or isinstance(constraint, OneOf) else None
        if problem:
            raise RecipeError(f"{path}.{key}: {problem} for '{component.name}', got {short(value)}")


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin in (dict, Mapping) or hint is dict:
        return isinstance(value, dict)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    names = {int: "an integer", float: "a number", bool: "true/false", str: "a string"}
    if hint in names:
        return names[hint]
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        return "a list"
    return getattr(hint, "__name__", str(hint))
