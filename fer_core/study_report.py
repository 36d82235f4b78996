"""The comparison a study writes: results.json, results.md, results.csv, a plot and a rich table.

Functions take a ``fer_core.study.Study`` (this module does not import it: study.py imports this one).
Classification columns appear when a run has them (or none has valence/arousal scores), valence/arousal
columns (CCC per dimension, their mean, RMSE) when a run has them; a run's missing cells are "-".
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from fer_core.run_status import run_state, status_text, study_status

FRACTION_KEY = "data.train_fraction"  # the grid key plotted as the x axis

# (row key, column title, format) in table order, after the approach and the grid values
CLASS_COLUMNS = (
    ("accuracy", "test acc", "{:.4f}"),
    ("f1_macro", "macro F1", "{:.4f}"),
    ("f1_weighted", "weighted F1", "{:.4f}"),
)
AFFECT_COLUMNS = (
    ("valence_ccc", "valence CCC", "{:.4f}"),
    ("arousal_ccc", "arousal CCC", "{:.4f}"),
    ("ccc_mean", "CCC mean", "{:.4f}"),
    ("valence_rmse", "valence RMSE", "{:.4f}"),
    ("arousal_rmse", "arousal RMSE", "{:.4f}"),
)
OTHER_COLUMNS = (
    ("train_time_s", "train s", "{:.1f}"),
    ("inference_images_per_s", "infer img/s", "{:.0f}"),
    ("peak_memory_mb", "peak MB", "{:.0f}"),
    ("parameters", "params", "{:,}"),
    ("trainable_parameters", "trainable", "{:,}"),
    ("trainable_percent", "trainable %", "{:.1f}"),
)
COLUMNS = CLASS_COLUMNS + AFFECT_COLUMNS + OTHER_COLUMNS
TITLES = {"accuracy": "test accuracy", "f1_macro": "test macro F1", "f1_weighted": "test weighted F1",
          "ccc_mean": "test CCC mean (valence, arousal)", "valence_ccc": "test valence CCC",
          "arousal_ccc": "test arousal CCC"}


def columns(rows: list[dict[str, Any]]) -> tuple:
    """The columns of the rows: the classification and the valence/arousal groups that some run has."""
    affect = any(key in row for row in rows for key, _, _ in AFFECT_COLUMNS)
    classes = any(key in row for row in rows for key, _, _ in CLASS_COLUMNS) or not affect
    return (CLASS_COLUMNS if classes else ()) + (AFFECT_COLUMNS if affect else ()) + OTHER_COLUMNS


def _scored(row: dict[str, Any]) -> bool:
    """A finished run with test scores (pretraining runs have none)."""
    return row["status"] == "finished" and any(key in row for key in ("accuracy", "ccc_mean"))


def result_row(study, run, record: dict[str, Any]) -> dict[str, Any]:
    """One run's line of the comparison, from its summary.json when it finished."""
    row: dict[str, Any] = {"id": run.id, "label": run.label, **{k: v for k, v in run.settings.items()},
                           "recipe": run.recipe["name"], "status": record.get("status", "pending"),
                           "error": record.get("error"), "run_dir": record.get("run_dir")}
    state = run_state(record["run_dir"]) if record.get("run_dir") else None
    if state is not None and row["status"] == "finished" != state.status:  # its files were damaged since
        row.update(status=state.status, error=state.error)
    if state is not None and row["status"] != "finished":
        row.update(epochs=state.epoch, planned_epochs=state.epochs)  # how far it got
    if row["status"] == "finished" and state is not None:
        s = state.summary
        row.update(s.get("test", {}))  # pretraining runs have no test accuracy: their cells stay empty
        row.update({k: s[k] for k in ("epochs", "train_time_s", "inference_images_per_s", "inference_input",
                                      "peak_memory_mb", "parameters", "trainable_parameters") if k in s})
        row["trainable_percent"] = round(100 * s["trainable_parameters"] / max(s["parameters"], 1), 2)
    return row


def write_results(study, records: dict[str, dict], console=None) -> list[dict[str, Any]]:
    rows = [result_row(study, run, records.get(run.id, {})) for run in study.runs]
    out = study.out_dir
    plot = plot_results(study, rows, out)
    payload = {"study": study.name, "file": str(study.path), "description": study.description,
               "metric": study.metric, "grid": study.grid, "plot": plot.name if plot else None, "runs": rows}
    (out / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / "results.md").write_text(markdown_table(study, rows, plot))
    (out / "results.csv").write_text(csv_text(study, rows))
    if console is not None:
        console.print(rich_table(study, rows))
        console.print(f"study results: {out}/results.md, results.csv, results.json"
                      + (f", {plot.name}" if plot else ""), highlight=False)
    return rows


