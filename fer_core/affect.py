"""The affect tasks: valence/arousal regression (``task: affect``) and expression + valence/arousal
on one backbone (``task: expression+affect``).

The same Encoder -> Backbone -> Head model as classification; the head declares its output
slices (``fer_core.outputs``: ``va`` head {"va": 2}, ``multitask`` head {"logits": C, "va": 2}).
Batches carry ``{"label", "va"}`` targets. The loss is ``affect.weight`` x the valence/arousal
loss (``affect.loss``, a loss declaring ``target = "va"``) plus, with expressions,
``affect.expression_weight`` x the recipe's ``loss`` on the logits. Validation metrics are those of
``fer_core.affect_eval``; ``eval.metric`` (``ccc_mean`` by default for ``affect``) picks ``best.pt``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fer_core.affect_eval import evaluate_affect
from fer_core.classify import ClassificationTask
from fer_core.evaluate import report_table
from fer_core.errors import RecipeError
from fer_core.affect_report import affect_table, write_affect_report
from fer_core.model import count_parameters, installed
from fer_core.outputs import FLAT_AFFECT_METRICS, TASK_OUTPUTS, layout, metric_mode, split
from fer_core.task import Autocast, Batch


class AffectLoss(nn.Module):
    """parts {"va"[, "logits"]} and targets {"va", "label"} -> (weighted total, {part: loss})."""

    def __init__(self, va_loss: nn.Module, weight: float, expression_loss: nn.Module | None = None,
                 expression_weight: float = 1.0):
        super().__init__()
        self.va_loss, self.expression_loss = va_loss, expression_loss
        self.weight, self.expression_weight = weight, expression_weight

    def forward(self, parts: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]):
        losses = {"affect_loss": self.va_loss(parts["va"], targets["va"])}
        total = self.weight * losses["affect_loss"]
        if self.expression_loss is not None:
            losses["expression_loss"] = self.expression_loss(parts["logits"], targets["label"])
            total = total + self.expression_weight * losses["expression_loss"]
        return total, losses


class AffectTask(ClassificationTask):
    """``task: affect`` and ``task: expression+affect`` (``self.name`` is the recipe's task)."""

    def __init__(self, setup):
        super().__init__(setup)
        self.name = setup.recipe["task"]
        self.needs = TASK_OUTPUTS[self.name]
        self.progress = ("loss", "accuracy") if "logits" in self.needs else ("loss",)

    def build(self) -> torch.nn.Module:
        model = super().build()  # model, the expression loss, sample augments, cached latents
        if self.wants_batch:
            raise RecipeError(f"loss: '{self.recipe['loss']['name']}' reads whole batches (e.g. distillation); "
                              f"task {self.name} does not support such losses yet: use it with task classify")
        self.slices = head_slices(self.recipe, model.head, self.needs, self.setup.registry)
        self.loss_fn = build_affect_loss(self.recipe, self.setup.registry, self.setup.classes,
                                         self.loss_fn if "logits" in self.needs else None).to(self.setup.env.device)
        return model

    def loader_options(self) -> dict[str, Any]:
        return {**super().loader_options(), "va": True}

    def train_step(self, net: torch.nn.Module, batch: Batch, autocast: Autocast) -> dict[str, torch.Tensor]:
        with autocast():
            output, _ = net(batch.inputs, encoded=self.encoded)
            parts = split(output, self.slices)
            loss, losses = self.loss_fn(parts, batch.targets)
        out = {"loss": loss, **losses}
        if "logits" in parts:
            label = batch.targets["label"]
            hard = label.argmax(1) if label.is_floating_point() else label
            out["accuracy"] = (parts["logits"].detach().argmax(1) == hard).float().mean()
        return out

    def mode(self, metric: str) -> str:
        return metric_mode(metric)

    def evaluate(self, module: torch.nn.Module, loader, autocast: Autocast, final: bool = False) -> dict[str, Any]:
        s = self.setup
        with self.clocked(module, final):
            return evaluate_affect(module, loader, self.slices, len(s.classes), s.env.device, encoded=self.encoded,
                                   amp_dtype=s.amp_dtype, loss_fn=None if final else self.loss_fn,
                                   tta=self.recipe["eval"]["tta"] if final else None, points=final)

    def epoch_line(self, record: Mapping[str, Any], split_name: str) -> str:
        line = (f"train loss {record['train_loss']:.4f}, {split_name} valence CCC {record['val_valence_ccc']:.4f}, "
                f"arousal CCC {record['val_arousal_ccc']:.4f}")
        if "val_accuracy" in record:
            line += f", accuracy {record['val_accuracy']:.4f}"
        return line

    def report(self, run_dir: Path, result: Mapping[str, Any], summary: dict[str, Any],
               counters: Mapping[str, Any]) -> None:
        s, name, split_name = self.setup, self.recipe["name"], summary["test_split"]
        _, trainable = count_parameters(self.model)
        test = {k: result[k] for k in ("accuracy", "f1_macro", "f1_weighted") if k in result}
        test.update({k: result[k] for k in FLAT_AFFECT_METRICS})
        summary.update({
            "test": test, "outputs": self.slices,
            "trainable_parameters": trainable, "tta": self.recipe["eval"]["tta"] if not self.encoded else None,
            "inference_images_per_s": self.clock.images_per_s(),
            "inference_input": "latents" if self.encoded else "images",
        })
        write_affect_report(run_dir, name, result, s.classes, split_name, {"summary": summary})
        if "confusion" in result:
            s.console.print(report_table({"recipe": name, "split": split_name, "classes": s.classes, **result}))
        s.console.print(affect_table({"recipe": name, "split": split_name, **result}))
        s.console.print(f"run directory: {run_dir}  (report.md, summary.json, checkpoints/)", highlight=False)


def head_slices(recipe: Mapping[str, Any], head: nn.Module, needs: tuple[str, ...], registry) -> dict[str, int]:
    """The head's output slices; a one-line RecipeError when they lack what the task needs."""
    slices = layout(head)
    missing = [n for n in needs if n not in slices]
    if missing:
        task, name = recipe["task"], recipe["model"]["head"]["name"]
        raise RecipeError(f"model.head: '{name}' gives {', '.join(slices)} but task {task} needs "
                          f"{', '.join(needs)}; use head {'va' if needs == ('va',) else 'multitask'} "
                          f"(installed heads: {installed(registry, 'head', name)})")
    return slices


def build_affect_loss(recipe: Mapping[str, Any], registry, classes: list[str],
                      expression_loss: nn.Module | None) -> AffectLoss:
    spec = recipe["affect"]
    va_loss = registry.build("loss", spec["loss"], "affect.loss", {"num_classes": len(classes), "classes": classes,
                                                                   "recipe": recipe})
    if getattr(va_loss, "target", None) != "va":
        raise RecipeError(f"affect.loss: '{spec['loss']['name']}' scores class logits, not valence/arousal; use "
                          f"ccc, mse or ccc_mse, or a plugin loss that declares target = 'va'")
    return AffectLoss(va_loss, spec["weight"], expression_loss, spec["expression_weight"])
