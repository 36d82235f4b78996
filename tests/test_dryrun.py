"""Dry build: a plugin whose component breaks its kind's contract is named, with its distribution,
version, the contract and the shapes, by `fer recipe check` and by `fer run` before any run directory exists."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from fer_core.cli import main
from fer_core.data.pack import make_synth_dataset

BAD_HOOKS = """
    from fer_core import hookimpl

    IMPL = "fakeplug_bad_impl"

    @hookimpl
    def register_encoders(register):
        register("badtokens", IMPL + ":BadTokens", summary="declares 4x8 tokens, returns 4x9")

    @hookimpl
    def register_backbones(register):
        register("hogcnn", IMPL + ":HogCnn", summary="declares 65 features, returns 64")
        register("crashes", IMPL + ":Crashes", summary="raises in forward")
        register("nofeatures", IMPL + ":NoFeatures", summary="declares no num_features")
        register("tokens", IMPL + ":Tokens", summary="reads latent tokens")

    @hookimpl
    def register_heads(register):
        register("badhead", IMPL + ":FIVE", summary="a target that is not callable")
        register("wronghead", IMPL + ":WrongHead", summary="returns one logit too many")
        register("buildfails", IMPL + ":build_fails", summary="raises while building")

    @hookimpl
    def register_losses(register):
        register("vector", IMPL + ":VectorLoss", summary="returns a vector, not a scalar")

    @hookimpl
    def register_augments(register):
        register("shrink", IMPL + ":Shrink", summary="a batch augment that crops the batch")
"""
BAD_IMPL = """
    import torch
    from torch import nn

    FIVE = 5

    class BadTokens(nn.Module):
        latent_shape = (4, 8)
        input_size = 24
        def __init__(self):
            super().__init__()
        def forward(self, images):
            return torch.zeros(images.shape[0], 4, 9)

    class HogCnn(nn.Module):
        input_kind = "image"
        num_features = 65
        def __init__(self, image_size: int = 24, in_chans: int = 3):
            super().__init__()
            self.fc = nn.Linear(in_chans, 64)
        def forward(self, images):
            return self.fc(images.mean((2, 3)))

    class Crashes(HogCnn):
        num_features = 64
        def forward(self, images):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    class NoFeatures(HogCnn):
        num_features = None

    class Tokens(nn.Module):
        input_kind = "latent"
        num_features = 8
        def __init__(self, latent_shape=None):
            super().__init__()
        def forward(self, tokens):
            return tokens.mean(1)

    class WrongHead(nn.Module):
        def __init__(self, num_features: int, num_classes: int):
            super().__init__()
            self.fc = nn.Linear(num_features, num_classes + 1)
        def forward(self, features):
            return self.fc(features)

    def build_fails(num_features: int, num_classes: int):
        raise ValueError("hidden size must be even")

    class VectorLoss(nn.Module):
        def __init__(self, num_classes: int):
            super().__init__()
        def forward(self, logits, targets):
            return logits.sum(1)

    class Shrink(nn.Module):
        stage = "batch"
        spaces = ("image",)
        def __init__(self):
            super().__init__()
        def forward(self, x, targets):
            return x[:, :, 1:], targets
