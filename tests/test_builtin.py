"""The built-in components, built through the registry the way the core builds them."""

from __future__ import annotations

import inspect
import pickle

import pytest

from fer_core.errors import RecipeError
from fer_core.plugins import PluginHost
from fer_core.registry import Registry

pytestmark = pytest.mark.usefixtures("one_thread")

torch = pytest.importorskip("torch")
F = torch.nn.functional

BACKBONE_CONTEXT = {"latent_shape": None, "image_size": 32, "in_chans": 3}


@pytest.fixture(scope="module")
def registry() -> Registry:
    return PluginHost(env={"FER_PLUGINS": "builtin", "FER_STRICT_PLUGINS": "1"}).registry  # no third-party plugins


def build(registry, kind, spec, context):
    return registry.build(kind, spec, kind, context)


def test_every_builtin_parameter_is_annotated_with_a_default(registry):
    for component in registry.components():
        params = component.parameters()
        assert params is not None, f"{component.kind} {component.name} takes **kwargs"
        for name, param in params.items():
            assert param.annotation is not inspect.Parameter.empty, f"{component.name}.{name}"
            assert param.default is not inspect.Parameter.empty, f"{component.name}.{name}"


# -- encoder ---------------------------------------------------------------------
def test_identity_encoder_passes_images_through(registry):
    encoder = build(registry, "encoder", {"name": "identity"}, {"image_size": 48, "in_chans": 3})
    images = torch.rand(2, 3, 48, 48)
    assert encoder(images) is images
    assert (encoder.input_size, encoder.latent_shape, encoder.trainable, encoder.cacheable) == (48, None, False, False)


def test_patches_encoder_turns_images_into_tokens(registry):
    encoder = build(registry, "encoder", {"name": "patches", "patch_size": 8}, {"image_size": 48, "in_chans": 3})
    assert (encoder.input_size, encoder.latent_shape, encoder.trainable, encoder.cacheable) == (48, (36, 192), False, True)
    images = torch.rand(2, 3, 48, 48)
    tokens = encoder(images)
    assert tokens.shape == (2, 36, 192)
    assert torch.equal(tokens[0, 0].view(3, 8, 8), images[0, :, :8, :8])  # the top-left patch, channel-major
    assert encoder(torch.rand(2, 3, 64, 64)).shape == (2, 36, 192)  # other sizes are resized first
    with pytest.raises(RecipeError, match="model.encoder.patch_size: 7 must divide data.image_size 48"):
        build(registry, "encoder", {"name": "patches", "patch_size": 7}, {"image_size": 48, "in_chans": 3})


@pytest.mark.parametrize("in_chans", [3, 1])
def test_timm_tokens_encoder_gives_one_token_per_feature_position(registry, in_chans):
    spec = {"name": "timm_tokens", "model": "resnet10t", "stage": 2}
    encoder = build(registry, "encoder", spec, {"image_size": 48, "in_chans": in_chans}).eval()
    assert (encoder.input_size, encoder.latent_shape, encoder.trainable) == (48, (36, 128), True)
    images = torch.rand(2, in_chans, 48, 48)
    with torch.no_grad():
        tokens = encoder(images)
        feature_map = encoder.net(encoder.normalize(images))[-1]  # [2, 128, 6, 6]
    assert tokens.shape == (2, 36, 128)
    assert torch.equal(tokens[1, 6 + 2], feature_map[1, :, 1, 2])  # row-major positions
    deeper = build(registry, "encoder", {**spec, "stage": 3}, {"image_size": 48, "in_chans": 3})
    assert deeper.latent_shape == (9, 256)


def test_timm_tokens_encoder_errors_name_the_key(registry):
    context = {"image_size": 48, "in_chans": 3}
    with pytest.raises(RecipeError, match=r"^model.encoder.model: timm has no model 'resnet1000'"):
        build(registry, "encoder", {"name": "timm_tokens", "model": "resnet1000"}, context)
    with pytest.raises(RecipeError, match=r"^model.encoder.stage: resnet10t has no feature stage 9"):
        build(registry, "encoder", {"name": "timm_tokens", "stage": 9}, context)


