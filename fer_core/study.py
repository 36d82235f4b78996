"""`fer study`: run a list of recipes (times a grid of overrides) and write one comparison.

A study file::

    name: approaches
    out: runs/studies                  # optional; the study writes <out>/<name>/
    metric: accuracy                   # optional; the metric the plot shows
    overrides: [train.epochs=3]        # optional; applied to every run
    runs:                              # recipe paths are relative to the study file
      - {recipe: ../quickstart.yaml, label: cnn}
      - {recipe: ../vit-tiny.yaml, label: vit, set: [optim.lr=3.0e-4]}
    grid:                              # optional; every run once per combination
      data.train_fraction: [0.1, 0.25, 0.5, 1.0]

Recipe paths are relative to the study file; ``out`` and the recipes' data paths to the working
directory. A run's recipe is: its file < the study's overrides < ``fer study -s`` < the run's
``set`` < its grid values. Every recipe of every combination is validated (with its data
directory and the files its components read) before the first run starts. Runs go one
after the other in this process; a failing run is recorded with its one-line error and the
study goes on. ``<out>/<name>/study.json`` records each run's directory, so running the study
again skips finished runs, resumes a killed one from its last checkpoint and retries failed ones.
The comparison (results.json/.md/.csv and a plot) is rewritten after every run.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

import yaml

from fer_core.errors import FerError, RecipeError
from fer_core.plugins import get_registry
from fer_core.recipe import METRICS, dump, load_recipe, read_yaml
from fer_core.registry import suggest
from fer_core.study_report import write_results

STUDY_KEYS = ("name", "description", "out", "metric", "overrides", "runs", "grid")
RUN_KEYS = ("recipe", "label", "set")
FILE_PARAMS = ("checkpoint", "pretrained_file")  # component parameters that name files read at build time


@dataclass
class StudyRun:
    """One recipe with one combination of grid values."""

    id: str  # unique and filesystem-safe: label plus grid values
    label: str  # the approach (the series of the plot)
    settings: dict[str, Any]  # grid key -> value for this run
    recipe_path: Path
    overrides: list[str]
    recipe: dict[str, Any] = field(default_factory=dict)  # resolved and validated


@dataclass
class Study:
    name: str
    path: Path
    out_dir: Path  # <out>/<name>
    metric: str
    grid: dict[str, list[Any]]
    runs: list[StudyRun]
    description: str = ""


# -- the study file ---------------------------------------------------------------------------------
def load_study(path: str | Path, out: str | None = None, extra_overrides: tuple[str, ...] = ()) -> Study:
    """Read and check a study file and resolve every run's recipe (one-line RecipeErrors)."""
    path = Path(path)
    spec = read_yaml(path)
    where = path.name
    for key in spec:
        if key not in STUDY_KEYS:
            raise RecipeError(f"{where}: {key}: unknown key in a study file{suggest(key, STUDY_KEYS)}")
    name = _string(spec.get("name", path.stem), f"{where}: name")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise RecipeError(f"{where}: name: {name!r} must be letters, digits, '.', '_' or '-' (it names a folder)")
    metric = spec.get("metric", "accuracy")
    if metric not in METRICS or metric == "loss":
        raise RecipeError(f"{where}: metric: {metric!r} is not a test metric; choose from accuracy, f1_macro, "
                          f"f1_weighted{suggest(str(metric), METRICS[:3])}")
    common = _override_list(spec.get("overrides", []), f"{where}: overrides") + list(extra_overrides)
    grid = _grid(spec.get("grid") or {}, where)
    entries = spec.get("runs")
    if not isinstance(entries, list) or not entries:
        raise RecipeError(f"{where}: runs: expected a non-empty list of {{recipe: FILE, label: NAME, set: [...]}}")

    registry = get_registry()
    runs: list[StudyRun] = []
    for i, entry in enumerate(entries):
        recipe_file, label, own = _run_entry(entry, f"{where}: runs[{i}]")
        recipe_path = (path.parent / recipe_file).resolve()
        for values in itertools.product(*grid.values()):
            settings = dict(zip(grid, values))
            overrides = common + own + [f"{key}={json.dumps(value)}" for key, value in settings.items()]
            run = StudyRun(_run_id(label, settings), label, settings, recipe_path, overrides)
            context = f"{where}: runs[{i}] ({label}{''.join(f', {k}={v}' for k, v in settings.items())})"
            run.recipe = _resolve(run, registry, context)
            runs.append(run)
    seen: dict[str, int] = {}
    for run in runs:
        if run.id in seen:
            raise RecipeError(f"{where}: runs: two runs are both labelled {run.label!r}; give each its own label")
        seen[run.id] = 1
    out_root = Path(out or spec.get("out") or "runs/studies")
    return Study(name, path, out_root / name, metric, grid, runs, str(spec.get("description", "")))


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise RecipeError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _override_list(value: Any, where: str) -> list[str]:
    """``[key=value, ...]`` or ``{key: value, ...}`` -> override strings."""
    if isinstance(value, dict):
        return [f"{key}={json.dumps(item)}" for key, item in value.items()]
    if not isinstance(value, list) or not all(isinstance(v, str) and "=" in v for v in value):
        raise RecipeError(f"{where}: expected a list of key.path=value strings (or a mapping), got {value!r}")
    return list(value)


