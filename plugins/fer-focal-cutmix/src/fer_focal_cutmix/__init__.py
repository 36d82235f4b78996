"""fer-focal-cutmix: hook implementations only (importing this must stay cheap: no torch)."""

from fer_core import hookimpl


@hookimpl
def register_losses(register):
    register("focal", "fer_focal_cutmix.focal:build_focal", summary="softmax focal loss (gamma, class alpha, soft targets)")


@hookimpl
def register_augments(register):
    mix = "fer_focal_cutmix.mix"
    register("cutmix", f"{mix}:build_cutmix", summary="CutMix: paste a box from another image, labels by pasted area")
    register("mixup", f"{mix}:build_mixup", summary="MixUp: blend two inputs (images or latents) and their labels")
    register("cutmix_or_mixup", f"{mix}:build_cutmix_or_mixup", summary="CutMix or MixUp per batch (switch_prob)")
    register("latent_cutmix", f"{mix}:build_latent_cutmix", summary="CutMix on latent token rows (coarse/middle/fine/random)")
    register("latent_mixup", f"{mix}:build_latent_mixup", summary="MixUp on latent tokens")
