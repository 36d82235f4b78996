"""Teacher logits kept per training sample, so a frozen teacher runs once per sample.

Valid only when a sample key always stands for the same input image: no random sample
augments, no batch augments, and keys unique within the training data (one data root).
``cache_blocker`` says why not, or returns None when the cache is safe.

Storage is one float16 row per sample in a tensor allocated up front for ``capacity``
rows (the number of training samples), so it cannot grow without bound; a key beyond
the capacity switches the cache off (``full``) instead of evicting. Under DDP every
process holds its own cache of the samples it saw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch


def cache_blocker(recipe: Mapping[str, Any] | None, sample_augments: Sequence[torch.nn.Module]) -> str | None:
    """Why teacher logits cannot be cached for this recipe, or None."""
    if recipe is None:
        return "the training recipe is unknown"
    batch = recipe["augment"]["batch"]
    if batch:
        return f"augment.batch ({batch[0]['name']}) mixes samples differently every step"
    for i, (spec, augment) in enumerate(zip(recipe["augment"]["sample"], sample_augments)):
        if not getattr(augment, "deterministic", False):
            return f"augment.sample[{i}] ({spec['name']}) changes the images randomly"
    if len(recipe["data"].get("sources") or []) > 1:
        return "data.sources has several roots, whose sample keys may repeat"
    return None


class LogitCache:
    """key -> float16 logits row, for at most ``capacity`` keys."""

    def __init__(self, capacity: int, num_classes: int):
        self.capacity, self.num_classes = int(capacity), int(num_classes)
        self.rows: torch.Tensor | None = None  # allocated on first use, on the logits' device
        self.index: dict[str, int] = {}
        self.full = False
        self.hits = self.misses = 0

    def lookup(self, keys: Sequence[str]) -> list[int | None]:
        """Row of each key, None where the key is not cached."""
        return [self.index.get(key) for key in keys]

    def get(self, rows: Sequence[int], device: torch.device) -> torch.Tensor:
        return self.rows[torch.as_tensor(rows, device=self.rows.device)].to(device)

    def put(self, keys: Sequence[str], logits: torch.Tensor) -> None:
        """Store the rows of keys not cached yet (a key repeated in the batch is stored once)."""
        if self.full:
            return
        first: dict[str, int] = {}
        for j, key in enumerate(keys):
            if key not in self.index:
                first.setdefault(key, j)
        if not first:
            return
        keys, logits = list(first), logits[list(first.values())]
        if len(self.index) + len(keys) > self.capacity:
            self.full = True
            return
        if self.rows is None:
            self.rows = torch.zeros(self.capacity, self.num_classes, dtype=torch.float16, device=logits.device)
        start = len(self.index)
        self.rows[start:start + len(keys)] = logits.detach().to(self.rows.device, torch.float16)
        self.index.update((key, start + j) for j, key in enumerate(keys))
