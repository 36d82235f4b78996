"""Shard loader versus a plain ImageFolder DataLoader on FER-sized images (issue 3).

Draws ``--n`` synthetic 48x48 faces (``fer_core.data.synth``), writes them once as an
ImageFolder tree of PNG files (one folder per class) and packs that tree into shards
with ``fer data pack``'s packer. Then it times full passes over the same images:

* ``ImageFolder``: ``torchvision.datasets.ImageFolder`` + ``ToTensor`` in a shuffling
  ``torch.utils.data.DataLoader``;
* ``shards``: ``fer_core.data.sources.make_loader`` (the training loader: shard
  shuffle, shuffle buffer, exact batches),

both decoding to float tensors [3, 48, 48] in [0, 1], with the same batch size and
worker count, and prints samples per second side by side with their ratio. A run
times each loader over ``--passes`` passes (workers start inside every pass) and keeps
the best pass; the comparison is run ``--repeats`` times (default 3) and the median
ratio is printed, with the load average before and after (figures from a busy machine
are not quiet-machine figures). The files are read once beforehand so both come from
the page cache.

    python benchmarks/loader.py --workers 2 --batch-size 256 --cache /tmp/fer-bench   # median of 3 runs
    python benchmarks/loader.py --profile            # cProfile of both, no workers
"""

from __future__ import annotations

import argparse
import cProfile
import io
import multiprocessing
import os
import pstats
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from fer_core.data import synth
from fer_core.data.pack import pack_dataset
from fer_core.data.shards import MANIFEST_NAME, read_manifest
from fer_core.data.sources import make_loader
from fer_core.recipe import DEFAULTS

console = Console(width=120)


# ---- the data: one ImageFolder tree and its shards ------------------------------------------------------------

def _draw(args: tuple[int, int, int, int]) -> list[tuple[str, int, bytes]]:
    start, stop, size, seed = args
    out = []
    for index in range(start, stop):
        name = synth.EXPRESSIONS[index % len(synth.EXPRESSIONS)]
        pixels = synth.render_face(name, np.random.default_rng([seed, index]), size)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        out.append((name, index, buf.getvalue()))
    return out


def prepare(cache: Path, n: int, size: int, shard_size: int) -> tuple[Path, Path]:
    """``cache/imagefolder`` (PNG files per class) and ``cache/shards``; reused when they hold ``n`` images."""
    folder, shards = cache / f"imagefolder-{n}-{size}", cache / f"shards-{n}-{size}-{shard_size}"
    if not (folder / ".complete").exists():
        shutil.rmtree(folder, ignore_errors=True)
        started = time.perf_counter()
        chunks = [(a, min(a + 500, n), size, 0) for a in range(0, n, 500)]
        with console.status(f"drawing {n} synthetic {size}x{size} faces"), multiprocessing.Pool() as pool:
            for drawn in pool.imap_unordered(_draw, chunks):
                for name, index, data in drawn:
                    path = folder / name / f"face-{index:06d}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(data)
        (folder / ".complete").touch()
        console.print(f"drew {n} faces into {folder} in {time.perf_counter() - started:.1f}s")
    if not (shards / MANIFEST_NAME).exists():
        started = time.perf_counter()
        pack_dataset(folder, shards, "imagefolder", val_split=0.0, test_split=0.0, shard_size=shard_size,
                     overwrite=True, progress=False, console=console)
        console.print(f"packed {shards} in {time.perf_counter() - started:.1f}s")
    return folder, shards


def warm_page_cache(*dirs: Path) -> None:
    for root in dirs:
        for path in root.rglob("*"):
            if path.is_file():
                path.read_bytes()


# ---- the two loaders ----------------------------------------------------------------------------------------

def imagefolder_loader(folder: Path, batch_size: int, workers: int):
    from torchvision import datasets, transforms

    dataset = datasets.ImageFolder(str(folder), transform=transforms.ToTensor())  # PIL -> RGB -> float [0, 1]
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                       generator=torch.Generator().manual_seed(0))


