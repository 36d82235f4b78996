"""`fer run`: the one training loop, top to bottom, for every task.

recipe -> data -> task (model, losses, metrics) -> optimiser, schedule, EMA -> epochs of
(train steps, evaluation, checkpoint) -> test evaluation and the task's report. The task
(``fer_core.task``: classification, pretraining) says how a batch becomes losses and how a
split is scored; everything else is here. Everything the loop needs to continue exactly
(weights, optimiser, schedule, scaler, EMA, the task's own state, RNG states, counters) is in
``checkpoints/last.pt``, written atomically at the end of every epoch.

The step loop does not wait for the device: losses are summed on it and read (one host sync)
every ``train.log_every`` optimiser steps and at the end of an epoch, which is also when a
non-finite loss is caught (``fer_core.steps``).
"""

from __future__ import annotations

import contextlib
import math
import random
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from timm.utils import ModelEmaV3

from fer_core import __version__, distributed
from fer_core.affect import AffectTask
from fer_core.allocator import tune_malloc
from fer_core.classify import ClassificationTask
from fer_core.compiled import CompiledOrEager
from fer_core.data.shards import read_manifest
from fer_core.data.sources import ensure_data, make_loader, resolve_classes, source_roots
from fer_core.errors import FerError
from fer_core.model import count_parameters
from fer_core.optim import make_optimizer, make_scheduler
from fer_core.plugins import get_host
from fer_core.pretrain import PretrainTask
from fer_core.recipe import dump
from fer_core.runs import (CHECKPOINT_KEYS, MetricsLog, load_checkpoint, new_run_dir, rng_state,
                           save_epoch_checkpoints, set_rng_state, write_json, write_text)
from fer_core.steps import Window, to_device
from fer_core.task import Setup, Task

TASKS: dict[str, type[Task]] = {"classify": ClassificationTask, "pretrain": PretrainTask,
                                "affect": AffectTask, "expression+affect": AffectTask}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def autocast_dtype(train: dict, device: torch.device) -> torch.dtype | None:
    if not train["amp"]:
        return None
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def improved(value: float, best: float | None, mode: str) -> bool:
    return best is None or (value < best if mode == "min" else value > best)


def run(recipe: dict[str, Any] | None, out: str | Path | None = None, resume: str | Path | None = None,
        console: Console | None = None) -> Path | None:
    """Train ``recipe`` (or continue the run ``resume``) with its task; returns the run directory (on rank 0)."""
    console = console or Console()
    started = time.perf_counter()
    state = None
    if resume is not None:
        state = load_checkpoint(Path(resume) / "checkpoints" / "last.pt")
        recipe = state["recipe"]
    if recipe is None:
        raise FerError("fer run needs a RECIPE file (or --resume RUN_DIR)")
    env = distributed.setup(recipe["train"]["device"])
    if env.device.type == "cpu":
        tune_malloc()  # freed tensor memory stays in the process: faster steps on the CPU
    try:
        return _run(recipe, out, resume, state, env, console, started)
    finally:
        distributed.teardown(env)


