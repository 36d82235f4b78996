"""HybridViT: an ImageNet-pretrained ViT transformer fine-tuned on StyleGAN latent tokens.

A StyleGAN-inversion encoder (pSp, e4e) turns a face into its w+ code, 18 style
vectors of 512 numbers ordered coarse (pose, shape) to fine (colour, texture).
HybridViT feeds those 18 rows to the transformer of a ViT pretrained on ImageNet:
the patch embedding is dropped, a new linear projection maps each latent row to the
ViT's width, the pretrained position embedding is resampled from the patch grid
(14 x 14 = 196 positions for a 224 px / 16 px ViT) to the 18 latent positions, the
pretrained CLS token is kept, and the whole is fine-tuned (``full``), tuned through
small bottleneck adapters (``adapter``) or low-rank updates of the blocks' linear
layers (``lora``, PEFT through ``fer_core.lora``), probed (``linear_probe``) or
partially frozen (``partial``).

    w+ [B,18,512] ─Linear 512->E─> +CLS, +resampled pos ─pretrained ViT blocks─> norm ─CLS─> [B,E]

Papers:
    An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale
        (ViT) - https://arxiv.org/abs/2010.11929
    How to train your ViT? Data, Augmentation, and Regularization in Vision Transformers
        (the AugReg ImageNet weights timm ships) - https://arxiv.org/abs/2106.10270
    Parameter-Efficient Transfer Learning for NLP
        (Houlsby bottleneck adapters) - https://arxiv.org/abs/1902.00751
    AdaptFormer: Adapting Vision Transformers for Scalable Visual Recognition
        (adapters in ViT blocks, zero-initialised up-projection) - https://arxiv.org/abs/2205.13535
    LoRA: Low-Rank Adaptation of Large Language Models
        (the ``lora`` strategy) - https://arxiv.org/abs/2106.09685
    BEiT: BERT Pre-Training of Image Transformers
        (layer-wise learning-rate decay) - https://arxiv.org/abs/2106.08254
    Encoding in Style: a StyleGAN Encoder for Image-to-Image Translation
        (pSp, the w+ encoder) - https://arxiv.org/abs/2008.00951

Position embedding for a 1-D sequence: the latent rows are an ordered 1-D sequence
(generator layers, coarse to fine), so the 14 x 14 grid is resampled to a 1 x T grid
with timm's ``resample_abs_pos_embed`` (antialiased bicubic): each latent token gets
a row-averaged column embedding, and neighbouring rows get similar, smoothly changing
codes. An (h, w) grid with h * w = T would invent 2-D neighbours (rows i and i + w)
and put wrap-around jumps between neighbouring rows; flattening the grid and
interpolating in 1-D would mix the embeddings of opposite image edges at every
raster-line break. The prefix (CLS) position embedding is copied unchanged.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from timm import create_model, is_model, list_models
from timm.layers import Mlp, resample_abs_pos_embed
from timm.models import load_checkpoint
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from fer_core.errors import CheckpointError, FerError
from fer_core.lora import add_lora, lora_settings
from fer_core.registry import suggest
from fer_latentvit.latent_vit import LatentTokenizer, LatentTransformer, check_latent_args

__all__ = [
    "Adapter", "MlpWithAdapter", "HybridViT", "latent_pos_embed", "create_vit", "build_hybrid_vit",
]

STRATEGIES = ("full", "adapter", "linear_probe", "partial", "lora")
PARTS = ("blocks", "pos", "proj")  # parameter roles with their own lr multiplier
LORA_WHERE = "model.backbone.lora"  # where a recipe sets the lora strategy's settings, for error messages
MODEL_SIZES = {
    "tiny": "vit_tiny_patch16_224",
    "small": "vit_small_patch16_224",
    "base": "vit_base_patch16_224",
}


class Adapter(Mlp):
    """Bottleneck adapter Linear(d -> r) -> GELU -> Linear(r -> d).

    The up-projection (fc2) starts at zero, so the adapter outputs 0 and the
    pretrained block computes exactly what it computed before.
    """

    def __init__(self, dim: int, bottleneck: int):
        super().__init__(dim, hidden_features=bottleneck, out_features=dim, act_layer=nn.GELU)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)


class MlpWithAdapter(nn.Module):
    """A block's MLP followed by a residual adapter: ``h = mlp(x); h + adapter(h)``.

    Houlsby placement (sequential, after the MLP, inside the block's residual branch,
    so LayerScale and stochastic depth act on it as on the MLP). Installed as the
    block's ``mlp``, so timm's ``Block.forward`` is used unchanged.
    """

    def __init__(self, base: nn.Module, dim: int, bottleneck: int):
        super().__init__()
        self.base = base
        self.adapter = Adapter(dim, bottleneck)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base(x)
        return h + self.adapter(h)


def _eval_frozen(module: nn.Module) -> None:
    """Put every sub-module whose parameters are all frozen into eval mode (no dropout, no drop path)."""
    for child in module.children():
        params = list(child.parameters())
        if not params:
            continue
        if not any(p.requires_grad for p in params):
            child.eval()
        else:
            _eval_frozen(child)


class HybridViT(LatentTransformer):
    """A timm VisionTransformer's CLS token, position embedding and blocks over latent tokens.

    Built from an (optionally pretrained) ``VisionTransformer``: its blocks, norms and
    CLS token are taken over, its position embedding is resampled to the latent
    sequence, its patch embedding and classifier are dropped.
    """

    group_order = PARTS  # the transformer's groups first: fer-core logs group 0's lr

    def __init__(
        self,
        vit: VisionTransformer,
        latent_shape: tuple[int, int],
        strategy: str = "full",
        adapter_dim: int = 64,
        freeze_blocks: int = 0,
        lr_mult_proj: float = 10.0,
        lr_mult_pos: float = 5.0,
        lr_mult_blocks: float = 1.0,
        pool: str = "cls",
        lora: dict | None = None,
    ):
        num_tokens, latent_dim = latent_shape
        has_cls = vit.cls_token is not None
        tokenizer = LatentTokenizer(int(num_tokens), int(latent_dim), vit.embed_dim, class_token=has_cls)
        with torch.no_grad():
            tokenizer.pos_embed.copy_(latent_pos_embed(vit, int(num_tokens)))
            if has_cls:
                tokenizer.cls_token.copy_(vit.cls_token)
        super().__init__(tokenizer, vit.blocks, vit.norm, pool, pos_drop=vit.pos_drop, norm_pre=vit.norm_pre,
                         fc_norm=vit.fc_norm)
        self.strategy = strategy
        self.freeze_blocks = freeze_blocks
        self.lr_mults = {"proj": lr_mult_proj, "pos": lr_mult_pos, "blocks": lr_mult_blocks}
        if strategy == "adapter":
            for block in self.blocks:
                block.mlp = MlpWithAdapter(block.mlp, vit.embed_dim, adapter_dim)
        if strategy == "lora":  # PEFT layers on the blocks' chosen linear layers (fer_core.lora's defaults)
            add_lora(self.blocks, lora_settings(lora or {}, LORA_WHERE), LORA_WHERE)
        self._freeze()

    def _freeze(self) -> None:
        """requires_grad per strategy; the input projection always trains (it is new)."""
        self.requires_grad_(self.strategy in ("full", "partial"))
        self.tokenizer.input_norm.requires_grad_(True)
        self.tokenizer.proj.requires_grad_(True)
        if self.strategy == "adapter":
            for block in self.blocks:
                block.mlp.adapter.requires_grad_(True)
        if self.strategy == "lora":
            for name, param in self.blocks.named_parameters():
                param.requires_grad_(".lora_" in name)
        if self.strategy == "partial":
            self.norm_pre.requires_grad_(False)
            for block in self.blocks[: self.freeze_blocks]:
                block.requires_grad_(False)

    def train(self, mode: bool = True) -> HybridViT:
        super().train(mode)
        if mode:  # frozen parts keep eval-mode dropout and stochastic depth
            _eval_frozen(self)
        return self

    def trainable_report(self) -> tuple[int, int]:
        """(trainable, total) parameter counts of the backbone."""
        params = list(self.parameters())
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

    # --- optimiser support: per-part multipliers on top of LatentTransformer's timm groups ---

    def _part(self, name: str) -> str:
        if name.startswith(("tokenizer.proj.", "tokenizer.input_norm.")):
            return "proj"
        if name.startswith("tokenizer."):
            return "pos"
        return "blocks"

    def own_lr(self, layer_decay: float | None):
        """Without ``layer_decay``: input projection ``lr * lr_mult_proj``, position embedding and CLS token
        ``lr * lr_mult_pos``, everything in the transformer (blocks, adapters, norms) ``lr * lr_mult_blocks``.
        With it, the pretrained layers follow timm's layer decay instead (pos/CLS are layer 0, the final
        norm depth + 1) and only the new input projection keeps ``lr * lr_mult_proj``."""

        def own(name: str) -> tuple[str, float] | None:
            part = self._part(name)
            return (part, self.lr_mults[part]) if layer_decay is None or part == "proj" else None

        return own


# --- checkpoint conversion: ViT -> latent tokens ---

def latent_pos_embed(vit: VisionTransformer, num_tokens: int) -> torch.Tensor:
    """The ViT's position embedding for a CLS token (if any) and ``num_tokens`` latent tokens.

    The patch grid (e.g. 14 x 14) is resampled to a 1 x T grid with timm's
    ``resample_abs_pos_embed``; the prefix (CLS) embedding is kept as it is. A ViT
    whose CLS token has no position embedding (``no_embed_class``) gets zeros there,
    which is what it computes.
    """
    in_pos = 0 if vit.no_embed_class else vit.num_prefix_tokens
    pos = resample_abs_pos_embed(
        vit.pos_embed.detach(),
        new_size=(1, num_tokens),
        old_size=vit.patch_embed.grid_size,
        num_prefix_tokens=in_pos,
    )
    if vit.no_embed_class and vit.cls_token is not None:
        pos = torch.cat([pos.new_zeros(1, 1, pos.shape[-1]), pos], dim=1)
    return pos


def _without_head(state_dict: dict, model: VisionTransformer) -> dict:
    """timm's ViT checkpoint filter (foreign formats, resized grids), minus the classifier."""
    state_dict = checkpoint_filter_fn(state_dict, model)
    return {k: v for k, v in state_dict.items() if not k.startswith("head.")}


