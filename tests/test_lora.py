"""LoRA through PEFT on timm ViT backbones: exact parameter count, frozen base, merged export."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("peft", reason="LoRA needs PEFT: pip install 'fer-core[lora]'")

from fer_core.errors import RecipeError  # noqa: E402
from fer_core.lora import has_lora, lora_settings, merge_lora  # noqa: E402
from fer_core.model import build_model, count_parameters  # noqa: E402
from fer_core.plugins import get_registry  # noqa: E402
from fer_core.recipe import load_recipe  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

VIT = "vit_tiny_patch16_224"  # width 192, depth 12; at 32 px it sees 4 patches
CLASSES = ["anger", "happiness", "neutral"]


def _model(tmp_path, lora: str = "", seed: int = 0):
    backbone = f"{{name: timm, model: {VIT}" + (f", lora: {lora}" if lora else "") + "}"
    (tmp_path / "r.yaml").write_text(f"name: lora\ndata: {{root: {tmp_path}, image_size: 32}}\n"
                                     f"model: {{backbone: {backbone}}}\n")
    recipe = load_recipe(tmp_path / "r.yaml", registry=get_registry())
    torch.manual_seed(seed)
    return build_model(recipe, get_registry(), CLASSES)


@pytest.mark.parametrize("rank", [1, 4])
def test_rank_r_adds_exactly_r_times_in_plus_out_per_adapted_layer(tmp_path, rank):
    base_total, _ = count_parameters(_model(tmp_path))
    model = _model(tmp_path, f"{{rank: {rank}, target_modules: [qkv, proj]}}")
    total, trainable = count_parameters(model)
    width, depth, heads = 192, 12, len(CLASSES)
    per_block = rank * (width + 3 * width) + rank * (width + width)  # qkv: 192 -> 576, proj: 192 -> 192
    assert total - base_total == depth * per_block
    assert trainable == depth * per_block + (width * heads + heads)  # LoRA + the linear head


def test_only_lora_and_head_weights_change_in_a_training_step(tmp_path):
    model = _model(tmp_path, "{rank: 2, alpha: 4}")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    logits, _ = model(torch.rand(4, 3, 32, 32))
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 0])).backward()
    optimizer.step()
    optimizer.zero_grad()
    model(torch.rand(4, 3, 32, 32))[0].sum().backward()  # lora_A moves only once lora_B is non-zero
    optimizer.step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed, "nothing trained"
    assert all(".lora_" in name or name.startswith("head.") for name in changed), changed
    assert any(".lora_A." in name for name in changed) and any(".lora_B." in name for name in changed)


def test_merging_folds_the_updates_into_plain_linear_layers_with_the_same_outputs(tmp_path):
    model = _model(tmp_path, "{rank: 4, alpha: 8, target_modules: [qkv, proj, fc1]}").eval()
    for name, p in model.named_parameters():  # non-zero updates, as after training
        if ".lora_B." in name:
            torch.nn.init.normal_(p, std=0.05)
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(images)[0]
        assert merge_lora(model) == 12 * 3
        got = model(images)[0]
    assert not has_lora(model)
    assert not any("lora" in name for name in model.state_dict())
    assert torch.allclose(got, expected, atol=1e-5)


def test_merged_onnx_export_has_no_lora_layers_and_matches_the_unmerged_model(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx

    from fer_core.export import export_onnx
    from fer_core.inference import Trained
    from fer_core.predictor import OnnxPredictor

    model = _model(tmp_path, "{rank: 2}").eval()
    for name, p in model.named_parameters():
        if ".lora_B." in name:
            torch.nn.init.normal_(p, std=0.05)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(images)[0].numpy()
    recipe = load_recipe(tmp_path / "r.yaml", registry=get_registry())
    path = export_onnx(Trained(model, recipe, CLASSES, tmp_path / "best.pt"), tmp_path / "lora.onnx")
    graph = onnx.load(str(path)).graph
    assert not [t.name for t in graph.initializer if "lora" in t.name.lower()]
    (got,) = OnnxPredictor(path).session.run(None, {"images": images.numpy()})
    assert abs(got - expected).max() < 1e-4


@pytest.mark.parametrize("spec, message", [
    ({"rank": 0}, "rank: expected an integer >= 1"),
    ({"alpha": -1}, "alpha: expected a number > 0"),
    ({"dropout": 1.0}, r"dropout: expected a number in \[0, 1\)"),
    ({"target_modules": "qkv"}, "target_modules: expected a list"),
    ({"ranks": 4}, "unknown LoRA setting"),
])
def test_bad_lora_settings_are_one_line_recipe_errors(spec, message):
    with pytest.raises(RecipeError, match=message):
        lora_settings(spec, "model.backbone.lora")


def test_a_target_that_is_not_a_linear_layer_names_the_ones_there(tmp_path):
    with pytest.raises(RecipeError, match=r"no linear layer named 'query'.*fc1.*qkv"):
        _model(tmp_path, "{target_modules: [query]}")
