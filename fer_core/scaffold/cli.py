"""``fer plugin``: commands for plugin authors (registered on the main group by fer_core.cli)."""

from __future__ import annotations

import click
from rich.console import Console
from rich.markup import escape

from fer_core.registry import KINDS

console = Console()


@click.group()
def plugin() -> None:
    """Write new plugins."""


@plugin.command("new")
@click.argument("name")
@click.option("--kind", type=click.Choice(KINDS), default="backbone", show_default=True,
              help="Kind of the example component.")
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=".", show_default=True,
              help="Folder to create fer-NAME/ in.")
def new(name: str, kind: str, directory: str) -> None:
    """Write a complete plugin package fer-NAME with a working example KIND.

    The package (pyproject with the fer_core entry point, hook module, example
    component, conformance tests, README) installs with pip and passes its tests.
    """
    from fer_core.scaffold import new_plugin, plugin_names

    root = new_plugin(name, kind, directory)
    names = plugin_names(name)
    console.print(f"wrote [bold]{root}[/]: {kind} '{names.component}' in {names.dist}", highlight=False)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        console.print(f"  {path.relative_to(root)}", highlight=False)
    console.print(escape(f"next:\n  pip install -e '{root}[test]'\n  pytest {root}\n  fer plugins"), highlight=False)
