"""Tasks: what differs between kinds of training. The one loop (``fer_core.train``) owns the rest.

A task turns a batch into losses, says which metrics it computes and which one picks
``best.pt``, evaluates a split, and writes the report of a finished run. The loop owns data,
devices, mixed precision, accumulation, clipping, EMA, schedules, logging, checkpoints, exact
resume, early stopping, corrupt-sample accounting and progress, the same for every task.

Tasks are chosen by the recipe's ``task`` key (``fer_core.train.TASKS``); they are not a hook kind. What a
plugin adds to a task comes through the five component kinds (a pretrainable encoder implements
the pretraining protocol of ``fer_core.pretrain``; a loss may read the whole batch). See
docs/architecture.md for the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from fer_core.distributed import Env
from fer_core.registry import Registry

Autocast = Callable[[], AbstractContextManager]


@dataclass
class Batch:
    """One training or evaluation batch as the loader delivers it, on the run's device."""

    inputs: torch.Tensor  # images [B, C, H, W] in [0, 1], or cached latents [B, T, D]
    # class ids [B] or soft targets [B, C]; affect tasks: {"label": those, "va": valence/arousal [B, 2]}
    targets: torch.Tensor | dict[str, torch.Tensor]
    keys: list[str]  # sample keys (``__key__`` of the shards)


@dataclass
class Setup:
    """What the loop hands a task when it is built."""

    recipe: dict[str, Any]
    registry: Registry
    classes: list[str]
    env: Env
    amp_dtype: torch.dtype | None
    console: Console


class Task:
    """The task contract; ``ClassificationTask`` and ``PretrainTask`` implement it."""

    name = ""
    owns_optimisation = False  # True: train_step updates the weights itself; no loop optimiser, EMA, schedule
    evaluate_before = False  # True: the loop evaluates the untrained weights too (counters['initial'])
    progress: tuple[str, ...] = ("loss",)  # step outputs shown in the progress bar
    checkpoint_key = ""  # the checkpoint key of state(), when the task keeps more than the weights
    sample_augments: list[torch.nn.Module] = []  # applied to training samples by the loader (set by build)

    def __init__(self, setup: Setup):
        self.setup = setup
        self.recipe = setup.recipe

    # -- building ---------------------------------------------------------------------------------
    def build(self) -> torch.nn.Module:
        """The module that trains, on the device; its weights are the checkpoint's ``model``."""
        raise NotImplementedError

    def loader_options(self) -> dict[str, Any]:
        """Extra ``make_loader`` arguments (sample augments, cached-latent roots)."""
        return {}

    def param_groups(self) -> list[dict]:
        """Optimiser groups for the loop's optimiser (when not ``owns_optimisation``)."""
        raise NotImplementedError

    def configure(self, optim: Mapping[str, Any]) -> None:
        """Set up the task's own optimisation (when ``owns_optimisation``)."""

    # -- training ---------------------------------------------------------------------------------
    def train_step(self, net: torch.nn.Module, batch: Batch, autocast: Autocast) -> dict[str, torch.Tensor]:
        """Per-batch means, as 0-d tensors (no host sync); ``loss`` is the one the loop backpropagates."""
        raise NotImplementedError

    # -- evaluation and best.pt -------------------------------------------------------------------
    metrics: tuple[str, ...] = ()  # the numbers evaluate() returns for the metrics log

    def best_metric(self) -> str:
        raise NotImplementedError

    def mode(self, metric: str) -> str:
        """'min' or 'max': which way ``metric`` improves."""
        raise NotImplementedError

    def evaluate(self, module: torch.nn.Module, loader, autocast: Autocast, final: bool = False) -> dict[str, Any]:
        """Metrics of a split, reduced over every rank; ``final``: the test evaluation of the report."""
        raise NotImplementedError

    # -- checkpoints ------------------------------------------------------------------------------
    def model_state(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def load_model_state(self, state: Mapping[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def state(self) -> Any:
        """What the task keeps beyond the weights (stored under ``checkpoint_key``)."""
        return None

    def load_state(self, state: Any) -> None:
        pass

    # -- reporting --------------------------------------------------------------------------------
    def epoch_line(self, record: Mapping[str, Any], split: str) -> str:
        raise NotImplementedError

    def epoch_end(self, run_dir: Path, epoch: int) -> None:
        """After an epoch's evaluation, on the main process (e.g. sample images)."""

    def prepare(self, val_loader) -> None:
        """Once the loaders exist, before the first epoch (and at the same point when resuming)."""

    def report(self, run_dir: Path, result: Mapping[str, Any], summary: dict[str, Any],
               counters: Mapping[str, Any]) -> None:
        """Complete ``summary`` (``test_split`` is set) with the task's figures from the test ``result``,
        write the task's report files and print them."""
        raise NotImplementedError

