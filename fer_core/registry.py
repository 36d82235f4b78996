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
from dataclasses import dataclass, field
from typing import Any

from fer_core.errors import PluginError, RecipeError

KINDS = ("encoder", "backbone", "head", "loss", "augment")

# Arguments the core passes to a factory whose signature names them; never set by recipes.
CONTEXT: dict[str, tuple[str, ...]] = {
    "encoder": ("image_size", "in_chans"),
    "backbone": ("latent_shape", "image_size", "in_chans"),
    "head": ("num_features", "num_classes"),
    "loss": ("num_classes", "class_counts"),
    "augment": ("num_classes",),
}

# Keys of a component spec that the core reads itself.
RESERVED = ("name", "freeze", "lr_mult")


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

    def load(self) -> Callable[..., Any]:
        """Import and return the factory."""
        if callable(self.target):
            return self.target
        module_name, _, attr = self.target.partition(":")
        try:
            module = importlib.import_module(module_name)
            return getattr(module, attr) if attr else module
        except Exception as exc:  # report which plugin broke, not a traceback
            raise PluginError(
                f"{self.kind} '{self.name}' from {self.plugin} cannot be loaded "
                f"({self.target}): {type(exc).__name__}: {exc}"
            ) from exc

    def parameters(self) -> dict[str, inspect.Parameter] | None:
        """Recipe-settable parameters of the factory; None when it takes **kwargs."""
        sig = inspect.signature(self.load())
        if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            return None
        context = CONTEXT[self.kind]
        return {
            n: p
            for n, p in sig.parameters.items()
            if n not in context and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }

    def accepts_context(self) -> set[str]:
        sig = inspect.signature(self.load())
        if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            return set(CONTEXT[self.kind])
        return {n for n in CONTEXT[self.kind] if n in sig.parameters}


@dataclass
class Registry:
    components: dict[str, dict[str, Component]] = field(
        default_factory=lambda: {k: {} for k in KINDS}
    )

    def add(self, component: Component) -> None:
        table = self.components[component.kind]
        for name in (component.name, *component.aliases):
            if not isinstance(name, str) or not name:
                raise PluginError(f"{component.plugin}: component names must be non-empty strings, got {name!r}")
            other = table.get(name)
            if other is not None:
                raise PluginError(
                    f"{component.kind} '{name}' is registered by both {other.plugin} and "
                    f"{component.plugin}; uninstall one or skip it with FER_DISABLE_PLUGINS"
                )
            table[name] = component

    def names(self, kind: str) -> list[str]:
        """Primary names (no aliases), sorted."""
        return sorted({c.name for c in self.components[kind].values()})

    def get(self, kind: str, name: Any, path: str = "") -> Component:
        table = self.components[kind]
        if isinstance(name, str) and name in table:
            return table[name]
        where = f"{path}: " if path else ""
        installed = ", ".join(self.names(kind)) or "none"
        raise RecipeError(
            f"{where}unknown {kind} {name!r}; installed: {installed}{suggest(name, list(table))}"
        )

    def check_params(self, kind: str, spec: Mapping[str, Any], path: str) -> Component:
        """Validate a component spec ``{name: ..., **params}`` without building it."""
        if "name" not in spec:
            raise RecipeError(f"{path}.name: missing; every component needs a name")
        component = self.get(kind, spec["name"], f"{path}.name")
        params = component.parameters()
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
                    f"{path}.{key}: unknown parameter of '{component.name}'{suggest(key, list(params))}"
                    f" (accepted: {', '.join(params) or 'none'})"
                )
            _check_type(component, key, value, path)
        missing = [n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in spec]
        if missing:
            raise RecipeError(f"{path}.{missing[0]}: required parameter of '{component.name}' is missing")
        return component

    def build(self, kind: str, spec: Mapping[str, Any], path: str, context: Mapping[str, Any]) -> Any:
        """Check the spec, then call the factory with its params plus the context it accepts."""
        component = self.check_params(kind, spec, path)
        kwargs = {k: v for k, v in spec.items() if k not in RESERVED}
        accepted = component.accepts_context()
        kwargs.update({k: v for k, v in context.items() if k in accepted})
        return component.load()(**kwargs)


def _check_type(component: Component, key: str, value: Any, path: str) -> None:
    """Check a value against a simple annotation (int, float, bool, str, list, unions, Literal)."""
    try:
        hints = typing.get_type_hints(component.load())
    except Exception:
        return
    hint = hints.get(key)
    if hint is None or _matches(value, hint):
        return
    raise RecipeError(
        f"{path}.{key}: expected {_describe(hint)} for '{component.name}', got {value!r}"
    )


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
