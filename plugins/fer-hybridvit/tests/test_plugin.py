"""The plugin registers hybrid_vit with fer-core; the core validates and builds it with its context."""

import pytest
import torch

from fer_core.errors import FerError, RecipeError
from fer_core.plugins import PluginHost

CONTEXT = {"latent_shape": (18, 512), "image_size": 256, "in_chans": 3}


@pytest.fixture(scope="module")
def registry():
    host = PluginHost(env={"FER_PLUGINS": "hybridvit"})
    assert [p.status for p in host.plugins if p.dist == "fer-hybridvit"] == ["loaded"]
    return host.registry


def test_core_builds_hybrid_vit_with_the_encoders_latent_shape(registry):
    spec = {"name": "hybrid_vit", "model": "test_vit", "strategy": "full", "lr_mult_proj": 10.0}
    backbone = registry.build("backbone", spec, "model.backbone", CONTEXT)
    assert backbone.input_kind == "latent" and backbone.num_features == 64
    assert backbone.latent_shape == (18, 512)
    assert backbone(torch.randn(2, 18, 512)).shape == (2, 64)


def test_recipe_keys_are_checked_against_the_factory(registry):
    with pytest.raises(RecipeError, match="did you mean 'adapter_dim'"):
        registry.check_params("backbone", {"name": "hybrid_vit", "adapter_dims": 32}, "model.backbone")
    with pytest.raises(RecipeError, match="one of 'full', 'adapter', 'linear_probe', 'partial'"):
        registry.check_params("backbone", {"name": "hybrid_vit", "strategy": "adaptor"}, "model.backbone")
    assert registry.get("backbone", "hybridvit").name == "hybrid_vit"


def test_core_reports_an_identity_encoder(registry):
    context = {**CONTEXT, "latent_shape": None}
    with pytest.raises(FerError, match="model.encoder is 'identity'"):
        registry.build("backbone", {"name": "hybrid_vit"}, "model.backbone", context)


@pytest.mark.filterwarnings("ignore:hybrid_vit strategy:UserWarning")  # random test_vit weights
def test_core_builds_the_lora_strategy_from_recipe_keys(registry):
    pytest.importorskip("peft", reason="LoRA needs PEFT: pip install 'fer-core[lora]'")
    spec = {"name": "hybrid_vit", "model": "test_vit", "strategy": "lora", "lora": {"rank": 2, "alpha": 4}}
    registry.check_params("backbone", spec, "model.backbone")
    backbone = registry.build("backbone", spec, "model.backbone", CONTEXT)
    assert backbone.blocks[0].attn.qkv.r["default"] == 2
    with pytest.raises(RecipeError, match=r"model\.backbone\.lora\.alpha: expected a number > 0"):
        registry.build("backbone", {**spec, "lora": {"alpha": 0}}, "model.backbone", CONTEXT)