def _cells(study, row: dict[str, Any], shown: tuple) -> list[str]:
    cells = [row["label"], *(_value(row.get(key)) for key in study.grid)]
    if not _scored(row):
        note = status_text(study_status(row), row.get("epochs"), row.get("planned_epochs"), row.get("error"))
        return cells + [note] + [""] * len(shown)
    return cells + [row["status"]] + [fmt.format(row[key]) if key in row else "-" for key, _, fmt in shown]


def _value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _titles(study, shown: tuple) -> list[str]:
    return ["approach", *(key.split(".")[-1] for key in study.grid), "status", *(title for _, title, _ in shown)]


def markdown_table(study, rows: list[dict[str, Any]], plot: Path | None) -> str:
    shown = columns(rows)
    titles = _titles(study, shown)
    lines = [f"# Study {study.name}", ""]
    if study.description:
        lines += [study.description.strip(), ""]
    aligns = ["---"] * (2 + len(study.grid)) + ["---:"] * len(shown)
    lines += ["| " + " | ".join(titles) + " |", "|" + "|".join(aligns) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in _cells(study, row, shown)) + " |" for row in rows]
    lines += ["", "Test metrics on each run's test split; training time in seconds; inference throughput of a "
                  "forward pass on one evaluation batch; trainable % = trainable / total parameters."]
    if any(row.get("inference_input") == "latents" for row in rows):
        lines.append("Runs that read cached latents measure throughput without the encoder.")
    if plot:
        lines += ["", f"![{study.metric}]({plot.name})"]
    return "\n".join(lines) + "\n"


def csv_text(study, rows: list[dict[str, Any]]) -> str:
    fields = ["id", "label", *study.grid, "recipe", "status", *(key for key, _, _ in columns(rows)), "epochs",
              "inference_input", "run_dir", "error"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()})
    return buffer.getvalue()


def rich_table(study, rows: list[dict[str, Any]]):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"study {study.name}: {len(rows)} runs")
    shown = columns(rows)
    for i, title in enumerate(_titles(study, shown)):
        table.add_column(title, justify="left" if i <= len(study.grid) + 1 else "right")
    for row in rows:
        cells = [escape(c) for c in _cells(study, row, shown)]
        if row["status"] != "finished":
            cells[len(study.grid) + 1] = f"[red]{cells[len(study.grid) + 1]}[/]"
        table.add_row(*cells)
    return table


def plot_results(study, rows: list[dict[str, Any]], out: Path) -> Path | None:
    """The metric against the training-set fraction (a line per approach), or a bar per run."""
    done = [row for row in rows if row["status"] == "finished" and study.metric in row]
    if not done:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = study.metric
    title = TITLES.get(metric, f"test {metric}")
    others = [key for key in study.grid if key != FRACTION_KEY]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    if FRACTION_KEY in study.grid:
        path = out / f"{metric}_vs_fraction.png"
        series: dict[str, list[tuple[float, float]]] = {}
        for row in done:
            name = row["label"] + "".join(f", {key.split('.')[-1]}={_value(row[key])}" for key in others)
            series.setdefault(name, []).append((100 * row[FRACTION_KEY], row[metric]))
        for name, points in series.items():
            xs, ys = zip(*sorted(points))
            ax.plot(xs, ys, marker="o", label=name)
        fractions = sorted({100 * f for f in study.grid[FRACTION_KEY]})
        ax.set_xticks(fractions, [f"{f:g} %" for f in fractions])
        ax.set_xlabel("training-set fraction")
        ax.legend(fontsize=8)
    else:
        path = out / f"{metric}.png"
        names = [row["label"] + "".join(f"\n{key.split('.')[-1]}={_value(row[key])}" for key in others)
                 for row in done]
        bars = ax.bar(range(len(done)), [row[metric] for row in done], color="tab:blue")
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
        ax.set_xticks(range(len(done)), names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(title)
    low = min(0.0, min(row[metric] for row in done))  # a CCC may be negative
    ax.set_ylim(low, min(1.02, 0.05 + 1.15 * max(row[metric] for row in done)))
    ax.grid(alpha=0.3)
    ax.set_title(f"study {study.name}: {title}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
