"""``fer recipe list`` and ``fer recipe copy``: the packaged recipes, what each needs, a copy to edit."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fer_core.errors import FerError, RecipeError
from fer_core.recipes import Packaged, find, packaged_name, shipped
from fer_core.registry import suggest

FILE_KEYS = ("checkpoint", "pretrained_file")  # component parameters that name a file to provide
LABELS = {"data": "data", "files": "file", "plugins": "plugin", "error": "error"}  # needs -> table lines


def needs(recipe: Packaged, registry) -> dict[str, list[str]]:
    """What running ``recipe`` takes beyond fer-core: data, pretrained files, plugin distributions."""
    from fer_core.recipe import load_chain

    chain = load_chain(recipe.path)
    data = chain.get("data", {})
    if "synth" in data:
        found = [f"synthetic faces in {data.get('root')} (drawn on the first run)"]
    else:
        found = [str(s["root"]) for s in data.get("sources") or [] if isinstance(s, Mapping) and "root" in s]
        found = found or [str(data.get("root", "?"))]
    files, plugins = [], []
    for kind, spec in _components(chain):
        files += [str(spec[key]) for key in FILE_KEYS if isinstance(spec.get(key), str)]
        if spec.get("pretrained") is True:
            files.append(f"timm's {spec.get('model', spec['name'])} weights (downloaded)")
        try:
            dist = registry.get(kind, spec["name"]).plugin
        except RecipeError:
            dist = f"{kind} {spec['name']!r} (not installed)"
        if dist != "fer-core" and dist not in plugins:
            plugins.append(dist)
    return {"data": found, "files": files, "plugins": plugins}


def _components(chain: Mapping[str, Any]):
    """(kind, spec) of every component a raw recipe names."""
    for kind, spec in (chain.get("model") or {}).items():
        yield kind, spec
    if "loss" in chain:
        yield "loss", chain["loss"]
    for specs in (chain.get("augment") or {}).values():
        for spec in specs or []:
            yield "augment", spec


def describe(recipe: Packaged, registry) -> dict[str, Any]:
    """One row of ``fer recipe list``; a recipe that does not load shows its error instead of its needs."""
    from fer_core.recipe import read_yaml

    row = {"name": recipe.name, "origin": recipe.origin, "description": "", "file": str(recipe.path)}
    try:
        row["description"] = " ".join(str(read_yaml(recipe.path).get("description", "")).split())
        row["needs"] = needs(recipe, registry)
    except RecipeError as exc:
        row["needs"] = {"error": [str(exc)]}
    return row


@click.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def recipe_list(as_json: bool) -> None:
    """The recipes shipped with fer-core and the installed plugins, and what each needs."""
    from fer_core.plugins import get_registry

    registry = get_registry()
    rows = [describe(recipe, registry) for recipe in shipped()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="packaged recipes (fer run NAME, fer recipe copy NAME)")
    for column in ("recipe", "from", "description", "needs"):
        table.add_column(column)
    for row in rows:
        lines = [f"{LABELS[key]}: {value}" for key, values in row["needs"].items() for value in values]
        table.add_row(escape(row["name"]), escape(row["origin"]), escape(row["description"]),
                      escape("\n".join(lines)))
    Console().print(table)


@click.command("copy")
@click.argument("name")
@click.argument("dest", required=False, type=click.Path())
@click.option("--force", is_flag=True, help="Overwrite DEST if it exists.")
def recipe_copy(name: str, dest: str | None, force: bool) -> None:
    """Write the packaged recipe NAME to DEST (default ./NAME.yaml) to edit it."""
    recipes = shipped()
    recipe = find(packaged_name(name) or name, recipes)
    if recipe is None:
        raise RecipeError(f"{name}: no packaged recipe of that name (`fer recipe list` shows them)"
                          f"{suggest(packaged_name(name) or name, [r.name for r in recipes])}")
    target = Path(dest) if dest else Path(f"{recipe.name}.yaml")
    if target.is_dir():
        target = target / recipe.path.name
    if target.exists() and not force:
        raise FerError(f"{target}: exists; pass --force to overwrite it, or another DEST")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(recipe.path, target)
    click.echo(f"wrote {target} (from {recipe.origin}); run it with: fer run {target}")  # the file wins over the name