def create_vit(name: str, pretrained: bool = False, pretrained_file: str | None = None,
               drop_path_rate: float = 0.0) -> VisionTransformer:
    """A timm ViT without classifier: random, from timm's hub (online) or from a local weights file."""
    arch = name.split(".")[0]
    if not is_model(name):
        raise FerError(f"hybrid_vit model {name!r} is not a timm model{suggest(arch, list_models('vit_*'))}; "
                       f"see timm.list_models('vit_*')")
    online = pretrained and not pretrained_file
    try:
        vit = create_model(name, pretrained=online, num_classes=0, drop_path_rate=drop_path_rate)
    except Exception as exc:
        if not online:
            raise
        raise FerError(f"hybrid_vit cannot fetch pretrained {name} weights ({type(exc).__name__}: "
                       f"{str(exc).splitlines()[0] if str(exc) else ''}); offline, download them elsewhere "
                       f"and set pretrained_file") from exc
    if not isinstance(vit, VisionTransformer):
        raise FerError(f"hybrid_vit needs a timm VisionTransformer; {name!r} is a {type(vit).__name__}")
    if pretrained_file:
        path = Path(pretrained_file).expanduser()
        if not path.is_file():
            raise CheckpointError(f"hybrid_vit pretrained_file {str(path)!r} not found; download the {arch} "
                                  f"weights (.safetensors/.pth/.bin) there, or use pretrained: true when online")
        try:
            load_checkpoint(vit, str(path), strict=True, filter_fn=_without_head)
        except Exception as exc:
            detail = " ".join(str(exc).split())[:300]
            raise CheckpointError(f"hybrid_vit pretrained_file {str(path)!r} does not load into {name}: "
                                  f"{type(exc).__name__}: {detail}; set model to the ViT it was saved from") from exc
    return vit


