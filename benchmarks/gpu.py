"""Training images/s on a GPU: `fer run`'s loop against a bare PyTorch loop over the same tensors.

For each model (default resnet18 and vit_tiny at 224 px, batch 64, mixed precision) it measures

* ``bare``: a minimal loop over batches already in device memory: forward, cross-entropy, backward
  (through a GradScaler with float16), the optimiser step (fused AdamW, as `fer run` picks it on
  CUDA), zero_grad; the device is synchronised before the clock starts and before it stops;
* ``fer run``: ``fer_core.train.run`` with the same model, optimiser, AMP and batch size, its
  loaders swapped for the same in-memory device batches, so its figure is the loop itself: the
  step bookkeeping, the progress display, the schedule, the occasional host syncs. Its rate is
  the last epoch's (the first one warms up: cuDNN autotuning, allocator, compilation);

and the GPU's utilisation while each runs (``torch.cuda.utilization`` when pynvml is there, else
``nvidia-smi``, sampled ten times a second; "n/a" without either), the peak memory, and the
ratio fer/bare (goal: at least 0.95).

    python benchmarks/gpu.py                                   # on a CUDA machine
    python benchmarks/gpu.py --channels-last --compile          # both loops with the option
    python benchmarks/gpu.py --device cpu --tiny                # a smoke run on a CPU (tiny sizes)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

import fer_core.train as train_module
from fer_core.data.pack import make_synth_dataset
from fer_core.plugins import get_registry
from fer_core.recipe import load_recipe

MODELS = ("resnet18", "vit_tiny_patch16_224")
CLASSES = 7

RECIPE = """
name: gpu-{name}
seed: 0
data: {{root: {root}, image_size: {size}, channels: 3, num_workers: 0}}
model:
  backbone: {backbone}
  head: {{name: linear}}
optim: {{name: adamw, lr: 1.0e-4}}
schedule: {{name: cosine}}
train: {{epochs: 2, batch_size: {batch}, amp: {amp}, device: {device}, channels_last: {channels_last},
         compile: {compile}}}
eval: {{batch_size: {batch}}}
"""


class DeviceBatches:
    """Stands in for the run's loaders: the same device batches every epoch, no I/O."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor, list[str]]]):
        self.batches = batches
        self.corrupt: list[str] = []
        self.stream = type("Stream", (), {"total": sum(len(b[1]) for b in batches)})()

    def configure(self, **options) -> DeviceBatches:  # as EpochLoader.configure: nothing to set here
        return self

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


