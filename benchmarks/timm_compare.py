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

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from timm.loss import LabelSmoothingCrossEntropy

sys.path.insert(0, str(Path(__file__).parent))  # the sibling module, also when loaded by path
from compare_job import (LimitLoop, export_imagefolder, finish, in_memory_splits, job_parser, maybe_compile,  # noqa: E402
                         quickstart, read_manifest, run_fer, seed_all, show_ratios, timm_model, timm_optimiser,
                         tune_malloc)

SIDES = ("fer", "timm", "limit")
LABELS = {"fer": "fer run", "timm": "timm-style loop (ImageFolder)", "limit": "compute limit (tensors in memory)"}


# ---- the three sides ------------------------------------------------------------------------------------------

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


# ---- the comparison ---------------------------------------------------------------------------------------------

def compare(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    tune_malloc()  # what fer's run sets for its process, before any side runs
    recipe = quickstart(args)
    root = Path(recipe["data"]["root"])
    manifest = read_manifest(root)
    classes = manifest["classes"]
    sides = [s for s in SIDES if s in args.sides.split(",")]
    folder = tensors = None
    if "timm" in sides:
        folder = export_imagefolder(root, Path(str(root).rstrip("/") + "-imagefolder"))
    if "limit" in sides:
        tensors = in_memory_splits(recipe, classes)
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
    return {"recipe": recipe["name"], "data": str(root), "train_samples": manifest["splits"]["train"]["count"],
            "epochs": args.epochs, "threads": torch.get_num_threads(), "workers": args.workers,
            "options": {"channels_last": args.channels_last, "compile": args.compile, "timm_fused": args.timm_fused},
            "repeats": args.repeats, "runs": runs, "median": medians, "ratios": ratios(medians),
            "repeat_ratios": repeat_ratios(runs, args.repeats) if args.repeats > 1 else {},
            "load_average_before": list(load_before), "load_average_after": list(os.getloadavg())}


def repeat_ratios(runs: dict[str, list[dict]], repeats: int) -> dict:
    """The median over repeats of each repeat's own ratios: sides run minutes apart, less drift between them."""
    each = [ratios({side: results[i] for side, results in runs.items()}) for i in range(repeats)]
    return {name: statistics.median(r[name] for r in each) for name in each[0]}


def ratios(medians: dict) -> dict:
    """Ratios of the sides' figures (medians, or one repeat's runs)."""
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
    return finish(compare(args), show, args)


if __name__ == "__main__":
    main()
