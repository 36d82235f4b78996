"""Tests for hybrid_vit: pretrained weight transfer, position-embedding resampling, adapters,
strategies, parameter groups, learning, errors."""

import importlib.util

import timm
import pytest
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed
from torch import nn

from fer_core.errors import CheckpointError, FerError
from fer_core.model import FerModel
from fer_hybridvit.hybrid_vit import HybridViT, build_hybrid_vit

LATENT = (18, 512)
SMALL = "test_vit"  # timm's 6-block, 64-wide test ViT (10 x 10 patch grid): fast to build and run

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:hybrid_vit strategy:UserWarning")]


def _random_vit(name: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False).eval()


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory):
    """A randomly initialised vit_tiny_patch16_224 (with its 1000-class head) saved in three formats."""
    vit = _random_vit("vit_tiny_patch16_224", seed=0)
    state = {k: v.contiguous() for k, v in vit.state_dict().items()}
    folder = tmp_path_factory.mktemp("vit_tiny")
    save_file(state, folder / "vit_tiny.safetensors")
    torch.save({"state_dict": state}, folder / "vit_tiny.pth")  # wrapped, as training scripts save it
    torch.save(state, folder / "pytorch_model.bin")  # plain, as the Hugging Face hub ships it
    return vit, folder


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    vit = _random_vit(SMALL, seed=1)
    path = tmp_path_factory.mktemp("test_vit") / "test_vit.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, path)
    return str(path)


def small(small_file, **kwargs) -> HybridViT:
    return build_hybrid_vit(LATENT, model=SMALL, pretrained_file=small_file, **kwargs)


# --- pretrained weights and position embedding ---

def test_transformer_weights_equal_the_source_vit(tiny_source):
    source, folder = tiny_source
    model = build_hybrid_vit(LATENT, model_size="tiny", pretrained_file=str(folder / "vit_tiny.safetensors"))
    assert model.num_features == 192 and model.input_kind == "latent" and model.latent_shape == LATENT
    for part in ("blocks", "norm"):
        ours, theirs = getattr(model, part).state_dict(), getattr(source, part).state_dict()
        assert ours.keys() == theirs.keys()
        for key in theirs:
            torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0)
    torch.testing.assert_close(model.tokenizer.cls_token, source.cls_token, rtol=0, atol=0)


def test_position_embedding_is_timms_resampling_of_the_source(tiny_source):
    source, folder = tiny_source
    model = build_hybrid_vit(LATENT, model_size="tiny", pretrained_file=str(folder / "vit_tiny.safetensors"))
    expected = resample_abs_pos_embed(source.pos_embed.detach(), new_size=[1, 18], old_size=[14, 14],
                                      num_prefix_tokens=1)
    assert model.tokenizer.pos_embed.shape == (1, 19, 192)
    torch.testing.assert_close(model.tokenizer.pos_embed.detach(), expected, rtol=0, atol=0)
    # the CLS position is copied, and the 18 latent positions are distinct
    torch.testing.assert_close(model.tokenizer.pos_embed[:, 0], source.pos_embed[:, 0], rtol=0, atol=0)
    latent_pos = model.tokenizer.pos_embed[0, 1:]
    assert torch.cdist(latent_pos, latent_pos).add(torch.eye(18)).min() > 0


@pytest.mark.parametrize("filename", ["vit_tiny.pth", "pytorch_model.bin"])
def test_pth_and_bin_files_load_too(tiny_source, filename):
    source, folder = tiny_source
    model = build_hybrid_vit(LATENT, model_size="tiny", pretrained_file=str(folder / filename))
    torch.testing.assert_close(model.blocks[11].mlp.fc2.weight, source.blocks[11].mlp.fc2.weight, rtol=0, atol=0)


def test_pos_embed_is_resampled_from_the_models_own_grid(small_file):
    source = _random_vit(SMALL, seed=1)
    model = small(small_file, pool="mean")
    expected = resample_abs_pos_embed(source.pos_embed.detach(), [1, 18], old_size=[10, 10], num_prefix_tokens=1)
    torch.testing.assert_close(model.tokenizer.pos_embed.detach(), expected, rtol=0, atol=0)


