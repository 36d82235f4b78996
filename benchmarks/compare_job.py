"""The job that `timm_compare.py` and `limit_paired.py` both measure, and the sides they share.

The quickstart recipe at the sizes asked for (its synthetic faces drawn under ``--cache``), its
images as an ImageFolder and as tensors in memory, the timm model, optimiser and schedule the
recipe names, `fer run` itself as a side, and ``LimitLoop``: the compute limit (the same model,
optimiser, schedule and loss stepping on normalised tensors already in memory, no data path, no
bookkeeping) with its validation. Also the job's command-line options and how results end.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from rich.console import Console
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2

import fer_core.train as train_module
from fer_core.data.loader import _image_bytes, decode_pixels
from fer_core.data.shards import read_manifest
from fer_core.data.sources import ensure_data
from fer_core.data.tarstream import tar_samples
try:
    from fer_core.optim import use_fused
except ImportError:  # a fer-core from before optim.fused (a "before" measurement): torch's default optimiser
    use_fused = None
try:
    from fer_core.allocator import tune_malloc
except ImportError:  # a fer-core from before the allocator tuning
    def tune_malloc() -> bool:
        return False
from fer_core.plugins import get_registry
from fer_core.recipe import load_recipe
from fer_core.recipes import locate


# ---- the job's recipe and data --------------------------------------------------------------------------------------------------

def quickstart(args) -> dict:
    """The quickstart recipe with this comparison's sizes (drawn under --cache when missing)."""
    path = locate(args.recipe)
    recipe = load_recipe(path, registry=get_registry())
    synth = dict(recipe["data"].get("synth") or {})
    if args.n is not None:
        synth["n"] = args.n
    root = args.data or Path(args.cache) / f"synth-{synth.get('n')}-{synth.get('size')}-{synth.get('seed', 0)}"
    overrides = [f"data.root={root}", f"data.synth={json.dumps(synth)}", f"train.epochs={args.epochs}",
                 "eval.tta=null", "name=compare", f"data.num_workers={args.workers}", *args.set]
    if args.channels_last:
        overrides.append("train.channels_last=true")
    if args.compile:
        overrides.append("train.compile=true")
    recipe = load_recipe(path, overrides, get_registry())
    ensure_data(recipe["data"], Console(stderr=True))
    return recipe


def export_imagefolder(root: Path, out: Path) -> Path:
    """Every split's image files as ``out/<split>/<class>/<key>.<ext>``, byte for byte (kept between runs)."""
    manifest = read_manifest(root)
    done = out / ".complete"
    if done.exists() and done.read_text() == manifest.get("created_by", "") + str(manifest["splits"]):
        return out
    classes = manifest["classes"]
    for split, entry in manifest["splits"].items():
        for shard in entry["shards"]:
            for sample in tar_samples(root / shard):
                ext = next(k for k in ("png", "jpg", "jpeg", "webp", "bmp") if k in sample)
                folder = out / split / classes[int(sample["cls"])]
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{sample['__key__'].replace('/', '_')}.{ext}").write_bytes(sample[ext])
    done.write_text(manifest.get("created_by", "") + str(manifest["splits"]))
    return out


def in_memory(root: Path, split: str, size: int, classes: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """A split decoded into uint8 [N, 3, size, size] and its labels (recipe class order)."""
    manifest = read_manifest(root)
    index = {manifest["classes"].index(c): i for i, c in enumerate(classes)}
    images, labels = [], []
    for shard in manifest["splits"][split]["shards"]:
        for sample in tar_samples(root / shard):
            images.append(decode_pixels(_image_bytes(sample), size, 3))
            labels.append(index[int(sample["cls"])])
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels)


def in_memory_splits(recipe: dict, classes: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The train, val and test splits of the recipe's data as the limit takes them (``in_memory``)."""
    root, size = Path(recipe["data"]["root"]), recipe["data"]["image_size"]
    return {split: in_memory(root, split, size, classes) for split in ("train", "val", "test")}


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def timm_model(recipe: dict, num_classes: int, channels_last: bool) -> torch.nn.Module:
    backbone, head = recipe["model"]["backbone"], recipe["model"]["head"]
    model = timm.create_model(backbone["model"], num_classes=num_classes, drop_rate=head.get("dropout", 0.0))
    return model.to(memory_format=torch.channels_last) if channels_last else model


def timm_optimiser(model, recipe: dict, steps_per_epoch: int, fused: bool):
    optim, schedule = recipe["optim"], recipe["schedule"]
    extra = {"fused": True} if fused else {}  # else torch's default implementation, as timm's train.py
    optimizer = create_optimizer_v2(model, opt=optim["name"], lr=optim["lr"], weight_decay=optim["weight_decay"],
                                    **extra)
    scheduler, _ = create_scheduler_v2(optimizer, sched=schedule["name"], num_epochs=recipe["train"]["epochs"],
                                       warmup_epochs=schedule["warmup_epochs"], warmup_lr=schedule["warmup_lr"],
                                       min_lr=schedule["min_lr"], updates_per_epoch=steps_per_epoch)
    return optimizer, scheduler


def maybe_compile(model, enabled: bool):
    return torch.compile(model) if enabled else model


# ---- the sides both benchmarks run ----------------------------------------------------------------------

def run_fer(recipe: dict, args) -> dict:
    console = Console(file=io.StringIO(), force_terminal=args.display == "terminal", width=120)
    with tempfile.TemporaryDirectory(prefix="fer-compare-") as out:
        seed_all(recipe["seed"])
        started = time.perf_counter()
        run_dir = train_module.run(recipe, out=out, console=console)
        wall = time.perf_counter() - started
        summary = json.loads((run_dir / "summary.json").read_text())
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r.get("kind") == "epoch" and r.get("epoch", 0) > 0]
    rates = [r["samples_per_s"] for r in epochs]
    return {"images_per_s": statistics.mean(rates), "epoch_rates": rates, "train_s": summary["train_time_s"],
            "wall_s": wall, "test_accuracy": summary["test"]["accuracy"],
            "time_to_first_step_s": summary.get("time_to_first_step_s")}