def shard_loader(shards: Path, batch_size: int, workers: int, size: int):
    data = {**DEFAULTS["data"], "root": str(shards), "image_size": size, "channels": 3}
    classes = read_manifest(shards)["classes"]
    # no decoded-image cache: like ImageFolder, every pass reads and decodes the files again
    return make_loader(data, "train", classes, batch_size, train=True, seed=0, num_workers=workers).configure(cache_mb=0)


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the DataLoader workers, once joined)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def one_pass(loader, epoch: int) -> tuple[int, float, float]:
    """(samples, seconds, CPU seconds of all processes) of one full pass, worker start-up included."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    started, cpu = time.perf_counter(), cpu_seconds()
    samples = 0
    for batch in loader:
        samples += len(batch[0])
    seconds = time.perf_counter() - started
    time.sleep(0.2)  # let the workers exit and be reaped so that their CPU time is counted
    return samples, seconds, cpu_seconds() - cpu


def best_pass(loader, passes: int) -> tuple[int, float, float]:
    runs = [one_pass(loader, epoch) for epoch in range(passes)]
    return min(runs, key=lambda run: run[1])


def profile(name: str, loader, limit: int = 25) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    samples, seconds, _ = one_pass(loader, 0)
    profiler.disable()
    console.rule(f"{name}: {samples} samples in {seconds:.2f}s under cProfile (no workers)")
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(limit)


def load_average() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def describe(folder: Path, shards: Path, args) -> None:
    """What each side does, printed before the figures: both read the same images from disk every pass."""
    console.print(f"[bold]ImageFolder[/]: {folder} ({args.n} PNG files); per sample, in {args.workers} worker(s): "
                  f"open and read the file, PIL decode, convert to RGB, ToTensor (float [3, {args.size}, "
                  f"{args.size}] in [0, 1]); batches collated in shared memory; shuffled indices", highlight=False)
    console.print(f"[bold]shards[/]: {shards} (the same PNG bytes in {args.shard_size}-sample tar shards); per sample, "
                  f"in {args.workers} worker(s): read from the tar stream, decode (libpng through torchvision's "
                  f"operator, PIL for other images), uint8 batches; the main process makes each batch float [B, 3, "
                  f"{args.size}, {args.size}] in [0, 1]; shard order and a 1000-sample buffer shuffle; no decoded-image "
                  f"cache (fer run's data.cache_decoded is not used here)", highlight=False)


def report(runs: list[dict[str, tuple[int, float, float]]], args) -> None:
    """A row per run (samples/s of each loader, their ratio, the CPU ratio) and the median ratio."""
    table = Table(title=f"{args.n} {args.size}x{args.size} images, batch {args.batch_size}, "
                        f"{args.workers} workers, best of {args.passes} passes per run",
                  caption="CPU ratio: samples per CPU second (user + system, main process and workers) "
                          "of shards / ImageFolder; steadier than wall time on a busy machine")
    for column in ("run", "ImageFolder samples/s", "shards samples/s", "ratio", "CPU ratio"):
        table.add_column(column, justify="right")
    ratios, cpu_ratios = [], []
    for number, results in enumerate(runs, 1):
        (n_plain, t_plain, c_plain), (n_shard, t_shard, c_shard) = results["ImageFolder"], results["shards"]
        ratios.append((n_shard / t_shard) / (n_plain / t_plain))
        cpu_ratios.append((n_shard / c_shard) / (n_plain / c_plain))
        table.add_row(str(number), f"{n_plain / t_plain:,.0f}", f"{n_shard / t_shard:,.0f}", f"{ratios[-1]:.2f}x",
                      f"{cpu_ratios[-1]:.2f}x")
    console.print(table)
    median, cpu_median = statistics.median(ratios), statistics.median(cpu_ratios)
    verdict = "[green]meets[/]" if median >= 2 else "[red]misses[/]"
    console.print(f"shard loader / ImageFolder, median of {len(runs)} runs = {median:.2f}x (CPU ratio "
                  f"{cpu_median:.2f}x; {verdict} the 2x target)", highlight=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20_000, help="images (default 20000)")
    parser.add_argument("--size", type=int, default=48, help="image side in pixels (default 48)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of both loaders (default 2)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--passes", type=int, default=2, help="timed passes per loader; the best is shown")
    parser.add_argument("--repeats", type=int, default=3, help="runs of the comparison; the median ratio is printed")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    parser.add_argument("--cache", type=Path, help="keep the drawn images and shards here (default: a temp dir)")
    parser.add_argument("--profile", action="store_true", help="cProfile both loaders with no workers instead")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    temp = None if args.cache else tempfile.TemporaryDirectory(prefix="fer-bench-")
    cache = args.cache or Path(temp.name)
    try:
        folder, shards = prepare(cache, args.n, args.size, args.shard_size)
        warm_page_cache(folder, shards)
        workers = 0 if args.profile else args.workers
        loaders = {"ImageFolder": imagefolder_loader(folder, args.batch_size, workers),
                   "shards": shard_loader(shards, args.batch_size, workers, args.size)}
        if args.profile:
            for name, loader in loaders.items():
                profile(name, loader)
            return
        describe(folder, shards, args)
        load_before = load_average()
        runs = []
        for _ in range(args.repeats):
            runs.append({name: best_pass(loader, args.passes) for name, loader in loaders.items()})
    finally:
        if temp is not None:
            temp.cleanup()
    report(runs, args)
    console.print(f"load average (1, 5, 15 min) before: {load_before}; after: {load_average()}", highlight=False)


if __name__ == "__main__":
    main()
