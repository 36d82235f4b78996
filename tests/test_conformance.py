"""fer_core.testing over every component of the core and of plugins/, and over broken ones.

Every built-in component and every component registered by a distribution under
plugins/ runs the full conformance suite with small parameters, except pSp and e4e:
their IR-SE-50 model has 267M parameters (about 1 GB and seconds per build, and the
suite builds a component five times), so they run with ``meta=True``: built and run on
the meta device, which checks declarations, shapes, dtypes, device handling,
state-dict keys and gradient flow without allocating weights; the value
comparisons (pickling, determinism) are left to their own tests.
"""

from __future__ import annotations

import random
import tomllib
from pathlib import Path

import pytest
import torch
from torch import nn

from fer_core.plugins import PluginHost, get_host
from fer_core.registry import KINDS, Component, Registry
from fer_core.scaffold import plugin_files, plugin_names
from fer_core.scaffold.examples import EXAMPLES
from fer_core.testing import CHECK_NAMES, DETECTOR_CHECKS, ConformanceError, check_component, check_head, check_plugin

REPO = Path(__file__).resolve().parents[1]
PLUGIN_DISTS = sorted(tomllib.loads(p.read_text())["project"]["name"] for p in REPO.glob("plugins/*/pyproject.toml"))

# Small settings, so that each component's suite runs in about a second.
PARAMS = {
    ("backbone", "timm"): {"model": "resnet10t"},
    ("backbone", "latent_vit"): {"depth": 1, "heads": 2, "embed_dim": 32},
    ("head", "mlp"): {"hidden": 32},
    ("augment", "resize"): {"size": 24},
    ("augment", "random_resized_crop"): {"size": 24},
    ("encoder", "vaegan"): {"latent_dim": 16, "widths": [8, 16]},
}
OPTIONS = {
    ("backbone", "latent_vit"): {"latent_shape": (18, 32)},
    ("backbone", "hybrid_vit"): {"latent_shape": (18, 32)},
    ("encoder", "psp"): {"meta": True},
    ("encoder", "e4e"): {"meta": True},
    # Its logvar head and decoder serve only the pretraining step, so fine-tuning it in a
    # classify run (freeze: false) leaves them without gradients (DDP would need
    # find_unused_parameters). Reported; remove this skip once the plugin decides.
    ("encoder", "vaegan"): {"skip": ("gradients",)},
}


@pytest.fixture(scope="module")
def teacher_checkpoint(tmp_path_factory) -> Path:
    """An untrained 7-class checkpoint in fer's format, for fer-distill's `distill` loss."""
    from fer_core.data.labels import CANONICAL_CLASSES
    from fer_core.model import build_model
    from fer_core.recipe import load_recipe
    from fer_core.runs import save_checkpoint

    folder = tmp_path_factory.mktemp("teacher")
    (folder / "teacher.yaml").write_text("data: {root: data, image_size: 16}\n"
                                         "model: {backbone: {name: timm, model: test_convnext3}}\n")
    recipe = load_recipe(folder / "teacher.yaml")
    classes = list(CANONICAL_CLASSES[:7])  # the check builds losses for 7 classes
    model = build_model(recipe, get_host().registry, classes)
    save_checkpoint(folder / "teacher.pt", {"model": model.state_dict(), "ema": None, "recipe": recipe,
                                            "classes": classes})
    return folder / "teacher.pt"


def repo_components() -> list[Component]:
    host = PluginHost(env={})
    owners = {"fer-core", *PLUGIN_DISTS}
    return [c for c in host.registry.components() if c.plugin in owners]


def test_every_plugin_in_the_repo_is_installed_and_loads():
    host = PluginHost(env={})
    status = {p.dist: (p.status, p.error) for p in host.plugins}
    for dist in PLUGIN_DISTS:
        assert dist in status, f"{dist} from plugins/ is not installed (pip install -e plugins/{dist})"
        assert status[dist] == ("loaded", None), f"{dist}: {status[dist]}"


@pytest.mark.filterwarnings("ignore:.*randomly initialised:UserWarning")
@pytest.mark.parametrize("component", repo_components(), ids=lambda c: f"{c.kind}-{c.name}")
def test_component_conforms(component, one_thread, request):
    key = (component.kind, component.name)
    params = PARAMS.get(key)
    if key == ("loss", "distill"):  # its teacher is a checkpoint file
        params = {"teacher": str(request.getfixturevalue("teacher_checkpoint"))}
    report = check_component(component.kind, component.name, params, plugin=component.plugin,
                             **OPTIONS.get(key, {}))
    names = DETECTOR_CHECKS if component.kind == "detector" else CHECK_NAMES  # detectors are no torch modules
    assert report.passed[:4] == list(names[:4])
    assert set(report.passed) | {k for k in report.skipped if "(part)" not in k} == set(names)


