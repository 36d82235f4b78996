"""`fer crosseval`: every run on every data set, in one table (runs x data sets).

A model trained on one data set is scored on another only on the classes both have: class
names are compared through the canonical list (``fer_core.data.labels``; "happy" and
"happiness" are one class), samples of classes the model lacks are left out, and the
model's outputs for classes the data set lacks are dropped before the argmax (so a FER+
model's "contempt" cannot be chosen on RAF-DB). Each cell holds accuracy, macro F1 and ECE
on those classes; ``results.md``, ``results.csv`` and ``results.json`` go to the output folder.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fer_core.assess import eval_data, run_model
from fer_core.data.labels import canonical_name
from fer_core.data.shards import read_manifest
from fer_core.errors import DataError
from fer_core.inference import Trained, load_trained
from fer_core.runs import write_json, write_text

CSV_FIELDS = ("run", "run_dir", "data", "split", "samples", "accuracy", "f1_macro", "ece", "classes")


def canonical(name: str) -> str:
    return canonical_name(name) or name.strip().lower()


def shared_classes(model_classes: Sequence[str], data_classes: Sequence[str]) -> list[tuple[int, str]]:
    """(model output index, the data set's name) of each model class the data set has too, in model order."""
    by_canonical = {canonical(name): name for name in data_classes}
    return [(i, by_canonical[canonical(name)]) for i, name in enumerate(model_classes)
            if canonical(name) in by_canonical]


class SharedOutputs(nn.Module):
    """A FerModel whose logits keep only the columns of the shared classes."""

    def __init__(self, model: nn.Module, columns: Sequence[int]):
        super().__init__()
        self.model = model
        self.register_buffer("columns", torch.tensor(list(columns), dtype=torch.long), persistent=False)

    def forward(self, inputs: torch.Tensor, encoded: bool = False):
        logits, extra = self.model(inputs, encoded=encoded)
        return logits[:, self.columns.to(logits.device)], extra


def check_pairs(runs: Sequence[Trained], data_dirs: Sequence[str | Path], split: str) -> dict[str, dict]:
    """Each data set's manifest; a DataError before anything runs when a split or every shared class is missing."""
    manifests = {}
    for data_dir in data_dirs:
        manifest = read_manifest(data_dir)
        if split not in manifest["splits"]:
            raise DataError(f"{data_dir} has no {split!r} split (it has {', '.join(manifest['splits'])}); pass --split")
        for trained in runs:
            if not shared_classes(trained.classes, manifest["classes"]):
                raise DataError(f"{data_dir} shares no class with {trained.recipe['name']} ({trained.checkpoint}): "
                                f"it has {', '.join(manifest['classes'])}, the model {', '.join(trained.classes)}")
        manifests[str(data_dir)] = manifest
    return manifests


def crosseval(run_paths: Sequence[str | Path], data_dirs: Sequence[str | Path], *, split: str = "test",
              tta: str | None = None, out: str | Path = "runs/crosseval", device: str = "cpu",
              progress=None) -> list[dict[str, Any]]:
    """Score every run on every data set; write results.md/.csv/.json into ``out``; return the cells."""
    runs = [load_trained(path, device) for path in run_paths]
    manifests = check_pairs(runs, data_dirs, split)
    cells = []
    for path, trained in zip(run_paths, runs):
        for data_dir in data_dirs:
            if progress is not None:
                progress(f"{trained.recipe['name']} ({path}) on {data_dir}")
            shared = shared_classes(trained.classes, manifests[str(data_dir)]["classes"])
            columns, names = [i for i, _ in shared], [name for _, name in shared]
            result, _ = run_model(trained, eval_data(trained, data_dir), split, tta=tta, classes=names,
                                  model=SharedOutputs(trained.classifier("`fer crosseval`"), columns).to(device),
                                  device=device)
            cells.append({
                "run": trained.recipe["name"], "run_dir": str(path), "data": str(data_dir), "split": split,
                "samples": result["samples"], "accuracy": result["accuracy"], "f1_macro": result["f1_macro"],
                "ece": result["ece"], "classes": [trained.classes[i] for i in columns],
                "left_out": {"model": [c for i, c in enumerate(trained.classes) if i not in columns],
                             "data": [c for c in manifests[str(data_dir)]["classes"] if c not in names]},
            })
    write_results(Path(out), cells, run_paths, data_dirs, split)
    return cells


def write_results(out: Path, cells: list[dict[str, Any]], run_paths: Sequence, data_dirs: Sequence, split: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", {"split": split, "cells": cells})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for cell in cells:
        writer.writerow({**cell, "classes": " ".join(cell["classes"])})
    write_text(out / "results.csv", buffer.getvalue())
    write_text(out / "results.md", results_markdown(cells, run_paths, data_dirs, split))


def results_markdown(cells: list[dict[str, Any]], run_paths: Sequence, data_dirs: Sequence, split: str) -> str:
    index = {(c["run_dir"], c["data"]): c for c in cells}
    lines = [f"# Cross-dataset evaluation ({split} split)", "",
             "Accuracy / macro F1 on the classes each run shares with each data set (outputs of other classes",
             "dropped before the argmax).", "",
             "| run | " + " | ".join(str(d) for d in data_dirs) + " |", "|---" * (len(data_dirs) + 1) + "|"]
    for path in run_paths:
        row = [index[(str(path), str(d))] for d in data_dirs]
        lines.append(f"| {row[0]['run']} ({path}) | "
                     + " | ".join(f"{c['accuracy']:.4f} / {c['f1_macro']:.4f}" for c in row) + " |")
    lines += ["", "Classes scored:", ""]
    for cell in cells:
        left = [f"{', '.join(names)} ({side})" for side, names in cell["left_out"].items() if names]
        lines.append(f"- {cell['run']} ({cell['run_dir']}) on {cell['data']}: {len(cell['classes'])} classes, "
                     f"{cell['samples']} samples" + (f"; left out: {'; '.join(left)}" if left else ""))
    return "\n".join(lines) + "\n"
