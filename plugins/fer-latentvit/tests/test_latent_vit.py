"""Tests for the latent_vit backbone: shapes, learning, state dicts, parameter groups, errors."""

import pytest
import torch
from torch import nn

from fer_core.errors import FerError
from fer_latentvit.latent_vit import LatentTokenizer, LatentViT, build_latent_vit, param_layer_ids

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(embed_dim=32, depth=2, heads=4, mlp_ratio=2.0)


@pytest.mark.parametrize("latent_shape", [(18, 512), (1, 256), (7, 64)])
@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_output_shape_for_any_latent_shape(latent_shape, pool):
    model = build_latent_vit(latent_shape, pool=pool, **TINY)
    assert model.input_kind == "latent"
    assert model.num_features == 32
    features = model(torch.randn(3, *latent_shape))
    assert features.shape == (3, 32)
    assert torch.isfinite(features).all()


def test_default_size_is_the_documented_one():
    model = build_latent_vit((18, 512))
    assert model.num_features == 512
    assert len(model.blocks) == 6
    assert model.tokenizer.pos_embed.shape == (1, 19, 512)


def test_mean_pool_has_no_cls_token_and_averages_tokens():
    model = build_latent_vit((5, 8), pool="mean", **TINY).eval()
    assert model.tokenizer.cls_token is None
    assert model.tokenizer.pos_embed.shape == (1, 5, 32)
    latents = torch.randn(2, 5, 8)
    tokens = model.forward_features(latents)
    torch.testing.assert_close(model(latents), tokens.mean(dim=1))


def test_cls_pool_reads_the_first_token():
    model = build_latent_vit((5, 8), pool="cls", **TINY).eval()
    latents = torch.randn(2, 5, 8)
    torch.testing.assert_close(model(latents), model.forward_features(latents)[:, 0])


def test_tokenizer_is_reusable_on_its_own():
    tokenizer = LatentTokenizer(num_tokens=18, latent_dim=512, embed_dim=64)
    assert tokenizer.num_prefix_tokens == 1
    assert tokenizer(torch.randn(2, 18, 512)).shape == (2, 19, 64)
    assert LatentTokenizer(4, 8, 16, class_token=False)(torch.randn(2, 4, 8)).shape == (2, 4, 16)


def test_wrong_latent_shape_at_runtime_is_a_clear_error():
    model = build_latent_vit((18, 512), **TINY)
    with pytest.raises(FerError, match=r"latents \[B, 18, 512\] but got \[2, 1, 256\]"):
        model(torch.randn(2, 1, 256))


def test_identity_encoder_is_a_clear_error():
    with pytest.raises(FerError, match="latent_vit needs a latent encoder .*model.encoder is 'identity'"):
        build_latent_vit(None)


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(pool="max"), "pool must be one of cls, mean"), (dict(embed_dim=30, heads=4), "divisible by heads")],
)
def test_bad_parameters_are_clear_errors(kwargs, message):
    with pytest.raises(FerError, match=message):
        build_latent_vit((18, 512), **kwargs)


def test_state_dict_round_trip_gives_identical_outputs():
    torch.manual_seed(0)
    model = build_latent_vit((7, 64), **TINY).eval()
    torch.manual_seed(1)
    fresh = build_latent_vit((7, 64), **TINY).eval()
    latents = torch.randn(4, 7, 64)
    assert not torch.equal(model(latents), fresh(latents))
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(model(latents), fresh(latents))


def test_dropout_and_drop_path_are_only_active_in_training():
    model = build_latent_vit((7, 64), dropout=0.3, attn_dropout=0.3, drop_path_rate=0.5, **TINY)
    latents = torch.randn(4, 7, 64)
    model.eval()
    assert torch.equal(model(latents), model(latents))
    model.train()
    assert not torch.equal(model(latents), model(latents))


def _token_task(n, num_classes=7, num_tokens=6, dim=16, seed=0):
    """Latents where the class is written into rows 1 and 2 (a class prototype) under noise."""
    gen = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(num_classes, 2, dim, generator=torch.Generator().manual_seed(123))
    labels = torch.randint(num_classes, (n,), generator=gen)
    latents = torch.randn(n, num_tokens, dim, generator=gen)
    latents[:, 1:3] += 0.75 * prototypes[labels]
    return latents, labels


