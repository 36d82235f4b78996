"""LatentViT: a Vision Transformer over StyleGAN latent tokens.

An image inverted into StyleGAN's extended latent space W+ is a stack of 18 style
vectors (one per generator layer, 512 wide): coarse rows (0-3) carry pose and face
shape, middle rows (4-7) facial features and expression, fine rows (8-17) colour
and texture. LatentViT treats every row as a token, so attention can weigh the
layers against each other; the CLS token's output is the feature vector.

Papers:
    An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale
        (ViT) - https://arxiv.org/abs/2010.11929
    Encoding in Style: a StyleGAN Encoder for Image-to-Image Translation
        (pSp, the w+ encoder) - https://arxiv.org/abs/2008.00951
    Designing an Encoder for StyleGAN Image Manipulation
        (e4e) - https://arxiv.org/abs/2102.02766
    BEiT: BERT Pre-Training of Image Transformers
        (layer-wise learning-rate decay) - https://arxiv.org/abs/2106.08254

The model works on any latent shape [T, D] (w+ [18, 512], a VAE-GAN z [1, 256],
...): the core passes the encoder's ``latent_shape`` to the factory.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from timm.layers import calculate_drop_path_rates, trunc_normal_
from timm.models import group_parameters, named_apply
from timm.models.vision_transformer import Block, init_weights_vit_timm

from fer_core.errors import FerError
from fer_core.optim import OwnLr, timm_param_groups

__all__ = ["LatentTokenizer", "LatentTransformer", "LatentViT", "build_latent_vit", "check_latent_args"]

POOLS = ("cls", "mean")


class LatentTokenizer(nn.Module):
    """Latents [B, T, D] -> tokens [B, P + T, E]: a LayerNorm and a linear projection of
    every row, an optional learned CLS token in front (P = 1), and a learned position embedding.

    The input norm matters: latents are not centred (w+ rows sit around StyleGAN's mean
    latent, pixel patches around grey), and without it the shared offset swamps what
    differs between samples, so training stalls at chance.

    Reused by fer-hybridvit (``from fer_latentvit.latent_vit import LatentTokenizer``).
    """

    def __init__(self, num_tokens: int, latent_dim: int, embed_dim: int, class_token: bool = True):
        super().__init__()
        self.num_tokens = num_tokens
        self.latent_dim = latent_dim
        self.num_prefix_tokens = 1 if class_token else 0
        self.input_norm = nn.LayerNorm(latent_dim, eps=1e-6)
        self.proj = nn.Linear(latent_dim, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix_tokens + num_tokens, embed_dim))
        self.init_weights()

    def init_weights(self) -> None:
        trunc_normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)
        trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            trunc_normal_(self.cls_token, std=0.02)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.ndim != 3 or tuple(latents.shape[1:]) != (self.num_tokens, self.latent_dim):
            raise FerError(
                f"latent tokenizer was built for latents [B, {self.num_tokens}, {self.latent_dim}] but got "
                f"{list(latents.shape)}; rebuild the model for this encoder's latent_shape"
            )
        x = self.proj(self.input_norm(latents.to(self.proj.weight.dtype)))  # cached latents are float16
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.pos_embed

    def pool(self, tokens: torch.Tensor, how: str) -> torch.Tensor:
        """Transformer outputs [B, P + T, E] -> features [B, E]: the first (CLS) token, or the latent tokens' mean."""
        if how == "cls":
            return tokens[:, 0]
        return tokens[:, self.num_prefix_tokens:].mean(dim=1)