def _grid(grid: Any, where: str) -> dict[str, list[Any]]:
    if not isinstance(grid, dict):
        raise RecipeError(f"{where}: grid: expected a mapping of key.path: [values], got {grid!r}")
    for key, values in grid.items():
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*", key):
            raise RecipeError(f"{where}: grid: {key!r} is not a recipe key path such as data.train_fraction")
        if not isinstance(values, list) or not values:
            raise RecipeError(f"{where}: grid.{key}: expected a non-empty list of values, got {values!r}")
    return dict(grid)


def _run_entry(entry: Any, where: str) -> tuple[str, str, list[str]]:
    if isinstance(entry, str):
        entry = {"recipe": entry}
    if not isinstance(entry, dict) or "recipe" not in entry:
        raise RecipeError(f"{where}: expected {{recipe: FILE, label: NAME, set: [key=value, ...]}}, got {entry!r}")
    for key in entry:
        if key not in RUN_KEYS:
            raise RecipeError(f"{where}.{key}: unknown key; a run takes recipe, label and set{suggest(key, RUN_KEYS)}")
    recipe = _string(entry["recipe"], f"{where}.recipe")
    label = _string(str(entry.get("label", Path(recipe).stem)), f"{where}.label")
    return recipe, label, _override_list(entry.get("set", []), f"{where}.set")


def _run_id(label: str, settings: dict[str, Any]) -> str:
    parts = [label] + [f"{key.split('.')[-1]}={json.dumps(value, separators=(',', ':'))}"
                       for key, value in settings.items()]
    return re.sub(r"[^A-Za-z0-9_.=,-]+", "-", "_".join(parts)).strip("-")


def _resolve(run: StudyRun, registry, context: str) -> dict[str, Any]:
    """The validated recipe; also checks that its data and the files its components read exist."""
    try:
        recipe = load_recipe(run.recipe_path, run.overrides, registry=registry)
    except RecipeError as exc:
        raise RecipeError(f"{context}: {exc}") from None
    data = recipe["data"]
    roots = [s["root"] for s in data.get("sources") or []] or [data["root"]]
    for root in roots:
        if not (Path(root) / "dataset.json").is_file() and data.get("synth") is None:
            raise RecipeError(f"{context}: data.root: {root} has no dataset.json; pack it with `fer data pack` "
                              f"(paths in recipes are relative to the working directory)")
    for part, spec in recipe["model"].items():
        for key in FILE_PARAMS:
            if isinstance(spec.get(key), str) and not Path(spec[key]).expanduser().exists():
                raise RecipeError(f"{context}: model.{part}.{key}: {spec[key]} not found")
    return recipe


