"""fer-latentvit: hook implementations only (importing this must stay cheap: no torch)."""

from fer_core import hookimpl


@hookimpl
def register_backbones(register):
    register(
        "latent_vit",
        "fer_latentvit.latent_vit:build_latent_vit",
        summary="Vision Transformer over latent tokens (one token per w+ row) -> CLS features",
        aliases=("latentvit",),
    )
