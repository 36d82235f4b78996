"""hybrid_vit's `lora` strategy: PEFT low-rank updates on the frozen ViT blocks (through fer_core.lora),
exact parameter counts, what trains, the trainable share, merged ONNX export."""

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

pytest.importorskip("peft", reason="LoRA needs PEFT: pip install 'fer-core[lora]'")

from fer_core.errors import FerError, RecipeError  # noqa: E402
from fer_core.lora import DEFAULTS, has_lora  # noqa: E402
from fer_core.model import FerModel  # noqa: E402
from fer_hybridvit.hybrid_vit import build_hybrid_vit  # noqa: E402

LATENT = (18, 512)
SMALL = "test_vit"  # timm's 6-block, 64-wide test ViT
TRAINED_OUTSIDE_LORA = ("tokenizer.proj.", "tokenizer.input_norm.")

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:hybrid_vit strategy:UserWarning")]


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    torch.manual_seed(1)
    vit = timm.create_model(SMALL, pretrained=False)
    path = tmp_path_factory.mktemp("test_vit") / "test_vit.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, path)
    return str(path)


def small(small_file, **kwargs):
    return build_hybrid_vit(LATENT, model=SMALL, pretrained_file=small_file, **kwargs)


def _lora_expected(model, targets, rank):
    """r * (in + out) for every block linear layer whose last name is a target, counted on the plain model."""
    return sum(rank * (m.in_features + m.out_features) for name, m in model.blocks.named_modules()
               if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in targets)


@pytest.mark.parametrize("rank, targets", [(1, ["qkv", "proj"]), (4, ["qkv", "proj", "fc1", "fc2"])])
def test_rank_r_adds_exactly_r_times_in_plus_out_per_adapted_layer(small_file, rank, targets):
    plain = small(small_file, strategy="linear_probe")
    model = small(small_file, strategy="lora", lora={"rank": rank, "target_modules": targets})
    added = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in plain.parameters())
    expected = _lora_expected(plain, targets, rank)
    assert expected > 0 and added == expected
    lora = sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
    assert lora == expected
    # the trainable set: LoRA + the input projection, exactly as linear_probe's projection
    assert model.trainable_report()[0] == expected + plain.trainable_report()[0]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(".lora_" in n or n.startswith(TRAINED_OUTSIDE_LORA) for n in trainable)


def test_lora_starts_from_the_pretrained_function_and_uses_the_core_defaults(small_file):
    full = small(small_file).eval()
    model = small(small_file, strategy="lora").eval()
    model.tokenizer.load_state_dict(full.tokenizer.state_dict())
    latents = torch.randn(3, *LATENT)
    with torch.no_grad():
        torch.testing.assert_close(model(latents), full(latents), rtol=0, atol=0)  # B starts at zero
    qkv = model.blocks[0].attn.qkv
    assert qkv.r["default"] == DEFAULTS["rank"] and qkv.scaling["default"] == DEFAULTS["alpha"] / DEFAULTS["rank"]
    assert hasattr(model.blocks[0].attn.proj, "lora_A")  # the defaults adapt qkv and proj, not the MLP
    assert not any("lora_" in name for name, _ in model.blocks[0].mlp.named_parameters())


def test_only_lora_projection_and_head_weights_change_in_a_training_step(small_file):
    backbone = small(small_file, strategy="lora", lora={"rank": 2, "alpha": 4, "dropout": 0.1})
    model = FerModel(nn.Identity(), backbone, nn.Linear(backbone.num_features, 3), frozen={"encoder": True})
    model.train()
    block = backbone.blocks[0]
    assert not block.norm1.training and not block.attn.qkv.base_layer.training  # frozen parts in eval mode
    assert block.attn.qkv.lora_dropout["default"].training
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.param_groups(0.5, 0.0), lr=0.5)
    for labels in (torch.tensor([0, 1, 2, 0]), torch.tensor([2, 2, 1, 0])):  # lora_A moves once lora_B is non-zero
        logits, _ = model(torch.randn(4, *LATENT), encoded=True)
        nn.functional.cross_entropy(logits, labels).backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    allowed = tuple(f"backbone.{part}" for part in TRAINED_OUTSIDE_LORA) + ("head.",)
    assert all(".lora_" in name or name.startswith(allowed) for name in changed), changed
    assert any(".lora_A." in n for n in changed) and any(".lora_B." in n for n in changed)
    assert any(n.startswith("head.") for n in changed) and any(n.startswith("backbone.tokenizer.proj") for n in changed)


