"""What state a run directory is in, read from its files: finished, running or killed, crashed.

* finished: ``summary.json`` is there and readable.
* running or killed: the run has started (``recipe.yaml``) but has no summary; a process may
  still be writing it, or it was killed. ``metrics.jsonl`` says how many epochs it completed.
* crashed: the run recorded that it stopped on an error (``failed.json``, written by
  ``record_failure``), or a study recorded it as failed.
* unreadable: the files are damaged or it is not a run directory; the reason is given.

Nothing here raises on a broken directory: a table of many runs must survive one bad run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

FINISHED, UNFINISHED, CRASHED, UNREADABLE = "finished", "running or killed", "crashed", "unreadable"
FAILURE_FILE = "failed.json"


@dataclass
class RunState:
    dir: Path
    status: str
    summary: dict[str, Any] | None = None
    recipe: dict[str, Any] = field(default_factory=dict)  # as written to recipe.yaml ({} when missing)
    epoch: int | None = None  # epochs completed, from metrics.jsonl
    epochs: int | None = None  # epochs planned, from the recipe
    error: str | None = None  # why it crashed or is unreadable

    def describe(self) -> str:
        """One line: the status, how far it got and why it stopped."""
        return status_text(self.status, self.epoch, self.epochs, self.error)


def status_text(status: str, epoch: int | None = None, epochs: int | None = None, error: str | None = None) -> str:
    text = status + (f": {error}" if error else "")
    if status != FINISHED and epoch is not None:
        text += f" (after epoch {epoch}" + (f"/{epochs})" if epochs else ")")
    return text


def run_state(run_dir: str | Path) -> RunState:
    """The state of one run directory (never raises on damaged files)."""
    run_dir = Path(run_dir)
    recipe, problem = _read(run_dir / "recipe.yaml", yaml.safe_load)
    recipe = recipe if isinstance(recipe, dict) else {}
    epochs = (recipe.get("train") or {}).get("epochs") if isinstance(recipe.get("train"), dict) else None
    state = RunState(run_dir, UNFINISHED, recipe=recipe, epoch=last_epoch(run_dir), epochs=epochs)
    summary, summary_problem = _read(run_dir / "summary.json", json.loads)
    failure, _ = _read(run_dir / FAILURE_FILE, json.loads)
    if isinstance(summary, dict):
        state.status, state.summary = FINISHED, summary
    elif summary_problem and (run_dir / "summary.json").exists():
        state.status, state.error = UNREADABLE, summary_problem
    elif isinstance(failure, dict):
        state.status, state.error = CRASHED, str(failure.get("error") or "no message")
    elif problem:
        state.status, state.error = UNREADABLE, ("not a run directory of `fer run` (no recipe.yaml)"
                                                 if not (run_dir / "recipe.yaml").exists() else problem)
    return state


def last_epoch(run_dir: Path) -> int | None:
    """The last epoch ``metrics.jsonl`` records as complete (None when there is none)."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return None
    epochs = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:  # a line cut by a kill
            continue
        if isinstance(record, dict) and record.get("kind") == "epoch" and isinstance(record.get("epoch"), int):
            epochs.append(record["epoch"])
    return max(epochs, default=None)


def record_failure(run_dir: str | Path, error: str) -> None:
    """Mark a run as crashed with its one-line error."""
    from fer_core.runs import write_json  # here: runs imports torch, and cli.py (`fer plugins`) imports this module

    write_json(Path(run_dir) / FAILURE_FILE, {"status": CRASHED, "error": error})


def started_run(parent: Path, since: float) -> Path | None:
    """The newest run directory under ``parent`` (``<out>/<recipe name>``) made at or after ``since``."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(since))  # run directories are named by their start
    made = [d for d in parent.glob("*/") if d.name[:len(stamp)] >= stamp and (d / "recipe.yaml").is_file()]
    return max(made, key=lambda d: d.name, default=None)


def study_status(record: Mapping[str, Any]) -> str:
    """A study's record of a run (study.json) in the words of this module."""
    status = record.get("status", "pending")
    return {"running": UNFINISHED, "failed": "failed"}.get(status, status)


def _read(path: Path, parse) -> tuple[Any, str | None]:
    try:
        return parse(path.read_text()), None
    except FileNotFoundError:
        return None, f"no {path.name}"
    except (OSError, ValueError, yaml.YAMLError) as exc:
        return None, f"{path.name} is damaged ({type(exc).__name__})"
