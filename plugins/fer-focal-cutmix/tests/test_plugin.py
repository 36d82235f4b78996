"""The plugin registers its components with fer-core and the recipe examples of the README build."""

import pytest

from fer_core.plugins import PluginHost


@pytest.fixture(scope="module")
def registry():
    host = PluginHost(env={"FER_PLUGINS": "focal-cutmix"})
    assert [p.status for p in host.plugins if p.dist == "fer-focal-cutmix"] == ["loaded"]
    return host.registry


def test_components_are_registered(registry):
    assert "focal" in registry.names("loss")
    for name in ("cutmix", "mixup", "cutmix_or_mixup", "latent_cutmix", "latent_mixup"):
        assert name in registry.names("augment")


def test_readme_recipe_examples_build(registry):
    loss = registry.build(
        "loss",
        {"name": "focal", "gamma": 2.0, "alpha": "auto", "label_smoothing": 0.1},
        "loss",
        {"num_classes": 3, "class_counts": [10, 20, 70]},
    )
    assert loss.gamma == 2.0 and loss.alpha.shape == (3,)
    cutmix = registry.build("augment", {"name": "cutmix", "alpha": 1.0, "prob": 0.5}, "augment.batch[0]", {"num_classes": 7})
    assert (cutmix.stage, cutmix.num_classes, cutmix.prob) == ("batch", 7, 0.5)
    rows = registry.build("augment", {"name": "latent_cutmix", "rows": [4, 8]}, "augment.batch[0]", {"num_classes": 7})
    assert rows.rows == (4, 8)


def test_unknown_parameters_are_caught_by_the_core(registry):
    with pytest.raises(Exception, match="unknown parameter"):
        registry.check_params("augment", {"name": "cutmix", "beta": 1.0}, "augment.batch[0]")