class LimitLoop:
    """The compute limit: the model, optimiser, schedule and loss stepping through shuffled batches of normalised
    tensors in memory (no augment, no data path, no bookkeeping), and its validation on in-memory tensors."""

    def __init__(self, recipe: dict, tensors: dict, classes: list[str], args):
        self.recipe, self.batch = recipe, recipe["train"]["batch_size"]
        seed_all(recipe["seed"])
        self.model = timm_model(recipe, len(classes), args.channels_last)
        mean = torch.tensor(self.model.pretrained_cfg["mean"]).view(1, 3, 1, 1)
        std = torch.tensor(self.model.pretrained_cfg["std"]).view(1, 3, 1, 1)
        self.data = {split: ((x.float() / 255 - mean) / std, y) for split, (x, y) in tensors.items()}
        if args.channels_last:
            self.data = {s: (x.contiguous(memory_format=torch.channels_last), y) for s, (x, y) in self.data.items()}
        self.steps = math.ceil(len(self.data["train"][0]) / self.batch)
        # the optimiser implementation fer's run picks (fused kernels unless optim.fused says otherwise)
        fused = use_fused is not None and use_fused(
            [{"params": [p for p in self.model.parameters() if p.requires_grad]}], recipe["optim"].get("fused"))
        self.optimizer, self.scheduler = timm_optimiser(self.model, recipe, self.steps, fused)
        self.smoothing = recipe["loss"].get("label_smoothing", 0.0)
        self.net = maybe_compile(self.model, args.compile)
        self.generator = torch.Generator().manual_seed(recipe["seed"])
        self.updates = 0
        self.model.train()

    def batches(self):
        """One epoch's batch indices, in a fresh shuffled order."""
        order = torch.randperm(len(self.data["train"][0]), generator=self.generator)
        return [order[i * self.batch:(i + 1) * self.batch] for i in range(self.steps)]

    def step(self, index: torch.Tensor) -> int:
        x, y = self.data["train"]
        loss = F.cross_entropy(self.net(x[index]), y[index], label_smoothing=self.smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.updates += 1
        self.scheduler.step_update(num_updates=self.updates)
        return len(index)

    def accuracy(self, split: str) -> float:
        accuracy = tensor_accuracy(self.model, *self.data[split], self.recipe["eval"]["batch_size"])
        self.model.train()
        return accuracy


@torch.no_grad()
def tensor_accuracy(model, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    model.eval()
    correct = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    return correct / len(x)


# ---- options and results -------------------------------------------------------------------------------

def job_parser(description: str) -> argparse.ArgumentParser:
    """The options that set the job (recipe, data, epochs, fer's workers and display, overrides, JSON output)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="quickstart")
    parser.add_argument("--data", help="data.root (default: a draw of the recipe's synthetic faces under --cache)")
    parser.add_argument("--n", type=int, help="synthetic faces to draw (default: the recipe's data.synth.n)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of fer (and of the timm-style loop)")
    parser.add_argument("--display", choices=("terminal", "plain"), default="terminal",
                        help="fer's progress display rendered as on a terminal (discarded) or as into a file")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "fer-bench"))
    parser.add_argument("-s", "--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override of fer's recipe")
    parser.add_argument("--json", type=Path, help="write the result here")
    return parser


def show_ratios(result: dict, console: Console) -> None:
    per_repeat = result.get("repeat_ratios", {})
    for name, value in result["ratios"].items():
        own = f" (median of each repeat's own ratio: {per_repeat[name]:.3f})" if name in per_repeat else ""
        console.print(f"{name}: {value:.3f}{own}", highlight=False)
    before, after = (", ".join(f"{x:.2f}" for x in result[k]) for k in ("load_average_before", "load_average_after"))
    console.print(f"load average (1, 5, 15 min) before: {before}; after: {after}", highlight=False)


def finish(result: dict, show, args, width: int = 150) -> dict:
    """Show ``result`` and write it to ``--json`` when asked; returns it."""
    show(result, Console(width=width))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result
