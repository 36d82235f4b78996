"""Where each millisecond of a `fer run` training step goes: a profile of the real loop.

Runs ``fer_core.train.run`` on a recipe (default: the packaged quickstart) with timers wrapped
around the real loop's pieces (module functions and methods patched in place; nothing of the
loop is copied): reading shards, decoding, augmenting, converting to float, collating (in the
loader workers; in the main process without workers, or for a split held decoded in memory
on the CPU), waiting for batches, host->device
copies, forward + loss, backward, the optimiser, EMA, the schedule, the step bookkeeping and
logging, the progress display, and per epoch the validation, checkpoints and the report.

Times are exclusive (a piece nested in another is counted once, in the inner one) and given in
milliseconds per training step; everything that is not per step (validation, checkpoints, the
final test evaluation and report, set-up) is spread over the steps too, so one table sorted by
cost shows where the run's time goes. Worker rows run in parallel with the main process: on a
machine with few cores they cost the main process through the CPU they take, which the table's
CPU lines show. The five largest costs are highlighted.

    python benchmarks/profile_run.py                        # one quickstart epoch at its size
    python benchmarks/profile_run.py --n 1400 --epochs 1    # a quick look on a smaller draw
    python benchmarks/profile_run.py --json profile.json --torch-profile 5

Figures from a busy machine are not quiet-machine figures: the load average is printed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import resource
import tempfile
import threading
import time
from multiprocessing.sharedctypes import RawArray
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

import fer_core.data.loader as loader_module
import fer_core.train as train_module
from fer_core.plugins import get_registry
from fer_core.recipe import load_recipe
from fer_core.recipes import locate

# (stage, where it runs, what it is); the order is the table's when costs tie
STAGES = {
    "read": ("loader", "reading shards (tar framing, sample dicts)"),
    "decode": ("loader", "decoding images (PNG/JPEG -> uint8)"),
    "augment": ("loader", "sample augments"),
    "to_float": ("loader", "uint8 -> float conversion of samples"),
    "collate": ("loader", "collating samples into batches"),
    "stream": ("loader", "the rest of the stream: shard order, interleaving, shuffle buffer"),
    "first_batch": ("main", "first batch of each epoch (loader start-up)"),
    "cache": ("main", "filling the decoded-image cache (once; its decoding in workers is under decoding)"),
    "wait": ("main", "waiting for the next batch (worker hand-over)"),
    "merge": ("main", "merging/splitting worker batches"),
    "deliver": ("main", "delivering batches (uint8 -> float [B,C,H,W])"),
    "to_device": ("main", "host->device copy (and memory format)"),
    "forward": ("main", "forward + loss (task.train_step)"),
    "backward": ("main", "backward"),
    "optimizer": ("main", "optimiser step"),
    "zero_grad": ("main", "zero_grad"),
    "ema": ("main", "EMA update"),
    "schedule": ("main", "learning-rate schedule"),
    "window": ("main", "step bookkeeping (loss sums on the device, their read-out)"),
    "log": ("main", "metrics log (jsonl + TensorBoard)"),
    "progress": ("main", "progress display (updates, redraws between steps)"),
    "refresh": ("thread", "progress display (refresh thread, concurrent)"),
    "loop": ("main", "the loop's own Python (the rest of the training time)"),
    "evaluate": ("epoch", "validation (per epoch, with its loading)"),
    "checkpoint": ("epoch", "checkpoints (last.pt, best.pt)"),
    "epoch_end": ("epoch", "task.epoch_end and the epoch line"),
    "setup": ("run", "set-up before the first step (data check, model, loaders)"),
    "test": ("run", "final test evaluation (with TTA)"),
    "report": ("run", "report (tables, plots, report.json/md)"),
    "finish": ("run", "the rest of the run (best.pt reload, summary)"),
}
NAMES = list(STAGES)
PHASES = ("train", "eval", "run")  # training steps; evaluation (its loading nested); per-epoch/per-run pieces
SLOTS = 20  # 0: main thread, 1: other threads of the main process, 2+: loader workers
MAIN_THREAD = threading.main_thread()


class Timers:
    """Exclusive wall time per (process slot, phase, stage) in shared memory: forked workers write their own row."""

    def __init__(self):
        self.seconds = RawArray("d", SLOTS * len(PHASES) * len(NAMES))
        self.calls = RawArray("q", SLOTS * len(PHASES) * len(NAMES))
        self.local = threading.local()
        self.phase = "train"  # of this process's main thread (workers: the stream they read)

    def slot(self) -> int:
        info = torch.utils.data.get_worker_info()
        if info is not None:
            return 2 + min(info.id, SLOTS - 3)
        return 0 if threading.current_thread() is MAIN_THREAD else 1

    def _index(self, slot: int, phase: str, name: str) -> int:
        return (slot * len(PHASES) + PHASES.index(phase)) * len(NAMES) + NAMES.index(name)

    @contextlib.contextmanager
    def section(self, name: str, phase: str | None = None):
        stack = self.local.__dict__.setdefault("stack", [])
        frame = [0.0]  # time spent in nested sections
        stack.append(frame)
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            stack.pop()
            if stack:
                stack[-1][0] += elapsed
            index = self._index(self.slot(), phase or self.phase, name)
            self.seconds[index] += elapsed - frame[0]
            self.calls[index] += 1

    def wrap(self, name: str, function, phase: str | None = None):
        @functools.wraps(function)
        def timed(*args, **kwargs):
            with self.section(name, phase):
                return function(*args, **kwargs)
        return timed

    def wrap_phase(self, name: str, function, phase: str = "eval"):
        """A per-epoch or per-run piece: its inclusive time under ``name``; what it runs counts as ``phase``."""
        @functools.wraps(function)
        def timed(*args, **kwargs):
            outer, self.phase = self.phase, phase
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.phase = outer
                index = self._index(0, "run", name)
                self.seconds[index] += time.perf_counter() - started
                self.calls[index] += 1
        return timed

    def wrap_generator(self, name: str, function, first: str | None = None):
        """Time each ``next()`` of the generator ``function`` returns (the first one as ``first``)."""
        @functools.wraps(function)
        def timed(*args, **kwargs):
            iterator = iter(function(*args, **kwargs))
            stage = first or name
            while True:
                with self.section(stage):
                    try:
                        item = next(iterator)
                    except StopIteration:
                        return
                stage = name
                yield item
        return timed

    def total(self, name: str, slots: range, phase: str = "train") -> tuple[float, int]:
        indices = [self._index(s, phase, name) for s in slots]
        return sum(self.seconds[i] for i in indices), sum(self.calls[i] for i in indices)


class TimedAugment:
    """A sample augment that times its calls (its pixel path too) and is otherwise the augment."""

    def __init__(self, augment, timers: Timers):
        self._augment, self._timers = augment, timers

    def __call__(self, x):
        with self._timers.section("augment"):
            return self._augment(x)

    def __getattr__(self, name):
        value = getattr(self._augment, name)
        return self._timers.wrap("augment", value) if name == "on_pixels" else value


@contextlib.contextmanager
def patched(timers: Timers, torch_profile: int):
    """The loop's pieces wrapped with timers (restored afterwards); yields marks the caller reads."""
    import timm.scheduler.scheduler as timm_scheduler
    from rich.live import Live
    from rich.progress import Progress
    from timm.utils import ModelEmaV3

    undo = []
    marks = {"steps": 0}

    def patch(owner, attribute, value):
        undo.append((owner, attribute, getattr(owner, attribute)))
        setattr(owner, attribute, value)

    L = loader_module
    patch(L, "_read_shard", timers.wrap_generator("read", L._read_shard))
    patch(L, "decode_pixels", timers.wrap("decode", L.decode_pixels))
    patch(L, "pixels_to_tensor", timers.wrap("to_float", L.pixels_to_tensor))
    patch(L, "_collate", timers.wrap("collate", L._collate))
    patch(L, "_merge", timers.wrap("merge", L._merge))
    patch(L, "_split", timers.wrap("merge", L._split))
    patch(L, "_delivered", timers.wrap("deliver", L._delivered))
    stream_slot = timers.wrap_generator("stream", L.ShardStream.slot)

    def shard_stream_slot(self, *args, **kwargs):
        if torch.utils.data.get_worker_info() is not None:  # a worker reads one stream: its phase
            timers.phase = "train" if self.train else "eval"
        yield from stream_slot(self, *args, **kwargs)

    patch(L.ShardStream, "slot", shard_stream_slot)
    patch(L.EpochLoader, "__iter__", timers.wrap_generator("wait", L.EpochLoader.__iter__, first="first_batch"))
    if hasattr(L, "DecodedCache"):
        patch(L.DecodedCache, "fill", timers.wrap("cache", L.DecodedCache.fill))
    original_make_loader = train_module.make_loader

    def make_loader(*args, **kwargs):
        made = original_make_loader(*args, **kwargs)
        made.stream.augments = [TimedAugment(a, timers) for a in made.stream.augments]
        return made

    patch(train_module, "make_loader", make_loader)
    if hasattr(train_module, "to_device"):
        patch(train_module, "to_device", timers.wrap("to_device", train_module.to_device))
    for task_class in set(train_module.TASKS.values()):
        patch(task_class, "train_step", timers.wrap("forward", task_class.train_step))
        patch(task_class, "evaluate", _evaluate_timer(timers, task_class.evaluate))
        patch(task_class, "report", timers.wrap_phase("report", task_class.report))
        patch(task_class, "epoch_end", timers.wrap_phase("epoch_end", task_class.epoch_end))
    patch(torch.Tensor, "backward", timers.wrap("backward", torch.Tensor.backward))
    patch(torch.optim.Optimizer, "zero_grad", timers.wrap("zero_grad", torch.optim.Optimizer.zero_grad))
    patch(ModelEmaV3, "update", timers.wrap("ema", ModelEmaV3.update))
    patch(timm_scheduler.Scheduler, "step_update", timers.wrap("schedule", timm_scheduler.Scheduler.step_update))
    patch(timm_scheduler.Scheduler, "step", timers.wrap("schedule", timm_scheduler.Scheduler.step))
    patch(train_module.Window, "add", timers.wrap("window", train_module.Window.add))
    patch(train_module.Window, "read", timers.wrap("window", train_module.Window.read))
    patch(train_module.MetricsLog, "log", timers.wrap("log", train_module.MetricsLog.log))
    patch(train_module, "save_epoch_checkpoints", timers.wrap_phase("checkpoint", train_module.save_epoch_checkpoints))
    patch(Progress, "update", timers.wrap("progress", Progress.update))
    patch(Progress, "refresh", timers.wrap("progress", Progress.refresh))
    add_task = timers.wrap("progress", Progress.add_task)

    def first_add_task(self, *args, **kwargs):  # the loop adds an epoch's bar right before its first batch
        if "epoch" in kwargs:
            marks.setdefault("loop_start", time.perf_counter())
        return add_task(self, *args, **kwargs)

    patch(Progress, "add_task", first_add_task)
    patch(Live, "refresh", _refresh_timer(timers, Live.refresh))

    # the optimiser step: global hooks around every optimiser's step (the loop's own call)
    open_sections: list = []
    profiler = _torch_profiler(torch_profile) if torch_profile else None

    def pre_hook(optimizer, args, kwargs):
        section = timers.section("optimizer")
        section.__enter__()
        open_sections.append(section)

    def post_hook(optimizer, args, kwargs):
        open_sections.pop().__exit__(None, None, None)
        marks["steps"] += 1
        marks.setdefault("first_step", time.perf_counter())
        if profiler is not None:
            profiler.step()

    handles = [register_optimizer_step_pre_hook(pre_hook),
               register_optimizer_step_post_hook(post_hook)]
    try:
        if profiler is not None:
            profiler.__enter__()
        yield marks, profiler
    finally:
        if profiler is not None:
            profiler.__exit__(None, None, None)
        for handle in handles:
            handle.remove()
        for owner, attribute, value in reversed(undo):
            setattr(owner, attribute, value)


