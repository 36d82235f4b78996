"""What the step loop hands to the device and reads back: batches in, step outputs summed there.

The loop does not wait for the device between steps: ``Window`` sums each step's outputs on it and
``Window.read`` takes them to the host in one sync, every ``train.log_every`` optimiser steps and at
the end of an epoch, which is also where a non-finite loss is caught.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from fer_core import distributed
from fer_core.errors import FerError
from fer_core.task import Batch


class NonFiniteLoss(FerError):
    """A step output became NaN or infinite: the run stops, and ``last.pt`` keeps the last finished epoch."""


def to_device(inputs: torch.Tensor, targets: Any, keys: list[str], device: torch.device,
              memory_format: torch.memory_format | None = None) -> Batch:
    """A loader batch on the run's device (non-blocking copies; images in ``memory_format``, e.g. channels_last)."""
    inputs = inputs.to(device, non_blocking=True)
    if memory_format is not None and inputs.dim() == 4:
        inputs = inputs.contiguous(memory_format=memory_format)
    if isinstance(targets, dict):
        targets = {name: value.to(device, non_blocking=True) for name, value in targets.items()}
    else:
        targets = targets.to(device, non_blocking=True)
    return Batch(inputs, targets, keys)


class Window:
    """Step outputs summed on the device since the last read: no host sync until ``read``."""

    def __init__(self):
        self.device_sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.first_step: int | None = None
        self.last_step = 0
        self.sums: dict[str, float] = {}

    def add(self, outputs: dict[str, Any], n: int, step: int) -> None:
        for name, value in outputs.items():
            value = value.detach() if isinstance(value, torch.Tensor) else torch.tensor(float(value))
            self.device_sums[name] = self.device_sums.get(name, 0.0) + value.float() * n
        self.count += n
        self.first_step = step if self.first_step is None else self.first_step
        self.last_step = step

    def read(self, env, epoch: int, saved_epoch: int) -> dict[str, float]:
        """The window's means, read in one sync; NonFiniteLoss when one is not finite (on any rank)."""
        names = list(self.device_sums)
        values = torch.stack([self.device_sums[name].to(env.device) for name in names]).tolist() if names else []
        self.sums = dict(zip(names, values))
        bad = [name for name, value in self.sums.items() if not math.isfinite(value)]
        if distributed.any_true(env, bool(bad)):
            name = bad[0] if bad else "loss"
            value = self.sums.get(name, float("nan")) / max(self.count, 1)
            kept = (f"checkpoints/last.pt still holds epoch {saved_epoch}" if saved_epoch
                    else "no epoch had finished, so there is no checkpoint")
            raise NonFiniteLoss(
                f"{name} became {value} at epoch {epoch + 1}, steps {self.first_step}-{self.last_step}; the run "
                f"stopped and {kept}. Lower optim.lr, set train.clip_grad, or turn off train.amp")
        return {name: value / max(self.count, 1) for name, value in self.sums.items()}
