"""`fer run` against the compute limit measured in the same run, step by step.

This machine's speed drifts by 10-15 % over minutes even when it is quiet, so two runs taken one
after the other (``timm_compare.py``) can differ by more than what they compare. Here the limit
runs inside `fer run`: after every ``--every``-th training batch `fer run`'s loader delivers, the
limit (``compare_job.LimitLoop``: the same model, optimiser, schedule and loss stepping on
normalised tensors already in memory) takes one step of its own, and after each of fer's
evaluations the limit evaluates the same split on its tensors. Both sides thus meet the same
machine speed within a second. The limit's time is timed apart and taken out of fer's:

* training images/s: fer's, from its epochs' own timing (``samples_per_s`` in ``metrics.jsonl``,
  loader start-up included) with the limit's steps taken out; the limit's, its images over the
  time of its steps;
* validation and test seconds: each side's evaluations of the same splits;
* wall: fer's whole ``run`` call without the limit's work in it; the limit's training (fer's
  epochs of images at the limit's rate) plus its per-epoch validation.

    python benchmarks/limit_paired.py                       # quickstart at its size, 10 epochs
    python benchmarks/limit_paired.py --epochs 3 --every 2  # a shorter look

Figures from a busy machine are not quiet-machine figures: the load average is printed.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import fer_core.data.loader as loader_module
import fer_core.train as train_module

sys.path.insert(0, str(Path(__file__).parent))  # the sibling benchmark, also when loaded by path
import compare_job as job  # noqa: E402


class Pairing:
    """The limit's work slipped into fer's run, each piece timed."""

    def __init__(self, limit: job.LimitLoop, every: int):
        self.limit, self.every = limit, every
        self.pending: list[torch.Tensor] = []
        self.step_s, self.step_images, self.steps, self.delivered = 0.0, 0, 0, 0
        self.inserted_by_epoch: list[float] = []  # limit time inside each of fer's training epochs
        self.eval_s = {"fer val": 0.0, "fer test": 0.0, "limit val": 0.0, "limit test": 0.0}

    @property
    def inserted_s(self) -> float:
        """All the limit's time inside fer's run: its steps and its evaluations."""
        return self.step_s + self.eval_s["limit val"] + self.eval_s["limit test"]

    def limit_step(self) -> None:
        if not self.pending:
            self.pending = self.limit.batches()
        started = time.perf_counter()
        images = self.limit.step(self.pending.pop(0))
        elapsed = time.perf_counter() - started
        self.step_s += elapsed
        self.step_images += images
        self.steps += 1
        self.inserted_by_epoch[-1] += elapsed

    def train_batches(self, batches):
        self.inserted_by_epoch.append(0.0)
        for batch in batches:
            self.delivered += 1
            if self.delivered % self.every == 0:
                self.limit_step()
            yield batch

    def evaluated(self, final: bool, fer_s: float) -> None:
        split = "test" if final else "val"
        self.eval_s[f"fer {split}"] += fer_s
        started = time.perf_counter()
        accuracy = self.limit.accuracy(split)
        elapsed = time.perf_counter() - started
        self.eval_s[f"limit {split}"] += elapsed
        if not final:
            self.limit.scheduler.step(len(self.inserted_by_epoch), accuracy)


@contextlib.contextmanager
def installed(pairing: Pairing, task_class):
    """fer's train loader and its task's evaluation wrapped while the block runs (this process only)."""
    make_loader, iterate, evaluate = train_module.make_loader, loader_module.EpochLoader.__iter__, task_class.evaluate

    def paired_make_loader(data_cfg, split, *args, **kwargs):
        loader = make_loader(data_cfg, split, *args, **kwargs)
        loader.paired = kwargs.get("train", False)
        return loader

    def paired_iter(self):
        batches = iterate(self)
        return pairing.train_batches(batches) if getattr(self, "paired", False) else batches

    def paired_evaluate(self, module, loader, autocast, final=False):
        started = time.perf_counter()
        result = evaluate(self, module, loader, autocast, final)
        pairing.evaluated(final, time.perf_counter() - started)
        return result

    train_module.make_loader = paired_make_loader
    loader_module.EpochLoader.__iter__ = paired_iter
    task_class.evaluate = paired_evaluate
    try:
        yield
    finally:
        train_module.make_loader = make_loader
        loader_module.EpochLoader.__iter__ = iterate
        task_class.evaluate = evaluate


def measure(args) -> dict:
    recipe = job.quickstart(args)
    root = Path(recipe["data"]["root"])
    classes = job.read_manifest(root)["classes"]
    tensors = job.in_memory_splits(recipe, classes)
    limit = job.LimitLoop(recipe, tensors, classes, args)
    pairing = Pairing(limit, args.every)
    load_before = os.getloadavg()
    with installed(pairing, train_module.TASKS[recipe["task"]]):
        fer = job.run_fer(recipe, args)
    train_images = len(tensors["train"][1])
    epoch_s = [train_images / rate - inserted for rate, inserted in zip(fer["epoch_rates"], pairing.inserted_by_epoch)]
    fer_rate = statistics.mean(train_images / s for s in epoch_s)
    limit_rate = pairing.step_images / pairing.step_s
    epochs = len(epoch_s)
    limit_train_s = epochs * train_images / limit_rate  # fer's epochs of images at the limit's rate
    limit_wall = limit_train_s + pairing.eval_s["limit val"]
    fer_wall = fer["wall_s"] - pairing.inserted_s
    return {"recipe": recipe["name"], "epochs": epochs, "every": args.every, "threads": torch.get_num_threads(),
            "train_images": train_images, "limit_steps": pairing.steps,
            "fer": {"images_per_s": fer_rate, "train_s": sum(epoch_s), "val_s": pairing.eval_s["fer val"],
                    "test_s": pairing.eval_s["fer test"], "wall_s": fer_wall, "test_accuracy": fer["test_accuracy"]},
            "limit": {"images_per_s": limit_rate, "train_s": limit_train_s,
                      "val_s": pairing.eval_s["limit val"], "test_s": pairing.eval_s["limit test"],
                      "wall_s": limit_wall},
            "ratios": {"fer/limit images/s": fer_rate / limit_rate,
                       "fer wall / limit (train + validation)": fer_wall / limit_wall},
            "load_average_before": list(load_before), "load_average_after": list(os.getloadavg())}


def show(result: dict, console: Console) -> None:
    table = Table(title=f"{result['train_images']} training images, {result['epochs']} epochs, {result['threads']} "
                        f"threads; limit measured in the same run ({result['limit_steps']} steps, one after every "
                        f"{result['every']} of fer's batches)")
    for column in ("", "train img/s", "training s", "validation s", "test eval s", "wall s"):
        table.add_column(column, justify="left" if not column else "right")
    for side, label in (("fer", "fer run"), ("limit", "compute limit (tensors in memory)")):
        m = result[side]
        table.add_row(label, f"{m['images_per_s']:.1f}", f"{m['train_s']:.1f}", f"{m['val_s']:.1f}",
                      f"{m['test_s']:.1f}", f"{m['wall_s']:.1f}")
    console.print(table)
    console.print(f"fer test accuracy {100 * result['fer']['test_accuracy']:.2f} %", highlight=False)
    job.show_ratios(result, console)


def main(argv: list[str] | None = None) -> dict:
    parser = job.job_parser(__doc__)
    parser.add_argument("--every", type=int, default=1, help="one limit step after every N of fer's batches")
    args = parser.parse_args(argv)
    args.channels_last = args.compile = False
    return job.finish(measure(args), show, args)


if __name__ == "__main__":
    main()