# --- adapters ---

def test_adapters_leave_the_pretrained_function_unchanged_at_start(small_file):
    full = small(small_file).eval()
    adapted = small(small_file, strategy="adapter", adapter_dim=16).eval()
    adapted.tokenizer.proj.load_state_dict(full.tokenizer.proj.state_dict())
    latents = torch.randn(4, *LATENT)
    with torch.no_grad():
        torch.testing.assert_close(adapted(latents), full(latents), rtol=0, atol=0)
    adapter = adapted.blocks[0].mlp.adapter
    assert adapter.fc1.out_features == 16 and adapter.fc2.in_features == 16
    assert not adapter.fc2.weight.any() and not adapter.fc2.bias.any()


def test_adapters_receive_gradients_and_change_the_output(small_file):
    model = small(small_file, strategy="adapter", adapter_dim=8)
    latents = torch.randn(4, *LATENT)
    model(latents).pow(2).mean().backward()
    assert all(block.mlp.adapter.fc2.weight.grad.abs().sum() > 0 for block in model.blocks)
    trained = (".adapter.", "tokenizer.proj.", "tokenizer.input_norm.")
    assert all(p.grad is None for n, p in model.named_parameters() if not any(part in n for part in trained))


def test_state_dict_round_trip_rebuilds_the_same_model(small_file):
    trained = small(small_file, strategy="adapter", adapter_dim=8).eval()
    with torch.no_grad():
        for block in trained.blocks:
            block.mlp.adapter.fc2.weight.normal_()
    rebuilt = build_hybrid_vit(LATENT, model=SMALL, strategy="adapter", adapter_dim=8).eval()
    rebuilt.load_state_dict(trained.state_dict())
    latents = torch.randn(2, *LATENT)
    torch.testing.assert_close(rebuilt(latents), trained(latents))


# --- strategies ---

def _trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_full_trains_everything(small_file):
    model = small(small_file)
    assert _trainable(model) == {n for n, _ in model.named_parameters()}


INPUT_PROJECTION = {"tokenizer.input_norm.weight", "tokenizer.input_norm.bias", "tokenizer.proj.weight", "tokenizer.proj.bias"}


def test_adapter_trains_only_projection_and_adapters(small_file):
    model = small(small_file, strategy="adapter")
    expected = INPUT_PROJECTION | {
        f"blocks.{i}.mlp.adapter.{fc}.{w}" for i in range(6) for fc in ("fc1", "fc2") for w in ("weight", "bias")
    }
    assert _trainable(model) == expected


def test_linear_probe_trains_only_the_projection(small_file):
    model = small(small_file, strategy="linear_probe")
    assert _trainable(model) == INPUT_PROJECTION


def test_partial_freezes_the_lower_blocks(small_file):
    model = small(small_file, strategy="partial", freeze_blocks=4)
    names = {n for n, _ in model.named_parameters()}
    frozen = {n for n in names if n.startswith(("blocks.0.", "blocks.1.", "blocks.2.", "blocks.3."))}
    assert _trainable(model) == names - frozen
    assert {"tokenizer.pos_embed", "tokenizer.cls_token", "blocks.4.attn.qkv.weight", "norm.weight"} <= _trainable(model)


def test_frozen_parts_stay_in_eval_mode(small_file):
    partial = small(small_file, strategy="partial", freeze_blocks=4).train()
    assert [b.training for b in partial.blocks] == [False] * 4 + [True] * 2
    adapted = small(small_file, strategy="adapter").train()
    block = adapted.blocks[0]
    assert block.training and block.mlp.adapter.training
    assert not block.attn.training and not block.mlp.base.training and not block.norm1.training
    assert not small(small_file, strategy="linear_probe").train().blocks.training
    assert not any(m.training for m in adapted.eval().modules())


def _adapter_share(model_size):
    with torch.device("meta"):  # counts only: no memory, no init time
        model = build_hybrid_vit(LATENT, model_size=model_size, strategy="adapter")
    trainable, total = model.trainable_report()
    adapters = sum(p.numel() for n, p in model.named_parameters() if ".adapter." in n)
    print(f"\nadapter strategy, vit_{model_size}: adapters {adapters:,} = {adapters / total:.2%}, "
          f"adapters + input projection {trainable:,} = {trainable / total:.2%} of {total:,}")
    return adapters / total, trainable / total


