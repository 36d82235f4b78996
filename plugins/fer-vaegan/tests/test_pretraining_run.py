"""`task: pretrain` end to end with the VAE-GAN: run directory, exact resume, the pretrained encoder
in a classifier, `fer generate`, and the errors for checkpoints of the wrong kind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from fer_core.data.pack import make_synth_dataset
from fer_core.errors import CheckpointError, RecipeError
from fer_core.generate import generate
from fer_core.model import build_model
from fer_core.plugins import get_registry, reset
from fer_core.recipe import load_recipe
from fer_core.train import run as run_pretrain  # the one loop runs the pretraining task

RECIPE = """
name: tiny-vaegan
task: pretrain
seed: 3
data: {{root: {root}, image_size: 32, num_workers: 0, shuffle_buffer: 64}}
model:
  encoder: {{name: vaegan, latent_dim: 16, widths: [8, 16, 32], disc_body: resnet10t}}
augment:
  sample:
    - {{name: resize, size: 32}}
    - {{name: hflip, p: 0.5}}
    - {{name: rotation, degrees: 10}}
optim: {{name: adam, lr: 2.0e-3, betas: [0.5, 0.999], weight_decay: 0.0}}
train: {{epochs: 2, batch_size: 32, log_every: 2, keep: 2}}
eval: {{batch_size: 64}}
"""


@pytest.fixture(autouse=True)
def _fresh_plugin_host(one_thread):
    reset()


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "data"
    make_synth_dataset(root, n=210, size=32, seed=1, progress=False, shard_size=40)
    return root


@pytest.fixture(scope="module")
def recipe_path(tmp_path_factory, synth) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "tiny-vaegan.yaml"
    path.write_text(RECIPE.format(root=synth))
    return path


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, recipe_path) -> Path:
    """A finished two-epoch pretraining run (with epoch checkpoints kept)."""
    torch.set_num_threads(1)
    reset()
    recipe = load_recipe(recipe_path, registry=get_registry())
    return run_pretrain(recipe, out=str(tmp_path_factory.mktemp("runs")))


def test_pretraining_writes_a_complete_run_directory(pretrained):
    for name in ("recipe.yaml", "metrics.jsonl", "summary.json", "checkpoints/last.pt", "checkpoints/best.pt",
                 "checkpoints/epoch-0001.pt", "samples/epoch-0002.png"):
        assert (pretrained / name).is_file(), name
    assert list((pretrained / "tensorboard").iterdir())
    summary = json.loads((pretrained / "summary.json").read_text())
    assert summary["task"] == "pretrain" and summary["epochs"] == 2
    assert summary["val_l1_after"] < summary["val_l1_before"]
    state = torch.load(pretrained / "checkpoints" / "last.pt", weights_only=True)
    assert not any("disc" in key for key in state["model"])
    assert state["pretrain"]["discriminator"] and state["pretrain"]["opt_d"]["state"]
    epochs = [json.loads(line) for line in (pretrained / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in epochs if r["kind"] == "epoch"] == [0, 1, 2]
    assert {"train_l1", "train_d_loss", "val_l1", "val_kl"} <= set(epochs[-1])


def test_resume_after_the_first_epoch_is_bit_identical(pretrained, tmp_path):
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(pretrained, resumed_dir)
    checkpoints = resumed_dir / "checkpoints"
    shutil.copy(checkpoints / "epoch-0001.pt", checkpoints / "last.pt")  # as if stopped after epoch 1
    for name in ("epoch-0002.pt", "best.pt"):
        (checkpoints / name).unlink()
    run_pretrain(None, resume=resumed_dir)
    straight = torch.load(pretrained / "checkpoints" / "last.pt", weights_only=True)
    resumed = torch.load(checkpoints / "last.pt", weights_only=True)
    assert resumed["counters"]["epoch"] == 2 and resumed["counters"]["step"] == straight["counters"]["step"]
    for key, value in straight["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    for key, value in straight["pretrain"]["discriminator"].items():
        assert torch.equal(resumed["pretrain"]["discriminator"][key], value), key
    for group in ("opt_g", "opt_d"):
        for index, slot in straight["pretrain"][group]["state"].items():
            assert torch.equal(resumed["pretrain"][group]["state"][index]["exp_avg"], slot["exp_avg"])
    assert resumed["counters"]["initial"] == straight["counters"]["initial"]
    lines = (resumed_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines if json.loads(line)["kind"] == "epoch"] == [0, 1, 2]


def classifier_recipe(encoder: dict) -> dict:
    return {"data": {"image_size": 32, "channels": 3}, "augment": {"batch": []},
            "model": {"encoder": encoder, "backbone": {"name": "latent_vit", "embed_dim": 16, "depth": 1, "heads": 2},
                      "head": {"name": "linear"}}}


def test_the_pretrained_encoder_yields_z_in_a_classifier_without_its_discriminator(pretrained):
    encoder = {"name": "vaegan", "checkpoint": str(pretrained), "freeze": True}
    model = build_model(classifier_recipe(encoder), get_registry(), ["a", "b", "c"]).eval()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        tokens = model.encoder(images)
        logits, _ = model(images)
    assert tokens.shape == (2, 1, 16) and logits.shape == (2, 3)
    assert not any("disc" in key for key in model.state_dict())
    best = torch.load(pretrained / "checkpoints" / "best.pt", weights_only=True)["model"]
    for key, value in best.items():
        assert torch.equal(model.encoder.state_dict()[key], value), key
    assert not any(p.requires_grad for p in model.encoder.parameters())  # frozen by default


def test_checkpoints_of_the_wrong_kind_are_clear_errors(pretrained, tmp_path):
    registry = get_registry()
    build = lambda **params: registry.build("encoder", {"name": "vaegan", **params}, "model.encoder",  # noqa: E731
                                            {"image_size": 32, "in_chans": 3})
    with pytest.raises(CheckpointError, match="not found; pretrain a VAE-GAN first"):
        build(checkpoint=str(tmp_path / "missing"))
    classify = torch.load(pretrained / "checkpoints" / "last.pt", weights_only=True)
    classify["recipe"] = {**classify["recipe"], "task": "classify"}
    del classify["pretrain"]
    torch.save(classify, tmp_path / "classifier.pt")
    with pytest.raises(CheckpointError, match="a classification checkpoint, not a VAE-GAN pretraining run"):
        build(checkpoint=str(tmp_path / "classifier.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        build(checkpoint=str(tmp_path / "junk.pt"))
    with pytest.raises(CheckpointError, match="pretrained with latent_dim 16, not 32"):
        build(checkpoint=str(pretrained), latent_dim=32)


def test_generate_writes_a_grid_and_reconstructions(pretrained, tmp_path):
    for mode in ("sample", "interpolate"):
        out = tmp_path / f"{mode}.png"
        result = CliRunner().invoke(generate, [str(pretrained), "--n", "16", "--mode", mode, "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert str(out) in result.output.replace("\n", "")
        with Image.open(out) as grid:
            assert grid.size == (4 * 34 + 2, 4 * 34 + 2)  # 4x4 faces of 32 px, 2 px padding
        with Image.open(tmp_path / f"{mode}-reconstructions.png") as pairs:
            assert pairs.size == (16 * 34 + 2, 4 * 34 + 2)  # 32 val faces and their reconstructions, 8 pairs a row


def test_eval_and_predict_on_a_pretraining_run_say_what_to_do(pretrained, tmp_path):
    from fer_core.cli import main

    face = tmp_path / "face.png"
    Image.new("RGB", (32, 32), (128, 100, 90)).save(face)
    for args in (["eval", str(pretrained)], ["predict", str(pretrained), str(face)]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code != 0
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "a pretraining run (task: pretrain) has no classifier" in lines[0], result.output


def test_pretraining_recipes_take_an_encoder_only(recipe_path):
    registry = get_registry()
    recipe = load_recipe(recipe_path, registry=registry)
    assert set(recipe["model"]) == {"encoder"}
    with pytest.raises(RecipeError, match="model.backbone: a pretraining recipe"):
        load_recipe(recipe_path, ["model.backbone={name: latent_vit}"], registry)
    with pytest.raises(RecipeError, match="needs an encoder that trains itself"):
        load_recipe(recipe_path, ["model.encoder={name: identity}"], registry)