@pytest.mark.parametrize("dist", PLUGIN_DISTS)
def test_repo_plugin_loads_alone_and_imports_no_torch(dist):
    assert check_plugin(dist)


def test_every_kind_has_a_conforming_component_in_the_repo():
    kinds = {c.kind for c in repo_components()}
    assert kinds == set(KINDS)


# -- one plugin per hook, through the real plugin host ---------------------------
HOOK_PLUGINS = {
    "encoder": """
        from fer_core import hookimpl

        @hookimpl
        def register_encoders(register):
            register("kit_encoder", "kit_encoder_impl:build_kit_encoder", summary="the kit's example encoder")
    """,
    "backbone": """
        from fer_core import hookimpl

        @hookimpl
        def register_backbones(register):
            register("kit_backbone", "kit_backbone_impl:build_kit_backbone", summary="the kit's example backbone")
    """,
    "head": """
        from fer_core import hookimpl

        @hookimpl
        def register_heads(register):
            register("kit_head", "kit_head_impl:build_kit_head", summary="the kit's example head")
    """,
    "loss": """
        from fer_core import hookimpl

        @hookimpl
        def register_losses(register):
            register("kit_loss", "kit_loss_impl:build_kit_loss", summary="the kit's example loss")
    """,
    "augment": """
        from fer_core import hookimpl

        @hookimpl
        def register_augments(register):
            register("kit_augment", "kit_augment_impl:build_kit_augment", summary="the kit's example augment")
    """,
}


@pytest.mark.parametrize("kind", list(HOOK_PLUGINS))
def test_each_hook_registers_a_conforming_component(kind, fake_plugins, one_thread):
    """A plugin implementing the hook registers the `fer plugin new` example, which passes the suite."""
    names = plugin_names(f"kit-{kind}")
    example = EXAMPLES[kind]
    fake_plugins.module(f"kit_{kind}_impl", plugin_files(names, kind)[f"src/{names.package}/{example.module}.py"])
    fake_plugins.dist("fer-kit", {"kit": HOOK_PLUGINS[kind]})
    assert get_host().plugins[-1].status == "loaded"
    report = check_component(kind, f"kit_{kind}", example.test_params, plugin="fer-kit")
    assert "gradients" in report.passed and "determinism" in report.passed


# -- deliberately broken components ---------------------------------------------
class WrongWidth(nn.Module):
    """Declares 12 features, returns 10."""

    input_kind = "image"
    num_features = 12

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 10)

    def forward(self, images):
        return self.fc(images.mean(dim=(2, 3)))


class DeadParameter(nn.Module):
    """A head with a layer that forward never uses."""

    def __init__(self, num_features, num_classes):
        super().__init__()
        self.num_classes = num_classes
        self.fc = nn.Linear(num_features, num_classes)
        self.extra = nn.Linear(num_features, num_classes)

    def forward(self, features):
        return self.fc(features)


class LambdaFlip(nn.Module):
    """A sample augment holding a lambda: DataLoader workers cannot receive it."""

    stage, spaces = "sample", ("image",)

    def __init__(self):
        super().__init__()
        self.flip = lambda image: image.flip(-1)

    def forward(self, image):
        return self.flip(image)


class WrongLatent(nn.Module):
    """Declares latent_shape (4, 8), returns 5 tokens."""

    input_size, latent_shape, trainable, cacheable = 32, (4, 8), False, True

    def forward(self, images):
        return images.new_zeros(images.shape[0], 5, 8)


class PerSampleLoss(nn.Module):
    def forward(self, logits, targets):
        return nn.functional.cross_entropy(logits, targets, reduction="none")


class StrayTensor(DeadParameter):
    """Keeps a tensor as a plain attribute, which .to(device) does not move."""

    def __init__(self, num_features, num_classes):
        super().__init__(num_features, num_classes)
        del self.extra
        self.bias_shift = torch.zeros(num_classes)

    def forward(self, features):
        return self.fc(features) + self.bias_shift


class FixedDevice(StrayTensor):
    """Creates a tensor on the CPU inside forward."""

    def __init__(self, num_features, num_classes):
        super().__init__(num_features, num_classes)
        del self.bias_shift

    def forward(self, features):
        return self.fc(features) + torch.zeros(self.num_classes)


class Unsaved(FixedDevice):
    """Uses a random non-persistent buffer: a state-dict round trip loses it."""

    def __init__(self, num_features, num_classes):
        super().__init__(num_features, num_classes)
        self.register_buffer("shift", torch.randn(num_classes), persistent=False)

    def forward(self, features):
        return self.fc(features) + self.shift


class Unseeded(FixedDevice):
    """Initialises from Python's system RNG, which no seed controls."""

    def __init__(self, num_features, num_classes):
        super().__init__(num_features, num_classes)
        with torch.no_grad():
            self.fc.bias.fill_(random.SystemRandom().random())

    def forward(self, features):
        return self.fc(features)