def test_timm_tokens_latents_are_cached_only_with_fixed_weights(registry):
    from fer_core.data.latents import uncacheable_reason

    encoder = build(registry, "encoder", {"name": "timm_tokens"}, {"image_size": 32, "in_chans": 3})
    assert "random weights" in uncacheable_reason({"name": "timm_tokens"}, encoder, registry)
    assert uncacheable_reason({"name": "timm_tokens", "pretrained": True}, encoder, registry) is None
    assert uncacheable_reason({"name": "timm_tokens", "checkpoint": "cnn.safetensors"}, encoder, registry) is None


# -- backbone --------------------------------------------------------------------
@pytest.mark.parametrize("model, in_chans, features", [
    ("resnet10t", 3, 512),
    ("resnet10t", 1, 512),
    ("vit_tiny_patch16_224", 3, 192),  # built at 32 pixels from the context's image_size
    ("mobilenetv3_small_050", 3, 1024),  # pooled 288 channels, widened by its conv head
])
def test_timm_backbone_gives_pooled_features(registry, model, in_chans, features):
    context = {**BACKBONE_CONTEXT, "in_chans": in_chans}
    backbone = build(registry, "backbone", {"name": "timm", "model": model}, context).eval()
    assert backbone.input_kind == "image" and backbone.num_features == features
    with torch.no_grad():
        out = backbone(torch.rand(2, in_chans, 32, 32))
    assert out.shape == (2, features)


def test_timm_backbone_normalises_with_the_models_statistics(registry):
    spec = {"name": "timm", "model": "resnet10t"}
    torch.manual_seed(0)
    normalised = build(registry, "backbone", spec, BACKBONE_CONTEXT).eval()
    torch.manual_seed(0)
    raw = build(registry, "backbone", {**spec, "normalize": False}, BACKBONE_CONTEXT).eval()
    images = torch.rand(2, 3, 32, 32)
    mean, std = normalised.normalize.mean, normalised.normalize.std
    with torch.no_grad():
        assert torch.allclose(normalised(images), raw((images - mean) / std), atol=1e-5)
    assert mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])


def test_timm_backbone_rejects_an_unknown_model(registry):
    with pytest.raises(RecipeError, match=r"^model.backbone.model: timm has no model 'resnet1000'; similar: resnet"):
        build(registry, "backbone", {"name": "timm", "model": "resnet1000"}, BACKBONE_CONTEXT)


# -- heads -----------------------------------------------------------------------
@pytest.mark.parametrize("spec", [{"name": "linear"}, {"name": "linear", "dropout": 0.5},
                                  {"name": "mlp"}, {"name": "mlp", "hidden": 16, "dropout": 0.0}])
def test_heads_map_features_to_logits(registry, spec):
    head = build(registry, "head", spec, {"num_features": 24, "num_classes": 7})
    assert head.num_classes == 7
    assert head(torch.randn(5, 24)).shape == (5, 7)


def test_mlp_head_has_the_hidden_width(registry):
    head = build(registry, "head", {"name": "mlp", "hidden": 16}, {"num_features": 24, "num_classes": 7})
    assert [tuple(p.shape) for p in head.parameters()] == [(16, 24), (16,), (7, 16), (7,)]


# -- cross-entropy ---------------------------------------------------------------
COUNTS = [10, 30, 60]


def cross_entropy(registry, **params):
    return build(registry, "loss", {"name": "cross_entropy", **params}, {"num_classes": 3, "class_counts": COUNTS})


@pytest.fixture
def batch():
    torch.manual_seed(0)
    return torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])


