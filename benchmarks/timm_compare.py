"""`fer run` against a timm-style training loop and against the compute limit, on the same images.

The job (the quickstart recipe): resnet10t (timm), AdamW lr 2e-3 weight decay 0.05, timm's cosine
schedule with one warm-up epoch, label smoothing 0.05, horizontal flip, batch 64, validation every
epoch, test accuracy without TTA at the end. Three sides, one after the other in this process,
with the same torch thread count and the same DataLoader worker count:

* ``fer run``: ``fer_core.train.run`` on the quickstart recipe (same seed; ``eval.tta`` off), with
  its progress display rendered as on a terminal (the output is discarded);
* ``timm-style``: the loop of timm's ``train.py`` (timm's optimiser, scheduler and label-smoothing
  loss; a loss read-out every step; validation every epoch; a checkpoint every epoch) over a
  ``torchvision.datasets.ImageFolder`` DataLoader of the same PNG files exported to class folders
  (flip, ToTensor, Normalize in the workers, shuffled, persistent workers);
* ``limit``: the same model, optimiser (with the implementation `fer run` picks: fused kernels
  on a CPU or GPU), schedule and loss stepping through shuffled batches of tensors already in
  memory (decoded and normalised beforehand, no augment), and its per-epoch validation on
  in-memory tensors: what the compute costs with no data path and no bookkeeping. The timm-style
  loop keeps torch's default optimiser implementation, as timm's train.py (``--timm-fused``:
  fused kernels there too).

Training images/s is each epoch's images over its training time (loader start-up included),
averaged over epochs; wall time is the whole run of each side (fer: the ``run`` call, with its
checkpoints, test evaluation and report; timm-style: from building the model to the test
accuracy; limit: its training plus its validation). ``--channels-last``/``--compile``
apply an option to every side, so an option that speeds up the compute is measured against a
limit that has it too. With ``--repeats`` the sides are interleaved in alternating order
(fer, timm, limit, then limit, timm, fer, ...) and the median is printed. Every side runs with
glibc's malloc as `fer run` sets it (``fer_core.allocator``; ``FER_MALLOC_TUNE=0``: as it is), so
this compares the loops, not the allocator (``allocator.py`` measures that). The machine's speed
drifts between runs taken one after the other: ``limit_paired.py`` measures the limit inside
`fer run` instead.

    python benchmarks/timm_compare.py                         # the quickstart at its size (minutes)
    python benchmarks/timm_compare.py --n 1400 --epochs 2     # a quick look
    python benchmarks/timm_compare.py --repeats 3 --json compare.json

Figures from a busy machine are not quiet-machine figures: the load average is printed.
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
from rich.table import Table
from timm.loss import LabelSmoothingCrossEntropy
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

SIDES = ("fer", "timm", "limit")
LABELS = {"fer": "fer run", "timm": "timm-style loop (ImageFolder)", "limit": "compute limit (tensors in memory)"}


# ---- the job --------------------------------------------------------------------------------------------------

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


# ---- the three sides ------------------------------------------------------------------------------------------

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


def run_timm(recipe: dict, folder: Path, classes: list[str], args) -> dict:
    from torchvision import datasets, transforms

    train_cfg = recipe["train"]
    started = time.perf_counter()
    seed_all(recipe["seed"])
    model = timm_model(recipe, len(classes), args.channels_last)
    cfg = model.pretrained_cfg
    normalize = transforms.Normalize(cfg["mean"], cfg["std"])
    flip = recipe["augment"]["sample"][0]["p"] if recipe["augment"]["sample"] else 0.0
    train_set = datasets.ImageFolder(str(folder / "train"), transforms.Compose(
        [transforms.RandomHorizontalFlip(flip), transforms.ToTensor(), normalize]))
    eval_tf = transforms.Compose([transforms.ToTensor(), normalize])
    val_set, test_set = (datasets.ImageFolder(str(folder / s), eval_tf) for s in ("val", "test"))
    workers = args.workers
    options = {"num_workers": workers, "persistent_workers": workers > 0}
    drop_last = len(train_set) > train_cfg["batch_size"]  # as timm's train.py (but keep a tiny set's one batch)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=train_cfg["batch_size"], shuffle=True,
                                               drop_last=drop_last,
                                               generator=torch.Generator().manual_seed(recipe["seed"]), **options)
    val_loader, test_loader = (torch.utils.data.DataLoader(s, batch_size=recipe["eval"]["batch_size"], **options)
                               for s in (val_set, test_set))
    optimizer, scheduler = timm_optimiser(model, recipe, len(train_loader), args.timm_fused)
    loss_fn = LabelSmoothingCrossEntropy(smoothing=recipe["loss"].get("label_smoothing", 0.0))
    net = maybe_compile(model, args.compile)
    rates, train_s, val_s, updates = [], 0.0, 0.0, 0
    with tempfile.TemporaryDirectory(prefix="timm-compare-") as out:
        for epoch in range(train_cfg["epochs"]):
            model.train()
            epoch_start, seen, loss_sum = time.perf_counter(), 0, 0.0
            for inputs, targets in train_loader:
                if args.channels_last:
                    inputs = inputs.contiguous(memory_format=torch.channels_last)
                loss = loss_fn(net(inputs), targets)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                updates += 1
                scheduler.step_update(num_updates=updates)
                loss_sum += loss.item() * len(inputs)  # timm's train.py reads the loss every step
                seen += len(inputs)
            elapsed = time.perf_counter() - epoch_start
            train_s += elapsed
            rates.append(seen / elapsed)
            val_start = time.perf_counter()
            accuracy = timm_accuracy(model, val_loader, args.channels_last)
            val_s += time.perf_counter() - val_start
            scheduler.step(epoch + 1, accuracy)
            torch.save({"epoch": epoch + 1, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict()},
                       Path(out) / "last.pth.tar")  # timm's CheckpointSaver writes one checkpoint an epoch
        test_accuracy = timm_accuracy(model, test_loader, args.channels_last)
    return {"images_per_s": statistics.mean(rates), "epoch_rates": rates, "train_s": train_s, "val_s": val_s,
            "wall_s": time.perf_counter() - started, "test_accuracy": test_accuracy}


@torch.no_grad()
def timm_accuracy(model, loader, channels_last: bool) -> float:
    model.eval()
    correct = total = 0
    for inputs, targets in loader:
        if channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        correct += int((model(inputs).argmax(1) == targets).sum())
        total += len(targets)
    return correct / total


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


def run_limit(recipe: dict, tensors: dict, classes: list[str], args) -> dict:
    """The limit's whole training: its epochs and per-epoch validation, timed."""
    limit = LimitLoop(recipe, tensors, classes, args)
    rates, train_s, val_s = [], 0.0, 0.0
    for epoch in range(recipe["train"]["epochs"]):
        epoch_start = time.perf_counter()
        seen = sum(limit.step(index) for index in limit.batches())
        elapsed = time.perf_counter() - epoch_start
        train_s += elapsed
        rates.append(seen / elapsed)
        val_start = time.perf_counter()
        accuracy = limit.accuracy("val")
        val_s += time.perf_counter() - val_start
        limit.scheduler.step(epoch + 1, accuracy)
    return {"images_per_s": statistics.mean(rates), "epoch_rates": rates, "train_s": train_s, "val_s": val_s,
            "wall_s": train_s + val_s, "test_accuracy": limit.accuracy("test")}