def test_adapter_trainable_share_on_tiny_and_base():
    adapters, trainable = _adapter_share("tiny")
    assert 0.045 < adapters < 0.06 and 0.06 < trainable < 0.075  # ~5 % (+ the 512->192 projection)
    adapters, trainable = _adapter_share("base")
    assert 0.012 < adapters < 0.016 and trainable < 0.02  # ~1.4 %


# --- parameter groups ---

def _lr_of(groups):
    return {id(p): g["lr"] for g in groups for p in g["params"]}


def test_param_groups_carry_the_multipliers(small_file):
    model = small(small_file)
    groups = model.param_groups(1e-4, 0.05)
    assert all("lr_scale" not in g and {"params", "lr", "weight_decay", "name"} <= g.keys() for g in groups)
    lrs = _lr_of(groups)
    assert len(lrs) == sum(1 for _ in model.parameters())  # every parameter exactly once
    assert groups[0]["name"].startswith("blocks") and groups[0]["lr"] == 1e-4  # fer-core logs group 0's lr
    assert lrs[id(model.tokenizer.proj.weight)] == pytest.approx(1e-3)
    assert lrs[id(model.tokenizer.pos_embed)] == lrs[id(model.tokenizer.cls_token)] == pytest.approx(5e-4)
    assert lrs[id(model.blocks[0].attn.qkv.weight)] == lrs[id(model.norm.weight)] == pytest.approx(1e-4)

    custom = small(small_file, lr_mult_proj=3.0, lr_mult_pos=2.0, lr_mult_blocks=0.5)
    lrs = _lr_of(custom.param_groups(1e-3, 0.05))
    assert lrs[id(custom.tokenizer.proj.bias)] == pytest.approx(3e-3)
    assert lrs[id(custom.tokenizer.pos_embed)] == pytest.approx(2e-3)
    assert lrs[id(custom.blocks[5].mlp.fc1.weight)] == pytest.approx(5e-4)


def test_no_weight_decay_on_norms_biases_pos_and_cls(small_file):
    model = small(small_file)
    decay = {id(p): g["weight_decay"] for g in model.param_groups(1e-4, 0.05) for p in g["params"]}
    for name, param in model.named_parameters():
        expected = 0.0 if param.ndim <= 1 or name.endswith(".bias") or "pos_embed" in name or "cls_token" in name else 0.05
        assert decay[id(param)] == expected, name


def test_param_groups_hold_only_trainable_parameters(small_file):
    model = small(small_file, strategy="adapter")
    groups = model.param_groups(1e-3, 0.05)
    assert {g["name"] for g in groups} == {"proj_decay", "proj_no_decay", "blocks_decay", "blocks_no_decay"}
    assert sum(p.numel() for g in groups for p in g["params"]) == model.trainable_report()[0]
    assert _lr_of(groups)[id(model.blocks[3].mlp.adapter.fc1.weight)] == pytest.approx(1e-3)


def test_layer_decay_replaces_the_pretrained_multipliers(small_file):
    model = small(small_file)
    lrs = _lr_of(model.param_groups(1e-4, 0.05, layer_decay=0.5))
    depth = 6
    assert lrs[id(model.tokenizer.proj.weight)] == pytest.approx(1e-3)  # new layer: keeps lr_mult_proj
    assert lrs[id(model.tokenizer.pos_embed)] == pytest.approx(1e-4 * 0.5 ** (depth + 1))
    for i, block in enumerate(model.blocks):
        assert lrs[id(block.attn.qkv.weight)] == pytest.approx(1e-4 * 0.5 ** (depth - i))
    assert lrs[id(model.norm.weight)] == pytest.approx(1e-4)


