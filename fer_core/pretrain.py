"""`fer run` for ``task: pretrain``: the core's loop around an encoder that trains itself.

Some encoders are trained before they encode for a classifier: the VAE-GAN
(plugin fer-vaegan) learns to reconstruct faces against a discriminator. The core
drives such an encoder exactly like a classification run -- data, device, mixed
precision, progress, logs, checkpoints, exact resume -- while the encoder owns
what is particular to it: its extra networks, its optimisers and its losses.

The pretraining protocol
------------------------
An encoder module is *pretrainable* when it has the methods below (plus the usual
encoder attributes ``input_size``, ``latent_shape``, ``trainable``, ``cacheable``).
The loop calls them in this order::

    configure_pretraining(optim, device, amp_dtype)      once, after the module is on ``device``
    load_pretrain_state(state)                           once, when resuming
    per epoch:  pretrain_step(images, autocast)          per training batch (module in train mode)
                pretrain_eval(images)                    per validation batch (eval mode, no grad, autocast)
                pretrain_state()                         when a checkpoint is written

``configure_pretraining(optim: dict, device: torch.device, amp_dtype: torch.dtype | None = None) -> None``
    Create what exists only while pretraining (a discriminator, say) on ``device``,
    and the optimisers. ``optim`` is the recipe's resolved ``optim`` section (name,
    lr, betas, weight_decay, momentum, ...); component parameters may override it.
    ``amp_dtype`` is ``torch.float16`` (the component then needs a
    ``torch.amp.GradScaler``), ``torch.bfloat16``, or None. Called after the global
    seed is set, so random initialisations here are reproducible. Keep extra networks
    out of the module tree (a plain attribute): ``state_dict()`` then holds only what
    the encoder needs to encode, and a classifier built on it carries nothing more.

``pretrain_step(images: Tensor[B, C, H, W] in [0, 1], autocast: Callable[[], ContextManager]) -> dict[str, float]``
    One update of every part (e.g. a generator step, then a discriminator step),
    running forward passes inside ``with autocast():``. Returns the losses as
    floats; the loop averages them per epoch, logs them and stops the run when one
    is not finite. It must contain ``loss`` (the main objective, shown in the
    progress bar) and ``l1`` (reconstruction L1, for encoders that reconstruct).
    Randomness must come from the global torch RNG (the loop saves and restores it).

``pretrain_eval(images: Tensor[B, C, H, W]) -> dict[str, float]``
    Deterministic validation losses of one batch, lower is better; must contain
    ``l1``, the metric that picks ``best.pt``. The loop averages them over the split
    weighting by batch size.

``pretrain_state() -> dict`` / ``load_pretrain_state(state: dict) -> None``
    Everything of the pretraining beyond ``state_dict()``: extra networks, optimiser
    and scaler states. Plain data (tensors, numbers, strings, lists, dicts) that
    ``torch.load(weights_only=True)`` reads. Resuming must continue bit-identically
    on CPU.

``reconstruct(images) -> images`` and ``decode(latents [B, T, D]) -> images [B, C, S, S] in [0, 1]``
    For ``fer generate`` (``fer_core.generate``): reconstructions of real faces, and
    faces decoded from codes. Random codes are drawn from N(0, I), the prior of a VAE.

Run directory (as for classification): ``recipe.yaml``, ``metrics.jsonl`` and
``tensorboard/``, ``checkpoints/last.pt`` and ``best.pt`` (lowest validation L1),
``samples/epoch-NNNN.png`` (validation faces above their reconstructions) and
``summary.json``. A checkpoint holds ``model`` (the encoder's state dict),
``pretrain`` (``pretrain_state()``), ``rng``, ``counters``, ``recipe`` and
``versions``. The recipe's ``schedule``, ``loss`` and ``train.accumulate/clip_grad/ema``
do not apply: the component owns its optimisation. Pretraining runs in one process.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fer_core import __version__, distributed
from fer_core.data.sources import ensure_data, make_loader, resolve_classes
from fer_core.errors import CheckpointError, FerError
from fer_core.model import build_sample_augments, count_parameters
from fer_core.plugins import get_host
from fer_core.recipe import dump
from fer_core.runs import (MetricsLog, load_checkpoint, new_run_dir, resolve_checkpoint, rng_state,
                           save_epoch_checkpoints, set_rng_state, write_json, write_text)
from fer_core.train import (NonFiniteLoss, _check_corrupt, autocast_dtype, open_split_names, peak_memory_mb,
                            seed_everything)

PROTOCOL = ("configure_pretraining", "pretrain_step", "pretrain_eval", "pretrain_state", "load_pretrain_state")
SAMPLE_IMAGES = 8  # validation faces per samples/epoch-NNNN.png


def build_encoder(recipe: dict, registry=None) -> torch.nn.Module:
    """The recipe's encoder, built with the data's context; checked for the pretraining protocol."""
    registry = registry or get_host().registry
    spec, data = recipe["model"]["encoder"], recipe["data"]
    encoder = registry.build("encoder", spec, "model.encoder",
                             {"image_size": data["image_size"], "in_chans": data["channels"]})
    missing = [name for name in PROTOCOL if not callable(getattr(encoder, name, None))]
    if missing:
        raise FerError(f"model.encoder: '{spec['name']}' cannot be pretrained (it has no {missing[0]}); "
                       f"task: pretrain needs an encoder such as vaegan")
    return encoder


def run_pretrain(recipe: dict[str, Any] | None, out: str | Path | None = None, resume: str | Path | None = None,
                 console: Console | None = None) -> Path:
    """Pretrain ``recipe``'s encoder (or continue the run ``resume``); returns the run directory."""
    console = console or Console()
    state = None
    if resume is not None:
        state = load_checkpoint(Path(resume) / "checkpoints" / "last.pt")
        recipe = state["recipe"]
    if recipe is None:
        raise FerError("run_pretrain needs a recipe, or resume=RUN_DIR")
    if recipe.get("task") != "pretrain":
        raise FerError(f"{recipe.get('name')}: task is {recipe.get('task')!r}; run_pretrain needs task: pretrain")
    env = distributed.setup(recipe["train"]["device"])
    try:
        if env.distributed:
            raise FerError("task: pretrain runs in one process (the encoder steps its own optimisers); drop --nproc")
        return _run(recipe, out, resume, state, env, console)
    finally:
        distributed.teardown(env)