@torch.no_grad()
def tensor_accuracy(model, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    model.eval()
    correct = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    return correct / len(x)


# ---- the comparison ---------------------------------------------------------------------------------------------

def compare(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    tune_malloc()  # what fer's run sets for its process, before any side runs
    recipe = quickstart(args)
    root = Path(recipe["data"]["root"])
    classes = read_manifest(root)["classes"]
    sides = [s for s in SIDES if s in args.sides.split(",")]
    folder = tensors = None
    if "timm" in sides:
        folder = export_imagefolder(root, Path(str(root).rstrip("/") + "-imagefolder"))
    if "limit" in sides:
        tensors = {split: in_memory(root, split, recipe["data"]["image_size"], classes)
                   for split in ("train", "val", "test")}
    load_before = os.getloadavg()
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for repeat in range(args.repeats):
        # interleaved, in alternating order (fer-timm-limit, limit-timm-fer, ...): a machine whose speed
        # drifts over minutes favours neither the first side nor the last
        for side in sides if repeat % 2 == 0 else sides[::-1]:
            if side == "fer":
                runs[side].append(run_fer(recipe, args))
            elif side == "timm":
                runs[side].append(run_timm(recipe, folder, classes, args))
            else:
                runs[side].append(run_limit(recipe, tensors, classes, args))
    medians = {side: {key: statistics.median(r[key] for r in results)
                      for key in ("images_per_s", "train_s", "wall_s", "test_accuracy")}
               for side, results in runs.items()}
    for side in ("timm", "limit"):
        if side in medians:
            medians[side]["val_s"] = statistics.median(r["val_s"] for r in runs[side])
    return {"recipe": recipe["name"], "data": str(root), "train_samples": read_manifest(root)["splits"]["train"]["count"],
            "epochs": args.epochs, "threads": torch.get_num_threads(), "workers": args.workers,
            "options": {"channels_last": args.channels_last, "compile": args.compile, "timm_fused": args.timm_fused},
            "repeats": args.repeats, "runs": runs, "median": medians, "ratios": ratios(medians),
            "load_average_before": list(load_before), "load_average_after": list(os.getloadavg())}


def ratios(medians: dict) -> dict:
    out = {}
    if "fer" in medians and "timm" in medians:
        out["fer/timm images/s"] = medians["fer"]["images_per_s"] / medians["timm"]["images_per_s"]
        out["fer/timm wall"] = medians["fer"]["wall_s"] / medians["timm"]["wall_s"]
        timm_loop = medians["timm"]["train_s"] + medians["timm"]["val_s"]
        out["fer wall / timm-style (train + validation)"] = medians["fer"]["wall_s"] / timm_loop
    if "fer" in medians and "limit" in medians:
        out["fer/limit images/s"] = medians["fer"]["images_per_s"] / medians["limit"]["images_per_s"]
        out["fer wall / limit (train + validation)"] = medians["fer"]["wall_s"] / medians["limit"]["wall_s"]
    if "timm" in medians and "limit" in medians:
        out["timm/limit images/s"] = medians["timm"]["images_per_s"] / medians["limit"]["images_per_s"]
    return out


def show(result: dict, console: Console) -> None:
    options = ", ".join(k for k, v in result["options"].items() if v) or "eager defaults"
    table = Table(title=f"{result['train_samples']} training images, {result['epochs']} epochs, {result['threads']} "
                        f"threads, {result['workers']} workers, {options}; median of {result['repeats']}")
    for column in ("", "train img/s (mean of epochs)", "training s", "validation s", "wall s", "test accuracy",
                   "img/s per run"):
        table.add_column(column, justify="left" if not column else "right")
    for side, m in result["median"].items():
        per_run = ", ".join(f"{r['images_per_s']:.0f}" for r in result["runs"][side])
        val = f"{m['val_s']:.1f}" if "val_s" in m else "-"
        table.add_row(LABELS[side], f"{m['images_per_s']:.1f}", f"{m['train_s']:.1f}", val, f"{m['wall_s']:.1f}",
                      f"{100 * m['test_accuracy']:.1f} %", per_run)
    console.print(table)
    show_ratios(result, console)


def show_ratios(result: dict, console: Console) -> None:
    for name, value in result["ratios"].items():
        console.print(f"{name}: {value:.3f}", highlight=False)
    before, after = (", ".join(f"{x:.2f}" for x in result[k]) for k in ("load_average_before", "load_average_after"))
    console.print(f"load average (1, 5, 15 min) before: {before}; after: {after}", highlight=False)


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


def main(argv: list[str] | None = None) -> dict:
    parser = job_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=1, help="interleaved runs of every side; medians are shown")
    parser.add_argument("--threads", type=int, help="torch threads of every side (default: torch's)")
    parser.add_argument("--sides", default=",".join(SIDES), help="which of fer,timm,limit to run")
    parser.add_argument("--channels-last", action="store_true", help="channels_last on every side")
    parser.add_argument("--compile", action="store_true", help="torch.compile on every side")
    parser.add_argument("--timm-fused", action="store_true", help="fused AdamW kernels in the timm-style loop too "
                        "(the limit always uses the implementation fer's run picks)")
    args = parser.parse_args(argv)
    result = compare(args)
    show(result, Console(width=150))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
