"""VAE-GAN: a convolutional VAE (the generator) trained against a PatchGAN discriminator.

Papers:
* Kingma & Welling 2014, "Auto-Encoding Variational Bayes" (reparameterisation,
  closed-form Gaussian KL), https://arxiv.org/abs/1312.6114
* Larsen et al. 2016, "Autoencoding beyond pixels using a learned similarity metric"
  (VAE-GAN), https://arxiv.org/abs/1512.09300
* Isola et al. 2017, "Image-to-Image Translation with Conditional Adversarial Networks"
  (pix2pix: PatchGAN discriminator, adversarial + 100 x L1), https://arxiv.org/abs/1611.07004
* Radford et al. 2016, "Unsupervised Representation Learning with Deep Convolutional
  GANs" (stride-2 conv stacks, BatchNorm, LeakyReLU, Adam betas (0.5, 0.999)),
  https://arxiv.org/abs/1511.06434

Reference architecture at 96x96 (image size, latent size, widths and the
discriminator body are parameters)::

    encoder        5 x [conv 4x4 stride 2, BatchNorm, LeakyReLU 0.2]   3->32->64->128->256->512, 96 -> 3x3
                   flatten -> two linear layers -> mu, log-variance [256]
                   z = mu + exp(logvar / 2) * eps,   eps ~ N(0, I)
    decoder        linear 256 -> 512x3x3, BatchNorm, ReLU
                   4 x [transposed conv 4x4 stride 2, BatchNorm, ReLU]   512->256->128->64->32
                   transposed conv 32 -> 3 (48 -> 96), sigmoid
    discriminator  timm ResNet-50 body, last stage (2048 x 3 x 3) -> 1x1 conv -> patch logits [1, 3, 3]

Losses of one pretraining step (``VAEGAN.pretrain_step``)::

    generator      adv_weight * BCE(D(x_rec), real) + l1_weight * L1(x_rec, x) + bce_weight * BCE(x_rec, x)
                   + kl_weight * KL(N(mu, sigma^2) || N(0, I))
    discriminator  BCE(D(x), real) + BCE(D(x_rec), fake)

The pixel terms are means over pixels and the KL is the closed form averaged over
latent dimensions, so every term is on a per-element scale: summed over 256
dimensions the KL would outweigh the reconstruction and collapse the posterior.

As a fer encoder, ``forward`` returns the posterior mean as one token [B, 1, latent_dim]:
deterministic in eval mode, hence cacheable. The discriminator, optimisers and
gradient scaler exist only while pretraining (``task: pretrain``; the protocol is
documented in ``fer_core.pretrain``) and live outside the module tree, so a FER
classifier's state dict holds the generator only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.layers import ConvNormAct
from torch import nn

from fer_core.errors import CheckpointError, FerError

__all__ = ["ConvEncoder", "ConvDecoder", "PatchDiscriminator", "VAEGAN", "build_vaegan",
           "reparameterize", "kl_divergence"]

PRETRAIN_FORMAT = "fer-vaegan-pretrain-1"
REFERENCE_LATENT_DIM = 256
REFERENCE_WIDTHS = (32, 64, 128, 256, 512)


# --- latent sampling and losses -----------------------------------------------


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """z = mu + exp(logvar / 2) * eps with eps ~ N(0, I): a sample of N(mu, sigma^2) that gradients pass through."""
    return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) per element, in closed form: (mu^2 + sigma^2 - 1 - logvar) / 2."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def bce_against(logits: torch.Tensor, label: float) -> torch.Tensor:
    """Mean BCE of (patch) logits against a constant label: 1 = real, 0 = fake."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label))


@dataclass(frozen=True)
class LossWeights:
    adv: float = 1.0
    l1: float = 100.0
    bce: float = 1.0
    kl: float = 1.0


# --- blocks ---------------------------------------------------------------------


def down_block(in_chs: int, out_chs: int) -> ConvNormAct:
    """Conv 4x4 stride 2 (halves the size), BatchNorm, LeakyReLU(0.2)."""
    return ConvNormAct(in_chs, out_chs, kernel_size=4, stride=2, padding=1,
                       act_layer=nn.LeakyReLU, act_kwargs={"negative_slope": 0.2})


