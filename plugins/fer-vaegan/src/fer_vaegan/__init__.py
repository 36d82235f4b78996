"""fer-vaegan: the VAE-GAN encoder for fer-core (hook implementations only; no torch import here)."""

from fer_core import hookimpl


@hookimpl
def register_encoders(register):
    register(
        "vaegan",
        "fer_vaegan.vaegan:build_vaegan",
        summary="VAE-GAN: conv VAE trained against a PatchGAN (task: pretrain) -> z mean [1, 256]",
        aliases=("vae_gan",),
    )