def _evaluate_timer(timers: Timers, evaluate):
    @functools.wraps(evaluate)
    def timed(self, module, loader, autocast, final=False):
        return timers.wrap_phase("test" if final else "evaluate", evaluate)(self, module, loader, autocast,
                                                                           final=final)
    return timed


def _refresh_timer(timers: Timers, refresh):
    @functools.wraps(refresh)
    def timed(self):
        if threading.current_thread() is MAIN_THREAD:  # the loop's own redraws: already "progress"
            return refresh(self)
        with timers.section("refresh"):
            return refresh(self)
    return timed


def _torch_profiler(steps: int):
    return torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                  schedule=torch.profiler.schedule(wait=2, warmup=1, active=steps, repeat=1))


# ---- the run ---------------------------------------------------------------------------------------------------

def build_recipe(args) -> dict:
    path = locate(args.recipe)
    overrides = [f"train.epochs={args.epochs}", "name=profile"]
    if args.n is not None:
        recipe = load_recipe(path, registry=get_registry())
        synth = {**(recipe["data"].get("synth") or {}), "n": args.n}
        size = synth.get("size", recipe["data"]["image_size"])
        root = args.data or Path(args.cache) / f"synth-{args.n}-{size}-{synth.get('seed', 0)}"
        overrides += [f"data.root={root}", f"data.synth={json.dumps(synth)}"]
    elif args.data is not None:
        overrides.append(f"data.root={args.data}")
    if args.workers is not None:
        overrides.append(f"data.num_workers={args.workers}")
    return load_recipe(path, [*overrides, *args.set], get_registry())


