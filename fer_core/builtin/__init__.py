"""fer-core's own plugin: the built-in components, registered through the same hooks."""

from fer_core.hookspecs import hookimpl

_AUGMENTS = {
    "resize": "resize the image to `size` pixels",
    "random_resized_crop": "random crop of `scale` of the area, resized to `size`",
    "hflip": "horizontal flip with probability `p`",
    "rotation": "random rotation within +-`degrees`",
    "color_jitter": "brightness/contrast/saturation/hue jitter",
    "random_erasing": "erase a random rectangle with probability `p`",
    "randaugment": "RandAugment (`num_ops`, `magnitude`)",
    "autoaugment": "AutoAugment with an ImageNet/CIFAR/SVHN `policy`",
    "grayscale": "convert to grey with probability `p`, keeping the channel count",
}


@hookimpl
def register_encoders(register):
    register("identity", "fer_core.builtin.encoders:build_identity",
             summary="passes images through to an image backbone")
    register("patches", "fer_core.builtin.encoders:build_patches",
             summary="image patches as latent tokens (parameter-free, no download)")
    register("timm_tokens", "fer_core.builtin.timm_tokens:build_timm_tokens",
             summary="a timm CNN's feature map as latent tokens (trainable; pretrained via timm)")


@hookimpl
def register_backbones(register):
    register("timm", "fer_core.builtin.timm_backbone:build_timm",
             summary="any timm image model (resnet18, vit_tiny_patch16_224, convnext...)")


@hookimpl
def register_heads(register):
    register("linear", "fer_core.builtin.heads:build_linear", summary="dropout + linear layer")
    register("mlp", "fer_core.builtin.heads:build_mlp", summary="two-layer MLP with GELU and dropout")
    register("va", "fer_core.builtin.heads:build_va", summary="valence and arousal [B, 2], tanh-bounded (task: affect)")
    register("multitask", "fer_core.builtin.heads:build_multitask",
             summary="expression logits and valence/arousal on shared features (task: expression+affect)")


@hookimpl
def register_losses(register):
    register("cross_entropy", "fer_core.builtin.losses:build_cross_entropy", aliases=("ce",),
             summary="cross-entropy with label smoothing, class weights and soft targets")
    register("ccc", "fer_core.builtin.affect_losses:build_ccc",
             summary="1 - concordance correlation of valence and arousal (affect tasks)")
    register("mse", "fer_core.builtin.affect_losses:build_mse", summary="mean squared error of valence and arousal")
    register("ccc_mse", "fer_core.builtin.affect_losses:build_ccc_mse",
             summary="(1 - CCC) + mse_weight * MSE of valence and arousal")


@hookimpl
def register_augments(register):
    for name, summary in _AUGMENTS.items():
        register(name, f"fer_core.builtin.augments:{name}", summary=summary)
