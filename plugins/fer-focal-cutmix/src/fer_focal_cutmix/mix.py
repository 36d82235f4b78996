"""Batch-stage mixing augments: CutMix and MixUp for images and for latent tokens.

Papers:
    mixup: Beyond Empirical Risk Minimization - https://arxiv.org/abs/1710.09412
    CutMix: Regularization Strategy to Train Strong Classifiers with Localizable Features
        - https://arxiv.org/abs/1905.04899

Every module here is a fer-core batch augment: ``forward(inputs, targets) ->
(inputs, soft targets [B,C] float32)``, where targets come in as class ids [B] or
soft targets [B,C]. Class ids become one-hot targets smoothed by
``label_smoothing`` (soft targets are taken as they are, so chained mixes do not
smooth twice). With probability ``prob`` per batch the batch is mixed; in eval mode
it never is.

Sample i is mixed with sample i - 1 (``roll(1, 0)``, torchvision's pairing; the
loader shuffles, so partners are random). Unlike timm's ``Mixup``, which flips the
batch and asserts an even batch size, this works for any batch size (a batch of
one is mixed with itself, which leaves it unchanged).

Randomness comes only from torch's global CPU generator (``torch.rand`` for
``prob``, ``torch.distributions.Beta`` for the mixing weight, ``torch.randint`` for
box / row positions, ``torch.multinomial`` for the CutMix-or-MixUp switch), so a
run is reproducible under ``torch.manual_seed``; numpy's RNG is not used.

Image CutMix and MixUp are torchvision's ``transforms.v2.CutMix`` / ``MixUp``:
CutMix clips the box to the image and mixes the labels by the exact pasted area.
Latent CutMix replaces a contiguous range of token rows (for w+: coarse 0-3,
middle 4-7, fine 8-17) and mixes the labels by the fraction of rows replaced.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

from fer_core.errors import FerError, RecipeError

__all__ = [
    "BatchMix",
    "CutMix",
    "MixUp",
    "CutMixOrMixUp",
    "LatentCutMix",
    "W_PLUS_ROWS",
    "build_cutmix",
    "build_mixup",
    "build_cutmix_or_mixup",
    "build_latent_cutmix",
    "build_latent_mixup",
]

# StyleGAN w+ layer groups (Karras et al.; pSp / e4e): [start, end) token rows
W_PLUS_ROWS = {"coarse": (0, 4), "middle": (4, 8), "fine": (8, 18)}


def soft_targets(targets: torch.Tensor, num_classes: int, label_smoothing: float) -> torch.Tensor:
    """Class ids [B] -> smoothed one-hot [B,C] float32; soft targets [B,C] -> float32 unchanged."""
    if targets.ndim == 1 and not targets.is_floating_point():
        one_hot = F.one_hot(targets.long(), num_classes).float()
        return one_hot * (1.0 - label_smoothing) + label_smoothing / num_classes
    if targets.ndim == 2 and targets.shape[1] == num_classes:
        return targets.float()
    raise ValueError(
        f"batch augment targets must be class ids [B] or soft targets [B,{num_classes}], "
        f"got {targets.dtype} {list(targets.shape)}"
    )


class BatchMix(nn.Module):
    """Shared batch-augment behaviour: target conversion, per-batch ``prob``, eval pass-through."""

    stage = "batch"
    spaces: tuple[str, ...] = ("image",)
    input_ndim: int | None = 4  # [B,C,H,W]; None: any shape [B,...]

    def __init__(self, num_classes: int, prob: float = 1.0, label_smoothing: float = 0.0):
        super().__init__()
        self.num_classes = num_classes
        self.prob = float(prob)
        self.label_smoothing = float(label_smoothing)

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        targets = soft_targets(targets, self.num_classes, self.label_smoothing)
        if self.input_ndim is not None and inputs.ndim != self.input_ndim:
            raise FerError(
                f"{type(self).__name__} works on {self.spaces[0]} batches of {self.input_ndim} dimensions, "
                f"got {list(inputs.shape)}; use it with a backbone of input kind {self.spaces[0]!r}"
            )
        if not self.training or not torch.rand(()) < self.prob:
            return inputs, targets
        return self.mix(inputs, targets)

    def mix(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, prob={self.prob}, label_smoothing={self.label_smoothing}"


class CutMix(BatchMix):
    """Paste a random box from sample i - 1 into sample i; labels mixed by the exact pasted area."""

    def __init__(self, num_classes: int, alpha: float = 1.0, prob: float = 1.0, label_smoothing: float = 0.0):
        super().__init__(num_classes, prob, label_smoothing)
        self.cutmix = v2.CutMix(alpha=alpha, num_classes=num_classes)

    def mix(self, images, targets):
        return self.cutmix(images, targets)


class MixUp(BatchMix):
    """Blend every input with sample i - 1 (``lam ~ Beta(alpha, alpha)``); works on images or tokens."""

    input_ndim = None

    def __init__(
        self,
        num_classes: int,
        alpha: float = 0.8,
        prob: float = 1.0,
        label_smoothing: float = 0.0,
        spaces: tuple[str, ...] = ("image", "latent"),
    ):
        super().__init__(num_classes, prob, label_smoothing)
        self.spaces = spaces
        self.mixup = v2.MixUp(alpha=alpha, num_classes=num_classes)

    def mix(self, inputs, targets):
        # torchvision checks for an image batch [B,C,H,W]; the blend itself is shape-agnostic
        mixed, targets = self.mixup(inputs.reshape(len(inputs), 1, 1, -1), targets)
        return mixed.reshape(inputs.shape), targets


class CutMixOrMixUp(BatchMix):
    """Per batch, CutMix with probability ``switch_prob``, otherwise MixUp."""

    def __init__(
        self,
        num_classes: int,
        cutmix_alpha: float = 1.0,
        mixup_alpha: float = 0.8,
        switch_prob: float = 0.5,
        prob: float = 1.0,
        label_smoothing: float = 0.0,
    ):
        super().__init__(num_classes, prob, label_smoothing)
        self.switch_prob = float(switch_prob)
        self.choice = v2.RandomChoice(
            [v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes), v2.MixUp(alpha=mixup_alpha, num_classes=num_classes)],
            p=[self.switch_prob, 1.0 - self.switch_prob],
        )

    def mix(self, images, targets):
        return self.choice(images, targets)


class LatentCutMix(BatchMix):
    """Replace a contiguous range of token rows [start, end) with sample i - 1's rows.

    ``rows``: ``"coarse"``/``"middle"``/``"fine"`` (w+ rows 0-3, 4-7, 8-17; clipped to the
    latent's T rows), an explicit ``(start, end)``, or ``"random"``: ``lam ~ Beta(alpha, alpha)``,
    ``round((1 - lam) * T)`` rows at a uniformly random start, as CutMix draws its box.
    The label weight of sample i's own target is ``1 - (end - start) / T``.
    """

    spaces = ("latent",)
    input_ndim = 3  # [B,T,D]

    def __init__(
        self,
        num_classes: int,
        rows: str | tuple[int, int] = "random",
        alpha: float = 1.0,
        prob: float = 1.0,
        label_smoothing: float = 0.0,
    ):
        super().__init__(num_classes, prob, label_smoothing)
        self.rows = rows
        self.alpha = float(alpha)

    def row_range(self, num_tokens: int) -> tuple[int, int]:
        """The [start, end) rows to replace in a batch of ``num_tokens`` tokens."""
        if self.rows == "random":
            lam = float(torch.distributions.Beta(self.alpha, self.alpha).sample())
            count = round((1.0 - lam) * num_tokens)
            start = int(torch.randint(num_tokens - count + 1, ()))
            return start, start + count
        if isinstance(self.rows, str):
            start, end = W_PLUS_ROWS[self.rows]
            if start >= num_tokens:
                raise FerError(
                    f"latent_cutmix rows {self.rows!r} start at row {start} but the latents have {num_tokens} "
                    "rows; use rows: random or an explicit [start, end)"
                )
            return start, min(end, num_tokens)
        start, end = self.rows
        if end > num_tokens:
            raise FerError(
                f"latent_cutmix rows [{start}, {end}) do not fit latents of {num_tokens} rows; "
                f"give an end of at most {num_tokens}"
            )
        return start, end

    def mix(self, latents, targets):
        num_tokens = latents.shape[1]
        start, end = self.row_range(num_tokens)
        mixed = latents.clone()
        mixed[:, start:end] = latents.roll(1, 0)[:, start:end]
        lam = 1.0 - (end - start) / num_tokens
        return mixed, targets * lam + targets.roll(1, 0) * (1.0 - lam)

    def extra_repr(self) -> str:
        return f"rows={self.rows!r}, alpha={self.alpha}, " + super().extra_repr()


# --- factories (recipe parameters; num_classes is context from the core) ---


def _check_common(name: str, prob: float, label_smoothing: float, **alphas: float) -> None:
    if not 0.0 <= prob <= 1.0:
        raise RecipeError(f"{name}.prob must be in [0, 1], got {prob}")
    if not 0.0 <= label_smoothing < 1.0:
        raise RecipeError(f"{name}.label_smoothing must be in [0, 1), got {label_smoothing}")
    for key, value in alphas.items():
        if not value > 0:
            raise RecipeError(f"{name}.{key} must be > 0 (the Beta distribution's parameter), got {value}")


def _parse_rows(rows: str | Sequence[int]) -> str | tuple[int, int]:
    if isinstance(rows, str):
        if rows == "random" or rows in W_PLUS_ROWS:
            return rows
        raise RecipeError(
            f"latent_cutmix.rows must be random, {', '.join(W_PLUS_ROWS)} or [start, end), got {rows!r}"
        )
    if (
        isinstance(rows, Sequence)
        and len(rows) == 2
        and all(isinstance(r, int) and not isinstance(r, bool) for r in rows)
        and 0 <= rows[0] < rows[1]
    ):
        return int(rows[0]), int(rows[1])
    raise RecipeError(f"latent_cutmix.rows must be a name or [start, end) with 0 <= start < end, got {rows!r}")


def build_cutmix(
    alpha: float = 1.0, prob: float = 1.0, label_smoothing: float = 0.0, num_classes: int = 7
) -> CutMix:
    _check_common("cutmix", prob, label_smoothing, alpha=alpha)
    return CutMix(num_classes, alpha=alpha, prob=prob, label_smoothing=label_smoothing)


def build_mixup(
    alpha: float = 0.8, prob: float = 1.0, label_smoothing: float = 0.0, num_classes: int = 7
) -> MixUp:
    _check_common("mixup", prob, label_smoothing, alpha=alpha)
    return MixUp(num_classes, alpha=alpha, prob=prob, label_smoothing=label_smoothing)


def build_cutmix_or_mixup(
    cutmix_alpha: float = 1.0,
    mixup_alpha: float = 0.8,
    switch_prob: float = 0.5,
    prob: float = 1.0,
    label_smoothing: float = 0.0,
    num_classes: int = 7,
) -> CutMixOrMixUp:
    _check_common("cutmix_or_mixup", prob, label_smoothing, cutmix_alpha=cutmix_alpha, mixup_alpha=mixup_alpha)
    if not 0.0 <= switch_prob <= 1.0:
        raise RecipeError(f"cutmix_or_mixup.switch_prob must be in [0, 1], got {switch_prob}")
    return CutMixOrMixUp(
        num_classes,
        cutmix_alpha=cutmix_alpha,
        mixup_alpha=mixup_alpha,
        switch_prob=switch_prob,
        prob=prob,
        label_smoothing=label_smoothing,
    )


def build_latent_cutmix(
    rows: str | list[int] = "random",
    alpha: float = 1.0,
    prob: float = 1.0,
    label_smoothing: float = 0.0,
    num_classes: int = 7,
) -> LatentCutMix:
    _check_common("latent_cutmix", prob, label_smoothing, alpha=alpha)
    return LatentCutMix(num_classes, rows=_parse_rows(rows), alpha=alpha, prob=prob, label_smoothing=label_smoothing)


def build_latent_mixup(
    alpha: float = 0.8, prob: float = 1.0, label_smoothing: float = 0.0, num_classes: int = 7
) -> MixUp:
    _check_common("latent_mixup", prob, label_smoothing, alpha=alpha)
    return MixUp(num_classes, alpha=alpha, prob=prob, label_smoothing=label_smoothing, spaces=("latent",))