class Unclamped(LambdaFlip):
    def __init__(self):
        super().__init__()
        del self.flip

    def forward(self, image):
        return image + 0.5


class HardTargets(nn.Module):
    """A batch augment that returns class ids instead of soft targets."""

    stage, spaces = "batch", ("image",)

    def forward(self, inputs, targets):
        return inputs, targets


def wrong_width() -> nn.Module:
    return WrongWidth()


def dead_parameter(num_features: int, num_classes: int) -> nn.Module:
    return DeadParameter(num_features, num_classes)


def lambda_flip() -> nn.Module:
    return LambdaFlip()


def wrong_latent() -> nn.Module:
    return WrongLatent()


def per_sample_loss() -> nn.Module:
    return PerSampleLoss()


def stray_tensor(num_features: int, num_classes: int) -> nn.Module:
    return StrayTensor(num_features, num_classes)


def fixed_device(num_features: int, num_classes: int) -> nn.Module:
    return FixedDevice(num_features, num_classes)


def unsaved(num_features: int, num_classes: int) -> nn.Module:
    return Unsaved(num_features, num_classes)


def unseeded(num_features: int, num_classes: int) -> nn.Module:
    return Unseeded(num_features, num_classes)


def unclamped() -> nn.Module:
    return Unclamped()


def hard_targets() -> nn.Module:
    return HardTargets()


def takes_kwargs(num_features: int, num_classes: int, **options) -> nn.Module:
    return DeadParameter(num_features, num_classes)


def unannotated(num_features: int, num_classes: int, dropout=0.0) -> nn.Module:
    return DeadParameter(num_features, num_classes)


BROKEN = [
    ("backbone", wrong_width, {}, r"^backbone 'broken': output shape \(2, 10\) but expected \(2, 12\) = "
                                  r"\(batch, num_features\) \(images \[2, 3, 32, 32\]\)$"),
    ("head", dead_parameter, {}, r"^head 'broken': parameter extra\.weight gets no gradient \(and 1 more\)"),
    ("augment", lambda_flip, {}, r"^augment 'broken': cannot be pickled for DataLoader workers: "
                                 r"(AttributeError|PicklingError): .*lambda"),
    ("encoder", wrong_latent, {}, r"declares latent_shape \(4, 8\) but returns tokens of shape \(2, 5, 8\)"),
    ("loss", per_sample_loss, {}, r"^loss 'broken': output shape \(4,\) but expected \(\) = a scalar"),
    ("head", stray_tensor, {}, r"tensor attribute bias_shift is not a parameter or buffer"),
    ("head", fixed_device, {}, r"after \.to\('meta'\) raised RuntimeError: .*device"),
    ("head", unsaved, {}, r"a fresh build loaded with its state_dict gives different outputs"),
    ("head", unseeded, {}, r"two builds under one seed differ in fc\.bias"),
    ("augment", unclamped, {}, r"returns values in \[0\.5.*images stay in \[0, 1\]"),
    ("augment", hard_targets, {}, r"returns targets \(4,\) torch\.int64 .*expected soft targets \(4, 7\) float"),
    ("head", takes_kwargs, {}, r"factory takes_kwargs takes \*\*kwargs"),
    ("head", unannotated, {}, r"parameter 'dropout' of factory unannotated has no type annotation"),
    ("head", dead_parameter, {"dropout": 0.1},
     r"rejects params \{'dropout': 0\.1\}: model\.head\.dropout: unknown parameter"),
]


@pytest.mark.parametrize(("kind", "factory", "params", "message"), BROKEN, ids=[b[1].__name__ for b in BROKEN])
def test_a_broken_component_fails_with_a_message_naming_the_problem(kind, factory, params, message, one_thread):
    registry = Registry()
    registry.add(Component(kind, "broken", factory, plugin="test"))
    with pytest.raises(ConformanceError, match=message):
        check_component(kind, "broken", params, registry=registry)


def test_an_unregistered_or_misattributed_component_is_named():
    with pytest.raises(ConformanceError, match=r"^head 'nope': is not registered; installed heads: linear, mlp"):
        check_head("nope")
    with pytest.raises(ConformanceError, match=r"^head 'linear': is registered by fer-core, not by fer-mine$"):
        check_head("linear", plugin="fer-mine")


def test_the_report_lists_every_check(one_thread):
    report = check_head("linear")
    assert report.passed == list(CHECK_NAMES) and report.plugin == "fer-core"
    report = check_head("linear", skip=("pickle",))
    assert "pickle" not in report.passed and report.skipped["pickle"] == "skipped by the caller"
    for wrong in ("speed", "builds"):
        with pytest.raises(ValueError, match="cannot skip"):
            check_head("linear", skip=(wrong,))
