"""The recipes that ship as package data, and how a recipe reference finds its file.

fer-core's recipes are the ``*.yaml`` files beside this module; a plugin ships its own in a
``recipes/`` folder of the package its ``fer_core`` entry point names (found without importing
it). Every recipe command takes a file path or one of these names:

    fer run quickstart             # ./quickstart or ./quickstart.yaml if there is one, else the packaged recipe
    fer run ./my.yaml              # a file path always wins over a packaged name
    extends: quickstart            # in any recipe: a file beside it (with or without .yaml), else packaged
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from fer_core.errors import RecipeError
from fer_core.registry import suggest

GROUP = "fer_core"  # the plugins' entry-point group (fer_core.plugins.GROUP)
CORE = "fer-core"
SUFFIX = ".yaml"
HERE = Path(__file__).parent


@dataclass(frozen=True)
class Packaged:
    """One shipped recipe: its name (the file stem), its file and the distribution it came with."""

    name: str
    path: Path
    origin: str


def recipe_folders() -> list[tuple[str, Path]]:
    """(distribution, folder) of fer-core, then of each plugin whose package has a recipes/ folder."""
    folders = [(CORE, HERE)]
    seen = {HERE}
    for ep in sorted(metadata.entry_points(group=GROUP), key=lambda e: e.name):
        package = ep.value.split(":")[0].split(".")[0]
        try:
            spec = importlib.util.find_spec(package)  # locates the package; runs none of its code
        except (ImportError, ValueError):
            continue  # a broken plugin: `fer plugins` reports it
        for location in (spec.submodule_search_locations or []) if spec else []:
            folder = Path(location) / "recipes"
            if folder.is_dir() and folder not in seen:
                seen.add(folder)
                folders.append((ep.dist.name if ep.dist else package, folder))
    return folders


def shipped() -> list[Packaged]:
    """Every shipped recipe: fer-core's, then each plugin's (a name may appear twice: see ``find``)."""
    return [Packaged(path.stem, path, origin) for origin, folder in recipe_folders()
            for path in sorted(folder.glob(f"*{SUFFIX}"))]


def find(name: str, recipes: list[Packaged] | None = None) -> Packaged | None:
    """The shipped recipe called ``name``, None if there is none; a name shipped twice is an error."""
    matches = [r for r in (shipped() if recipes is None else recipes) if r.name == name]
    if len(matches) > 1:
        raise RecipeError(f"recipe {name!r} is shipped by both {matches[0].origin} ({matches[0].path}) and "
                          f"{matches[1].origin} ({matches[1].path}); run the one you mean by its path")
    return matches[0] if matches else None


def packaged_name(reference: str | Path) -> str | None:
    """The packaged name a reference may mean: a bare name, with or without ``.yaml``."""
    text = str(reference)
    if not text or "/" in text or "\\" in text:
        return None
    return text[: -len(SUFFIX)] if text.endswith(SUFFIX) else text


def locate(reference: str | Path, near: Path | None = None, context: str = "") -> Path:
    """The file a recipe reference means: a path (relative to ``near`` when given; ``.yaml`` may be left
    out), else a packaged name.

    ``context`` starts the error message (e.g. ``"base.yaml: extends: "``).
    """
    path = Path(near, reference) if near is not None else Path(reference)
    for candidate in (path, path.with_name(path.name + SUFFIX)) if path.suffix != SUFFIX else (path,):
        if candidate.is_file():
            return candidate
    name = packaged_name(reference)
    recipes = shipped()
    found = find(name, recipes) if name else None
    if found is not None:
        return found.path
    looked = f"looked in {near} and the packaged recipes" if near is not None else "nor a packaged recipe"
    hint = suggest(name, [r.name for r in recipes]) if name else ""
    raise RecipeError(f"{context}{reference}: recipe file not found, {looked} "
                      f"(`fer recipe list` shows them){hint}")
