"""A DataLoader's worker slots stepped in this process: the same batches in the same order, no processes.

Used for a split whose decoded images are all in memory (``DecodedCache``) when batches are not
pinned for a CUDA device: making a batch then takes milliseconds, and on a machine with few cores
worker processes only take CPU from the training step (their hand-over costs the main process
more than making the batch itself).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

import numpy as np
import torch


class SlotStream(Protocol):
    def slot(self, worker: int, workers: int, seed_rngs: bool) -> Iterator[Any]: ...


def in_process(stream: SlotStream, workers: int) -> Iterator[Any]:
    """What a ``DataLoader(stream, num_workers=workers, batch_size=None)`` yields, made here.

    The DataLoader takes batches from its workers round-robin and skips a worker once it is
    exhausted; each worker seeds torch's, Python's and NumPy's RNGs for its slot. Here every slot
    keeps its own three RNG states, swapped in around each of its batches, so the caller's random
    numbers are neither used nor changed.
    """
    slots = [_Slot(stream.slot(w, workers, seed_rngs=True)) for w in range(workers)]
    while slots:
        for slot in list(slots):
            batch = slot.next()
            if batch is _DONE:
                slots.remove(slot)
            else:
                yield batch


_DONE = object()


class _Slot:
    def __init__(self, batches: Iterable[Any]):
        self.batches = iter(batches)
        self.rngs: tuple | None = None  # None until the slot seeds them itself

    def next(self) -> Any:
        outer = _rng_states()
        try:
            if self.rngs is not None:
                _set_rng_states(self.rngs)
            batch = next(self.batches, _DONE)
            self.rngs = _rng_states()
        finally:
            _set_rng_states(outer)
        return batch


def _rng_states() -> tuple:
    return torch.get_rng_state(), random.getstate(), np.random.get_state()


def _set_rng_states(states: tuple) -> None:
    torch.set_rng_state(states[0])
    random.setstate(states[1])
    np.random.set_state(states[2])
