"""``fer plugin new``: write a complete, installable plugin package with a working example.

    new_plugin("tiny-cnn", "backbone", "plugins")  # -> plugins/fer-tiny-cnn/

writes ``pyproject.toml`` (the ``fer_core`` entry point, a dependency on fer-core),
``src/fer_tiny_cnn/__init__.py`` (the hook implementation), the example component
of the chosen kind (``fer_core.scaffold.examples``), tests that run fer-core's
conformance suite, a README, an MIT ``LICENSE``, ``py.typed`` and a ``MANIFEST.in`` that
puts the tests in the sdist. The package installs with pip and passes its
own tests unchanged. Nothing here imports torch.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from string import Template

from fer_core.errors import FerError
from fer_core.plugins import HOOKS
from fer_core.registry import CONTEXT, KINDS
from fer_core.scaffold import templates
from fer_core.scaffold.examples import EXAMPLES

__all__ = ["KINDS", "PluginNames", "new_plugin", "plugin_files", "plugin_names"]

NAME = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")


@dataclass(frozen=True)
class PluginNames:
    """The spellings of one plugin name: ``tiny-cnn`` -> fer-tiny-cnn / fer_tiny_cnn / tiny_cnn."""

    entry: str  # entry-point name, e.g. tiny-cnn
    dist: str  # distribution, e.g. fer-tiny-cnn
    package: str  # import package, e.g. fer_tiny_cnn
    component: str  # the name recipes use, e.g. tiny_cnn


def plugin_names(name: str) -> PluginNames:
    """Validate NAME (letters, digits, - or _; an optional fer- prefix is dropped) and spell it out."""
    raw = name.strip().lower()
    for prefix in ("fer-", "fer_"):
        if raw.startswith(prefix):
            raw = raw[len(prefix):]
    if not NAME.match(raw):
        raise FerError(f"plugin name {name!r}: use lowercase letters, digits and - or _, starting with a "
                       f"letter (e.g. tiny-cnn)")
    slug = raw.replace("_", "-")
    component = slug.replace("-", "_")
    if slug == "core" or keyword.iskeyword(component):
        raise FerError(f"plugin name {name!r} is reserved; choose another")
    return PluginNames(entry=slug, dist=f"fer-{slug}", package=f"fer_{component}", component=component)


def plugin_files(names: PluginNames, kind: str) -> dict[str, str]:
    """Relative path -> text of every file of the new package."""
    if kind not in EXAMPLES:
        raise FerError(f"unknown kind {kind!r}; kinds are {', '.join(EXAMPLES)}")
    from fer_core import __version__

    example = EXAMPLES[kind]
    values = {
        "dist": names.dist,
        "entry": names.entry,
        "package": names.package,
        "component": names.component,
        "kind": kind,
        "hook": HOOKS[kind],
        "module": example.module,
        "core_version": __version__,
        "context": ", ".join(CONTEXT[kind]) or "none",
        "year": str(date.today().year),
        "dependencies": example.dependencies,
    }
    fill = lambda text: Template(text).substitute(values)  # noqa: E731
    values["summary"] = fill(example.summary)
    values["recipe"] = fill(example.recipe)
    values["test_params"] = "{" + ", ".join(f'"{k}": {v!r}' for k, v in example.test_params.items()) + "}"
    values["behaviour_test"] = fill(example.behaviour_test)
    return {
        "pyproject.toml": fill(templates.PYPROJECT),
        "README.md": fill(templates.README),
        f"src/{names.package}/__init__.py": fill(templates.HOOKS),
        f"src/{names.package}/{example.module}.py": fill(example.source),
        f"src/{names.package}/py.typed": "",
        f"tests/test_{names.package}.py": fill(templates.TESTS),
        "LICENSE": fill(templates.LICENSE),
        "MANIFEST.in": templates.MANIFEST,
    }


def _check_free(names: PluginNames, kind: str) -> None:
    """Refuse a component name or distribution that is already installed: the two would clash."""
    from importlib import metadata

    from fer_core.plugins import get_registry

    taken = get_registry().find(kind, names.component)
    if taken is not None:
        raise FerError(f"{kind} '{names.component}' is already registered by {taken.plugin}; choose another name")
    try:
        metadata.distribution(names.dist)
    except metadata.PackageNotFoundError:
        return
    raise FerError(f"a distribution named {names.dist} is already installed; choose another name")


def new_plugin(name: str, kind: str, directory: str | Path = ".", check_installed: bool = True) -> Path:
    """Write the package ``<directory>/fer-<name>/`` and return its path; never overwrites anything."""
    names = plugin_names(name)
    files = plugin_files(names, kind)
    root = Path(directory) / names.dist
    if root.exists():
        raise FerError(f"{root} already exists; choose another name or --dir, or remove it first")
    if check_installed:
        _check_free(names, kind)
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root
