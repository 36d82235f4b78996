"""The classification task (``task: classify``): images or cached latents -> class logits.

Encoder -> Backbone -> Head (``fer_core.model``) trained with the recipe's loss; scored with
torchmetrics (``fer_core.evaluate``); ``best.pt`` picked by ``eval.metric``; the report is the
per-class table, the confusion matrix and the summary with throughput.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fer_core.data.sources import cached_latents, open_split
from fer_core.distributed import barrier
from fer_core.evaluate import evaluate, report_table, write_report
from fer_core.model import build_model, build_sample_augments, count_parameters, load_model_state, model_state
from fer_core.task import Autocast, Batch, Task


class ClassificationTask(Task):
    name = "classify"
    progress = ("loss", "accuracy")

    def build(self) -> torch.nn.Module:
        s, recipe = self.setup, self.recipe
        data, env = recipe["data"], s.env
        num_classes = len(s.classes)
        class_counts = [sum(c) for c in zip(*(src.class_counts() for src in open_split(data, "train", s.classes)))]
        self.model = build_model(recipe, s.registry, s.classes).to(env.device)
        self.loss_fn = s.registry.build("loss", recipe["loss"], "loss",
                                        {"num_classes": num_classes, "class_counts": class_counts,
                                         "classes": s.classes, "recipe": recipe}).to(env.device)
        # a loss that declares wants_batch (e.g. distillation) also gets the step's inputs and sample keys
        self.wants_batch = bool(getattr(self.loss_fn, "wants_batch", False))
        self.sample_augments = build_sample_augments(recipe, s.registry, num_classes)
        # a frozen encoder's outputs cached as latent shards are read instead of running it
        self.latents = cached_latents(data, recipe["model"]["encoder"], self.model.encoder,
                                      frozen=self.model.frozen.get("encoder", False),
                                      sample_augments=self.sample_augments, batch_size=recipe["eval"]["batch_size"],
                                      device=env.device, main=env.main, barrier=lambda: barrier(env),
                                      console=s.console if env.main else None)
        self.encoded = self.latents is not None
        if self.encoded and env.main:
            tta = "; eval.tta does not apply to latents" if recipe["eval"]["tta"] else ""
            s.console.print(f"reading cached latents from {', '.join(str(root) for root, _ in self.latents)}; "
                            f"the encoder does not run{tta}", highlight=False, soft_wrap=True)
        return self.model

    def loader_options(self) -> dict[str, Any]:
        return {"latent": self.encoded, "roots": self.latents}

    def param_groups(self) -> list[dict]:
        optim = self.recipe["optim"]
        return self.model.param_groups(optim["lr"], optim["weight_decay"], optim.get("layer_decay"))

    def train_step(self, net: torch.nn.Module, batch: Batch, autocast: Autocast) -> dict[str, torch.Tensor]:
        with autocast():
            if self.wants_batch:
                logits, mixed, inputs = net(batch.inputs, batch.targets, encoded=self.encoded, return_inputs=True)
                loss = self.loss_fn(logits, mixed, inputs=inputs, keys=batch.keys)
            else:
                logits, mixed = net(batch.inputs, batch.targets, encoded=self.encoded)
                loss = self.loss_fn(logits, mixed)
        hard = batch.targets.argmax(1) if batch.targets.is_floating_point() else batch.targets
        return {"loss": loss, "accuracy": (logits.detach().argmax(1) == hard).float().mean()}

    def best_metric(self) -> str:
        return self.recipe["eval"]["metric"]

    def mode(self, metric: str) -> str:
        return "min" if metric == "loss" else "max"

    def evaluate(self, module: torch.nn.Module, loader, autocast: Autocast, final: bool = False) -> dict[str, Any]:
        s = self.setup
        with self.clocked(module, final):
            return evaluate(module, loader, len(s.classes), s.env.device, encoded=self.encoded,
                            amp_dtype=s.amp_dtype, loss_fn=None if final else self.loss_fn,
                            tta=self.recipe["eval"]["tta"] if final else None)

    def clocked(self, module: torch.nn.Module, final: bool):
        """The final evaluation's forward passes timed for the report's ``inference_images_per_s``."""
        if not final:
            return contextlib.nullcontext()
        self.clock = ForwardClock(module, self.setup.env.device)
        return self.clock

    def model_state(self) -> dict[str, torch.Tensor]:
        return model_state(self.recipe, self.model)

    def load_model_state(self, state: Mapping[str, torch.Tensor]) -> None:
        load_model_state(self.recipe, self.model, state)

    def epoch_line(self, record: Mapping[str, Any], split: str) -> str:
        return (f"train loss {record['train_loss']:.4f}, {split} accuracy {record['val_accuracy']:.4f}, "
                f"macro F1 {record['val_f1_macro']:.4f}")

    def report(self, run_dir: Path, result: Mapping[str, Any], summary: dict[str, Any],
               counters: Mapping[str, Any]) -> None:
        s, name, split = self.setup, self.recipe["name"], summary["test_split"]
        _, trainable = count_parameters(self.model)
        summary.update({
            "test": {k: result[k] for k in ("accuracy", "f1_macro", "f1_weighted")},
            "trainable_parameters": trainable, "tta": self.recipe["eval"]["tta"] if not self.encoded else None,
            "inference_images_per_s": self.clock.images_per_s(),
            "inference_input": "latents" if self.encoded else "images",
        })
        write_report(run_dir, name, result, s.classes, split, {"summary": summary})
        s.console.print(report_table({"recipe": name, "split": split, "classes": s.classes, **result}))
        s.console.print(f"run directory: {run_dir}  (report.md, summary.json, checkpoints/)", highlight=False)


class ForwardClock:
    """Images per second of a module's forward passes while the clock is attached (forward hooks).

    Reads what an evaluation already does instead of running the model again: on the CPU each pass
    is timed on the host; on CUDA by a pair of events per pass, read once at the end (no host wait
    per batch). A pass's images are its first argument's batch size (with flip TTA, both passes).
    """

    def __init__(self, module: torch.nn.Module, device: torch.device):
        self.module, self.cuda = module, device.type == "cuda"
        self.seconds, self.images, self.events, self._started = 0.0, 0, [], None
        self.handles: list = []

    def __enter__(self) -> ForwardClock:
        self.handles = [self.module.register_forward_pre_hook(self._before),
                        self.module.register_forward_hook(self._after)]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()

    def _before(self, module, args) -> None:
        if self.cuda:
            self._started = torch.cuda.Event(enable_timing=True)
            self._started.record()
        else:
            self._started = time.perf_counter()

    def _after(self, module, args, output) -> None:
        self.images += len(args[0])
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.events.append((self._started, end))
        else:
            self.seconds += time.perf_counter() - self._started

    def images_per_s(self) -> float | None:
        if self.events:
            self.events[-1][1].synchronize()
            self.seconds += sum(start.elapsed_time(end) for start, end in self.events) / 1000
            self.events = []
        return round(self.images / self.seconds, 1) if self.seconds > 0 else None
