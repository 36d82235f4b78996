"""Reports of valence/arousal runs (tasks ``affect`` and ``expression+affect``).

``write_affect_report`` writes report.json (the ``affect`` block and the flat scores; the class
metrics too when the model has logits), report.md (the table of CCC, PCC, RMSE and SAGR per
dimension, after the class tables of a multi-task run), ``va_scatter.png`` (prediction against
truth per dimension, and the predicted points on the valence-arousal circle) and, for a
multi-task run only, confusion.png and reliability.png.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fer_core.calibration import plot_reliability
from fer_core.evaluate import plot_confusion, report_markdown, weights_line
from fer_core.fairness import plot_groups
from fer_core.outputs import VA_NAMES
from fer_core.runs import write_json, write_text

SCORES = (("ccc", "CCC"), ("pcc", "PCC"), ("rmse", "RMSE"), ("sagr", "SAGR"))
SCATTER = "va_scatter.png"


def affect_markdown(report: Mapping[str, Any]) -> list[str]:
    """Markdown lines: a table of CCC, PCC, RMSE and SAGR for valence and arousal, and the CCC mean."""
    affect = report["affect"]
    lines = ["| dimension | " + " | ".join(title for _, title in SCORES) + " |", "|---" + "|---:" * len(SCORES) + "|"]
    for name in VA_NAMES:
        lines.append(f"| {name} | " + " | ".join(f"{affect[name][key]:.4f}" for key, _ in SCORES) + " |")
    lines += ["", f"- CCC mean: {report['ccc_mean']:.4f}"]
    if "rmse_mean" in report:
        lines.append(f"- RMSE mean: {report['rmse_mean']:.4f}")
    lines.append("- CCC: concordance correlation; PCC: Pearson correlation; SAGR: share of samples whose "
                 "predicted sign matches the true sign")
    return lines


def affect_report_markdown(report: Mapping[str, Any]) -> str:
    """report.md of a valence/arousal evaluation: the class report first when the model has logits."""
    if "confusion" in report:
        lines = [*report_markdown(report).rstrip("\n").split("\n"), "", "## Valence and arousal", ""]
    else:
        lines = [f"# {report['recipe']}: {report['split']} split", "", f"- samples: {report['samples']}",
                 *weights_line(report), ""]
    lines += affect_markdown(report)
    if report.get("va_plot"):
        lines += ["", f"![valence and arousal: prediction against truth]({report['va_plot']})"]
    return "\n".join(lines) + "\n"


def write_affect_report(run_dir: Path, name: str, result: Mapping[str, Any], classes: list[str], split: str,
                        extra: Mapping[str, Any] | None = None) -> None:
    """The report files of one valence/arousal evaluation (see the module docstring).

    ``result`` is what ``fer_core.affect_eval.evaluate_affect`` returns; its ``va_points``
    (``points=True``) are drawn in va_scatter.png and left out of report.json.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    points = result.get("va_points")
    report = {"recipe": name, "split": split, "classes": classes,
              **{k: v for k, v in result.items() if k != "va_points"}, **(extra or {})}
    if points:
        plot_va_scatter(run_dir / SCATTER, points, f"{name}: {split} split")
        report["va_plot"] = SCATTER
    write_json(run_dir / "report.json", report)
    write_text(run_dir / "report.md", affect_report_markdown(report))
    if "confusion" in report:
        plot_confusion(run_dir / "confusion.png", report["confusion"], classes)
        plot_reliability(run_dir / "reliability.png", report["reliability"], report.get("calibrated"),
                         title=f"{name}: {split} split")
    for attribute, groups in (report.get("groups") or {}).items():
        plot_groups(run_dir / f"groups-{attribute}.png", groups, title=f"{name}: {split} split")


def plot_va_scatter(path: Path, points: Mapping[str, Sequence[Sequence[float]]], title: str) -> None:
    """Three panels: predicted against true valence, the same for arousal (with the identity line), and
    the predicted (valence, arousal) points inside the unit circle, coloured by their true valence."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    pred = np.asarray(points["pred"], dtype=float).reshape(-1, 2)
    true = np.asarray(points["true"], dtype=float).reshape(-1, 2)
    alpha = float(min(0.8, max(0.08, 60 / max(len(pred), 1) ** 0.75)))
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.6))
    for i, name in enumerate(VA_NAMES):
        ax = axes[i]
        ax.plot([-1, 1], [-1, 1], color="grey", lw=1, ls="--")
        ax.scatter(true[:, i], pred[:, i], s=8, alpha=alpha, color="tab:blue", edgecolors="none")
        ax.set(xlim=(-1.05, 1.05), ylim=(-1.05, 1.05), xlabel=f"true {name}", ylabel=f"predicted {name}",
               title=name, aspect="equal")
        ax.grid(alpha=0.3)
    ax = axes[2]
    ax.add_patch(plt.Circle((0, 0), 1, fill=False, color="grey", lw=1))
    ax.axhline(0, color="grey", lw=0.8)
    ax.axvline(0, color="grey", lw=0.8)
    dots = ax.scatter(pred[:, 0], pred[:, 1], c=true[:, 0], cmap="coolwarm", vmin=-1, vmax=1, s=8, alpha=alpha,
                      edgecolors="none")
    fig.colorbar(dots, ax=ax, fraction=0.046, pad=0.04, label="true valence")
    ax.set(xlim=(-1.1, 1.1), ylim=(-1.1, 1.1), xlabel="predicted valence", ylabel="predicted arousal",
           title="predictions on the valence-arousal circle", aspect="equal")
    fig.suptitle(f"{title} ({len(pred)} samples)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def affect_table(report: Mapping[str, Any]):
    """The valence/arousal scores as a rich table that fits the console it is printed on."""
    from fer_core.tables import Col, Fitted, fit

    affect = report["affect"]

    def build(width: int) -> list:
        title = f"{report['recipe']} — {report['split']}: valence/arousal, CCC mean {report['ccc_mean']:.4f}"
        rows = [[name, *(f"{affect[name][key]:.4f}" for key, _ in SCORES)] for name in VA_NAMES]
        return [fit([Col("dimension", "left"), *(Col(t) for _, t in SCORES)], rows, width, title=title)]

    return Fitted(build)
