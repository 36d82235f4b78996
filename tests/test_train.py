"""`fer run` end to end on a tiny synthetic set: learning, resume, checkpoints, eval, predict."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from cli_runs import ENV, FER, fer_run, killed_and_resumed  # noqa: E402
from fer_core.cli import main  # noqa: E402
from fer_core.data.pack import make_synth_dataset  # noqa: E402
from fer_core.plugins import get_registry  # noqa: E402
from fer_core.recipe import load_recipe  # noqa: E402
from fer_core.registry import Component  # noqa: E402
from fer_core.steps import NonFiniteLoss  # noqa: E402
from fer_core.train import run  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


RECIPE = """
name: tiny
seed: 3
data: {{root: {root}, image_size: 32, channels: 3, num_workers: {workers}, shuffle_buffer: 64}}
model:
  backbone: {{name: timm, model: resnet10t}}
  head: {{name: linear}}
optim: {{name: adamw, lr: 3.0e-3}}
schedule: {{name: cosine, warmup_epochs: 1}}
train: {{epochs: {epochs}, batch_size: 32, log_every: 2}}
eval: {{batch_size: 128}}
"""


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "data"
    make_synth_dataset(root, n=420, size=32, seed=1, progress=False, shard_size=40)
    return root


@pytest.fixture(scope="module")
def synth_large(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth_large") / "data"
    make_synth_dataset(root, n=1400, size=32, seed=2, progress=False, shard_size=100)
    return root


def write_recipe(tmp_path: Path, root: Path, epochs: int = 3, workers: int = 0) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(RECIPE.format(root=root, epochs=epochs, workers=workers))
    return path


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


def test_run_learns_and_writes_a_complete_run_directory(tmp_path, synth_large):
    recipe = load_recipe(write_recipe(tmp_path, synth_large, epochs=8), registry=get_registry())
    run_dir = run(recipe, out=str(tmp_path / "runs"))
    for name in ("recipe.yaml", "metrics.jsonl", "report.json", "report.md", "summary.json", "confusion.png",
                 "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tensorboard").iterdir()), "no TensorBoard events"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test"]["accuracy"] > 0.35, summary  # chance is 1/7; 32 px and 980 faces, 8 short epochs
    assert summary["parameters"] == summary["trainable_parameters"] > 0
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["counters"]["epoch"] == 8 and state["classes"] == summary_classes(run_dir)
    assert state["versions"]["fer-core"]
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in epochs if r["kind"] == "epoch"] == list(range(1, 9))


def summary_classes(run_dir: Path) -> list[str]:
    return json.loads((run_dir / "report.json").read_text())["classes"]


def test_resume_after_kill_is_bit_identical(tmp_path, synth):
    recipe_path = write_recipe(tmp_path, synth, epochs=4, workers=1)
    reference = final_weights(fer_run(recipe_path, tmp_path / "straight", timeout=300))
    run_dir = killed_and_resumed(recipe_path, tmp_path / "killed", epochs=4, after=0.3, timeout=300)
    resumed = final_weights(run_dir)
    assert resumed.keys() == reference.keys()
    for key in reference:
        assert torch.equal(resumed[key], reference[key]), key
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "epoch"]
    assert epochs == [1, 2, 3, 4]


class _NanAfter(torch.nn.Module):
    """Cross-entropy that turns NaN after ``calls`` steps."""

    def __init__(self, calls: int):
        super().__init__()
        self.calls = calls

    def forward(self, logits, targets):
        self.calls -= 1
        loss = torch.nn.functional.cross_entropy(logits.float(), targets)
        return loss * float("nan") if self.calls < 0 else loss


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, synth):
    registry = get_registry()
    registry.add(Component("loss", "nan_after", lambda calls=0: _NanAfter(calls), plugin="test"))
    recipe = load_recipe(write_recipe(tmp_path, synth), ["loss={name: nan_after, calls: 12}"], registry)
    with pytest.raises(NonFiniteLoss, match="loss became nan at epoch 2.*last.pt still holds epoch 1"):
        run(recipe, out=str(tmp_path / "runs"))
    run_dir = next((tmp_path / "runs" / "tiny").iterdir())
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["counters"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_a_non_finite_loss_is_caught_within_log_every_steps(tmp_path, synth):
    """The step loop reads the loss from the device only every log_every steps, and still stops there."""
    registry = get_registry()
    registry.add(Component("loss", "nan_after", lambda calls=0: _NanAfter(calls), plugin="test"))
    recipe = load_recipe(write_recipe(tmp_path, synth), ["loss={name: nan_after, calls: 3}", "train.log_every=4"],
                         registry)
    with pytest.raises(NonFiniteLoss, match=r"loss became nan at epoch 1, steps 1-4; the run stopped and no epoch"):
        run(recipe, out=str(tmp_path / "runs"))


def test_early_stopping_stops_after_patience(tmp_path, synth):
    recipe = load_recipe(write_recipe(tmp_path, synth, epochs=10), [
        "optim.lr=1.0e-12", "schedule.name=none", "train.early_stopping={metric: f1_macro, patience: 2}"],
        get_registry())
    run_dir = run(recipe, out=str(tmp_path / "runs"))
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["counters"]["epoch"] == 3 and state["counters"]["best_epoch"] == 1


def test_eval_reproduces_run_metrics_and_predict_reads_files(tmp_path, synth):
    recipe = load_recipe(write_recipe(tmp_path, synth, epochs=2), registry=get_registry())
    run_dir = run(recipe, out=str(tmp_path / "runs"))
    report = json.loads((run_dir / "report.json").read_text())
    result = CliRunner().invoke(main, ["eval", str(run_dir), "--json"])
    assert result.exit_code == 0, result.output
    evaluated = json.loads(result.output)
    for key in ("accuracy", "f1_macro", "f1_weighted", "confusion"):
        assert evaluated[key] == report[key], key

    images = []
    for i, color in enumerate(["red", "blue"]):
        from PIL import Image

        path = tmp_path / f"face{i}.png"
        Image.new("RGB", (40, 40), color).save(path)
        images.append(str(path))
    result = CliRunner().invoke(main, ["predict", str(run_dir), *images, "--json"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [r["image"] for r in lines] == images
    for r in lines:
        assert r["label"] in report["classes"] and 0 < r["confidence"] <= 1
        assert abs(sum(t["probability"] for t in r["top_k"]) - 1) < 1 + 1e-6

    bad = CliRunner().invoke(main, ["predict", str(run_dir), str(tmp_path / "missing.png")])
    assert bad.exit_code == 2 and "no such image file" in bad.output


def test_ddp_two_processes_match_one(tmp_path, synth):
    recipe_path = write_recipe(tmp_path, synth, epochs=3)
    curves = {}
    for nproc in (1, 2):
        out = tmp_path / f"n{nproc}"
        proc = subprocess.run([*FER, "run", str(recipe_path), "--nproc", str(nproc), "--out", str(out)],
                              env=ENV, capture_output=True, text=True, timeout=400)
        assert proc.returncode == 0, proc.stderr[-2000:]
        run_dir = next((out / "tiny").iterdir())
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        curves[nproc] = [r["train_loss"] for r in records if r["kind"] == "epoch"]
        assert json.loads((run_dir / "summary.json").read_text())["processes"] == nproc
    assert len(curves[1]) == len(curves[2]) == 3
    for one, two in zip(curves[1], curves[2]):
        assert abs(one - two) < 0.15 * max(one, two), curves