def _run(recipe, out, resume, state, env, console, run_started):
    train_cfg, data_cfg, eval_cfg = recipe["train"], recipe["data"], recipe["eval"]
    # -- data -----------------------------------------------------------------
    if env.main:
        ensure_data(data_cfg, console)
    distributed.barrier(env)
    classes = resolve_classes(data_cfg)
    if train_cfg["batch_size"] % env.world:
        raise FerError(f"train.batch_size {train_cfg['batch_size']} must divide by the {env.world} processes")

    # -- task, loaders, optimisation ---------------------------------------------
    seed_everything(recipe["seed"])
    amp_dtype = autocast_dtype(train_cfg, env.device)
    task = TASKS[recipe["task"]](Setup(recipe, get_host().registry, classes, env, amp_dtype, console))
    model = task.build()
    memory_format = torch.channels_last if train_cfg.get("channels_last") else None
    if memory_format is not None:
        model.to(memory_format=memory_format)
    options = task.loader_options()
    # the loaders keep decoded images across epochs, and on CUDA pin their batches (the copies do not block)
    loading = {"cache_mb": data_cfg.get("cache_decoded", 0), "pin_memory": env.device.type == "cuda",
               "persistent_workers": data_cfg.get("persistent_workers", False)}
    train_loader = make_loader(data_cfg, "train", classes, train_cfg["batch_size"] // env.world, train=True,
                               seed=recipe["seed"], augments=task.sample_augments, rank=env.rank, world=env.world,
                               **options).configure(**loading)
    eval_split = "val" if "val" in open_split_names(data_cfg) else "test"
    val_loader = make_loader(data_cfg, eval_split, classes, eval_cfg["batch_size"], train=False,
                             seed=recipe["seed"], rank=env.rank, world=env.world, **options).configure(**loading)
    task.prepare(val_loader)
    accumulate = train_cfg["accumulate"]
    best_metric = task.best_metric()
    stop_cfg = train_cfg.get("early_stopping")
    stop_metric = stop_cfg.get("metric", best_metric) if stop_cfg else best_metric
    stop_mode = (stop_cfg or {}).get("mode") or task.mode(stop_metric)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    optimizer = scheduler = ema = None
    net = model
    if task.owns_optimisation:
        task.configure(recipe["optim"])
    else:
        optimizer = make_optimizer(task.param_groups(), recipe["optim"])
        scheduler = make_scheduler(optimizer, recipe["schedule"], train_cfg["epochs"],
                                   math.ceil(len(train_loader) / accumulate), stop_mode)
        if train_cfg["ema"]:  # recipes written before ema_warmup existed keep their plain EMA
            ema = ModelEmaV3(model, decay=train_cfg["ema_decay"], use_warmup=train_cfg.get("ema_warmup", False))
        if env.distributed:
            net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    if train_cfg.get("compile") and task.owns_optimisation:
        if env.main:
            console.print(f"train.compile: not used by task {task.name} (its component steps itself)", highlight=False)
    elif train_cfg.get("compile"):
        net = CompiledOrEager(net, model, console if env.main else None)

    # -- run directory and resume -------------------------------------------------
    counters = {"epoch": 0, "step": 0, "best": None, "best_epoch": 0, "stop_best": None, "bad_epochs": 0,
                "train_time": 0.0, "initial": None, "last_val": None}
    if state is not None:
        run_dir = Path(resume)
        task.load_model_state(state["model"])
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        if ema is not None and state.get("ema"):
            ema.module.load_state_dict(state["ema"])
        if task.checkpoint_key:
            task.load_state(state[task.checkpoint_key])
        counters.update(state["counters"])
        set_rng_state(state["rng"])
    elif env.main:
        run_dir = new_run_dir(out or recipe["output"]["dir"], recipe["name"])
        write_text(run_dir / "recipe.yaml", dump(recipe))
    else:
        run_dir = None
    log = MetricsLog(run_dir) if env.main else MetricsLog(Path("."), enabled=False)
    if state is not None:
        log.truncate_after(counters["epoch"])
    total_params, trainable_params = count_parameters(model)
    if env.main:
        console.print(f"[bold]{recipe['name']}[/] ({task.name}): {len(classes)} classes, "
                      f"{train_loader.stream.total} training samples, {total_params:,} parameters "
                      f"({trainable_params:,} trainable), {env.world} process(es) on {env.device.type}"
                      + (f"; resuming after epoch {counters['epoch']}" if state is not None else ""), highlight=False)
    autocast = (lambda: torch.autocast(env.device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext
    if task.evaluate_before and counters["initial"] is None:  # the untrained weights, for the before/after
        counters["initial"] = scalars(task.evaluate(model, val_loader, autocast))
        log.log({"kind": "epoch", "epoch": 0, "step": 0, **prefixed("val", counters["initial"])}, 0)
        if env.main:
            console.print(f"before training: {eval_split} {best_metric} {counters['initial'][best_metric]:.4f}",
                          highlight=False)

    def checkpoint_state() -> dict:
        state = dict.fromkeys(CHECKPOINT_KEYS[1:])  # the layout every checkpoint has; save_checkpoint adds format
        return state | {
            "model": task.model_state(),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if optimizer is not None else None,
            "ema": ema.module.state_dict() if ema is not None else None,
            **({task.checkpoint_key: task.state()} if task.checkpoint_key else {}),
            "rng": rng_state(),
            "counters": dict(counters),
            "recipe": recipe,
            "classes": classes,
            "versions": {"fer-core": __version__, **get_host().versions()},
        }

    # -- epochs ------------------------------------------------------------------
    shown = " ".join(f"{name} {{task.fields[{name}]:.4f}}" for name in task.progress)
    progress = Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(),
                        TextColumn("{task.completed}/{task.total}"),
                        TextColumn(shown + " {task.fields[rate]:.0f} img/s"), TimeElapsedColumn(),
                        TimeRemainingColumn(), console=console, disable=not env.main, transient=False,
                        auto_refresh=False)  # redrawn between steps: a refresh thread would stall the step's threads
    drawn = 0.0
    first_step = None
    with progress:
        for epoch in range(counters["epoch"], train_cfg["epochs"]):
            train_loader.set_epoch(epoch)
            net.train()
            steps = len(train_loader)
            bar = progress.add_task("train", total=steps, epoch=epoch + 1, rate=0.0,
                                    **{name: 0.0 for name in task.progress})
            started, seen, rate = time.perf_counter(), 0, 0.0
            window = Window()
            totals: dict[str, float] = {}
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
            for i, (inputs, targets, keys) in enumerate(train_loader):
                batch = to_device(inputs, targets, keys, env.device, memory_format)
                if task.owns_optimisation:
                    outputs = task.train_step(net, batch, autocast)
                    stepped = True
                else:
                    stepped = (i + 1) % accumulate == 0 or i + 1 == steps
                    sync = contextlib.nullcontext() if stepped or not env.distributed else net.no_sync()
                    with sync:
                        outputs = task.train_step(net, batch, autocast)
                        scaler.scale(outputs["loss"] / accumulate if accumulate > 1 else outputs["loss"]).backward()
                    if stepped:
                        if train_cfg["clip_grad"]:
                            scaler.unscale_(optimizer)
                            torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg["clip_grad"])
                        scaler.step(optimizer)
                        scaler.update()
                        optimizer.zero_grad(set_to_none=True)
                if stepped:
                    counters["step"] += 1
                    if ema is not None:
                        ema.update(model, step=counters["step"])
                    if scheduler is not None:
                        scheduler.step_update(counters["step"])
                    if first_step is None:
                        if env.device.type == "cuda":
                            torch.cuda.synchronize(env.device)  # once: where the first step really ends
                        first_step = time.perf_counter() - run_started
                        if env.main:
                            progress.console.print(f"time to first step: {first_step:.1f} s", highlight=False)
                window.add(outputs, len(inputs), counters["step"])
                seen += len(inputs)
                now = time.perf_counter()
                rate = seen * env.world / max(now - started, 1e-9)
                log_now = stepped and counters["step"] % train_cfg["log_every"] == 0
                if log_now or i + 1 == steps:  # the only host syncs of the step loop
                    means = window.read(env, epoch, counters["epoch"])
                    for name, value in window.sums.items():
                        totals[name] = totals.get(name, 0.0) + value
                    progress.update(bar, **{name: totals[name] / seen for name in task.progress if name in totals})
                    if log_now and env.main:
                        lr = {"lr": optimizer.param_groups[0]["lr"]} if optimizer is not None else {}
                        log.log({"kind": "train", "epoch": epoch + 1, "step": counters["step"], **means, **lr},
                                counters["step"])
                    window = Window()
                progress.update(bar, advance=1, rate=rate)
                if now - drawn >= 0.5:
                    progress.refresh()
                    drawn = now
            rate = seen * env.world / max(time.perf_counter() - started, 1e-9)  # after the epoch's last host sync
            _check_corrupt(train_loader, data_cfg, env)
            counters["train_time"] += time.perf_counter() - started
            scored = ema.module if ema is not None else model
            metrics = scalars(task.evaluate(scored, val_loader, autocast))
            counters["epoch"] = epoch + 1
            missing = [m for m in {best_metric, stop_metric} if m not in metrics]
            if missing:
                raise FerError(f"metric {missing[0]!r} is not computed by task {task.name}; it computes "
                               f"{', '.join(metrics)}")
            if scheduler is not None:
                scheduler.step(epoch + 1, metrics[stop_metric])
            better = improved(metrics[best_metric], counters["best"], task.mode(best_metric))
            if better:
                counters.update(best=metrics[best_metric], best_epoch=epoch + 1)
            if improved(metrics[stop_metric], counters["stop_best"], stop_mode):
                counters.update(stop_best=metrics[stop_metric], bad_epochs=0)
            else:
                counters["bad_epochs"] += 1
            counters["last_val"] = metrics
            record = {"kind": "epoch", "epoch": epoch + 1, "step": counters["step"],
                      **prefixed("train", {k: v / max(seen, 1) for k, v in totals.items()}),
                      "samples_per_s": rate, **prefixed("val", metrics)}
            if env.main:
                log.log(record, epoch + 1)
                task.epoch_end(run_dir, epoch + 1)
                save_epoch_checkpoints(run_dir, checkpoint_state(), epoch + 1, better, train_cfg["keep"])
                progress.console.print(f"epoch {epoch + 1}: {task.epoch_line(record, eval_split)}"
                                       + (" [green](best)[/]" if better else ""), highlight=False)
            if stop_cfg and counters["bad_epochs"] >= stop_cfg.get("patience", 5):
                if env.main:
                    progress.console.print(f"early stopping: {stop_metric} has not improved ({stop_mode}) for "
                                           f"{counters['bad_epochs']} epochs")
                break

    # -- final evaluation on the test split with the best weights ---------------------
    distributed.barrier(env)
    if env.main:
        best_state = load_checkpoint(run_dir / "checkpoints" / "best.pt")
        task.load_model_state(best_state.get("ema") or best_state["model"])
    if env.distributed:  # every rank evaluates the same (best) weights
        for tensor in model.state_dict().values():
            torch.distributed.broadcast(tensor, 0)
    test_split = "test" if "test" in open_split_names(data_cfg) else eval_split
    test_loader = make_loader(data_cfg, test_split, classes, eval_cfg["batch_size"], train=False,
                              seed=recipe["seed"], rank=env.rank, world=env.world,
                              **options).configure(**loading | {"cache_mb": 0})  # read once: nothing to keep
    result = task.evaluate(model, test_loader, autocast, final=True)
    if not env.main:
        return None
    summary = {
        "recipe": recipe["name"], "task": task.name, "run_dir": str(run_dir), "epochs": counters["epoch"],
        "best_epoch": counters["best_epoch"], f"best_val_{best_metric}": counters["best"],
        "eval_split": eval_split, "test_split": test_split, "train_time_s": round(counters["train_time"], 2),
        "parameters": total_params, "trainable_parameters": trainable_params,
        "scored_weights": "ema" if ema is not None else "model",
        "ema": ({"decay": train_cfg["ema_decay"], "warmup": train_cfg.get("ema_warmup", False)}
                if ema is not None else None),
        "peak_memory_mb": peak_memory_mb(env.device), "processes": env.world,
        "train_images_per_s": log.epoch_mean("samples_per_s"),  # this run's epochs and a resumed run's earlier ones
        "time_to_first_step_s": round(first_step, 2) if first_step is not None else None,
    }
    task.report(run_dir, result, summary, counters)
    write_json(run_dir / "summary.json", summary)
    if summary["train_images_per_s"] is not None:
        console.print(f"training: {summary['train_images_per_s']:.0f} images/s (mean of epochs); time to first step "
                      f"{summary['time_to_first_step_s']} s", highlight=False)
    log.close()
    return run_dir


def scalars(result: dict[str, Any]) -> dict[str, float]:
    """The numbers of an evaluation (for logs, best.pt and early stopping)."""
    return {k: v for k, v in result.items() if isinstance(v, float)}


def prefixed(prefix: str, values: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}_{name}": value for name, value in values.items()}


def open_split_names(data_cfg: dict) -> set[str]:
    return set(read_manifest(source_roots(data_cfg)[0][0])["splits"])


def _check_corrupt(loader, data_cfg: dict, env) -> None:
    bad = loader.corrupt
    if not bad:
        return
    limit = data_cfg["max_corrupt_fraction"] * max(loader.stream.total // env.world, 1)
    if len(bad) > limit:
        shard = bad[0].split(":")[0].split(" ")[0]
        raise FerError(f"{len(bad)} corrupt or unreadable samples this epoch (more than "
                       f"{data_cfg['max_corrupt_fraction']:.1%}), first in {shard}; re-pack that data set "
                       f"or raise data.max_corrupt_fraction")
    if env.main:
        print(f"warning: skipped {len(bad)} corrupt samples this epoch (first: {bad[0]})")


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
