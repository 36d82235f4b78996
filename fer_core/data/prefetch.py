"""Batches made ready ahead in a background thread, in page-locked memory, for non-blocking copies to a GPU."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator


def pinned(batches: Iterator[tuple], ahead: int = 2) -> Iterator[tuple]:
    """``batches`` made ready ``ahead`` at a time in a background thread, their tensors page-locked (CUDA)."""
    ready: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()
    end = object()

    def offer(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def pin(value):
        return {k: v.pin_memory() for k, v in value.items()} if isinstance(value, dict) else value.pin_memory()

    def produce() -> None:
        try:
            for inputs, targets, keys in batches:
                if not offer((inputs.pin_memory(), pin(targets), keys)):
                    return
            offer(end)
        except BaseException as exc:  # handed to the consumer, raised there
            offer(exc)
        finally:
            batches.close()

    thread = threading.Thread(target=produce, name="fer-pin-memory", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()
