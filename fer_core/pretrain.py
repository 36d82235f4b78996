"""The pretraining task (``task: pretrain``): an encoder that trains itself, driven by the one loop.

Some encoders are trained before they encode for a classifier (a VAE-GAN learns to
reconstruct faces against a discriminator, say). The loop (``fer_core.train``) drives such an
encoder exactly like a classification run -- data, devices, processes, mixed precision,
progress, logs, checkpoints, exact resume, early stopping -- while the encoder owns what is
particular to it: its extra networks, its optimisers and its losses.

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
    detached 0-d tensors (floats are accepted, but ``.item()`` costs a host sync per
    step); the loop averages them per epoch, logs them and stops the run when one is
    not finite (checked every ``train.log_every`` steps). It must contain ``loss`` (the
    main objective, shown in the progress bar) and ``l1`` (reconstruction L1, for
    encoders that reconstruct). Randomness must come from the global torch RNG (the
    loop saves and restores it).

``pretrain_eval(images: Tensor[B, C, H, W]) -> dict[str, Tensor | float]``
    Deterministic validation losses of one batch, lower is better; must contain
    ``l1``, the metric that picks ``best.pt``. The loop averages them over the split
    (and over processes) weighting by batch size.

``pretrain_parameters() -> Iterable[Parameter]`` (needed for ``--nproc`` > 1 only)
    Every parameter the pretraining updates: the encoder's and its extra networks'.
    With several processes the loop averages each one's gradient over the processes
    as soon as backward has accumulated it, so every process steps identically.

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
do not apply: the component owns its optimisation.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from fer_core import distributed
from fer_core.errors import CheckpointError, DataError, PluginError
from fer_core.model import build_encoder, build_sample_augments, installed
from fer_core.plugins import get_registry
from fer_core.registry import Registry
from fer_core.runs import load_checkpoint, resolve_checkpoint
from fer_core.task import Autocast, Batch, Task

PROTOCOL = ("configure_pretraining", "pretrain_step", "pretrain_eval", "pretrain_state", "load_pretrain_state")
SAMPLE_IMAGES = 8  # validation faces per samples/epoch-NNNN.png


def build_pretrainable(recipe: Mapping[str, Any], registry: Registry | None = None) -> torch.nn.Module:
    """The recipe's encoder, built with the data's context; checked for the pretraining protocol."""
    registry = registry or get_registry()
    encoder, _ = build_encoder(recipe, registry)
    missing = [name for name in PROTOCOL if not callable(getattr(encoder, name, None))]  # optional protocol
    if missing:
        name = recipe["model"]["encoder"]["name"]
        raise PluginError(f"model.encoder: '{name}' cannot be pretrained (it has no {missing[0]}); task: pretrain "
                          f"needs an encoder with the pretraining protocol of fer_core.pretrain; installed "
                          f"encoders: {installed(registry, 'encoder', name)}")
    return encoder


class PretrainTask(Task):
    name = "pretrain"
    owns_optimisation = True
    evaluate_before = True
    progress = ("loss", "l1")
    checkpoint_key = "pretrain"

    def build(self) -> torch.nn.Module:
        s = self.setup
        self.encoder = build_pretrainable(self.recipe, s.registry).to(s.env.device)
        self.sample_augments = build_sample_augments(self.recipe, s.registry, len(s.classes))
        return self.encoder

    def configure(self, optim: Mapping[str, Any]) -> None:
        env = self.setup.env
        self.encoder.configure_pretraining(optim, env.device, self.setup.amp_dtype)
        if env.distributed:
            if not callable(getattr(self.encoder, "pretrain_parameters", None)):  # optional for one process
                raise PluginError(f"model.encoder: '{self.recipe['model']['encoder']['name']}' has no "
                                  f"pretrain_parameters(), which pretraining in several processes needs; drop --nproc")
            distributed.average_gradients(env, self.encoder.pretrain_parameters())

    def prepare(self, val_loader) -> None:
        self.sample_images = next(iter(val_loader))[0][:SAMPLE_IMAGES]  # the faces of samples/epoch-NNNN.png

    def train_step(self, net: torch.nn.Module, batch: Batch, autocast: Autocast) -> dict[str, torch.Tensor]:
        return self.encoder.pretrain_step(batch.inputs, autocast)

    def best_metric(self) -> str:
        return "l1"

    def mode(self, metric: str) -> str:
        return "min"  # every pretraining figure is a loss

    @torch.no_grad()
    def evaluate(self, module: torch.nn.Module, loader, autocast: Autocast, final: bool = False) -> dict[str, Any]:
        """``pretrain_eval`` over a split (and every process), averaged with batch-size weights."""
        module.eval()
        device = self.setup.env.device
        sums: dict[str, torch.Tensor] = {}
        seen = torch.zeros((), device=device, dtype=torch.float64)
        for images, _, _ in loader:
            with autocast():
                losses = module.pretrain_eval(images.to(device, non_blocking=True))
            seen += len(images)
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + torch.as_tensor(value, device=device).double() * len(images)
        if not sums:
            raise DataError("the validation split is empty; pack the data set with a --val-split")
        names = sorted(sums)
        totals = torch.stack([sums[name] for name in names] + [seen])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(totals)
        values = (totals[:-1] / totals[-1]).tolist()  # the one host sync of the evaluation
        return dict(zip(names, values))

    def model_state(self) -> dict[str, torch.Tensor]:
        return self.encoder.state_dict()

    def load_model_state(self, state: Mapping[str, torch.Tensor]) -> None:
        self.encoder.load_state_dict(state)

    def state(self) -> Any:
        return self.encoder.pretrain_state()

    def load_state(self, state: Any) -> None:
        self.encoder.load_pretrain_state(state)

    def epoch_line(self, record: Mapping[str, Any], split: str) -> str:
        return (f"train loss {record['train_loss']:.4f}, train L1 {record.get('train_l1', float('nan')):.4f}, "
                f"{split} L1 {record['val_l1']:.4f}")

    def epoch_end(self, run_dir: Path, epoch: int) -> None:
        save_samples(self.encoder, self.sample_images, self.setup.env.device,
                     run_dir / "samples" / f"epoch-{epoch:04d}.png")

    def report(self, run_dir: Path, result: Mapping[str, Any], summary: dict[str, Any],
               counters: Mapping[str, Any]) -> None:
        before, after = counters["initial"], counters["last_val"]
        summary.update({"val_l1_before": before["l1"], "val_l1_after": after["l1"], "val_before": before,
                        "val_after": after, "test_best": dict(result)})
        console = self.setup.console
        console.print(f"{summary['eval_split']} L1 {before['l1']:.4f} -> {after['l1']:.4f} (best "
                      f"{counters['best']:.4f} at epoch {counters['best_epoch']}); {summary['test_split']} L1 "
                      f"{result['l1']:.4f}", highlight=False)
        console.print(f"run directory: {run_dir}  (summary.json, samples/, checkpoints/); "
                      f"try `fer generate {run_dir}`", highlight=False, soft_wrap=True)


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
                              f"the run of a `task: pretrain` recipe")
    torch.manual_seed(recipe["seed"])
    encoder = build_pretrainable(recipe)
    encoder.load_state_dict(state["model"])
    return encoder.to(device).eval(), recipe, path
