"""The component registry: lazy loading, context arguments, parameter and type checks, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from fer_core.errors import PluginError, RecipeError
from fer_core.plugins import PluginHost
from fer_core.registry import CONTEXT, Component, Registry

HOOKS = """
    from fer_core import hookimpl

    def build_inline(width: int = 1):
        return {"inline": width}

    @hookimpl
    def register_heads(register):
        impl = "fakeplug_heads_impl"
        register("needs", f"{impl}:build_needs", aliases=("needy",))
        register("ignores", f"{impl}:build_ignores")
        register("kwargs", f"{impl}:build_kwargs")
        register("typed", f"{impl}:build_typed")
        register("required", f"{impl}:build_required")
        register("ghost", "fakeplug_not_there:build")
        register("no_attr", f"{impl}:build_nothing")
        register("inline", build_inline)
"""
IMPL = """
    from __future__ import annotations
    from typing import Literal

    def build_needs(num_classes: int, width: int = 2):
        return {"num_classes": num_classes, "width": width}

    def build_ignores(width: int = 2):
        return {"width": width}

    def build_kwargs(**kwargs):
        return kwargs

    def build_typed(count: int = 1, rate: float = 0.5, flag: bool = False, label: str = "a",
                    sizes: list[int] = (1,), mode: Literal["a", "b"] = "a", maybe: float | None = None,
                    choice: int | str = 1, anything=None):
        return locals()

    def build_required(size: int, num_features: int = 0):
        return {"size": size, "num_features": num_features}
