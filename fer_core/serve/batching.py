"""Micro-batching: images from concurrent requests share one forward pass.

Requests put single images on a queue and wait on a future. One worker thread takes the
first waiting image, keeps collecting for up to ``max_wait_ms`` or until ``max_batch``
images, runs the predictor once on the stacked batch and resolves every future. The
event loop never runs the model, so the server keeps accepting requests meanwhile.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import numpy as np

from fer_core.predictor import rows

_STOP = object()


class Batcher:
    """``predict`` maps a stacked batch to an array [B, ...] or a dict of them (a predictor's ``infer``);
    each image's future gets its own row."""

    def __init__(self, predict: Callable[[np.ndarray], Any], max_batch: int = 32,
                 max_wait_ms: float = 5.0):
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError("max_batch must be >= 1 and max_wait_ms >= 0")
        self.predict, self.max_batch, self.max_wait = predict, max_batch, max_wait_ms / 1000
        self.batches = self.images = self.largest_batch = 0
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="fer-batcher", daemon=True)
        self._thread.start()

    def submit(self, image: np.ndarray) -> Future:
        """Queue one image [C, H, W]; the future resolves to its row of the batch's result."""
        future: Future = Future()
        self._queue.put((image, future))
        return future

    def close(self, timeout: float = 5.0) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def stats(self) -> dict[str, int]:
        return {"batches": self.batches, "images": self.images, "largest_batch": self.largest_batch}

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            batch, stop = [item], False
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
            self._run(batch)
            if stop:
                return

    def _run(self, batch: list[tuple[np.ndarray, Future]]) -> None:
        batch = [(image, future) for image, future in batch if future.set_running_or_notify_cancel()]
        if not batch:
            return
        try:
            results = rows(self.predict(np.stack([image for image, _ in batch])))
        except Exception as exc:  # the requests fail; the worker keeps serving
            for _, future in batch:
                future.set_exception(exc)
            return
        self.batches += 1
        self.images += len(batch)
        self.largest_batch = max(self.largest_batch, len(batch))
        for (_, future), result in zip(batch, results):
            future.set_result(result)