def profile_run(args) -> dict:
    recipe = build_recipe(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    timers = Timers()
    sink = io.StringIO()
    console = (Console(file=sink, force_terminal=True, width=120) if args.display == "terminal"
               else Console(file=sink, force_terminal=False))
    load_before = os.getloadavg()
    cpu_before = _cpu()
    with tempfile.TemporaryDirectory(prefix="fer-profile-") as out, patched(timers, args.torch_profile) as (marks,
                                                                                                          prof):
        started = time.perf_counter()
        run_dir = train_module.run(recipe, out=out, console=console)
        wall = time.perf_counter() - started
        summary = json.loads((run_dir / "summary.json").read_text())
        epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["samples_per_s"] for r in epochs if r.get("kind") == "epoch" and "samples_per_s" in r]
    cpu_main, cpu_children = (a - b for a, b in zip(_cpu(), cpu_before))
    torch_table = (prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)
                   if prof is not None else None)
    return collect(timers, marks, started, recipe, summary, rates, wall, cpu_main, cpu_children, load_before,
                   torch_table)


def _cpu() -> tuple[float, float]:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def collect(timers: Timers, marks: dict, started: float, recipe: dict, summary: dict, rates: list[float],
            wall: float, cpu_main: float, cpu_children: float, load_before, torch_table) -> dict:
    steps, train_time = marks["steps"], summary["train_time_s"]
    rows, timed_main = [], 0.0
    for name, (where, what) in STAGES.items():
        if name in ("loop", "setup", "finish"):
            continue
        if where in ("epoch", "run"):
            seconds, calls = timers.total(name, range(0, 1), "run")
        elif where == "thread":
            seconds, calls = timers.total(name, range(1, 2))
        elif where == "loader":  # in the worker processes, or in the main process (cached splits on the CPU)
            main_s, main_calls = timers.total(name, range(0, 1))
            worker_s, worker_calls = timers.total(name, range(2, SLOTS))
            seconds, calls = main_s + worker_s, main_calls + worker_calls
            where = "main+workers" if main_s and worker_s else ("main" if main_s else "workers")
            timed_main += main_s
        else:
            seconds, calls = timers.total(name, range(0, 1))
            where = "main"
            timed_main += seconds
        rows.append({"stage": name, "where": where, "what": what, "seconds": seconds, "calls": calls})
    # the main thread's training time outside the timed pieces: the loop's own Python
    rows.append({"stage": "loop", "where": "main", "what": STAGES["loop"][1], "calls": steps,
                 "seconds": max(train_time - timed_main, 0.0)})
    setup = marks.get("loop_start", started) - started
    rows.append({"stage": "setup", "where": "run", "what": STAGES["setup"][1], "calls": 1, "seconds": setup})
    accounted = setup + train_time + sum(r["seconds"] for r in rows if r["where"] in ("epoch", "run")
                                         and r["stage"] != "setup")
    rows.append({"stage": "finish", "where": "run", "what": STAGES["finish"][1], "calls": 1,
                 "seconds": max(wall - accounted, 0.0)})
    for row in rows:
        row["ms_per_step"] = 1000 * row["seconds"] / max(steps, 1)
        row["percent_of_run"] = 100 * row["seconds"] / wall
    rows.sort(key=lambda r: -r["seconds"])
    return {
        "recipe": recipe["name"], "data": recipe["data"]["root"], "epochs": summary["epochs"], "steps": steps,
        "batch_size": recipe["train"]["batch_size"], "workers": recipe["data"]["num_workers"],
        "threads": torch.get_num_threads(), "wall_s": wall, "train_time_s": train_time,
        "train_images_per_s": sum(rates) / len(rates) if rates else None,
        "time_to_first_step_s": marks.get("first_step", started) - started,
        "step_ms": 1000 * train_time / max(steps, 1), "cpu_main_s": cpu_main, "cpu_workers_s": cpu_children,
        "test_accuracy": (summary.get("test") or {}).get("accuracy"),
        "load_average_before": list(load_before), "load_average_after": list(os.getloadavg()),
        "rows": rows, "torch_profile": torch_table,
    }


