"""`fer run`: one readable training loop, top to bottom.

recipe -> data -> model, loss, optimiser, schedule -> epochs of
(train steps, evaluation, checkpoint) -> final test report. Everything the
loop needs to continue exactly (weights, optimiser, schedule, scaler, EMA,
RNG states, counters) is in ``checkpoints/last.pt``, written atomically at
the end of every epoch.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fer_core import __version__, distributed
from fer_core.data.sources import cached_latents, ensure_data, make_loader, open_split, resolve_classes
from fer_core.errors import FerError
from fer_core.evaluate import evaluate, report_table, write_report
from fer_core.model import build_model, build_sample_augments, count_parameters
from fer_core.plugins import get_host
from fer_core.recipe import dump
from fer_core.runs import (MetricsLog, load_checkpoint, new_run_dir, rng_state, save_epoch_checkpoints,
                           set_rng_state, write_json, write_text)


class NonFiniteLoss(FerError):
    pass


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(model, optim: dict) -> torch.optim.Optimizer:
    groups = model.param_groups(optim["lr"], optim["weight_decay"], optim.get("layer_decay"))
    if not groups:
        raise FerError("nothing to train: every component is frozen; unfreeze the backbone or head")
    if optim["name"] == "sgd":
        return torch.optim.SGD(groups, lr=optim["lr"], momentum=optim["momentum"], nesterov=optim["nesterov"])
    cls = torch.optim.AdamW if optim["name"] == "adamw" else torch.optim.Adam
    return cls(groups, lr=optim["lr"], betas=tuple(optim["betas"]))


def make_scheduler(optimizer, schedule: dict, epochs: int, updates_per_epoch: int, metric_mode: str):
    from timm.scheduler import create_scheduler_v2

    if schedule["name"] == "none":
        return None
    kind = {"cosine": "cosine", "step": "step", "plateau": "plateau"}[schedule["name"]]
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=kind, num_epochs=epochs, decay_epochs=schedule["step_size"],
        decay_rate=schedule["factor"] if kind == "plateau" else schedule["gamma"],
        patience_epochs=schedule["patience"], min_lr=schedule["min_lr"], warmup_lr=schedule["warmup_lr"],
        warmup_epochs=schedule["warmup_epochs"], plateau_mode=metric_mode,
        step_on_epochs=kind == "plateau", updates_per_epoch=updates_per_epoch,
    )
    return scheduler


def metric_mode(metric: str) -> str:
    return "min" if metric == "loss" else "max"


def autocast_dtype(train: dict, device: torch.device) -> torch.dtype | None:
    if not train["amp"]:
        return None
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def _encoder_weights_external(recipe: dict, model) -> bool:
    """Frozen encoders loaded from their own file are rebuilt from it, not stored again."""
    return bool(model.frozen.get("encoder") and recipe["model"]["encoder"].get("checkpoint"))


def model_state(recipe: dict, model) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    if _encoder_weights_external(recipe, model):
        state = {k: v for k, v in state.items() if not k.startswith("encoder.")}
    return state


def load_model_state(recipe: dict, model, state: dict) -> None:
    strict = not _encoder_weights_external(recipe, model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if strict or not k.startswith("encoder.")]
    if missing or unexpected:
        raise FerError(f"checkpoint does not fit the recipe's model: missing {missing[:3]}, "
                       f"unexpected {unexpected[:3]}")


def run(recipe: dict[str, Any], out: str | None = None, resume: str | Path | None = None,
        console: Console | None = None) -> Path | None:
    """Train ``recipe``; returns the run directory (on rank 0)."""
    console = console or Console()
    state = None
    if resume is not None:
        state = load_checkpoint(Path(resume) / "checkpoints" / "last.pt")
        recipe = state["recipe"]
    train_cfg, data_cfg, eval_cfg = recipe["train"], recipe["data"], recipe["eval"]
    env = distributed.setup(train_cfg["device"])
    try:
        return _run(recipe, out, resume, state, env, console, train_cfg, data_cfg, eval_cfg)
    finally:
        distributed.teardown(env)


def _run(recipe, out, resume, state, env, console, train_cfg, data_cfg, eval_cfg):
    quiet = not env.main
    # -- data -----------------------------------------------------------------
    if env.main:
        ensure_data(data_cfg, console)
    distributed.barrier(env)
    classes = resolve_classes(data_cfg)
    if train_cfg["batch_size"] % env.world:
        raise FerError(f"train.batch_size {train_cfg['batch_size']} must divide by the {env.world} processes")
    batch = train_cfg["batch_size"] // env.world
    class_counts = [sum(c) for c in zip(*(s.class_counts() for s in open_split(data_cfg, "train", classes)))]

    # -- model, loss, optimiser ------------------------------------------------
    seed_everything(recipe["seed"])
    registry = get_host().registry
    model = build_model(recipe, registry, classes).to(env.device)
    sample_augments = build_sample_augments(recipe, registry, len(classes))
    loss_fn = registry.build("loss", recipe["loss"], "loss", {"num_classes": len(classes), "class_counts": class_counts,
                                                              "classes": classes, "recipe": recipe}).to(env.device)
    wants_batch = getattr(loss_fn, "wants_batch", False)  # called with the step's inputs and sample keys
    # a frozen encoder's outputs cached as latent shards are read instead of running it
    latents = cached_latents(data_cfg, recipe["model"]["encoder"], model.encoder,
                             frozen=model.frozen.get("encoder", False), sample_augments=sample_augments,
                             batch_size=eval_cfg["batch_size"], device=env.device, main=env.main,
                             barrier=lambda: distributed.barrier(env), console=console if env.main else None)
    encoded = latents is not None
    if encoded and env.main:
        console.print(f"reading cached latents from {', '.join(str(root) for root, _ in latents)}; "
                      f"the encoder does not run" + ("; eval.tta does not apply to latents" if eval_cfg["tta"]
                                                     else ""), highlight=False, soft_wrap=True)
    train_loader = make_loader(data_cfg, "train", classes, batch, train=True, seed=recipe["seed"],
                               augments=sample_augments, rank=env.rank, world=env.world, latent=encoded,
                               roots=latents)
    eval_split = "val" if "val" in open_split_names(data_cfg) else "test"
    val_loader = make_loader(data_cfg, eval_split, classes, eval_cfg["batch_size"], train=False,
                             seed=recipe["seed"], rank=env.rank, world=env.world, latent=encoded, roots=latents)
    accumulate = train_cfg["accumulate"]
    updates_per_epoch = math.ceil(len(train_loader) / accumulate)
    best_metric = eval_cfg["metric"]
    stop_cfg = train_cfg.get("early_stopping")
    stop_metric = stop_cfg.get("metric", best_metric) if stop_cfg else best_metric
    optimizer = make_optimizer(model, recipe["optim"])
    scheduler = make_scheduler(optimizer, recipe["schedule"], train_cfg["epochs"], updates_per_epoch,
                               metric_mode(stop_metric))
    amp_dtype = autocast_dtype(train_cfg, env.device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    ema = None
    if train_cfg["ema"]:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=train_cfg["ema_decay"])
    net = model
    if env.distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[env.device.index] if env.device.type == "cuda" else None)

    # -- run directory and resume -------------------------------------------------
    counters = {"epoch": 0, "step": 0, "best": None, "best_epoch": 0, "bad_epochs": 0, "train_time": 0.0}
    if state is not None:
        run_dir = Path(resume)
        load_model_state(recipe, model, state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("ema"):
            ema.module.load_state_dict(state["ema"])
        counters.update(state["counters"])
        set_rng_state(state["rng"])
    elif env.main:
        run_dir = new_run_dir(out or recipe["output"]["dir"], recipe["name"])
        write_text(run_dir / "recipe.yaml", dump(recipe))
    else:
        run_dir = None
    log = MetricsLog(run_dir, enabled=env.main) if env.main else MetricsLog(Path("."), enabled=False)
    if state is not None:
        log.truncate_after(counters["epoch"])
    total_params, trainable_params = count_parameters(model)
    if env.main:
        console.print(f"[bold]{recipe['name']}[/]: {len(classes)} classes, {train_loader.stream.total} "
                      f"training samples, {total_params:,} parameters ({trainable_params:,} trainable), "
                      f"{env.world} process(es) on {env.device.type}" + (f"; resuming after epoch "
                      f"{counters['epoch']}" if state is not None else ""), highlight=False)

    def checkpoint_state() -> dict:
        return {
            "model": model_state(recipe, model),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict(),
            "ema": ema.module.state_dict() if ema is not None else None,
            "rng": rng_state(),
            "counters": dict(counters),
            "recipe": recipe,
            "classes": classes,
            "versions": {"fer-core": __version__, **get_host().versions()},
        }

    # -- epochs ------------------------------------------------------------------
    autocast = (lambda: torch.autocast(env.device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext
    progress = Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TextColumn("loss {task.fields[loss]:.4f} acc {task.fields[acc]:.3f} {task.fields[rate]:.0f} img/s"),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=quiet, transient=False)
    with progress:
        for epoch in range(counters["epoch"], train_cfg["epochs"]):
            train_loader.set_epoch(epoch)
            net.train()
            task = progress.add_task("train", total=len(train_loader), epoch=epoch + 1, loss=0.0, acc=0.0, rate=0.0)
            started, seen, loss_sum, correct = time.perf_counter(), 0, 0.0, 0
            optimizer.zero_grad(set_to_none=True)
            for i, (inputs, targets, keys) in enumerate(train_loader):
                inputs = inputs.to(env.device, non_blocking=True)
                targets = targets.to(env.device, non_blocking=True)
                last_micro = (i + 1) % accumulate == 0 or i + 1 == len(train_loader)
                sync = contextlib.nullcontext() if last_micro or not env.distributed else net.no_sync()
                with sync:
                    with autocast():
                        if wants_batch:
                            logits, mixed, mixed_inputs = net(inputs, targets, encoded=encoded, return_inputs=True)
                            loss = loss_fn(logits, mixed, inputs=mixed_inputs, keys=keys)
                        else:
                            logits, mixed = net(inputs, targets, encoded=encoded)
                            loss = loss_fn(logits, mixed)
                    if distributed.any_true(env, not torch.isfinite(loss).item()):
                        raise NonFiniteLoss(
                            f"loss became {loss.item()} at epoch {epoch + 1}, step {i + 1}; the run stopped and "
                            f"checkpoints/last.pt still holds epoch {counters['epoch']}. Lower optim.lr, set "
                            f"train.clip_grad, or turn off train.amp")
                    scaler.scale(loss / accumulate).backward()
                if last_micro:
                    if train_cfg["clip_grad"]:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg["clip_grad"])
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    counters["step"] += 1
                    if ema is not None:
                        ema.update(model, step=counters["step"])
                    if scheduler is not None:
                        scheduler.step_update(counters["step"])
                n = len(targets)
                seen += n
                loss_sum += loss.item() * n
                hard = targets.argmax(1) if targets.is_floating_point() else targets
                correct += (logits.argmax(1) == hard).sum().item()
                rate = seen * env.world / max(time.perf_counter() - started, 1e-9)
                progress.update(task, advance=1, loss=loss_sum / seen, acc=correct / seen, rate=rate)
                if env.main and counters["step"] % train_cfg["log_every"] == 0 and last_micro:
                    log.log({"kind": "train", "epoch": epoch + 1, "step": counters["step"], "loss": loss.item(),
                             "lr": optimizer.param_groups[0]["lr"]}, counters["step"])
            _check_corrupt(train_loader, data_cfg, env)
            counters["train_time"] += time.perf_counter() - started
            scored = ema.module if ema is not None else model
            metrics = evaluate(scored, val_loader, len(classes), env.device, encoded=encoded, amp_dtype=amp_dtype,
                               loss_fn=loss_fn)
            counters["epoch"] = epoch + 1
            value = metrics[stop_metric]
            if scheduler is not None:
                scheduler.step(epoch + 1, value)
            better = counters["best"] is None or (value < counters["best"] if metric_mode(stop_metric) == "min"
                                                  else value > counters["best"])
            if better:
                counters.update(best=value, best_epoch=epoch + 1, bad_epochs=0)
            else:
                counters["bad_epochs"] += 1
            record = {"kind": "epoch", "epoch": epoch + 1, "step": counters["step"], "train_loss": loss_sum / max(seen, 1),
                      "train_accuracy": correct / max(seen, 1), "samples_per_s": rate,
                      **{f"val_{k}": metrics[k] for k in ("accuracy", "f1_macro", "f1_weighted", "loss")}}
            if env.main:
                log.log(record, epoch + 1)
                save_epoch_checkpoints(run_dir, checkpoint_state(), epoch + 1, better, train_cfg["keep"])
                progress.console.print(f"epoch {epoch + 1}: train loss {record['train_loss']:.4f}, "
                                       f"{eval_split} accuracy {metrics['accuracy']:.4f}, macro F1 "
                                       f"{metrics['f1_macro']:.4f}" + (" [green](best)[/]" if better else ""),
                                       highlight=False)
            if stop_cfg and counters["bad_epochs"] >= stop_cfg.get("patience", 5):
                if env.main:
                    progress.console.print(f"early stopping: {stop_metric} has not improved for "
                                           f"{counters['bad_epochs']} epochs")
                break

    # -- final evaluation on the test split with the best weights ---------------------
    distributed.barrier(env)
    if env.main:
        best_state = load_checkpoint(run_dir / "checkpoints" / "best.pt")
        load_model_state(recipe, model, best_state["ema"] or best_state["model"])
    if env.distributed:  # every rank evaluates the same (best) weights
        for tensor in model.state_dict().values():
            torch.distributed.broadcast(tensor, 0)
    test_split = "test" if "test" in open_split_names(data_cfg) else eval_split
    test_loader = make_loader(data_cfg, test_split, classes, eval_cfg["batch_size"], train=False,
                              seed=recipe["seed"], rank=env.rank, world=env.world, latent=encoded, roots=latents)
    result = evaluate(model, test_loader, len(classes), env.device, encoded=encoded, amp_dtype=amp_dtype,
                      tta=eval_cfg["tta"])
    if not env.main:
        return None
    throughput = measure_throughput(model, test_loader, env.device, amp_dtype, encoded=encoded)
    summary = {
        "recipe": recipe["name"], "run_dir": str(run_dir), "epochs": counters["epoch"],
        "best_epoch": counters["best_epoch"], f"best_val_{stop_metric}": counters["best"],
        "test": {k: result[k] for k in ("accuracy", "f1_macro", "f1_weighted")}, "test_split": test_split,
        "train_time_s": round(counters["train_time"], 2), "parameters": total_params,
        "trainable_parameters": trainable_params, "inference_images_per_s": throughput,
        "inference_input": "latents" if encoded else "images",
        "peak_memory_mb": peak_memory_mb(env.device), "processes": env.world,
    }
    write_report(run_dir, recipe["name"], result, classes, test_split, {"summary": summary})
    write_json(run_dir / "summary.json", summary)
    log.close()
    console.print(report_table({"recipe": recipe["name"], "split": test_split, "classes": classes, **result}))
    console.print(f"run directory: {run_dir}  (report.md, summary.json, checkpoints/)", highlight=False)
    return run_dir


def open_split_names(data_cfg: dict) -> set[str]:
    from fer_core.data.shards import read_manifest
    from fer_core.data.sources import source_roots

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


@torch.no_grad()
def measure_throughput(model, loader, device, amp_dtype, repeats: int = 3, encoded: bool = False) -> float:
    """Images per second of a forward pass on one evaluation batch (of cached latents when ``encoded``)."""
    model.eval()
    inputs = next(iter(loader))[0].to(device)
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    with autocast:
        model(inputs, encoded=encoded)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            model(inputs, encoded=encoded)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return round(repeats * len(inputs) / (time.perf_counter() - start), 1)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