def _run(recipe, out, resume, state, env, console) -> Path:
    train_cfg, data_cfg, eval_cfg = recipe["train"], recipe["data"], recipe["eval"]
    device = env.device
    # -- data -----------------------------------------------------------------
    ensure_data(data_cfg, console)
    classes = resolve_classes(data_cfg)

    # -- encoder, its pretraining parts, loaders ---------------------------------
    seed_everything(recipe["seed"])
    registry = get_host().registry
    encoder = build_encoder(recipe, registry).to(device)
    amp_dtype = autocast_dtype(train_cfg, device)
    encoder.configure_pretraining(recipe["optim"], device, amp_dtype)
    sample_augments = build_sample_augments(recipe, registry, len(classes))
    train_loader = make_loader(data_cfg, "train", classes, train_cfg["batch_size"], train=True,
                               seed=recipe["seed"], augments=sample_augments)
    eval_split = "val" if "val" in open_split_names(data_cfg) else "test"
    val_loader = make_loader(data_cfg, eval_split, classes, eval_cfg["batch_size"], train=False, seed=recipe["seed"])
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext
    sample_images = next(iter(val_loader))[0][:SAMPLE_IMAGES]  # the faces of samples/epoch-NNNN.png

    # -- run directory and resume -------------------------------------------------
    counters = {"epoch": 0, "step": 0, "best": None, "best_epoch": 0, "train_time": 0.0, "initial": None}
    if state is not None:
        run_dir = Path(resume)
        encoder.load_state_dict(state["model"])
        encoder.load_pretrain_state(state["pretrain"])
        counters.update(state["counters"])
        set_rng_state(state["rng"])
    else:
        run_dir = new_run_dir(out or recipe["output"]["dir"], recipe["name"])
        write_text(run_dir / "recipe.yaml", dump(recipe))
    log = MetricsLog(run_dir)
    if state is not None:
        log.truncate_after(counters["epoch"])
    params, _ = count_parameters(encoder)
    console.print(f"[bold]{recipe['name']}[/]: pretraining encoder '{recipe['model']['encoder']['name']}' "
                  f"({params:,} parameters) on {train_loader.stream.total} training images, {device.type}"
                  + (f"; resuming after epoch {counters['epoch']}" if state is not None else ""), highlight=False)
    if counters["initial"] is None:  # the untrained encoder's validation losses, for the before/after
        counters["initial"] = evaluate_pretraining(encoder, val_loader, device, autocast)
        log.log({"kind": "epoch", "epoch": 0, "step": 0, **prefixed("val", counters["initial"])}, 0)
        console.print(f"before training: {eval_split} L1 {counters['initial']['l1']:.4f}", highlight=False)

    def checkpoint_state() -> dict:
        return {
            "model": encoder.state_dict(),
            "pretrain": encoder.pretrain_state(),
            "rng": rng_state(),
            "counters": dict(counters),
            "recipe": recipe,
            "classes": classes,
            "versions": {"fer-core": __version__, **get_host().versions()},
        }

    # -- epochs ------------------------------------------------------------------
    progress = Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TextColumn("loss {task.fields[loss]:.4f} L1 {task.fields[l1]:.4f} {task.fields[rate]:.0f} img/s"),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False)
    metrics = None
    with progress:
        for epoch in range(counters["epoch"], train_cfg["epochs"]):
            train_loader.set_epoch(epoch)
            encoder.train()
            task = progress.add_task("pretrain", total=len(train_loader), epoch=epoch + 1, loss=0.0, l1=0.0, rate=0.0)
            started, seen, sums = time.perf_counter(), 0, {}
            for images, _, _ in train_loader:
                losses = encoder.pretrain_step(images.to(device, non_blocking=True), autocast)
                bad = [name for name, value in losses.items() if not math.isfinite(value)]
                if bad:
                    raise NonFiniteLoss(
                        f"pretraining loss '{bad[0]}' became {losses[bad[0]]} at epoch {epoch + 1}; the run stopped "
                        f"and checkpoints/last.pt still holds epoch {counters['epoch']}. Lower optim.lr or turn "
                        f"off train.amp")
                counters["step"] += 1
                n = len(images)
                seen += n
                for name, value in losses.items():
                    sums[name] = sums.get(name, 0.0) + value * n
                rate = seen / max(time.perf_counter() - started, 1e-9)
                progress.update(task, advance=1, loss=sums["loss"] / seen, l1=sums.get("l1", 0.0) / seen, rate=rate)
                if counters["step"] % train_cfg["log_every"] == 0:
                    log.log({"kind": "train", "epoch": epoch + 1, "step": counters["step"], **losses}, counters["step"])
            _check_corrupt(train_loader, data_cfg, env)
            counters["train_time"] += time.perf_counter() - started
            metrics = evaluate_pretraining(encoder, val_loader, device, autocast)
            counters["epoch"] = epoch + 1
            better = counters["best"] is None or metrics["l1"] < counters["best"]
            if better:
                counters.update(best=metrics["l1"], best_epoch=epoch + 1)
            record = {"kind": "epoch", "epoch": epoch + 1, "step": counters["step"], "samples_per_s": rate,
                      **prefixed("train", {k: v / max(seen, 1) for k, v in sums.items()}), **prefixed("val", metrics)}
            log.log(record, epoch + 1)
            save_samples(encoder, sample_images, device, run_dir / "samples" / f"epoch-{epoch + 1:04d}.png")
            save_epoch_checkpoints(run_dir, checkpoint_state(), epoch + 1, better, train_cfg["keep"])
            progress.console.print(f"epoch {epoch + 1}: train loss {record['train_loss']:.4f}, train L1 "
                                   f"{record.get('train_l1', float('nan')):.4f}, {eval_split} L1 {metrics['l1']:.4f}"
                                   + (" [green](best)[/]" if better else ""), highlight=False)

    # -- summary: validation L1 before and after, test L1 with the best weights -----------
    final = metrics or last_epoch_metrics(run_dir)
    encoder.load_state_dict(load_checkpoint(run_dir / "checkpoints" / "best.pt")["model"])
    test_split = "test" if "test" in open_split_names(data_cfg) else eval_split
    test_loader = make_loader(data_cfg, test_split, classes, eval_cfg["batch_size"], train=False, seed=recipe["seed"])
    test = evaluate_pretraining(encoder, test_loader, device, autocast)
    summary = {
        "recipe": recipe["name"], "task": "pretrain", "run_dir": str(run_dir), "epochs": counters["epoch"],
        "best_epoch": counters["best_epoch"], "eval_split": eval_split,
        "val_l1_before": counters["initial"]["l1"], "val_l1_after": final["l1"], "best_val_l1": counters["best"],
        "val_before": counters["initial"], "val_after": final, "test_split": test_split, "test_best": test,
        "train_time_s": round(counters["train_time"], 2), "parameters": params,
        "peak_memory_mb": peak_memory_mb(device),
    }
    write_json(run_dir / "summary.json", summary)
    log.close()
    console.print(f"{eval_split} L1 {summary['val_l1_before']:.4f} -> {summary['val_l1_after']:.4f} "
                  f"(best {counters['best']:.4f} at epoch {counters['best_epoch']}); {test_split} L1 "
                  f"{test['l1']:.4f}", highlight=False)
    console.print(f"run directory: {run_dir}  (summary.json, samples/, checkpoints/); "
                  f"try `fer generate {run_dir}`", highlight=False, soft_wrap=True)
    return run_dir