def test_cross_entropy_plain_and_with_label_smoothing(registry, batch):
    logits, targets = batch
    assert torch.allclose(cross_entropy(registry)(logits, targets), F.cross_entropy(logits, targets))
    smoothed = cross_entropy(registry, label_smoothing=0.1)(logits, targets)
    assert torch.allclose(smoothed, F.cross_entropy(logits, targets, label_smoothing=0.1))
    assert build(registry, "loss", {"name": "ce"}, {"num_classes": 3}).label_smoothing == 0.0  # the alias


def test_cross_entropy_auto_class_weights_are_inverse_frequency(registry, batch):
    logits, targets = batch
    loss = cross_entropy(registry, class_weights="auto")
    expected = torch.tensor([100 / (3 * 10), 100 / (3 * 30), 100 / (3 * 60)])
    assert torch.allclose(loss.weight, expected)
    assert torch.allclose(loss(logits, targets), F.cross_entropy(logits, targets, weight=expected))
    listed = cross_entropy(registry, class_weights=[1, 2, 0.5])
    assert listed.weight.tolist() == [1.0, 2.0, 0.5]


def test_cross_entropy_takes_soft_targets(registry, batch):
    logits, targets = batch
    loss = cross_entropy(registry)
    one_hot = F.one_hot(targets, 3).float()
    assert torch.allclose(loss(logits, one_hot), loss(logits, targets))
    soft = torch.softmax(torch.randn(6, 3), dim=-1)
    expected = -(soft * torch.log_softmax(logits, dim=-1)).sum(-1).mean()
    assert torch.allclose(loss(logits, soft), expected)
    assert torch.allclose(loss(logits.half(), soft.half()), expected, atol=1e-2)  # computed in float32


@pytest.mark.parametrize("params, context, message", [
    ({"class_weights": "auto"}, {"num_classes": 3}, "class weights 'auto' need the training split's class counts"),
    ({"class_weights": [1.0, 2.0]}, {"num_classes": 3}, "class weights must be 'auto' or a list of 3 numbers"),
    ({"class_weights": "balanced"}, {"num_classes": 3}, "class weights must be 'auto' or a list of 3 numbers"),
])
def test_cross_entropy_rejects_bad_class_weights(registry, params, context, message):
    with pytest.raises(RecipeError, match=message):
        build(registry, "loss", {"name": "cross_entropy", **params}, context)


# -- sample augments -------------------------------------------------------------
SMALL = {"resize": {"size": 32}, "random_resized_crop": {"size": 32}}


def augment_names() -> list[str]:
    return PluginHost(env={"FER_PLUGINS": "builtin"}).registry.names("augment")


@pytest.mark.parametrize("name", augment_names())
def test_sample_augment_keeps_an_image_an_image(registry, name):
    augment = build(registry, "augment", {"name": name, **SMALL.get(name, {})}, {"num_classes": 7})
    assert augment.stage == "sample" and augment.spaces == ("image",)
    torch.manual_seed(0)
    image = torch.rand(3, 48, 48)
    for module in (augment, pickle.loads(pickle.dumps(augment))):  # DataLoader workers get a pickled copy
        out = module(image)
        size = SMALL.get(name, {}).get("size", 48)
        assert out.shape == (3, size, size) and out.dtype == torch.float32
        assert 0.0 <= out.min() and out.max() <= 1.0


@pytest.mark.parametrize("spec, check", [
    ({"name": "hflip", "p": 1.0}, lambda image, out: torch.equal(out, image.flip(-1))),
    ({"name": "grayscale", "p": 1.0}, lambda image, out: torch.allclose(out[0], out[1]) and torch.allclose(out[1], out[2])),
    ({"name": "random_erasing", "p": 1.0}, lambda image, out: not torch.equal(out, image)),
    ({"name": "color_jitter", "brightness": 0.0, "contrast": 0.0, "saturation": 0.0}, torch.equal),
])
def test_sample_augments_do_what_they_say(registry, spec, check):
    augment = build(registry, "augment", spec, {"num_classes": 7})
    image = torch.rand(3, 48, 48)
    assert check(image, augment(image))