def _lora_share(model_size):
    with torch.device("meta"):  # counts only
        model = build_hybrid_vit(LATENT, model_size=model_size, strategy="lora")
    trainable, total = model.trainable_report()
    lora = sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
    print(f"\nlora strategy (rank 8 on qkv/proj), vit_{model_size}: LoRA {lora:,} = {lora / total:.2%}, "
          f"LoRA + input projection {trainable:,} = {trainable / total:.2%} of {total:,}")
    return lora, trainable, total


def test_lora_trainable_share_on_tiny_and_base():
    lora, trainable, total = _lora_share("tiny")  # 12 blocks x 8 x ((192 + 576) + (192 + 192))
    assert lora == 12 * 8 * (768 + 384) and trainable == lora + (2 * 512 + 512 * 192 + 192)
    assert 0.019 < lora / total < 0.021 and 0.035 < trainable / total < 0.04
    lora, trainable, total = _lora_share("base")
    assert lora == 12 * 8 * (3072 + 1536) and trainable / total < 0.01


def test_merged_onnx_export_has_no_lora_layers_and_matches_the_unmerged_model(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx

    from fer_core.export import export_onnx
    from fer_core.inference import Trained
    from fer_core.model import build_model
    from fer_core.plugins import get_registry
    from fer_core.predictor import OnnxPredictor
    from fer_core.recipe import load_recipe

    (tmp_path / "r.yaml").write_text(
        f"name: hybrid-lora\ndata: {{root: {tmp_path}, image_size: 32}}\n"
        "model:\n  encoder: {name: timm_tokens, model: resnet10t, stage: 2, freeze: false}\n"
        f"  backbone: {{name: hybrid_vit, model: {SMALL}, strategy: lora, lora: {{rank: 2, target_modules: [qkv, fc2]}}}}\n")
    recipe = load_recipe(tmp_path / "r.yaml", registry=get_registry())
    classes = ["anger", "happiness", "neutral"]
    torch.manual_seed(0)
    model = build_model(recipe, get_registry(), classes).eval()
    for name, p in model.named_parameters():  # non-zero updates, as after training
        if ".lora_B." in name:
            nn.init.normal_(p, std=0.05)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(images)[0].numpy()
    path = export_onnx(Trained(model, recipe, classes, tmp_path / "best.pt"), tmp_path / "lora.onnx")
    graph = onnx.load(str(path)).graph
    assert graph.initializer and not [t.name for t in graph.initializer if "lora" in t.name.lower()]
    assert not has_lora(model)
    (got,) = OnnxPredictor(path).session.run(None, {"images": images.numpy()})
    assert abs(got - expected).max() < 1e-4


def test_lora_errors_are_one_line(small_file):
    with pytest.raises(FerError, match="lora applies to strategy 'lora' only") as info:
        small(small_file, strategy="adapter", lora={"rank": 4})
    assert "\n" not in str(info.value)
    with pytest.raises(RecipeError, match=r"model\.backbone\.lora\.rank: expected an integer >= 1"):
        small(small_file, strategy="lora", lora={"rank": 0})
    with pytest.raises(RecipeError, match=r"no linear layer named 'query'.*qkv"):
        small(small_file, strategy="lora", lora={"target_modules": ["query"]})
