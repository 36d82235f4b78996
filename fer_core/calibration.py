"""Does a model's confidence mean anything? Expected calibration error, reliability bins, temperature scaling.

Confidence is the top softmax probability. The reliability bins split (0, 1] into ``n_bins``
equal bins ((lo, hi], Guo et al., "On Calibration of Modern Neural Networks", ICML 2017) and
hold per bin the number of samples, their summed confidence and their number of correct
predictions; the expected calibration error is ``sum_b n_b / N * |accuracy_b - confidence_b|``,
what torchmetrics' ``MulticlassCalibrationError(norm="l1")`` computes, which keeps no bins.

Temperature scaling divides the logits by one scalar T > 0 fitted on the validation split
(LBFGS on the negative log-likelihood, in log T): T > 1 softens an over-confident model.
Dividing by a positive number never changes which class is largest, so predicted labels stay
as they were. ``fer calibrate`` stores T in ``RUN/calibration.json`` together with the sha256
of the checkpoint it was fitted for; :func:`stored_temperature` hands it to ``fer predict``,
``fer serve`` and ``fer export`` only while that checkpoint is unchanged.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torchmetrics import Metric

from fer_core.data.latents import checkpoint_sha256
from fer_core.runs import run_dir_of, write_json

N_BINS = 15
CALIBRATION_FILE = "calibration.json"


class Reliability(Metric):
    """Reliability bins of top-1 confidence: ``compute()`` -> [3, n_bins] (count, confidence sum, correct sum)."""

    full_state_update = False
    higher_is_better = False
    is_differentiable = False

    def __init__(self, n_bins: int = N_BINS, **kwargs):
        super().__init__(**kwargs)
        self.n_bins = n_bins
        self.register_buffer("edges", torch.linspace(0, 1, n_bins + 1, dtype=torch.float64), persistent=False)
        for name in ("count", "confidence", "correct"):
            self.add_state(name, default=torch.zeros(n_bins, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        confidence, predicted = logits.float().softmax(dim=1).max(dim=1)
        confidence = confidence.double()
        index = (torch.bucketize(confidence, self.edges.to(confidence.device)) - 1).clamp(0, self.n_bins - 1)
        self.count.index_add_(0, index, torch.ones_like(confidence))
        self.confidence.index_add_(0, index, confidence)
        self.correct.index_add_(0, index, (predicted == target).double())

    def compute(self) -> torch.Tensor:
        return torch.stack([self.count, self.confidence, self.correct])


def reliability_summary(bins: torch.Tensor) -> dict[str, Any]:
    """JSON-ready bins (edges, count, mean confidence, accuracy; None for empty bins) and the ECE."""
    count, confidence, correct = (row.double().cpu() for row in bins)
    n_bins = count.numel()
    filled = count > 0
    mean_conf = torch.where(filled, confidence / count.clamp_min(1), torch.zeros_like(count))
    accuracy = torch.where(filled, correct / count.clamp_min(1), torch.zeros_like(count))
    total = count.sum().clamp_min(1)
    ece = float(((count / total) * (accuracy - mean_conf).abs()).sum())
    return {
        "ece": ece,
        "edges": [round(i / n_bins, 6) for i in range(n_bins + 1)],
        "count": [int(c) for c in count.tolist()],
        "confidence": [v if f else None for v, f in zip(mean_conf.tolist(), filled.tolist())],
        "accuracy": [v if f else None for v, f in zip(accuracy.tolist(), filled.tolist())],
    }


def reliability_of(logits: torch.Tensor, targets: torch.Tensor, n_bins: int = N_BINS) -> dict[str, Any]:
    """:func:`reliability_summary` of one set of logits [N, C] and class ids [N]."""
    metric = Reliability(n_bins)
    metric.update(logits, targets)
    return reliability_summary(metric.compute())


def negative_log_likelihood(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> float:
    return float(torch.nn.functional.cross_entropy(logits.double() / temperature, targets))


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 200) -> float:
    """The T > 0 that minimises the NLL of ``logits / T`` (LBFGS in log T, starting from T = 1)."""
    logits, targets = logits.detach().double(), targets.detach()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


# ---- the temperature stored in a run -----------------------------------------------------------

def calibration_record(checkpoint: Path, temperature: float, before: Mapping[str, Any],
                       after: Mapping[str, Any], fitted_on: Mapping[str, Any]) -> dict[str, Any]:
    return {"temperature": temperature, "checkpoint": checkpoint.name,
            "checkpoint_sha256": checkpoint_sha256(checkpoint), "fitted_on": dict(fitted_on),
            "before": dict(before), "after": dict(after)}


def write_calibration(run_dir: Path, record: Mapping[str, Any]) -> Path:
    path = Path(run_dir) / CALIBRATION_FILE
    write_json(path, record)
    return path


def stored_temperature(checkpoint: str | Path) -> float:
    """The temperature ``fer calibrate`` fitted for this checkpoint; 1.0 when there is none.

    A calibration fitted for another checkpoint (or one since overwritten, e.g. by resuming)
    is not used; a note on stderr says so.
    """
    checkpoint = Path(checkpoint)
    run_dir = run_dir_of(checkpoint)
    path = run_dir / CALIBRATION_FILE if run_dir is not None else None
    if path is None or not path.is_file():
        return 1.0
    try:
        record = json.loads(path.read_text())
        temperature, sha = float(record["temperature"]), record["checkpoint_sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        print(f"note: {path} is unreadable; predicting without temperature scaling (rerun `fer calibrate`)",
              file=sys.stderr)
        return 1.0
    if sha != checkpoint_sha256(checkpoint):
        print(f"note: {path} was fitted for another {record.get('checkpoint', 'checkpoint')}; predicting "
              f"without temperature scaling (rerun `fer calibrate {run_dir}`)", file=sys.stderr)
        return 1.0
    return temperature


# ---- report ------------------------------------------------------------------------------------

def calibration_markdown(report: Mapping[str, Any]) -> list[str]:
    """The report's calibration lines (ECE, and the stored temperature's effect when there is one)."""
    if "reliability" not in report:
        return []
    lines = [f"- expected calibration error (ECE, {len(report['reliability']['count'])} bins): "
             f"{report['reliability']['ece']:.4f}"]
    calibrated = report.get("calibrated")
    if calibrated:
        lines.append(f"- with temperature {calibrated['temperature']:.3f} (`fer calibrate`): "
                     f"ECE {calibrated['ece']:.4f}")
    return lines


def plot_reliability(path: Path, reliability: Mapping[str, Any], calibrated: Mapping[str, Any] | None = None,
                     title: str = "") -> None:
    """Accuracy against confidence per bin (bars) beside the diagonal; a second series when calibrated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = reliability["edges"]
    width = edges[1] - edges[0]
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    series = [("model", reliability, "tab:blue")]
    if calibrated:
        series.append((f"T = {calibrated['temperature']:.2f}", calibrated["reliability"], "tab:orange"))
    shift = width / (2 * len(series))
    for i, (label, bins, colour) in enumerate(series):
        xs = [lo + shift * (2 * i + 1) for lo, acc in zip(edges, bins["accuracy"]) if acc is not None]
        ys = [acc for acc in bins["accuracy"] if acc is not None]
        ax.bar(xs, ys, width=width / len(series), color=colour, alpha=0.75, edgecolor="white",
               label=f"{label}: ECE {bins['ece']:.3f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top softmax probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(title or "reliability")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