class Utilisation:
    """The GPU's mean utilisation (%) while the block runs, sampled ten times a second; None when unknown."""

    def __init__(self, device: torch.device):
        self.device, self.samples, self.stop = device, [], threading.Event()
        self.read = self._reader()

    def _reader(self):
        if self.device.type != "cuda":
            return None
        try:
            torch.cuda.utilization(self.device)
            return lambda: torch.cuda.utilization(self.device)
        except Exception:  # no pynvml: ask nvidia-smi
            pass
        if shutil.which("nvidia-smi") is None:
            return None
        index = self.device.index or 0

        def smi() -> float:
            out = subprocess.run(["nvidia-smi", f"--id={index}", "--query-gpu=utilization.gpu",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=5)
            return float(out.stdout.strip().splitlines()[0])
        return smi

    def __enter__(self):
        if self.read is not None:
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.stop.wait(0.1):
            with contextlib.suppress(Exception):
                self.samples.append(self.read())

    def __exit__(self, *exc) -> None:
        self.stop.set()
        if self.read is not None:
            self.thread.join()

    @property
    def mean(self) -> float | None:
        return statistics.mean(self.samples) if self.samples else None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_batches(steps: int, batch: int, size: int, device: torch.device, channels_last: bool):
    generator = torch.Generator().manual_seed(0)
    out = []
    for _ in range(steps):
        images = torch.rand(batch, 3, size, size, generator=generator).to(device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        out.append((images, torch.randint(0, CLASSES, (batch,), generator=generator).to(device), []))
    return out


def timm_kwargs(model: str, size: int) -> dict:
    return {"img_size": size} if "vit" in model else {}


def bare(model_name: str, batches: list, args, device: torch.device) -> dict:
    """The minimal loop: forward, loss, backward (scaled with float16), fused AdamW, zero_grad."""
    torch.manual_seed(0)
    model = timm.create_model(model_name, num_classes=CLASSES, **timm_kwargs(model_name, args.size)).to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if args.compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    dtype = (torch.float16 if device.type == "cuda" else torch.bfloat16) if args.amp else None
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext

    def step(inputs, targets):
        with autocast():
            loss = F.cross_entropy(net(inputs).float(), targets)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    for inputs, targets, _ in batches[:args.warmup]:
        step(inputs, targets)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    with Utilisation(device) as utilisation:
        started = time.perf_counter()
        for inputs, targets, _ in batches:
            step(inputs, targets)
        synchronize(device)
        elapsed = time.perf_counter() - started
    return {"images_per_s": len(batches) * args.batch / elapsed, "utilisation": utilisation.mean,
            "peak_memory_mb": peak_mb(device)}


def fer(model_name: str, batches: list, args, device: torch.device, data_root: Path) -> dict:
    """`fer run`'s loop over the same batches (its loaders swapped for them); the second epoch's rate."""
    backbone = {"name": "timm", "model": model_name, **timm_kwargs(model_name, args.size)}
    with tempfile.TemporaryDirectory(prefix="fer-gpu-") as tmp:
        path = Path(tmp) / "gpu.yaml"
        path.write_text(RECIPE.format(name=model_name, root=data_root, size=args.size, backbone=json.dumps(backbone),
                                      batch=args.batch, amp=str(args.amp).lower(), device=device,
                                      channels_last=str(args.channels_last).lower(),
                                      compile=str(args.compile).lower()))
        recipe = load_recipe(path, registry=get_registry())
        original = train_module.make_loader

        def in_memory(data, split, classes, batch_size, *, train, **kwargs):
            return DeviceBatches(batches if train else batches[:1])

        train_module.make_loader = in_memory
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            with Utilisation(device) as utilisation:
                run_dir = train_module.run(recipe, out=tmp, console=Console(file=io.StringIO(), force_terminal=True))
        finally:
            train_module.make_loader = original
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rate = [r["samples_per_s"] for r in records if r["kind"] == "epoch"][-1]
    return {"images_per_s": rate, "utilisation": utilisation.mean, "peak_memory_mb": peak_mb(device)}


def peak_mb(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    parser.add_argument("--models", default=",".join(MODELS), help="timm models, comma-separated")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=60, help="timed steps (an epoch of fer run)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps of the bare loop first")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="mixed precision (default: on with CUDA, off on a CPU)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (32 px, batch 4, 3 steps): a smoke run")
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args(argv)
    if args.tiny:
        args.size, args.batch, args.steps, args.warmup = 32, 4, 3, 1
    device = torch.device(args.device)
    args.amp = device.type == "cuda" if args.amp is None else args.amp
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; run with --device cpu --tiny for a smoke run")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as both loops would on a real job
    results = []
    with tempfile.TemporaryDirectory(prefix="fer-gpu-data-") as tmp:
        data_root = Path(tmp) / "data"  # the recipe's classes; its images are never read (the batches replace them)
        make_synth_dataset(data_root, n=70, size=16, seed=0, progress=False)
        for model_name in args.models.split(","):
            batches = make_batches(args.steps, args.batch, args.size, device, args.channels_last)
            plain = bare(model_name, batches, args, device)
            loop = fer(model_name, batches, args, device, data_root)
            results.append({"model": model_name, "bare": plain, "fer": loop,
                            "ratio": loop["images_per_s"] / plain["images_per_s"]})
            del batches
    show(results, args, device)
    out = {"device": str(device), "name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "size": args.size, "batch": args.batch, "steps": args.steps, "amp": args.amp,
           "channels_last": args.channels_last, "compile": args.compile, "results": results,
           "load_average": list(os.getloadavg())}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return out


def show(results: list[dict], args, device: torch.device) -> None:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    options = ", ".join(o for o, on in (("AMP", args.amp), ("channels_last", args.channels_last),
                                        ("compile", args.compile)) if on) or "float32"
    table = Table(title=f"{name}: {args.size} px, batch {args.batch}, {args.steps} steps, {options}")
    for column in ("model", "bare img/s", "fer run img/s", "fer/bare", "GPU util bare", "GPU util fer",
                   "peak MiB bare", "peak MiB fer"):
        table.add_column(column, justify="left" if column == "model" else "right")

    def pct(value):
        return "n/a" if value is None else f"{value:.0f} %"

    for r in results:
        verdict = "green" if r["ratio"] >= 0.95 else "red"
        table.add_row(r["model"], f"{r['bare']['images_per_s']:.1f}", f"{r['fer']['images_per_s']:.1f}",
                      f"[{verdict}]{r['ratio']:.3f}[/]", pct(r["bare"]["utilisation"]), pct(r["fer"]["utilisation"]),
                      str(r["bare"]["peak_memory_mb"] or "-"), str(r["fer"]["peak_memory_mb"] or "-"))
    console = Console(width=140)
    console.print(table)
    console.print(f"goal: fer/bare >= 0.95; load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}",
                  highlight=False)


if __name__ == "__main__":
    main()
