"""Evaluation with torchmetrics, and the reports written from it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from fer_core.calibration import Reliability, calibration_markdown, plot_reliability, reliability_summary
from fer_core.fairness import fairness_markdown, plot_groups
from fer_core.runs import write_json, write_text


def metric_collection(num_classes: int) -> MetricCollection:
    # validate_args=False: the input checks read values on the host, a device sync per batch
    c, fast = num_classes, {"validate_args": False}
    return MetricCollection({
        "accuracy": MulticlassAccuracy(c, average="micro", **fast),
        "f1_macro": MulticlassF1Score(c, average="macro", **fast),
        "f1_weighted": MulticlassF1Score(c, average="weighted", **fast),
        "precision": MulticlassPrecision(c, average="none", **fast),
        "recall": MulticlassRecall(c, average="none", **fast),
        "f1": MulticlassF1Score(c, average="none", **fast),
        "confusion": MulticlassConfusionMatrix(c, **fast),
        "reliability": Reliability(),
    })


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: Iterable, num_classes: int, device: torch.device,
             *, encoded: bool = False, tta: str | None = None, amp_dtype: torch.dtype | None = None,
             loss_fn: torch.nn.Module | None = None, outputs: list | None = None) -> dict[str, Any]:
    """Metrics of ``model`` over ``batches`` of (inputs, targets, keys); synced across DDP ranks.

    Everything stays on the device: the logits and class ids of every batch are kept there and the
    metrics updated once at the end (their updates read bincount sizes on the host: one wait for the
    whole split instead of one per batch). ``outputs``, when given, receives (logits, class ids, keys)
    of every batch, on the CPU.
    """
    was_training = model.training
    model.eval()
    metrics = metric_collection(num_classes).to(device)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    count = torch.zeros((), device=device, dtype=torch.float64)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []  # (logits, class ids) per batch, on the device
    autocast = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext())
    for inputs, targets, keys in batches:
        inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with autocast:
            logits = predict_logits(model, inputs, encoded=encoded, tta=tta)
        logits = logits.float()
        hard = targets.argmax(dim=1) if targets.is_floating_point() else targets
        if loss_fn is not None:
            loss_sum += loss_fn(logits, targets).double() * len(hard)
        count += len(hard)
        seen.append((logits, hard))
        if outputs is not None:
            outputs.append((logits.cpu(), hard.cpu(), list(keys)))
    if seen:
        metrics.update(torch.cat([logits for logits, _ in seen]), torch.cat([hard for _, hard in seen]))
    result = metrics.compute()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(loss_sum)
        torch.distributed.all_reduce(count)
    model.train(was_training)
    out = classification_result(result)
    if loss_fn is not None:
        out["loss"] = (loss_sum / count.clamp_min(1)).item()
    out["samples"] = int(count.item())
    return out


def classification_result(result: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The report's classification figures from ``metric_collection(...).compute()``."""
    out: dict[str, Any] = {k: result[k].item() for k in ("accuracy", "f1_macro", "f1_weighted")}
    confusion = result["confusion"].long()
    out["per_class"] = {
        "precision": result["precision"].tolist(),
        "recall": result["recall"].tolist(),
        "f1": result["f1"].tolist(),
        "support": confusion.sum(dim=1).tolist(),
    }
    out["confusion"] = confusion.tolist()
    out["reliability"] = reliability_summary(result["reliability"])
    out["ece"] = out["reliability"]["ece"]
    return out


def predict_logits(model: torch.nn.Module, inputs: torch.Tensor, *, encoded: bool = False,
                   tta: str | None = None) -> torch.Tensor:
    logits, _ = model(inputs, encoded=encoded)
    if tta == "flip" and not encoded:
        flipped, _ = model(torch.flip(inputs, dims=[3]))
        logits = (logits.float().softmax(1) + flipped.float().softmax(1)).div(2).log()
    return logits