@pytest.mark.parametrize("offset", [0.0, 10.0])  # without the input LayerNorm, 10.0 stays near chance
def test_learns_a_latent_token_task_well_above_chance(offset):
    """Also with an offset all samples share, as w+ codes around StyleGAN's mean latent have."""
    torch.manual_seed(0)
    shared = offset * torch.rand(1, 1, 16, generator=torch.Generator().manual_seed(7))
    train_x, train_y = _token_task(1024, seed=0)
    test_x, test_y = _token_task(512, seed=1)
    train_x, test_x = train_x + shared, test_x + shared
    backbone = build_latent_vit((6, 16), **TINY)
    model = nn.Sequential(backbone, nn.Linear(backbone.num_features, 7))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(150):
        index = torch.randint(len(train_x), (64,))
        loss = nn.functional.cross_entropy(model(train_x[index]), train_y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(test_x).argmax(1) == test_y).float().mean().item()
    assert accuracy > 0.8, accuracy  # chance is 1/7


# --- parameter groups ---


def _names(model, group):
    by_id = {id(p): n for n, p in model.named_parameters()}
    return [by_id[id(p)] for p in group["params"]]


@pytest.mark.parametrize("layer_decay", [None, 0.5])
def test_param_groups_cover_every_parameter_exactly_once(layer_decay):
    model = build_latent_vit((7, 64), **TINY)
    groups = model.param_groups(lr=1e-3, weight_decay=0.05, layer_decay=layer_decay)
    covered = [id(p) for g in groups for p in g["params"]]
    assert len(covered) == len(set(covered))
    assert set(covered) == {id(p) for p in model.parameters()}
    for group in groups:
        assert set(group) == {"params", "lr", "weight_decay", "name"}
    torch.optim.AdamW(groups)  # a valid optimizer spec


@pytest.mark.parametrize("layer_decay", [None, 0.5])
def test_no_weight_decay_on_norms_biases_pos_and_cls(layer_decay):
    model = build_latent_vit((7, 64), **TINY)
    for group in model.param_groups(lr=1e-3, weight_decay=0.05, layer_decay=layer_decay):
        for name in _names(model, group):
            exempt = (
                name.endswith(".bias")
                or "norm" in name  # norm.*, blocks.*.norm1/2.*, tokenizer.input_norm.*
                or name in ("tokenizer.pos_embed", "tokenizer.cls_token")
            )
            assert group["weight_decay"] == (0.0 if exempt else 0.05), name


def test_layer_decay_scales_lr_by_depth():
    depth, decay, lr = 3, 0.5, 1e-3
    model = build_latent_vit((7, 64), embed_dim=32, depth=depth, heads=4)
    layer_ids = param_layer_ids(model)
    assert layer_ids["tokenizer.proj.weight"] == layer_ids["tokenizer.pos_embed"] == 0
    assert layer_ids["tokenizer.cls_token"] == 0
    assert [layer_ids[f"blocks.{i}.attn.qkv.weight"] for i in range(depth)] == [1, 2, 3]
    assert layer_ids["norm.weight"] == depth + 1
    num_layers = depth + 1
    for group in model.param_groups(lr=lr, weight_decay=0.05, layer_decay=decay):
        for name in _names(model, group):
            expected = lr * decay ** (num_layers - layer_ids[name])
            assert group["lr"] == pytest.approx(expected), name
    # without layer decay every group keeps the base lr
    assert {g["lr"] for g in model.param_groups(lr=lr, weight_decay=0.05)} == {lr}


def test_module_is_a_latent_vit():
    model = build_latent_vit((18, 512), **TINY)
    assert isinstance(model, LatentViT)
    assert model.latent_shape == (18, 512)


def test_float16_cached_latents_are_accepted():
    model = build_latent_vit((18, 512), **TINY).eval()
    latents = torch.randn(2, 18, 512)
    torch.testing.assert_close(model(latents.half()), model(latents.half().float()))
