"""Evaluating a trained run on a split and keeping every sample's output: `fer eval`, `fer calibrate`.

``fer eval RUN`` writes its report into ``RUN/eval/<split>/`` (``<split>-<data dir name>`` with
``--data``): report.json/.md, confusion.png, reliability.png and, per ``--by`` attribute,
groups-<attribute>.png. The attributes are looked up by sample key in the shards'
``meta.json`` (``fer_core.data.meta``), so the loader's (inputs, targets, keys) batches stay
as they are.

A run whose model predicts valence and arousal (tasks ``affect``, ``expression+affect``) is
scored with ``fer_core.affect_eval.evaluate_affect`` and reported by
``fer_core.affect_report.write_affect_report`` (va_scatter.png; the class files only when the
model classifies too). Calibration and ``--by`` groups read the class logits alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fer_core.affect_eval import evaluate_affect
from fer_core.affect_report import write_affect_report
from fer_core.calibration import (calibration_record, fit_temperature, negative_log_likelihood, plot_reliability,
                                  reliability_of, write_calibration)
from fer_core.data.meta import check_attribute, read_meta
from fer_core.data.shards import read_manifest
from fer_core.data.sources import cached_latents, make_loader, source_roots
from fer_core.errors import FerError
from fer_core.evaluate import evaluate, write_report
from fer_core.fairness import MIN_SUPPORT, RESAMPLES, group_report
from fer_core.inference import Trained
from fer_core.outputs import has_affect, has_logits
from fer_core.runs import run_dir_of


@dataclass
class Outputs:
    """Every evaluated sample's logits [N, C], true class id [N] and key."""

    logits: torch.Tensor
    targets: torch.Tensor
    keys: list[str]

    @classmethod
    def from_batches(cls, batches: list[tuple[torch.Tensor, torch.Tensor, list[str]]]) -> Outputs:
        if not batches:
            raise FerError("the split holds no samples of the model's classes")
        return cls(torch.cat([b[0] for b in batches]).float(), torch.cat([b[1] for b in batches]),
                   [k for b in batches for k in b[2]])


def eval_data(trained: Trained, data_dir: str | Path | None) -> dict[str, Any]:
    """The run's data section, pointed at ``data_dir`` when given."""
    data = dict(trained.recipe["data"])
    if data_dir:
        data.update(root=str(data_dir), sources=None)
    return data


def run_model(trained: Trained, data: dict[str, Any], split: str, *, tta: str | None = None,
              classes: Sequence[str] | None = None, model: torch.nn.Module | None = None,
              device: str | torch.device = "cpu") -> tuple[dict[str, Any], Outputs]:
    """Class metrics and per-sample logits of ``model`` (default: the run's classifier) on ``split``.

    ``classes`` are the data set's names of the classes to score, in the order of the model's
    outputs (default: the run's classes).
    """
    classes = list(classes or trained.classes)
    model = model or trained.classifier("scoring classes")
    loader, encoded = _loader(trained, data, split, classes, device)
    batches: list = []
    result = evaluate(model, loader, len(classes), torch.device(device), encoded=encoded, tta=tta, outputs=batches)
    return result, Outputs.from_batches(batches)


def run_affect(trained: Trained, data: dict[str, Any], split: str, *, tta: str | None = None,
               device: str | torch.device = "cpu") -> dict[str, Any]:
    """Valence/arousal metrics (and class metrics when the model classifies) of the run on ``split``, with
    every sample's predicted and true (valence, arousal) under ``va_points``."""
    loader, encoded = _loader(trained, data, split, trained.classes, device, va=True)
    return evaluate_affect(trained.model, loader, trained.slices, len(trained.classes), torch.device(device),
                           encoded=encoded, tta=tta, points=True)


def _loader(trained: Trained, data: dict[str, Any], split: str, classes: Sequence[str],
            device: str | torch.device, va: bool = False):
    """The evaluation loader of ``split`` (cached latents when the run's frozen encoder has them), and
    whether it yields latents."""
    latents = cached_latents(data, trained.recipe["model"]["encoder"], trained.model.encoder,
                             frozen=trained.model.frozen.get("encoder", False), device=device)
    options = {"va": True} if va else {}
    loader = make_loader(data, split, list(classes), trained.recipe["eval"]["batch_size"], train=False,
                         seed=trained.recipe["seed"], latent=latents is not None, roots=latents, **options)
    return loader, latents is not None


def attribute_values(data: dict[str, Any], split: str, attribute: str, keys: Sequence[str]) -> list[str | None]:
    """Each key's value of ``attribute`` (None where a sample has none), read from the data's shards."""
    meta: dict[str, dict] = {}
    for root, _ in source_roots(data):
        meta.update(read_meta(root, split))
    return [meta.get(key, {}).get(attribute) for key in keys]