class UpBlock(nn.Sequential):
    """Transposed conv 4x4 stride 2 (doubles the size), BatchNorm, ReLU."""

    def __init__(self, in_chs: int, out_chs: int):
        super().__init__(
            nn.ConvTranspose2d(in_chs, out_chs, kernel_size=4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(out_chs),
            nn.ReLU(inplace=True),
        )


def feature_size(image_size: int, num_stages: int) -> int:
    """Side of the smallest feature map; the image must halve exactly ``num_stages`` times."""
    step = 2**num_stages
    if num_stages < 1 or image_size % step or image_size < step:
        raise FerError(f"vaegan: image size {image_size} must be a multiple of 2^{num_stages} = {step} "
                       f"(one stride-2 convolution per entry of widths); change data.image_size or widths")
    return image_size // step


class ConvEncoder(nn.Module):
    """Images [B, C, S, S] in [-1, 1] -> (mu, logvar), each [B, latent_dim]."""

    def __init__(self, image_size: int, latent_dim: int, widths: Sequence[int], in_chans: int = 3):
        super().__init__()
        self.feature_size = feature_size(image_size, len(widths))
        chans = [in_chans, *widths]
        self.features = nn.Sequential(*(down_block(a, b) for a, b in zip(chans[:-1], chans[1:])))
        flat = widths[-1] * self.feature_size**2
        self.mu = nn.Linear(flat, latent_dim)
        self.logvar = nn.Linear(flat, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.features(x).flatten(1)
        return self.mu(x), self.logvar(x)


class ConvDecoder(nn.Module):
    """Codes z [B, latent_dim] -> image logits [B, C, S, S]; their sigmoid is the image in [0, 1]."""

    def __init__(self, image_size: int, latent_dim: int, widths: Sequence[int], out_chans: int = 3):
        super().__init__()
        self.feature_size = feature_size(image_size, len(widths))
        chans = list(reversed(widths))
        self.fc = nn.Linear(latent_dim, chans[0] * self.feature_size**2, bias=False)
        self.stem = nn.Sequential(nn.BatchNorm2d(chans[0]), nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(*(UpBlock(a, b) for a, b in zip(chans[:-1], chans[1:])))
        self.to_image = nn.ConvTranspose2d(chans[-1], out_chans, kernel_size=4, stride=2, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).unflatten(1, (-1, self.feature_size, self.feature_size))
        return self.to_image(self.blocks(self.stem(x)))


class PatchDiscriminator(nn.Module):
    """Images [B, C, S, S] in [0, 1] -> real/fake logits per patch [B, 1, s, s] (3x3 for ResNet-50 at 96 px).

    The body is any timm CNN (``features_only``, last stage); its ImageNet normalisation is applied here.
    """

    def __init__(self, body: str = "resnet50", pretrained: bool = False, in_chans: int = 3):
        super().__init__()
        self.body = timm.create_model(body, pretrained=pretrained, features_only=True, out_indices=(-1,),
                                      in_chans=in_chans)
        self.head = nn.Conv2d(self.body.feature_info.channels()[-1], 1, kernel_size=1)
        cfg = self.body.pretrained_cfg
        mean = torch.tensor(cfg.get("mean", (0.5,) * 3)).view(1, -1, 1, 1)
        std = torch.tensor(cfg.get("std", (0.5,) * 3)).view(1, -1, 1, 1)
        if in_chans != mean.shape[1]:
            mean, std = mean.mean(1, keepdim=True), std.mean(1, keepdim=True)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.body((images - self.mean) / self.std)[-1])


# --- the model --------------------------------------------------------------------


@dataclass
class Pretraining:
    """What exists only while pretraining; a plain object, so none of it enters ``state_dict``."""

    discriminator: PatchDiscriminator
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    scaler: torch.amp.GradScaler


def make_optimizer(optim: Mapping[str, Any], params, lr: float, betas: Sequence[float]) -> torch.optim.Optimizer:
    """Adam / AdamW / SGD as named in the recipe's ``optim`` section."""
    params = [p for p in params if p.requires_grad]
    if optim["name"] == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=optim["momentum"], nesterov=optim["nesterov"],
                               weight_decay=optim["weight_decay"])
    cls = torch.optim.AdamW if optim["name"] == "adamw" else torch.optim.Adam
    return cls(params, lr=lr, betas=tuple(betas), weight_decay=optim["weight_decay"])


class VAEGAN(nn.Module):
    """The ``vaegan`` encoder: images [B, C, H, W] in [0, 1] -> posterior mean z as tokens [B, 1, latent_dim].

    Besides ``forward`` it implements the pretraining protocol of ``fer_core.pretrain``
    (``configure_pretraining``, ``pretrain_step``, ``pretrain_eval``, ``pretrain_state``,
    ``load_pretrain_state``, ``pretrain_parameters``, ``reconstruct``, ``decode``).
    """

    trainable: bool = True
    cacheable: bool = True  # the mean is deterministic in eval mode

    def __init__(self, image_size: int = 96, latent_dim: int = REFERENCE_LATENT_DIM,
                 widths: Sequence[int] = REFERENCE_WIDTHS, in_chans: int = 3, disc_body: str = "resnet50",
                 disc_pretrained: bool = False, weights: LossWeights = LossWeights(),
                 lr: float | None = None, betas: Sequence[float] | None = None):
        super().__init__()
        self.input_size = image_size
        self.latent_dim = latent_dim
        self.latent_shape: tuple[int, int] = (1, latent_dim)
        self.widths = tuple(widths)
        self.in_chans = in_chans
        self.encoder = ConvEncoder(image_size, latent_dim, widths, in_chans)
        self.decoder = ConvDecoder(image_size, latent_dim, widths, in_chans)
        self.disc_body, self.disc_pretrained = disc_body, disc_pretrained
        self.weights = weights
        self.lr, self.betas = lr, betas
        self.pretraining: Pretraining | None = None
        # As a FER encoder only the path to the mean trains; configure_pretraining unfreezes the rest.
        for part in (self.encoder.logvar, self.decoder):
            part.requires_grad_(False)

    def architecture(self) -> dict[str, Any]:
        """Everything needed to rebuild the generator from its state dict (plain data)."""
        return {"image_size": self.input_size, "latent_dim": self.latent_dim, "widths": list(self.widths),
                "in_chans": self.in_chans}

    # -- images and codes --
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 1 or 3, H, W] in [0, 1] -> [B, in_chans, S, S] in [0, 1] (the reconstruction target)."""
        if images.shape[1] != self.in_chans:
            images = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images.mean(1, keepdim=True)
        size = (self.input_size, self.input_size)
        if tuple(images.shape[-2:]) != size:
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
        return images

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar) [B, latent_dim] of images in [0, 1] of any size."""
        return self.encoder(self.preprocess(images) * 2.0 - 1.0)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Codes [B, latent_dim] or tokens [B, 1, latent_dim] -> images [B, C, S, S] in (0, 1)."""
        return torch.sigmoid(self.decoder(latents.flatten(1)))

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Images -> their reconstruction through the posterior mean (deterministic)."""
        return self.decode(self.encode(images)[0])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(images)[0].unsqueeze(1)

    # -- pretraining protocol (fer_core.pretrain) --
    def configure_pretraining(self, optim: Mapping[str, Any], device: torch.device | str,
                              amp_dtype: torch.dtype | None = None) -> None:
        """Build the discriminator on ``device`` and the two optimisers.

        ``lr`` / ``betas`` of the component win over the recipe's ``optim.lr`` / ``optim.betas``.
        """
        device = torch.device(device)
        self.requires_grad_(True)
        discriminator = PatchDiscriminator(self.disc_body, self.disc_pretrained, self.in_chans).to(device)
        lr = self.lr if self.lr is not None else optim["lr"]
        betas = self.betas if self.betas is not None else optim["betas"]
        self.pretraining = Pretraining(
            discriminator,
            opt_g=make_optimizer(optim, self.parameters(), lr, betas),
            opt_d=make_optimizer(optim, discriminator.parameters(), lr, betas),
            scaler=torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
        )

    def _pretraining(self) -> Pretraining:
        if self.pretraining is None:
            raise FerError("vaegan: call configure_pretraining(optim, device) before pretraining it")
        return self.pretraining

    def reconstruction_terms(self, x: torch.Tensor, logits: torch.Tensor, mu: torch.Tensor,
                             logvar: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unweighted L1, BCE (both per pixel) and KL (per latent dimension), in float32."""
        logits, mu, logvar = logits.float(), mu.float(), logvar.float()
        return {"l1": (torch.sigmoid(logits) - x).abs().mean(),
                "bce": F.binary_cross_entropy_with_logits(logits, x),
                "kl": kl_divergence(mu, logvar).mean()}

    def pretrain_step(self, images: torch.Tensor,
                      autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
                      ) -> dict[str, torch.Tensor]:
        """One generator update, then one discriminator update; returns the losses (detached, on the device)."""
        gan, w = self._pretraining(), self.weights
        disc, scaler = gan.discriminator, gan.scaler
        x = self.preprocess(images).float()

        # generator: reconstruct x through a sampled z, and make D take the reconstruction for real
        disc.train()
        disc.requires_grad_(False)
        with autocast():
            mu, logvar = self.encoder(x * 2.0 - 1.0)
            logits = self.decoder(reparameterize(mu, logvar))
            fake_logits = disc(torch.sigmoid(logits))
        terms = self.reconstruction_terms(x, logits, mu, logvar)
        adv = bce_against(fake_logits.float(), 1.0)
        g_loss = w.adv * adv + w.l1 * terms["l1"] + w.bce * terms["bce"] + w.kl * terms["kl"]
        gan.opt_g.zero_grad(set_to_none=True)
        scaler.scale(g_loss).backward()
        scaler.step(gan.opt_g)

        # discriminator: real faces against the reconstructions of this step
        disc.requires_grad_(True)
        recon = torch.sigmoid(logits.detach())
        with autocast():
            real_logits, fake_logits = disc(x), disc(recon)
        d_real, d_fake = bce_against(real_logits.float(), 1.0), bce_against(fake_logits.float(), 0.0)
        d_loss = d_real + d_fake
        gan.opt_d.zero_grad(set_to_none=True)
        scaler.scale(d_loss).backward()
        scaler.step(gan.opt_d)
        scaler.update()
        losses = {"loss": g_loss, "adv": adv, **terms, "d_loss": d_loss, "d_real": d_real, "d_fake": d_fake}
        return {name: value.detach() for name, value in losses.items()}

    @torch.no_grad()
    def pretrain_eval(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Reconstruction through the mean (deterministic): L1, BCE and KL of one batch."""
        x = self.preprocess(images).float()
        mu, logvar = self.encoder(x * 2.0 - 1.0)
        return self.reconstruction_terms(x, self.decoder(mu), mu, logvar)

    def pretrain_parameters(self) -> list[nn.Parameter]:
        """The generator's and the discriminator's parameters (their gradients are averaged over processes)."""
        return [*self.parameters(), *self._pretraining().discriminator.parameters()]

    def pretrain_state(self) -> dict[str, Any]:
        """Discriminator, optimisers and scaler as plain data (``torch.load(weights_only=True)``)."""
        gan = self._pretraining()
        return {"format": PRETRAIN_FORMAT, "architecture": self.architecture(), "disc_body": self.disc_body,
                "discriminator": gan.discriminator.state_dict(), "opt_g": gan.opt_g.state_dict(),
                "opt_d": gan.opt_d.state_dict(), "scaler": gan.scaler.state_dict()}

    def load_pretrain_state(self, state: Mapping[str, Any]) -> None:
        gan = self._pretraining()
        if state.get("format") != PRETRAIN_FORMAT:
            raise CheckpointError(f"vaegan: the checkpoint's pretraining state is not a VAE-GAN's "
                                  f"(format {state.get('format')!r}, expected {PRETRAIN_FORMAT!r})")
        if state["architecture"] != self.architecture() or state["disc_body"] != self.disc_body:
            raise CheckpointError(f"vaegan: the checkpoint was pretrained as {state['architecture']} with "
                                  f"disc_body {state['disc_body']}; the recipe builds {self.architecture()} "
                                  f"with disc_body {self.disc_body}")
        gan.discriminator.load_state_dict(state["discriminator"])
        gan.opt_g.load_state_dict(state["opt_g"])
        gan.opt_d.load_state_dict(state["opt_d"])
        gan.scaler.load_state_dict(state["scaler"])


# --- pretrained weights -------------------------------------------------------------


def read_pretrained(checkpoint: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], Path]:
    """(architecture, generator state dict, file) of a VAE-GAN pretraining run or its checkpoint file.

    A run directory resolves to ``checkpoints/best.pt`` (lowest validation L1), else ``last.pt``.
    """
    from fer_core.runs import load_checkpoint, resolve_checkpoint

    path = Path(checkpoint)
    if not path.exists():
        raise CheckpointError(f"model.encoder.checkpoint: {path} not found; pretrain a VAE-GAN first "
                              f"(fer run vaegan-pretrain) and point checkpoint at its run directory")
    path = resolve_checkpoint(path)
    state = load_checkpoint(path)
    recipe = state.get("recipe") if isinstance(state.get("recipe"), dict) else {}
    pretrain = state.get("pretrain")
    if recipe.get("task") != "pretrain" or not isinstance(pretrain, dict):
        raise CheckpointError(f"{path}: a classification checkpoint, not a VAE-GAN pretraining run; point "
                              f"model.encoder.checkpoint at a run of a `task: pretrain` recipe such as "
                              f"the packaged recipe vaegan-pretrain")
    if pretrain.get("format") != PRETRAIN_FORMAT:
        name = recipe.get("model", {}).get("encoder", {}).get("name", "?")
        raise CheckpointError(f"{path}: a pretraining run of encoder '{name}', not of a VAE-GAN; point "
                              f"model.encoder.checkpoint at a run of the packaged recipe vaegan-pretrain")
    return dict(pretrain["architecture"]), state["model"], path