def build_hybrid_vit(
    latent_shape: tuple[int, int] | None = None,
    model_size: Literal["tiny", "small", "base"] = "tiny",
    model: str | None = None,
    pretrained: bool = False,
    pretrained_file: str | None = None,
    strategy: Literal["full", "adapter", "linear_probe", "partial", "lora"] = "full",
    adapter_dim: int = 64,
    freeze_blocks: int = 0,
    drop_path_rate: float = 0.0,
    lr_mult_proj: float = 10.0,
    lr_mult_pos: float = 5.0,
    lr_mult_blocks: float = 1.0,
    pool: Literal["cls", "mean"] = "cls",
    lora: dict | None = None,
) -> HybridViT:
    """Build a HybridViT for the encoder's latent shape (T, D), which the core passes in.

    ``model`` (any timm ViT name, tags allowed) overrides ``model_size``
    (vit_{tiny,small,base}_patch16_224). ``pretrained_file`` loads a local weights file
    (and implies pretrained); ``pretrained: true`` alone downloads through timm.
    ``lora`` ({rank, alpha, dropout, target_modules}, see ``fer_core.lora``) sets the
    ``lora`` strategy's low-rank updates; unset, fer_core.lora's defaults apply.
    """
    check_latent_args("hybrid_vit", latent_shape, pool)
    if strategy not in STRATEGIES:
        raise FerError(f"hybrid_vit strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    if model is None and model_size not in MODEL_SIZES:
        raise FerError(f"hybrid_vit model_size must be one of {', '.join(MODEL_SIZES)} "
                       f"(or set model to a timm ViT name); got {model_size!r}")
    if adapter_dim < 1:
        raise FerError(f"hybrid_vit adapter_dim must be at least 1; got {adapter_dim}")
    if freeze_blocks and strategy != "partial":
        raise FerError(f"hybrid_vit freeze_blocks applies to strategy 'partial' only; got strategy {strategy!r}")
    if lora is not None and strategy != "lora":
        raise FerError(f"hybrid_vit lora applies to strategy 'lora' only; got strategy {strategy!r}")
    lora_settings(lora or {}, LORA_WHERE)  # bad settings fail before the ViT is built
    if min(lr_mult_proj, lr_mult_pos, lr_mult_blocks) < 0:
        raise FerError("hybrid_vit lr_mult_proj, lr_mult_pos and lr_mult_blocks must not be negative")

    name = model or MODEL_SIZES[model_size]
    if strategy != "full" and not (pretrained or pretrained_file):
        warnings.warn(f"hybrid_vit strategy {strategy!r} freezes a randomly initialised {name}; "
                      f"set pretrained_file (or pretrained: true)", stacklevel=2)
    vit = create_vit(name, pretrained=pretrained, pretrained_file=pretrained_file, drop_path_rate=drop_path_rate)
    depth = len(vit.blocks)
    if strategy == "partial" and not 1 <= freeze_blocks <= depth:
        raise FerError(f"hybrid_vit strategy 'partial' needs freeze_blocks between 1 and {depth} "
                       f"(the depth of {name}); got {freeze_blocks}")
    if vit.pos_embed is None or vit.num_reg_tokens:
        raise FerError(f"hybrid_vit needs a ViT with a learned absolute position embedding and no register "
                       f"tokens; {name} does not fit")
    if pool == "cls" and vit.cls_token is None:
        raise FerError(f"hybrid_vit {name} has no CLS token; set pool: mean")
    return HybridViT(
        vit,
        tuple(latent_shape),
        strategy=strategy,
        adapter_dim=adapter_dim,
        freeze_blocks=freeze_blocks,
        lr_mult_proj=lr_mult_proj,
        lr_mult_pos=lr_mult_pos,
        lr_mult_blocks=lr_mult_blocks,
        pool=pool,
        lora=lora,
    )