"""
HEAD_CONTEXT = {"num_features": 8, "num_classes": 5}


@pytest.fixture
def registry(fake_plugins) -> Registry:
    fake_plugins.module("fakeplug_heads_impl", IMPL)
    fake_plugins.dist("fer-fake-heads", {"heads": HOOKS})
    host = PluginHost(env={"FER_STRICT_PLUGINS": "1"})
    return host.registry


def test_components_are_imported_only_when_used(registry):
    assert "fakeplug_heads_impl" not in sys.modules  # listing never imports factories
    assert registry.get("head", "needs").plugin == "fer-fake-heads"
    assert "fakeplug_heads_impl" not in sys.modules
    registry.build("head", {"name": "needs"}, "model.head", HEAD_CONTEXT)
    assert "fakeplug_heads_impl" in sys.modules


def test_builtin_components_load_torch_only_when_built():
    script = textwrap.dedent("""
        import json, sys
        from fer_core.plugins import get_registry
        registry = get_registry()
        def loaded():
            return sorted(m for m in sys.modules if m in ("torch", "timm") or m.startswith("fer_core.builtin."))
        before = loaded()
        loss = registry.build("loss", {"name": "cross_entropy", "class_weights": "auto"}, "loss",
                              {"num_classes": 3, "class_counts": [1, 1, 2]})
        print(json.dumps({"before": before, "after": loaded(), "weights": loss.weight.tolist()}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         env={**os.environ, "FER_PLUGINS": "none"})
    result = json.loads(out.stdout)
    assert result["before"] == []
    assert result["after"] == ["fer_core.builtin.losses", "torch"]  # not timm, the heads, the augments...
    assert result["weights"] == pytest.approx([4 / 3, 4 / 3, 2 / 3])


def test_factories_get_the_context_they_name_and_only_that(registry):
    build = lambda name, **params: registry.build("head", {"name": name, **params}, "model.head", HEAD_CONTEXT)  # noqa: E731
    assert build("needs", width=3) == {"num_classes": 5, "width": 3}
    assert build("needy") == {"num_classes": 5, "width": 2}
    assert build("ignores") == {"width": 2}
    assert build("kwargs", width=1) == {"width": 1, **HEAD_CONTEXT}
    assert build("required", size=4) == {"size": 4, "num_features": 8}
    assert build("inline", width=7) == {"inline": 7}


def test_context_arguments_are_not_recipe_parameters(registry):
    needs = registry.get("head", "needs")
    assert list(needs.parameters()) == ["width"]
    assert needs.accepts_context() == {"num_classes"}
    assert registry.get("head", "kwargs").parameters() is None  # **kwargs: nothing to validate
    with pytest.raises(RecipeError) as info:
        registry.check_params("head", {"name": "needs", "num_classes": 3}, "model.head")
    assert str(info.value) == "model.head.num_classes: set by fer-core from the data and model; remove it from the recipe"


def test_unknown_parameter_suggests_the_nearest_one(registry):
    with pytest.raises(RecipeError) as info:
        registry.check_params("head", {"name": "needs", "widht": 3}, "model.head")
    assert str(info.value) == "model.head.widht: unknown parameter of 'needs'; did you mean 'width'? (accepted: width)"
    with pytest.raises(RecipeError, match=r"^model.head.zzz: unknown parameter of 'ignores' \(accepted: width\)$"):
        registry.check_params("head", {"name": "ignores", "zzz": 3}, "model.head")


def test_missing_required_parameter_and_missing_name(registry):
    with pytest.raises(RecipeError, match="^model.head.size: required parameter of 'required' is missing$"):
        registry.check_params("head", {"name": "required"}, "model.head")
    with pytest.raises(RecipeError, match="^model.head.name: missing; every component needs a name$"):
        registry.check_params("head", {"width": 2}, "model.head")


def test_unknown_component_lists_the_installed_ones_and_suggests(registry):
    installed = ", ".join(sorted(["ghost", "ignores", "inline", "kwargs", "needs", "no_attr", "required", "typed",
                                  *PluginHost(env={"FER_PLUGINS": "builtin"}).registry.names("head")]))
    assert "linear, mlp" in installed
    with pytest.raises(RecipeError) as info:
        registry.check_params("head", {"name": "lineer"}, "model.head")
    assert str(info.value) == f"model.head.name: unknown head 'lineer'; installed: {installed}; did you mean 'linear'?"
    with pytest.raises(RecipeError) as info:
        registry.get("head", 5, "model.head.name")
    assert str(info.value) == f"model.head.name: unknown head 5; installed: {installed}"


def test_names_are_primary_names_and_aliases_resolve(registry):
    assert "needy" not in registry.names("head")
    assert registry.get("head", "needy") is registry.get("head", "needs")


@pytest.mark.parametrize("params", [
    {"count": 3, "rate": 1, "flag": True, "label": "b", "sizes": [1, 2], "mode": "b", "maybe": None,
     "choice": "x", "anything": {"a": 1}},
    {"rate": 0.1, "maybe": 2, "choice": 4, "sizes": []},
])
def test_parameter_types_from_annotations_accept(registry, params):
    registry.check_params("head", {"name": "typed", **params}, "model.head")


@pytest.mark.parametrize("key, value, expected", [
    ("count", 1.5, "an integer"),
    ("count", True, "an integer"),
    ("rate", "fast", "a number"),
    ("flag", 1, "true/false"),
    ("label", 3, "a string"),
    ("sizes", 3, "a list"),
    ("mode", "c", "one of 'a', 'b'"),
    ("maybe", "x", "a number or null"),
    ("choice", 1.0, "an integer or a string"),
])
def test_parameter_types_from_annotations_reject(registry, key, value, expected):
    with pytest.raises(RecipeError) as info:
        registry.check_params("head", {"name": "typed", key: value}, "model.head")
    assert str(info.value) == f"model.head.{key}: expected {expected} for 'typed', got {value!r}"


def test_freeze_is_read_by_the_core_not_passed_to_the_factory(registry):
    assert registry.build("head", {"name": "ignores", "freeze": True}, "model.head", HEAD_CONTEXT) == {"width": 2}


def test_a_factory_that_cannot_be_imported_names_its_plugin(registry):
    with pytest.raises(PluginError) as info:
        registry.build("head", {"name": "ghost"}, "model.head", HEAD_CONTEXT)
    assert str(info.value) == ("model.head 'ghost' (fer-fake-heads 1.0): target fakeplug_not_there:build cannot be loaded: "
                               "ModuleNotFoundError: No module named 'fakeplug_not_there'")
    with pytest.raises(PluginError, match="model.head 'no_attr' \\(fer-fake-heads 1.0\\): target .* cannot be loaded: AttributeError"):
        registry.check_params("head", {"name": "no_attr"}, "model.head")


def test_adding_a_taken_name_or_alias_names_both_plugins():
    registry = Registry()
    registry.add(Component("loss", "focal", "a:b", plugin="fer-one"))
    with pytest.raises(PluginError, match="^loss 'focal' is registered by both fer-one and fer-two; "):
        registry.add(Component("loss", "other", "a:b", plugin="fer-two", aliases=("focal",)))
    registry.add(Component("augment", "focal", "a:b", plugin="fer-two"))  # names are per kind


def test_every_kind_has_its_context():
    assert set(CONTEXT) == {"encoder", "backbone", "head", "loss", "augment", "detector"}
    assert CONTEXT["detector"] == ()  # a detector is built from its parameters alone
    assert CONTEXT["head"] == ("num_features", "num_classes")
    assert CONTEXT["backbone"] == ("latent_shape", "image_size", "in_chans")
