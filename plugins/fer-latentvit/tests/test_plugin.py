"""The plugin registers latent_vit with fer-core and the core builds it with its context."""

import pytest

from fer_core.errors import FerError
from fer_core.plugins import PluginHost


@pytest.fixture(scope="module")
def registry():
    host = PluginHost(env={"FER_PLUGINS": "latentvit"})
    assert [p.status for p in host.plugins if p.dist == "fer-latentvit"] == ["loaded"]
    return host.registry


def test_core_builds_latent_vit_with_the_encoders_latent_shape(registry):
    spec = {"name": "latent_vit", "depth": 1, "heads": 4, "embed_dim": 32, "pool": "mean"}
    context = {"latent_shape": (18, 512), "image_size": 256, "in_chans": 3}
    backbone = registry.build("backbone", spec, "model.backbone", context)
    assert backbone.input_kind == "latent" and backbone.num_features == 32
    assert backbone.latent_shape == (18, 512)


def test_core_reports_an_identity_encoder(registry):
    context = {"latent_shape": None, "image_size": 224, "in_chans": 3}
    with pytest.raises(FerError, match="model.encoder is 'identity'"):
        registry.build("backbone", {"name": "latent_vit"}, "model.backbone", context)
