"""fer-e4e: the e4e encoder for fer-core (hook implementations only; no torch import here)."""

from fer_core import hookimpl


@hookimpl
def register_encoders(register):
    register(
        "e4e",
        "fer_e4e.encoder:build_e4e",
        summary="e4e Encoder4Editing (IR-SE-50, pSp modules) -> StyleGAN2 W+ codes [18, 512]",
    )
