"""fer-psp: the pSp encoder for fer-core (hook implementations only; no torch import here)."""

from fer_core import hookimpl


@hookimpl
def register_encoders(register):
    register(
        "psp",
        "fer_psp.encoder:build_psp",
        summary="pSp GradualStyleEncoder (IR-SE-50) -> StyleGAN2 W+ codes [18, 512]",
    )