"""
WHO = "(fer-badplugin 0.1)"
CASES = [
    ({"backbone": {"name": "hogcnn"}},
     f"model.backbone 'hogcnn' {WHO} returned [2, 64] but declares num_features 65: expected [2, 65]"),
    ({"backbone": {"name": "crashes"}},
     f"model.backbone 'crashes' {WHO} failed on inputs [2, 3, 24, 24]: RuntimeError: mat1 and mat2 shapes cannot "
     f"be multiplied"),
    ({"backbone": {"name": "nofeatures"}},
     f"model.backbone 'nofeatures' {WHO} declares num_features None; it must be a positive int"),
    ({"encoder": {"name": "badtokens"}, "backbone": {"name": "tokens"}},
     f"model.encoder 'badtokens' {WHO} returned [2, 4, 9] but declares latent_shape (4, 8): expected [2, 4, 8]"),
    ({"head": {"name": "badhead"}},
     f"model.head 'badhead' {WHO}: target fakeplug_bad_impl:FIVE is not callable (it is 5); the plugin must name "
     f"a factory function or class"),
    ({"head": {"name": "wronghead"}},
     f"model.head 'wronghead' {WHO} returned [2, 8] but the head of 7 classes must return [2, 7]"),
    ({"head": {"name": "buildfails"}},
     f"model.head 'buildfails' {WHO} failed to build: ValueError: hidden size must be even"),
    ({"loss": {"name": "vector"}},
     f"loss 'vector' {WHO} returned [2] for logits [2, 7] and class indices; a loss returns a finite scalar tensor"),
    ({"augment": {"batch": [{"name": "shrink"}]}},
     f"augment.batch[0] 'shrink' {WHO} returned ([2, 3, 23, 24], [2]) but a batch augment returns "
     f"(inputs [2, 3, 24, 24], targets [2] or [2, 7])"),
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_synth_dataset(tmp_path_factory.mktemp("dry") / "data", n=70, size=24, seed=0, progress=False)


@pytest.fixture
def bad_plugin(fake_plugins):
    fake_plugins.module("fakeplug_bad_impl", BAD_IMPL)
    fake_plugins.dist("fer-badplugin", {"bad": BAD_HOOKS}, version="0.1")


def recipe_with(tmp_path: Path, data: Path, parts: dict) -> Path:
    model = {"backbone": {"name": "timm", "model": "resnet10t"}}
    model.update({k: v for k, v in parts.items() if k in ("encoder", "backbone", "head")})
    lines = [f"data: {{root: {data}, image_size: 24, num_workers: 0}}", f"model: {model}",
             "train: {epochs: 1, batch_size: 16}"]
    lines += [f"{k}: {v}" for k, v in parts.items() if k in ("loss", "augment")]
    path = tmp_path / "bad.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    assert result.stderr.count("\n") == 1
    return result.stderr.removeprefix("error: ").rstrip("\n")


@pytest.mark.parametrize(("parts", "message"), CASES, ids=[m.split(" ")[1].strip("'") for _, m in CASES])
def test_a_contract_violation_is_one_line_naming_the_component_and_plugin(bad_plugin, data, tmp_path, parts,
                                                                         message, one_thread):
    recipe = recipe_with(tmp_path, data, parts)
    assert one_line_error(CliRunner().invoke(main, ["recipe", "check", str(recipe)])) == message
    out = tmp_path / "runs"
    assert one_line_error(CliRunner().invoke(main, ["run", str(recipe), "--out", str(out)])) == message
    assert not out.exists()  # failed before the run directory was made


def test_a_good_recipe_passes_the_dry_build_and_reports_the_shapes(data, tmp_path, one_thread):
    recipe = recipe_with(tmp_path, data, {})
    result = CliRunner().invoke(main, ["recipe", "check", str(recipe)])
    assert result.exit_code == 0, result.output
    assert result.stdout == ("ok bad: identity -> timm -> linear (data 7 classes; dry build images [2, 3, 24, 24] "
                             "-> [2, 3, 24, 24] -> [2, 512] -> [2, 7], loss checked)\n")


def test_the_fixture_plugin_still_lists_as_loaded(bad_plugin):
    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 0
    assert "failed" not in result.output  # its faults show when a component is resolved, not at listing


def test_an_unknown_timm_model_and_a_missing_weights_file_fail_the_check(data, tmp_path):
    recipe = recipe_with(tmp_path, data, {})
    result = CliRunner().invoke(main, ["recipe", "check", str(recipe), "-s", "model.backbone.model=resnet1000"])
    assert one_line_error(result).startswith("model.backbone.model: timm has no model 'resnet1000'; similar: ")
    result = CliRunner().invoke(main, ["recipe", "check", str(recipe), "-s", "model.backbone.pretrained_file=w.pth"])
    assert one_line_error(result).startswith("model.backbone.pretrained_file: w.pth not found")


def test_a_missing_data_root_fails_the_check(tmp_path):
    recipe = recipe_with(tmp_path, tmp_path / "nowhere", {})
    message = one_line_error(CliRunner().invoke(main, ["recipe", "check", str(recipe)]))
    assert message == (f"data.root: {tmp_path / 'nowhere'} does not exist; pack a data set there with "
                       f"`fer data pack` or `fer data synth`, or fix the path")
    assert textwrap.shorten(message, 300) == message
