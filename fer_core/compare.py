"""`fer compare`: runs side by side, sorted by a metric, with their recipe differences."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from fer_core.errors import FerError


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def load_run(run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise FerError(f"{run_dir}: no summary.json; is it a finished run directory of `fer run`?")
    summary = json.loads(summary_path.read_text())
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text()) if (run_dir / "recipe.yaml").is_file() else {}
    return {"dir": run_dir, "summary": summary, "recipe": flatten(recipe)}


def differing_keys(recipes: Sequence[Mapping[str, Any]]) -> list[str]:
    keys = sorted(set().union(*recipes)) if recipes else []
    return [k for k in keys if k != "name" and len({json.dumps(r.get(k), sort_keys=True) for r in recipes}) > 1]


def compare_table(run_dirs: Sequence[str | Path], metric: str = "accuracy", worst_group: str | None = None):
    from rich.table import Table

    runs = [load_run(d) for d in run_dirs]
    runs.sort(key=lambda r: r["summary"]["test"].get(metric, float("-inf")), reverse=True)
    diffs = differing_keys([r["recipe"] for r in runs])
    table = Table(title=f"{len(runs)} runs sorted by test {metric}")
    for column in ("run", "accuracy", "f1_macro", "f1_weighted", "params (trainable)", "train s", "img/s"):
        table.add_column(column, justify="left" if column == "run" else "right")
    if worst_group:
        table.add_column(f"worst {worst_group}", justify="right")
    for key in diffs:
        table.add_column(key)
    for r in runs:
        s = r["summary"]
        table.add_row(
            f"{s['recipe']}\n{r['dir']}", *(f"{s['test'][m]:.4f}" for m in ("accuracy", "f1_macro", "f1_weighted")),
            f"{s['parameters']:,} ({s['trainable_parameters']:,})", f"{s['train_time_s']:.0f}",
            f"{s['inference_images_per_s']:.0f}", *_worst_cell(r, worst_group),
            *(str(r["recipe"].get(k, "-")) for k in diffs))
    if worst_group:
        table.caption = f"worst {worst_group}: from RUN/eval/<test split>/report.json (`fer eval RUN --by {worst_group}`)"
    return table


def _worst_cell(run: Mapping[str, Any], attribute: str | None) -> list[str]:
    """The worst group of ``attribute`` in the run's ``fer eval --by`` report of its test split (RUN/eval/<split>/)."""
    if not attribute:
        return []
    path = run["dir"] / "eval" / run["summary"].get("test_split", "test") / "report.json"
    groups = json.loads(path.read_text()).get("groups") or {} if path.is_file() else {}
    worst = groups.get(attribute, {}).get("worst")
    return [f"{worst['accuracy']:.4f} ({worst['group']})" if worst else "-"]