def prefixed(prefix: str, values: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}_{name}": value for name, value in values.items()}


def last_epoch_metrics(run_dir: Path) -> dict[str, float]:
    """Validation losses of the last epoch, from the checkpoint's metrics log (a resume with nothing left to do)."""
    import json

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    last = [r for r in records if r.get("kind") == "epoch"][-1]
    return {k[4:]: v for k, v in last.items() if k.startswith("val_")}


@torch.no_grad()
def evaluate_pretraining(encoder, loader, device: torch.device, autocast) -> dict[str, float]:
    """``pretrain_eval`` over a split, averaged with batch-size weights."""
    encoder.eval()
    sums, seen = {}, 0
    for images, _, _ in loader:
        with autocast():
            losses = encoder.pretrain_eval(images.to(device, non_blocking=True))
        seen += len(images)
        for name, value in losses.items():
            sums[name] = sums.get(name, 0.0) + value * len(images)
    if not seen:
        raise FerError("the validation split is empty; pack the data set with a --val-split")
    return {name: value / seen for name, value in sums.items()}


@torch.no_grad()
def save_samples(encoder, images: torch.Tensor, device: torch.device, path: Path) -> None:
    """Validation faces (top row) above their reconstructions (bottom row)."""
    from torchvision.utils import save_image

    encoder.eval()
    images = images.to(device)
    recon = encoder.reconstruct(images).float()
    inputs = torch.nn.functional.interpolate(images, size=recon.shape[-2:], mode="bilinear", antialias=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(torch.cat([inputs.expand_as(recon), recon]).clamp(0, 1), path, nrow=len(images))


def load_pretrained(run_or_checkpoint: str | Path, device: str | torch.device = "cpu", which: str = "best"):
    """(encoder in eval mode, recipe, checkpoint path) of a pretraining run, for generation."""
    path = resolve_checkpoint(run_or_checkpoint, which)
    state = load_checkpoint(path)
    recipe = state["recipe"]
    if recipe.get("task") != "pretrain" or "pretrain" not in state:
        raise CheckpointError(f"{path}: not a pretraining run (task: {recipe.get('task')}); fer generate needs "
                              f"the run of a `task: pretrain` recipe such as vaegan-pretrain (`fer recipe list`)")
    torch.manual_seed(recipe["seed"])
    encoder = build_encoder(recipe)
    encoder.load_state_dict(state["model"])
    return encoder.to(device).eval(), recipe, path