def check_attributes(data: dict[str, Any], attributes: Sequence[str]) -> dict[str, list[str]]:
    """The values of each attribute (as the first data set orders them); a DataError names what is missing."""
    order: dict[str, list[str]] = {}
    for root, _ in source_roots(data):
        manifest = read_manifest(root)
        for attribute in attributes:
            check_attribute(root, manifest, attribute)
            order.setdefault(attribute, list(manifest["meta"][attribute]["values"]))
    return order


def eval_dir(run_or_checkpoint: str | Path, split: str, data_dir: str | Path | None) -> Path | None:
    run_dir = run_dir_of(run_or_checkpoint)
    if run_dir is None:
        return None
    return run_dir / "eval" / (split if not data_dir else f"{split}-{Path(data_dir).resolve().name}")


def evaluate_run(trained: Trained, *, data_dir: str | Path | None = None, split: str = "test",
                 tta: str | None = None, by: Sequence[str] = (), resamples: int = RESAMPLES, seed: int = 0,
                 min_support: int = MIN_SUPPORT, out: str | Path | None = None,
                 device: str | torch.device = "cpu") -> dict[str, Any]:
    """`fer eval`: the report of ``trained`` on ``split``, with groups for each attribute in ``by``.

    The report is written to ``out`` (when given) and returned.
    """
    data = eval_data(trained, data_dir)
    slices = trained.slices
    if by and not has_logits(slices):
        raise FerError(f"--by compares class predictions per group; '{trained.recipe['name']}' predicts valence "
                       f"and arousal only (task {trained.task})")
    order = check_attributes(data, by)
    if has_affect(slices):
        result = run_affect(trained, data, split, tta=tta, device=device)
        # the per-sample logits of calibration and groups: a second pass through the logits alone
        wanted = has_logits(slices) and (by or trained.temperature != 1.0)
        outputs = run_model(trained, data, split, tta=tta, device=device)[1] if wanted else None
    else:
        result, outputs = run_model(trained, data, split, tta=tta, device=device)
    if outputs is not None and trained.temperature != 1.0:
        calibrated = reliability_of(outputs.logits / trained.temperature, outputs.targets)
        result["calibrated"] = {"temperature": trained.temperature, "ece": calibrated["ece"], "reliability": calibrated}
    groups = {}
    if by:
        predicted = outputs.logits.argmax(dim=1)
        groups = {attribute: group_report(predicted, outputs.targets,
                                          attribute_values(data, split, attribute, outputs.keys), trained.classes,
                                          order[attribute], resamples=resamples, seed=seed, min_support=min_support)
                  for attribute in by}
    extra = {"checkpoint": str(trained.checkpoint), "data": data.get("root"), "groups": groups}
    if out is not None:
        writer = write_affect_report if "affect" in result else write_report
        writer(Path(out), trained.recipe["name"], result, trained.classes, split, extra)
    result = {k: v for k, v in result.items() if k != "va_points"}
    return {"recipe": trained.recipe["name"], "split": split, "classes": trained.classes, **result, **extra}


def calibrate_run(trained: Trained, *, data_dir: str | Path | None = None, split: str = "val",
                  device: str | torch.device = "cpu") -> tuple[dict[str, Any], Path]:
    """`fer calibrate`: fit the temperature on ``split``, store it in the run; the record and its file."""
    run_dir = run_dir_of(trained.checkpoint)
    if run_dir is None:
        raise FerError(f"{trained.checkpoint} is not inside a run directory; calibrate a run of `fer run`")
    data = eval_data(trained, data_dir)
    _, outputs = run_model(trained, data, split, model=trained.classifier("`fer calibrate`"), device=device)
    logits, targets = outputs.logits, outputs.targets
    temperature = fit_temperature(logits, targets)
    before, after = reliability_of(logits, targets), reliability_of(logits / temperature, targets)
    accuracy = float((logits.argmax(1) == targets).double().mean())
    record = calibration_record(
        trained.checkpoint, temperature,
        before={"ece": before["ece"], "nll": negative_log_likelihood(logits, targets), "accuracy": accuracy},
        after={"ece": after["ece"], "nll": negative_log_likelihood(logits, targets, temperature), "accuracy": accuracy},
        fitted_on={"split": split, "data": data.get("root"), "samples": len(targets)})
    path = write_calibration(run_dir, record)
    plot_reliability(run_dir / "calibration.png", before,
                     {"temperature": temperature, "reliability": after}, title=f"{trained.recipe['name']}: {split}")
    return record, path