# -- reports ------------------------------------------------------------------
def write_report(run_dir: Path, name: str, result: Mapping[str, Any], classes: list[str],
                 split: str, extra: Mapping[str, Any] | None = None) -> None:
    """report.json, report.md, confusion.png and reliability.png of one evaluation (and groups-<attribute>.png
    for each attribute in ``extra["groups"]``)."""
    report = {"recipe": name, "split": split, "classes": classes, **result, **(extra or {})}
    write_json(run_dir / "report.json", report)
    write_text(run_dir / "report.md", report_markdown(report))
    plot_confusion(run_dir / "confusion.png", result["confusion"], classes)
    if "reliability" in report:
        plot_reliability(run_dir / "reliability.png", report["reliability"], report.get("calibrated"),
                         title=f"{name}: {split} split")
    for attribute, groups in (report.get("groups") or {}).items():
        plot_groups(run_dir / f"groups-{attribute}.png", groups, title=f"{name}: {split} split")


def report_markdown(report: Mapping[str, Any]) -> str:
    classes, per = report["classes"], report["per_class"]
    lines = [f"# {report['recipe']}: {report['split']} split", "",
             f"- samples: {report['samples']}",
             f"- accuracy: {report['accuracy']:.4f}",
             f"- macro F1: {report['f1_macro']:.4f}",
             f"- weighted F1: {report['f1_weighted']:.4f}", *weights_line(report), *calibration_markdown(report), "",
             "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for i, name in enumerate(classes):
        lines.append(f"| {name} | {per['precision'][i]:.3f} | {per['recall'][i]:.3f} | "
                     f"{per['f1'][i]:.3f} | {per['support'][i]} |")
    lines += ["", "Confusion matrix (rows: true, columns: predicted)", "",
              "| | " + " | ".join(classes) + " |", "|---" * (len(classes) + 1) + "|"]
    for i, row in enumerate(report["confusion"]):
        lines.append(f"| {classes[i]} | " + " | ".join(str(v) for v in row) + " |")
    lines += fairness_markdown(report.get("groups") or {})
    return "\n".join(lines) + "\n"


def weights_line(report: Mapping[str, Any]) -> list[str]:
    """Which weights were scored: the EMA of the weights (with its decay and warm-up) or the weights."""
    summary = report.get("summary") or {}
    if "scored_weights" not in summary:
        return []
    ema = summary.get("ema")
    if summary["scored_weights"] != "ema" or not ema:
        return ["- weights: the trained weights (no EMA)"]
    return [f"- weights: EMA of the weights (decay {ema['decay']}, warm-up {'on' if ema['warmup'] else 'off'})"]


def plot_confusion(path: Path, confusion: list[list[int]], classes: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(classes), 0.6 + 0.8 * len(classes)))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = max(max(row) for row in confusion) or 1
    for i, row in enumerate(confusion):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center", color="white" if value > top / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report_table(report: Mapping[str, Any]):
    """Per-class scores and the confusion matrix, as rich tables that fit the console they are printed on.

    The confusion matrix is headed by class names when they fit, else by class numbers (the
    rows then say which number is which class).
    """
    from fer_core.tables import Col, Fitted, fit, required

    classes, per = report["classes"], report["per_class"]

    def build(width: int) -> list:
        title = (f"{report['recipe']} — {report['split']}: accuracy {report['accuracy']:.4f}, "
                 f"macro F1 {report['f1_macro']:.4f}, weighted F1 {report['f1_weighted']:.4f}")
        scores = fit([Col("class", "left", wrap=True), Col("precision"), Col("recall"), Col("F1"), Col("support")],
                     [[name, f"{per['precision'][i]:.3f}", f"{per['recall'][i]:.3f}", f"{per['f1'][i]:.3f}",
                       str(per["support"][i])] for i, name in enumerate(classes)], width, title=title)
        counts = [[str(v) for v in row] for row in report["confusion"]]
        columns = [Col("true \\ pred", "left", wrap=True), *(Col(name) for name in classes)]
        rows = [[name, *row] for name, row in zip(classes, counts)]
        caption = "rows: true class, columns: predicted class"
        if required(columns, rows) > width:
            columns = [Col("true \\ pred", "left", wrap=True), *(Col(str(i)) for i in range(len(classes)))]
            rows = [[f"{i} {name}", *row] for i, (name, row) in enumerate(zip(classes, counts))]
            caption += " (by number)"
        return [scores, fit(columns, rows, width, caption=caption)]

    return Fitted(build)
