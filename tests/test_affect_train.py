"""The affect tasks on the one loop: they learn, resume bit-identically, work with latent backbones
unchanged, and a recipe asking for valence/arousal on data without them fails at `fer recipe check`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from cli_runs import fer_run, killed_and_resumed  # noqa: E402
from data_fixtures import pack_affect_colour_set, pack_colour_set  # noqa: E402
from fer_core.cli import main  # noqa: E402
from fer_core.plugins import get_registry  # noqa: E402
from fer_core.recipe import load_recipe  # noqa: E402
from fer_core.train import run  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


RECIPE = """
name: {name}
seed: 3
task: {task}
data: {{root: {root}, image_size: 24, channels: 3, num_workers: {workers}, shuffle_buffer: 64}}
model:
  encoder: {encoder}
  backbone: {backbone}
  head: {{name: {head}}}
affect: {{loss: {{name: ccc_mse}}}}
optim: {{name: adamw, lr: 3.0e-3}}
schedule: {{name: cosine, warmup_epochs: 1}}
train: {{epochs: {epochs}, batch_size: 32, log_every: 2}}
eval: {{batch_size: 128}}
"""
CNN = "{name: timm, model: resnet10t}"
IDENTITY = "{name: identity}"


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    """Three colours whose brightness sets valence/arousal (tests/data_fixtures.py): learnt in a few epochs."""
    return pack_affect_colour_set(tmp_path_factory.mktemp("colours"), {"train": 240, "val": 60, "test": 60})


def write(tmp_path: Path, root: Path, task: str, head: str, epochs: int, *, name: str = "tiny",
          workers: int = 0, encoder: str = IDENTITY, backbone: str = CNN) -> Path:
    path = tmp_path / f"{name}.yaml"
    text = RECIPE.format(name=name, task=task, root=root, head=head, epochs=epochs, workers=workers,
                         encoder=encoder, backbone=backbone)
    path.write_text(text if task != "classify" else text.replace("affect: {loss: {name: ccc_mse}}\n", ""))
    return path


def epochs_of(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "epoch"]


def test_multitask_learns_expressions_and_affect_well_above_constant(tmp_path, faces):
    # best.pt by the mean CCC: by accuracy, the first epoch at 100 % would win, before affect is learnt
    recipe = load_recipe(write(tmp_path, faces, "expression+affect", "multitask", 4), ["eval.metric=ccc_mean"],
                         registry=get_registry())
    run_dir = run(recipe, out=str(tmp_path / "runs"))
    summary = json.loads((run_dir / "summary.json").read_text())
    test = summary["test"]
    assert summary["task"] == "expression+affect" and summary["outputs"] == {"logits": 3, "va": 2}
    # a constant predictor has CCC 0, accuracy at most the largest class share (1/3 here)
    assert test["accuracy"] > 0.8, test
    assert test["valence_ccc"] > 0.6 and test["arousal_ccc"] > 0.5, test
    report = json.loads((run_dir / "report.json").read_text())
    assert report["confusion"] and report["affect"]["valence"]["ccc"] == test["valence_ccc"]
    assert (run_dir / "va_scatter.png").is_file() and (run_dir / "confusion.png").is_file()
    # per-sample error below the spread of the truth: better than predicting the mean
    spread = json.loads((faces / "dataset.json").read_text())["splits"]["test"]["va"]
    assert test["valence_rmse"] < spread["valence"]["std"] and test["arousal_rmse"] < spread["arousal"]["std"]
    train = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "train"]
    assert {"affect_loss", "expression_loss", "accuracy"} <= set(train[0])


def test_affect_alone_learns_and_picks_best_by_mean_ccc(tmp_path, faces):
    recipe = load_recipe(write(tmp_path, faces, "affect", "va", 4), registry=get_registry())
    assert recipe["eval"]["metric"] == "ccc_mean"
    run_dir = run(recipe, out=str(tmp_path / "runs"))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test"]["valence_ccc"] > 0.6 and "accuracy" not in summary["test"], summary["test"]
    epochs = epochs_of(run_dir)
    best = max(range(len(epochs)), key=lambda i: epochs[i]["val_ccc_mean"])
    assert summary["best_epoch"] == best + 1
    assert summary["best_val_ccc_mean"] == pytest.approx(epochs[best]["val_ccc_mean"])
    assert not (run_dir / "confusion.png").exists() and (run_dir / "va_scatter.png").is_file()


def test_multitask_resume_after_kill_is_bit_identical(tmp_path, faces):
    recipe_path = write(tmp_path, faces, "expression+affect", "multitask", 3, workers=1)
    straight = fer_run(recipe_path, tmp_path / "straight", timeout=400)
    reference = torch.load(straight / "checkpoints" / "last.pt", weights_only=True)
    run_dir = killed_and_resumed(recipe_path, tmp_path / "killed", epochs=3, after=0.5, timeout=400)
    resumed = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert resumed["model"].keys() == reference["model"].keys()
    for key, value in reference["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    assert [r["epoch"] for r in epochs_of(run_dir)] == [1, 2, 3]


@pytest.mark.parametrize("backbone", [
    "{name: latent_vit, embed_dim: 32, depth: 1, heads: 2}",
    "{name: hybrid_vit, model: test_vit, strategy: full}",
])
def test_latent_backbones_train_under_the_affect_tasks_unchanged(tmp_path, faces, backbone):
    encoder = "{name: timm_tokens, model: resnet10t, stage: 2, freeze: false}"
    for task, head in (("affect", "va"), ("expression+affect", "multitask")):
        recipe = load_recipe(write(tmp_path, faces, task, head, 1, encoder=encoder, backbone=backbone,
                                   name=f"latent-{head}"), registry=get_registry())
        run_dir = run(recipe, out=str(tmp_path / "runs"))
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["task"] == task and np.isfinite(summary["test"]["valence_ccc"])
        assert ("accuracy" in summary["test"]) == (task == "expression+affect")


def test_recipe_check_refuses_affect_on_data_without_va(tmp_path):
    colours = pack_colour_set(tmp_path / "colours", {"train": 4, "val": 2})
    recipe = write(tmp_path, colours, "affect", "va", 1)
    result = CliRunner().invoke(main, ["recipe", "check", str(recipe)])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert "\n" not in line and "valence/arousal" in line and str(colours) in line, line
    classify = write(tmp_path, colours, "classify", "linear", 1, name="plain")
    assert CliRunner().invoke(main, ["recipe", "check", str(classify)]).exit_code == 0
