"""Steps per second of the `fer run` loop against a bare PyTorch loop, same model and batches.

The `fer run` loop is fed in-memory batches (its loader is swapped for a list), so
the difference is the loop's own overhead: progress bar, metric bookkeeping, logging,
finiteness checks, scheduler and EMA hooks. Target: under 3 %.

    python benchmarks/trainer_overhead.py [--steps 60] [--repeats 3] [--model resnet10t]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import fer_core.train as train_module
from fer_core.data.pack import make_synth_dataset
from fer_core.model import build_model
from fer_core.optim import make_optimizer
from fer_core.plugins import get_registry
from fer_core.recipe import load_recipe

RECIPE = """
name: overhead
data: {{root: {root}, image_size: {size}, channels: 3}}
model: {{backbone: {{name: timm, model: {model}}}, head: {{name: linear}}}}
optim: {{name: adamw, lr: 1.0e-3}}
schedule: {{name: cosine}}
train: {{epochs: {epochs}, batch_size: {batch}, log_every: 10}}
"""


class InMemoryLoader:
    """Stands in for EpochLoader: the same batches every epoch, no I/O."""

    def __init__(self, batches):
        self.batches = batches
        self.corrupt = []
        self.stream = type("S", (), {"total": sum(len(b[1]) for b in batches)})()

    def configure(self, **options):  # as EpochLoader.configure: nothing to set here
        return self

    def set_epoch(self, epoch):
        pass

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def make_batches(steps: int, batch: int, size: int, classes: int = 7):
    g = torch.Generator().manual_seed(0)
    return [(torch.rand(batch, 3, size, size, generator=g), torch.randint(0, classes, (batch,), generator=g), [])
            for _ in range(steps)]


def bare_loop(recipe, classes, batches) -> float:
    torch.manual_seed(0)
    model = build_model(recipe, get_registry(), classes)
    model.train()
    # the optimiser fer's run builds (its parameter groups, fused kernels where it picks them)
    optimizer = make_optimizer(model.param_groups(1e-3, recipe["optim"]["weight_decay"]), recipe["optim"])
    loss_fn = torch.nn.CrossEntropyLoss()
    start = time.perf_counter()
    for inputs, targets, _ in batches:
        logits, _ = model(inputs)
        loss = loss_fn(logits, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return len(batches) / (time.perf_counter() - start)


def fer_loop(recipe, batches, out: Path) -> float:
    original = train_module.make_loader
    val = batches[:1]

    def fake_loader(data, split, classes, batch_size, *, train, **kwargs):
        return InMemoryLoader(batches if train else val)

    train_module.make_loader = fake_loader
    try:
        run_dir = train_module.run(recipe, out=str(out), console=Console(quiet=True))
    finally:
        train_module.make_loader = original
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["samples_per_s"] for r in records if r["kind"] == "epoch"]
    return rates[-1] / len(batches[0][1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--model", default="resnet10t")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        make_synth_dataset(root, n=70, size=args.size, seed=0, progress=False)
        path = Path(tmp) / "overhead.yaml"
        path.write_text(RECIPE.format(root=root, size=args.size, model=args.model, epochs=1, batch=args.batch))
        recipe = load_recipe(path, registry=get_registry())
        classes = ["anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"]
        batches = make_batches(args.steps, args.batch, args.size)
        bare_loop(recipe, classes, batches[:3])  # warm-up
        bare, fer = [], []
        for i in range(args.repeats):  # interleaved so both see the same machine load
            bare.append(bare_loop(recipe, classes, batches))
            fer.append(fer_loop(recipe, batches, Path(tmp) / f"runs{i}"))
    b, f = statistics.median(bare), statistics.median(fer)
    table = Table(title=f"training loop overhead ({args.model}, batch {args.batch}, {args.size}px, "
                        f"{args.steps} steps, median of {args.repeats})")
    for column in ("loop", "steps/s", "runs"):
        table.add_column(column)
    table.add_row("bare PyTorch", f"{b:.3f}", ", ".join(f"{x:.3f}" for x in bare))
    table.add_row("fer run", f"{f:.3f}", ", ".join(f"{x:.3f}" for x in fer))
    table.add_row("overhead", f"{(b - f) / b:+.2%}", "target < 3 %")
    Console().print(table)


if __name__ == "__main__":
    main()
