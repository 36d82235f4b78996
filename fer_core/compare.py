"""`fer compare`: runs side by side, sorted by a metric, with their status and recipe differences.

A run that did not finish (still running, killed, crashed, damaged) is listed with its status
and how far it got instead of stopping the comparison. The rows can be printed as a table that
fits the terminal or written as Markdown, CSV or JSON.

Classification columns (accuracy, F1) are shown when a run has them (or no run has valence/arousal
scores); valence/arousal columns (CCC per dimension, their mean, RMSE) when a run has them, so a
table may mix classification, valence/arousal and multi-task runs (a run's missing cells are "-").
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.text import Text

from fer_core.errors import FerError
from fer_core.run_status import FINISHED, run_state
from fer_core.tables import Col, Fitted, fit

CLASS_METRICS = ("accuracy", "f1_macro", "f1_weighted")
AFFECT_METRICS = ("ccc_mean", "valence_ccc", "arousal_ccc", "valence_rmse", "arousal_rmse")
METRICS = CLASS_METRICS + AFFECT_METRICS  # what --metric may sort by
LOWER_IS_BETTER = ("valence_rmse", "arousal_rmse")
FORMATS = ("table", "md", "csv", "json")
# (row key, rich column, Markdown/CSV title, format of a value) after the run, its directory and its status
CLASS_NUMBERS = (
    ("accuracy", Col("accuracy"), "accuracy", "{:.4f}"),
    ("f1_macro", Col("macro F1"), "macro F1", "{:.4f}"),
    ("f1_weighted", Col("weighted F1"), "weighted F1", "{:.4f}"),
)
AFFECT_NUMBERS = (
    ("valence_ccc", Col("valence CCC"), "valence CCC", "{:.4f}"),
    ("arousal_ccc", Col("arousal CCC"), "arousal CCC", "{:.4f}"),
    ("ccc_mean", Col("CCC mean"), "CCC mean", "{:.4f}"),
    ("valence_rmse", Col("valence RMSE", drop=6), "valence RMSE", "{:.4f}"),
    ("arousal_rmse", Col("arousal RMSE", drop=5), "arousal RMSE", "{:.4f}"),
)
OTHER_NUMBERS = (
    ("parameters", Col("params", drop=1), "parameters", "{:,}"),
    ("trainable_parameters", Col("trainable", drop=2), "trainable", "{:,}"),
    ("train_time_s", Col("train s", drop=3), "train s", "{:.0f}"),
    ("inference_images_per_s", Col("img/s", drop=4), "img/s", "{:.0f}"),
)
NUMBERS = CLASS_NUMBERS + AFFECT_NUMBERS + OTHER_NUMBERS


def numbers(rows: Sequence[Mapping[str, Any]]) -> tuple:
    """The number columns the rows hold (``compare_rows`` keeps only the groups some run has)."""
    return tuple(n for n in NUMBERS if any(n[0] in row for row in rows))


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def differing_keys(recipes: Sequence[Mapping[str, Any]]) -> list[str]:
    keys = sorted(set().union(*recipes)) if recipes else []
    return [k for k in keys if k != "name" and len({json.dumps(r.get(k), sort_keys=True) for r in recipes}) > 1]


def compare_rows(run_dirs: Sequence[str | Path], metric: str = "accuracy", worst_group: str | None = None
                 ) -> tuple[list[dict[str, Any]], list[str]]:
    """One plain row per run (finished runs first, best ``metric`` first) and the recipe keys that differ.

    ``worst_group``: an attribute whose worst group (from ``fer eval RUN --by ATTRIBUTE``) each row gets.
    Rows hold the classification and the valence/arousal keys only when some run has them.
    """
    states = [run_state(d) for d in run_dirs]
    recipes = [flatten(s.recipe) for s in states]
    diffs = differing_keys([r for r, s in zip(recipes, states) if s.recipe])
    rows = []
    for state, recipe in zip(states, recipes):
        summary = state.summary or {}
        row: dict[str, Any] = {"run": summary.get("recipe") or state.recipe.get("name") or "-",
                               "dir": str(state.dir), "status": state.status, "note": state.describe(),
                               "epochs": summary.get("epochs", state.epoch), "error": state.error}
        test = summary.get("test") if isinstance(summary.get("test"), dict) else {}
        for key, *_ in NUMBERS:
            value = test.get(key, summary.get(key))
            row[key] = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        if worst_group:
            row["worst_group"] = _worst_group(state.dir, summary, worst_group)
        row.update({key: recipe.get(key) for key in diffs})
        rows.append(row)
    has_affect = any(row[key] is not None for row in rows for key, *_ in AFFECT_NUMBERS)
    has_class = any(row[key] is not None for row in rows for key, *_ in CLASS_NUMBERS) or not has_affect
    for group, shown in ((CLASS_NUMBERS, has_class), (AFFECT_NUMBERS, has_affect)):
        for row in rows if not shown else ():
            for key, *_ in group:
                del row[key]
    sign = 1.0 if metric in LOWER_IS_BETTER else -1.0

    def order(row: dict[str, Any]) -> tuple:
        score = row.get(metric)
        return (row["status"] != FINISHED, score is None, sign * (score or 0.0))

    rows.sort(key=order)  # stable: unfinished runs keep the order they were given in
    return rows, diffs


def compare_table(run_dirs: Sequence[str | Path], metric: str = "accuracy", worst_group: str | None = None):
    """A rich renderable that fits the console it is printed on."""
    rows, diffs = compare_rows(run_dirs, metric, worst_group)
    return Fitted(lambda width: [rich_table(rows, diffs, metric, width, worst_group)])


def rich_table(rows: list[dict[str, Any]], diffs: list[str], metric: str, width: int, worst_group: str | None = None):
    shown = numbers(rows)
    columns = [Col("run", "left", wrap=True), Col("status", "left", wrap=True), *(col for _, col, _, _ in shown)]
    if worst_group:
        columns.append(Col(f"worst {worst_group}", "right", wrap=True))
    if diffs:
        columns.append(Col("recipe differences", "left", wrap=True))
    cells = []
    for row in rows:
        line = [f"{row['run']}\n{row['dir']}",
                Text(row["note"], style="green" if row["status"] == FINISHED else "red"),
                *(_number(row[key], pattern) for key, _, _, pattern in shown)]
        if worst_group:
            line.append(_worst_text(row["worst_group"]))
        if diffs:
            line.append("\n".join(f"{key}={_value(row[key])}" for key in diffs))
        cells.append(line)
    caption = "fer compare --format md|csv|json writes every column"
    if worst_group:
        caption += f"; worst {worst_group}: from `fer eval RUN --by {worst_group}` (RUN/eval/<test split>/)"
    return fit(columns, cells, width, title=f"{len(rows)} runs sorted by test {metric}", caption=caption)


def compare_text(rows: list[dict[str, Any]], diffs: list[str], fmt: str, metric: str = "accuracy") -> str:
    """The comparison as Markdown, CSV or JSON text."""
    if fmt == "json":
        return json.dumps({"metric": metric, "differing_keys": diffs, "runs": rows}, indent=2) + "\n"
    worst = [key for key in ("worst_group",) if any(key in row for row in rows)]
    shown = numbers(rows)
    titles = ["run", "dir", "status", *(title for _, _, title, _ in shown), *(["worst group"] if worst else []),
              *diffs]
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(titles)
        for row in rows:
            writer.writerow([row["run"], row["dir"], row["note"], *(row[key] for key, *_ in shown),
                             *(_worst_text(row[key]) for key in worst), *(_value(row[key]) for key in diffs)])
        return buffer.getvalue()
    if fmt == "md":
        lines = ["| " + " | ".join(titles) + " |",
                 "|" + "|".join(["---"] * 3 + ["---:"] * (len(shown) + len(worst)) + ["---"] * len(diffs)) + "|"]
        for row in rows:
            cells = [row["run"], row["dir"], row["note"], *(_number(row[key], pattern) for key, _, _, pattern in shown),
                     *(_worst_text(row[key]) for key in worst), *(_value(row[key]) for key in diffs)]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        return "\n".join(lines) + "\n"
    raise FerError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def output_format(fmt: str | None, output: str | None) -> str:
    """The format asked for, else the one ``output``'s suffix names, else a table."""
    if fmt:
        if fmt == "table" and output:
            raise FerError("--output needs --format md, csv or json (a table is for the terminal)")
        return fmt
    if not output:
        return "table"
    suffix = Path(output).suffix.lstrip(".").lower()
    if suffix in ("md", "csv", "json"):
        return suffix
    raise FerError(f"cannot tell the format of {output} from its suffix; add --format md, csv or json")


def _number(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _value(value: Any) -> str:
    return "-" if value is None else value if isinstance(value, str) else json.dumps(value)


def _worst_group(run_dir: Path, summary: Mapping[str, Any], attribute: str) -> dict[str, Any] | None:
    """The worst group of ``attribute`` in the run's ``fer eval --by`` report of its test split, or None."""
    path = Path(run_dir) / "eval" / summary.get("test_split", "test") / "report.json"
    try:
        groups = json.loads(path.read_text()).get("groups") or {}
    except (OSError, ValueError):
        return None
    worst = groups.get(attribute, {}).get("worst")
    return {"group": worst["group"], "accuracy": worst["accuracy"]} if worst else None


def _worst_text(worst: Mapping[str, Any] | None) -> str:
    return f"{worst['accuracy']:.4f} ({worst['group']})" if worst else "-"