def show(result: dict, console: Console) -> None:
    title = (f"{result['recipe']}: {result['epochs']} epoch(s), {result['steps']} steps of {result['batch_size']}, "
             f"{result['workers']} workers, {result['threads']} threads — {result['step_ms']:.1f} ms per step, "
             f"{result['train_images_per_s'] or 0:.0f} img/s")
    table = Table(title=title, caption="exclusive wall time; per-epoch and per-run costs spread over the steps; "
                                       "rows in workers run beside the main process")
    for column, justify in (("#", "right"), ("stage", "left"), ("where", "left"), ("ms/step", "right"),
                            ("% of run", "right"), ("calls", "right")):
        table.add_column(column, justify=justify)
    for rank, row in enumerate(result["rows"], 1):
        style = "bold yellow" if rank <= 5 else None
        table.add_row(str(rank), row["what"], row["where"], f"{row['ms_per_step']:.2f}",
                      f"{row['percent_of_run']:.1f}", str(row["calls"]), style=style)
    console.print(table)
    console.print(f"run wall {result['wall_s']:.1f} s (training {result['train_time_s']:.1f} s), time to first step "
                  f"{result['time_to_first_step_s']:.1f} s; CPU: main process {result['cpu_main_s']:.1f} s, "
                  f"loader workers {result['cpu_workers_s']:.1f} s; test accuracy "
                  f"{result['test_accuracy'] if result['test_accuracy'] is not None else 'n/a'}", highlight=False)
    before, after = (", ".join(f"{x:.2f}" for x in result[k]) for k in ("load_average_before", "load_average_after"))
    console.print(f"load average (1, 5, 15 min) before: {before}; after: {after}", highlight=False)
    if result["torch_profile"]:
        console.print(result["torch_profile"], highlight=False, markup=False)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="quickstart", help="a recipe file or packaged name (default quickstart)")
    parser.add_argument("--data", help="data.root (default: the recipe's; with --n, a draw under --cache)")
    parser.add_argument("--n", type=int, help="draw this many synthetic faces instead (data.synth.n)")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "fer-bench"),
                        help="where --n draws are kept between runs")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--workers", type=int, help="data.num_workers (default: the recipe's)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--display", choices=("terminal", "plain"), default="terminal",
                        help="render the progress display as on a terminal (output discarded) or as into a file")
    parser.add_argument("-s", "--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override")
    parser.add_argument("--torch-profile", type=int, default=0, metavar="STEPS",
                        help="also print torch.profiler's top operators over STEPS steps")
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args(argv)
    result = profile_run(args)
    show(result, Console(width=140))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
