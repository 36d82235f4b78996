"""Checks of a recipe's data before a run directory exists, and the fate of a run killed too early.

``check_data`` reads each source's manifest and confirms that every shard it lists is on disk
with a plausible size and that the recipe's classes are there, so ``fer run`` fails in one line
and leaves nothing behind instead of failing inside a DataLoader worker.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fer_core.data.shards import MANIFEST_NAME, read_manifest
from fer_core.data.sources import check_synth_settings, missing_va, source_roots
from fer_core.data.synth import EXPRESSIONS
from fer_core.dryrun import dry_build
from fer_core.errors import DataError, FerError
from fer_core.outputs import AFFECT_TASKS
from fer_core.registry import Registry

TAR_BLOCK = 512  # each member of a tar shard takes a header block and at least one data block


def will_be_drawn(data: Mapping[str, Any]) -> bool:
    """The synthetic set is drawn by `fer run` when ``data.synth`` is set and the root has no manifest."""
    return data.get("synth") is not None and not (Path(data["root"]) / MANIFEST_NAME).exists()


def check_data(data: Mapping[str, Any], splits: tuple[str, ...] = ("train",)) -> list[str] | None:
    """Every source readable, every shard present and plausibly sized, classes known.

    Returns the classes the run will use, or None when the data set is drawn at run time.
    """
    if not data.get("sources") and will_be_drawn(data):
        return None
    if not data.get("sources") and data.get("synth") is not None:
        check_synth_settings(data["root"], data["synth"])  # as `fer run` will
    roots = source_roots(data)
    classes = list(data.get("classes") or [])
    for root, _ in roots:
        if not root.is_dir():
            raise DataError(f"data.root: {root} does not exist; pack a data set there with `fer data pack` "
                            f"or `fer data synth`, or fix the path")
        manifest = read_manifest(root)
        classes = classes or list(manifest["classes"])
        unknown = [c for c in classes if c not in manifest["classes"]]
        if unknown:
            raise DataError(f"data.classes: {', '.join(unknown[:3])} not in {root} (it has "
                            f"{', '.join(manifest['classes'])}); fix data.classes")
        for split in splits:
            if split not in manifest["splits"]:
                raise DataError(f"{root}: no '{split}' split (has {', '.join(manifest['splits']) or 'none'}); "
                                f"pack it again with the split")
        for split, entry in manifest["splits"].items():
            for name, count in zip(entry["shards"], entry["shard_counts"]):
                _check_shard(root, split, name, count)
    return classes


FILE_PARAMS = ("checkpoint", "pretrained_file")  # component parameters that name a local file


def check_files(recipe: Mapping[str, Any]) -> None:
    """Every weights file a component names exists (``checkpoint``, ``pretrained_file``, ``*_file``)."""
    model = recipe["model"]
    specs = [(f"model.{part}", model[part]) for part in ("encoder", "backbone", "head") if part in model]
    for path, spec in specs:
        for key, value in spec.items():
            if (key in FILE_PARAMS or key.endswith("_file")) and isinstance(value, str) and value:
                if not Path(value).is_file():
                    raise FerError(f"{path}.{key}: {value} not found (relative paths start at {Path.cwd()}); "
                                   f"fix the path or copy the file there")


def check_recipe(recipe: Mapping[str, Any], registry: Registry) -> str:
    """The data, then a dry build of every component; a one-line summary of what was checked."""
    check_files(recipe)
    classes = check_data(recipe["data"])
    if recipe["task"] in AFFECT_TASKS:
        lacking = missing_va(recipe["data"])
        if lacking:
            raise DataError(lacking)
    drawn = classes is None
    classes = classes or list(recipe["data"].get("classes") or EXPRESSIONS)
    built = dry_build(recipe, registry, classes)
    data = "synthetic data drawn at run time" if drawn else f"data {len(classes)} classes"
    return f"{data}; dry build {built}"


def _check_shard(root: Path, split: str, name: str, count: int) -> None:
    path = root / name
    if not path.is_file():
        raise DataError(f"{root}: shard {name} of split '{split}' is listed in {MANIFEST_NAME} but missing; "
                        f"restore it or re-pack the data set (`fer data info` on it lists what is missing)")
    size, least = path.stat().st_size, TAR_BLOCK * (2 * count + 2)  # >= 1 member of 2 blocks per sample + end
    if size < least:
        raise DataError(f"{root}: shard {name} of split '{split}' is {size} bytes, too small for its {count} "
                        f"samples (at least {least}); it is truncated: restore it or re-pack the data set")


# -- a run killed before its first checkpoint ------------------------------------------
RUN_LEFTOVERS = {"recipe.yaml", "metrics.jsonl", "checkpoints", "tensorboard"}


def unstarted_run(run_dir: str | Path) -> Path | None:
    """``run_dir/recipe.yaml`` when the run has no checkpoint yet (killed before its first epoch ended)
    and holds nothing but what `fer run` writes before then; None when there is a checkpoint to resume."""
    run_dir = Path(run_dir)
    if (run_dir / "checkpoints" / "last.pt").is_file():
        return None
    recipe = run_dir / "recipe.yaml"
    if not recipe.is_file():
        raise FerError(f"{run_dir}: not a run directory of `fer run` (no recipe.yaml, no checkpoints/last.pt)")
    extra = sorted(p.name for p in run_dir.iterdir() if p.name not in RUN_LEFTOVERS)
    checkpoints = run_dir / "checkpoints"
    extra += [f"checkpoints/{p.name}" for p in (checkpoints.iterdir() if checkpoints.is_dir() else ())
              if not p.name.endswith(".tmp")]
    if extra:
        raise FerError(f"{run_dir}: has no checkpoints/last.pt but holds {extra[0]}; not touching it: "
                       f"start the run again with `fer run {recipe}`")
    return recipe


def remove_unstarted_run(run_dir: str | Path) -> None:
    """Delete a run directory that ``unstarted_run`` found holding only an unstarted run."""
    shutil.rmtree(run_dir)