def test_fer_model_uses_the_backbone_groups(small_file):
    model = FerModel(nn.Identity(), small(small_file), nn.Linear(64, 7), frozen={"encoder": True})
    groups = model.param_groups(1e-4, 0.05)
    lrs = _lr_of(groups)
    assert lrs[id(model.backbone.tokenizer.proj.weight)] == pytest.approx(1e-3)
    assert lrs[id(model.head.weight)] == pytest.approx(1e-4)  # the head trains at optim.lr
    assert all("lr_scale" not in g for g in groups)


# --- shapes, learning ---

@pytest.mark.parametrize("latent_shape", [(18, 512), (1, 256)])
@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_output_shape(small_file, latent_shape, pool):
    model = build_hybrid_vit(latent_shape, model=SMALL, pretrained_file=small_file, pool=pool)
    features = model(torch.randn(3, *latent_shape))
    assert features.shape == (3, 64) and torch.isfinite(features).all()


@pytest.mark.parametrize("strategy", ["full", pytest.param("lora", marks=pytest.mark.skipif(
    importlib.util.find_spec("peft") is None, reason="LoRA needs PEFT: pip install 'fer-core[lora]'"))])
def test_strategy_learns_synthetic_latent_tokens(small_file, strategy):
    """Three classes whose 'expression' rows (4-7) are shifted by a class prototype (lora: blocks frozen)."""
    torch.manual_seed(0)
    shape, classes = (18, 32), 3
    prototypes = 1.5 * torch.randn(classes, 4, shape[1])

    def batch(n):
        labels = torch.randint(classes, (n,))
        latents = torch.randn(n, *shape)
        latents[:, 4:8] += prototypes[labels]
        return latents, labels

    backbone = build_hybrid_vit(shape, model=SMALL, pretrained_file=small_file, strategy=strategy)
    model = FerModel(nn.Identity(), backbone, nn.Linear(backbone.num_features, classes), frozen={"encoder": True})
    optimizer = torch.optim.AdamW(model.param_groups(3e-4, 0.05))
    model.train()
    for _ in range(40):
        latents, labels = batch(32)
        logits, _ = model(latents, encoded=True)
        loss = nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    latents, labels = batch(300)
    with torch.no_grad():
        accuracy = (model(latents, encoded=True)[0].argmax(1) == labels).float().mean().item()
    print(f"\nsynthetic latent tokens, strategy {strategy}: accuracy {accuracy:.2f} (chance 0.33)")
    assert accuracy > 0.8, accuracy  # chance is 1/3


# --- errors ---

def test_errors_are_one_line_and_say_what_to_do(small_file, tmp_path, tiny_source):
    cases = [
        (dict(latent_shape=None), FerError, "latent encoder"),
        (dict(model=SMALL, strategy="full", freeze_blocks=2), FerError, "partial"),
        (dict(model=SMALL, strategy="partial", freeze_blocks=7), FerError, "between 1 and 6"),
        (dict(model=SMALL, strategy="adaptor"), FerError, "strategy must be one of"),
        (dict(model="vit_tiny_patch16_2244"), FerError, "did you mean"),
        (dict(model="resnet10t"), FerError, "VisionTransformer"),
        (dict(model=SMALL, pretrained_file=str(tmp_path / "missing.safetensors")), CheckpointError, "not found"),
        (dict(model=SMALL, pretrained_file=str(tiny_source[1] / "vit_tiny.safetensors")), CheckpointError,
         "set model to the ViT"),
    ]
    for kwargs, error, message in cases:
        kwargs = {"latent_shape": LATENT, **kwargs}
        with pytest.raises(error, match=message) as info:
            build_hybrid_vit(**kwargs)
        assert "\n" not in str(info.value)


def test_offline_pretrained_download_points_to_pretrained_file(monkeypatch):
    import fer_hybridvit.hybrid_vit as hybrid

    def offline(*args, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return timm.create_model(*args, **kwargs)

    monkeypatch.setattr(hybrid, "create_model", offline)
    with pytest.raises(FerError, match="set pretrained_file"):
        build_hybrid_vit(LATENT, model=SMALL, pretrained=True)


def test_frozen_strategy_without_weights_warns():
    with pytest.warns(UserWarning, match="randomly initialised"), torch.device("meta"):
        build_hybrid_vit(LATENT, model=SMALL, strategy="linear_probe")