# -- running ----------------------------------------------------------------------------------------
def run_study(study: Study, console=None) -> list[dict[str, Any]]:
    """Run every unfinished run of ``study``; returns the result rows (also written to disk)."""
    from rich.console import Console

    console = console or Console()
    study.out_dir.mkdir(parents=True, exist_ok=True)
    state_path = study.out_dir / "study.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    records: dict[str, dict] = state.get("runs", {})
    for n, run in enumerate(study.runs, 1):
        header = f"[bold]study {study.name}[/] run {n}/{len(study.runs)}: {run.id}"
        kind, previous = _previous(study, run)
        if kind == "finished":
            records[run.id] = {"status": "finished", "run_dir": str(previous), "error": None}
            console.print(f"{header}: finished before, skipped ({previous})", highlight=False)
            continue
        # a killed run continues from its last checkpoint; a failed one starts afresh
        resume = previous if kind == "unfinished" and records.get(run.id, {}).get("status") != "failed" else None
        console.rule(header + (f" (resuming {resume})" if resume else ""))
        records[run.id] = record = {"status": "running", "run_dir": str(resume) if resume else None, "error": None}
        _save_state(state_path, study, records)
        _reset_peak_memory()
        from fer_core.train import run as train  # here: `fer plugins` (which lists `fer study`) must not import torch

        try:
            if resume:
                run_dir = train(None, resume=resume, console=console)
            else:
                run_dir = train(copy.deepcopy(run.recipe), out=str(_run_out(study, run)), console=console)
            record.update(status="finished", run_dir=str(run_dir))
        except KeyboardInterrupt:
            record.update(status="interrupted", run_dir=_latest_dir(study, run))
            _save_state(state_path, study, records)
            raise
        except Exception as exc:  # one run failing must not end the study
            message = str(exc).splitlines()[0] if str(exc) else ""
            error = message if isinstance(exc, FerError) else f"{type(exc).__name__}: {message}"
            record.update(status="failed", run_dir=_latest_dir(study, run), error=error)
            console.print(f"[red]run {run.id} failed:[/] {error}", highlight=False)
        _save_state(state_path, study, records)
        write_results(study, records, console=None)
    return write_results(study, records, console=console)


def _run_out(study: Study, run: StudyRun) -> Path:
    return study.out_dir / "runs" / run.id  # train.run adds <recipe name>/<timestamp>


def _same_recipe(run_dir: Path, run: StudyRun) -> bool:
    stored = run_dir / "recipe.yaml"
    return stored.is_file() and yaml.safe_load(stored.read_text()) == yaml.safe_load(dump(run.recipe))


def _previous(study: Study, run: StudyRun) -> tuple[str | None, Path | None]:
    """The newest earlier directory of this run with the same recipe: finished, or unfinished with a checkpoint."""
    for run_dir in sorted(_run_out(study, run).glob("*/*/"), reverse=True):
        if not _same_recipe(run_dir, run):
            continue
        if (run_dir / "summary.json").is_file():
            return "finished", run_dir
        if (run_dir / "checkpoints" / "last.pt").is_file():
            return "unfinished", run_dir
    return None, None


def _latest_dir(study: Study, run: StudyRun) -> str | None:
    dirs = sorted(_run_out(study, run).glob("*/*/"))
    return str(dirs[-1]) if dirs else None


def _save_state(path: Path, study: Study, records: dict[str, dict]) -> None:
    from fer_core.runs import write_json  # here: fer_core.runs imports torch, and `fer plugins` must not

    write_json(path, {"study": study.name, "file": str(study.path), "runs": records})


def _reset_peak_memory() -> None:
    """Let each run report its own peak memory rather than the study process's so far."""
    import sys

    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
    try:  # Linux: "5" resets the peak resident set size that getrusage reports
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


# -- the command ------------------------------------------------------------------------------------
@click.command("study")
@click.argument("study_file", type=click.Path())
@click.option("-s", "--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe key in every run (after the study's own overrides).")
@click.option("--out", type=click.Path(file_okay=False), help="Parent directory of the study (default: its out key).")
@click.option("--check", is_flag=True, help="Validate the study and list its runs without training.")
def study(study_file: str, overrides: tuple[str, ...], out: str | None, check: bool) -> None:
    """Run the recipes of STUDY_FILE (times its grid) and write one comparison.

    Writes <out>/<name>/results.{md,csv,json} and a plot; run it again to resume.
    """
    from rich.console import Console
    from rich.markup import escape

    console = Console()
    spec = load_study(study_file, out, overrides)
    console.print(f"[green]ok[/] study {escape(spec.name)}: {len(spec.runs)} runs validated -> "
                  f"{escape(str(spec.out_dir))}", highlight=False)
    if check:
        for run in spec.runs:
            model = run.recipe["model"]
            parts = " -> ".join(model[k]["name"] for k in ("encoder", "backbone", "head") if k in model)
            console.print(f"  {escape(run.id)}: {escape(str(run.recipe_path))} ({escape(parts)})", highlight=False)
        return
    run_study(spec, console)