class LatentTransformer(nn.Module):
    """What LatentViT and HybridViT share: a LatentTokenizer, timm ViT blocks, final norms, pooling,
    and timm's optimiser conventions (``no_weight_decay``, ``group_matcher``, ``param_groups``).

    Reused by fer-hybridvit (``from fer_latentvit.latent_vit import LatentTransformer``).
    """

    input_kind = "latent"

    def __init__(self, tokenizer: LatentTokenizer, blocks: nn.Sequential, norm: nn.Module, pool: str = "cls",
                 pos_drop: nn.Module | None = None, norm_pre: nn.Module | None = None,
                 fc_norm: nn.Module | None = None):
        super().__init__()
        self.latent_shape = (tokenizer.num_tokens, tokenizer.latent_dim)
        self.pool = pool
        self.num_features = self.embed_dim = tokenizer.proj.out_features
        self.tokenizer = tokenizer
        self.pos_drop = pos_drop if pos_drop is not None else nn.Identity()
        self.norm_pre = norm_pre if norm_pre is not None else nn.Identity()
        self.blocks = blocks
        self.norm = norm
        self.fc_norm = fc_norm if fc_norm is not None else nn.Identity()

    # --- optimiser support (timm conventions) ---

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"tokenizer.pos_embed", "tokenizer.cls_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Layer ids for layer-wise lr decay: tokenizer (and norm_pre) 0, blocks 1..depth, final norms depth + 1.

        Unlike timm's ViT (whose final norm shares the last block's id), the norm is a layer of its own.
        """
        return dict(stem=r"^tokenizer|^norm_pre", blocks=r"^blocks\.(\d+)", norm=r"^norm\.|^fc_norm\.")

    def own_lr(self, layer_decay: float | None) -> OwnLr | None:
        """Parameters whose lr the model sets itself (see ``fer_core.optim.timm_param_groups``); none here."""
        return None

    group_order: tuple[str, ...] = ()

    def param_groups(self, lr: float, weight_decay: float, layer_decay: float | None = None) -> list[dict]:
        """Optimizer param groups (fer-core's contract, built with timm's helpers): no weight decay on norms,
        biases, pos_embed and cls_token; with ``layer_decay`` the parameters of layer id i get
        ``lr * layer_decay ** (depth + 1 - i)``."""
        return timm_param_groups(self, lr, weight_decay, layer_decay, own_lr=self.own_lr(layer_decay),
                                 order=self.group_order)

    # --- forward ---

    def forward_features(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, T, D] -> normed tokens [B, P + T, E] (as timm's ViT after its patch embedding)."""
        x = self.pos_drop(self.tokenizer(latents))
        x = self.norm_pre(x)
        x = self.blocks(x)
        return self.norm(x)

    def forward_head(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc_norm(self.tokenizer.pool(tokens, self.pool))

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(latents))


class LatentViT(LatentTransformer):
    """Pre-norm transformer over latent tokens; features are the CLS output (or the token mean)."""

    def __init__(
        self,
        latent_shape: tuple[int, int],
        embed_dim: int = 512,
        depth: int = 6,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        pool: str = "cls",
    ):
        num_tokens, latent_dim = latent_shape
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        tokenizer = LatentTokenizer(int(num_tokens), int(latent_dim), embed_dim, class_token=pool == "cls")
        dpr = calculate_drop_path_rates(drop_path_rate, depth)  # stochastic depth grows linearly with depth
        blocks = nn.Sequential(*[
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=True,
                proj_drop=drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=dpr[i],
                norm_layer=norm_layer,
            )
            for i in range(depth)
        ])
        super().__init__(tokenizer, blocks, norm_layer(embed_dim), pool, pos_drop=nn.Dropout(drop_rate))
        self.init_weights()

    def init_weights(self) -> None:
        # timm ViT init: trunc_normal_(std=.02) linears, zero biases, unit norms; the tokenizer inits itself
        named_apply(init_weights_vit_timm, self)


def param_layer_ids(model: LatentViT) -> dict[str, int]:
    """Parameter name -> layer id (as used by timm's layer decay)."""
    return group_parameters(model, model.group_matcher(coarse=False), reverse=True)


def check_latent_args(name: str, latent_shape: tuple[int, int] | None, pool: str) -> None:
    """The factory checks every latent transformer shares (latent_vit, hybrid_vit)."""
    if latent_shape is None:
        raise FerError(f"{name} needs a latent encoder (one with a latent_shape); model.encoder is 'identity' "
                       f"or passes images through")
    if pool not in POOLS:
        raise FerError(f"{name} pool must be one of {', '.join(POOLS)}; got {pool!r}")


def build_latent_vit(
    latent_shape: tuple[int, int] | None = None,
    embed_dim: int = 512,
    depth: int = 6,
    heads: int = 8,
    mlp_ratio: float = 4.0,
    dropout: float = 0.0,
    attn_dropout: float = 0.0,
    drop_path_rate: float = 0.0,
    pool: str = "cls",
) -> LatentViT:
    """Build a LatentViT for the encoder's latent shape (T, D), which the core passes in."""
    check_latent_args("latent_vit", latent_shape, pool)
    if embed_dim % heads:
        raise FerError(f"latent_vit embed_dim ({embed_dim}) must be divisible by heads ({heads})")
    if depth < 1:
        raise FerError(f"latent_vit depth must be at least 1; got {depth}")
    return LatentViT(
        tuple(latent_shape),
        embed_dim=embed_dim,
        depth=depth,
        num_heads=heads,
        mlp_ratio=mlp_ratio,
        drop_rate=dropout,
        attn_drop_rate=attn_dropout,
        drop_path_rate=drop_path_rate,
        pool=pool,
    )
