"""fer-hybridvit: hook implementations only (importing this must stay cheap: no torch)."""

from fer_core import hookimpl


@hookimpl
def register_backbones(register):
    register(
        "hybrid_vit",
        "fer_hybridvit.hybrid_vit:build_hybrid_vit",
        summary="ImageNet-pretrained timm ViT over latent tokens (resampled pos embed; full/adapter/probe/partial)",
        aliases=("hybridvit",),
    )