# --- the registered component ---------------------------------------------------------


def build_vaegan(
    image_size: int = 96,
    in_chans: int = 3,
    latent_dim: int | None = None,
    widths: list[int] | None = None,
    disc_body: str = "resnet50",
    disc_pretrained: bool = False,
    checkpoint: str | None = None,
    adv_weight: float = 1.0,
    l1_weight: float = 100.0,
    bce_weight: float = 1.0,
    kl_weight: float = 1.0,
    lr: float | None = None,
    betas: list[float] | None = None,
) -> VAEGAN:
    """The ``vaegan`` encoder.

    image_size, in_chans: set by the core from the data; with a checkpoint, the
        pretrained size wins (inputs are resized to it).
    latent_dim, widths: 256 and [32, 64, 128, 256, 512] when left out; with a checkpoint
        they come from it (setting them to other values is an error).
    disc_body: timm CNN under the PatchGAN head (pretraining only); disc_pretrained loads
        its ImageNet weights through timm.
    checkpoint: a VAE-GAN pretraining run directory (its best.pt) or checkpoint file;
        the generator (encoder + decoder) weights are loaded from it.
    adv_weight, l1_weight, bce_weight, kl_weight: weights of the generator's loss terms.
    lr, betas: the optimisers' settings; when left out, the recipe's optim.lr / optim.betas.
    """
    if not timm.is_model(disc_body):
        raise FerError(f"model.encoder.disc_body: unknown timm model {disc_body!r}; use a timm CNN such as "
                       f"resnet50, resnet18 or resnet10t")
    if min(adv_weight, l1_weight, bce_weight, kl_weight) < 0:
        raise FerError("model.encoder: vaegan loss weights (adv/l1/bce/kl_weight) must not be negative")
    if latent_dim is not None and latent_dim < 1:
        raise FerError(f"model.encoder.latent_dim: must be at least 1, got {latent_dim}")
    if widths is not None and (not widths or not all(isinstance(w, int) and w > 0 for w in widths)):
        raise FerError(f"model.encoder.widths: expected a list of positive channel counts, got {widths!r}")
    options = dict(disc_body=disc_body, disc_pretrained=disc_pretrained, lr=lr, betas=betas,
                   weights=LossWeights(adv_weight, l1_weight, bce_weight, kl_weight))
    if checkpoint is None:
        return VAEGAN(image_size, latent_dim or REFERENCE_LATENT_DIM, list(widths or REFERENCE_WIDTHS), in_chans,
                      **options)
    architecture, state, path = read_pretrained(checkpoint)
    for key, value in (("latent_dim", latent_dim), ("widths", widths)):
        if value is not None and value != architecture[key]:
            raise CheckpointError(f"model.encoder.{key}: {path} was pretrained with {key} {architecture[key]}, "
                                  f"not {value}; leave {key} out (it comes from the checkpoint)")
    model = VAEGAN(**architecture, **options)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path}: its generator weights do not fit a VAE-GAN of {architecture} ({first})") from None
    return model
