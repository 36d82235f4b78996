"""The one training loop (fer_core.train) driving both tasks: DDP for pretraining, early-stopping modes,
EMA warm-up, `fer eval --tta`, the documented checkpoint and run directory, declared attributes, per-part
learning rates and a plugin written for the five hooks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from fer_core.cli import main
from fer_core.data.pack import make_synth_dataset
from fer_core.errors import PluginError
from fer_core.model import build_model
from fer_core.plugins import get_registry
from fer_core.recipe import load_recipe
from fer_core.registry import Component
from fer_core.runs import CHECKPOINT_KEYS
from fer_core.train import run

sys.path.insert(0, str(Path(__file__).parent))
from data_fixtures import pack_colour_set  # noqa: E402
from serve_fixtures import RECIPE as CLASSIFY  # noqa: E402  (the tiny resnet10t recipe of these tests)

pytestmark = pytest.mark.usefixtures("one_thread")

FER = [sys.executable, "-m", "fer_core"]

# A deterministic, BatchNorm-free encoder with the pretraining protocol, installed as a distribution
# (a .dist-info folder on PYTHONPATH) so that torchrun's processes find it like any plugin.
TINY_AE = '''
import os
import signal

import torch
from torch import nn


class TinyAE(nn.Module):
    trainable = True
    cacheable = True

    def __init__(self, image_size, in_chans, latent_dim):
        super().__init__()
        self.input_size, self.latent_shape = image_size, (1, latent_dim)
        width = in_chans * image_size * image_size
        self.enc, self.dec = nn.Linear(width, latent_dim), nn.Linear(latent_dim, width)

    def forward(self, images):
        return self.enc(images.flatten(1)).unsqueeze(1)

    def reconstruct(self, images):
        return torch.sigmoid(self.dec(self.enc(images.flatten(1)))).view_as(images)

    def configure_pretraining(self, optim, device, amp_dtype=None):
        self.opt = torch.optim.SGD(self.parameters(), lr=optim["lr"])

    def pretrain_step(self, images, autocast):
        self.steps = getattr(self, "steps", 0) + 1
        if self.steps == int(os.environ.get("TINYAE_KILL_AT_STEP", 0)):  # a crash in the middle of an epoch
            os.kill(os.getpid(), signal.SIGKILL)
        with autocast():
            loss = (self.reconstruct(images) - images).pow(2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        l1 = (self.reconstruct(images) - images).abs().mean()
        return {"loss": loss.detach(), "l1": l1.detach()}

    def pretrain_eval(self, images):
        return {"l1": (self.reconstruct(images) - images).abs().mean()}

    def pretrain_state(self):
        return {"opt": self.opt.state_dict()}

    def load_pretrain_state(self, state):
        self.opt.load_state_dict(state["opt"])

    def pretrain_parameters(self):
        return list(self.parameters())


def build(image_size: int = 16, in_chans: int = 3, latent_dim: int = 8):
    return TinyAE(image_size, in_chans, latent_dim)
'''

PRETRAIN = """
name: tinyae
task: pretrain
seed: 0
data: {{root: {root}, image_size: 16, num_workers: 0, shuffle_buffer: 1}}
model: {{encoder: {{name: tiny_ae}}}}
optim: {{name: sgd, lr: 0.5}}
train: {{epochs: 3, batch_size: {batch}, log_every: 1, keep: 3}}
eval: {{batch_size: 64}}
"""


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "data"
    make_synth_dataset(root, n=420, size=32, seed=1, progress=False, shard_size=40)
    return root


def classify_recipe(tmp_path: Path, root: Path, epochs: int, overrides=()) -> dict:
    path = tmp_path / "tiny.yaml"
    path.write_text(CLASSIFY.format(root=root))
    return load_recipe(path, ["name=tiny", f"train.epochs={epochs}", "schedule.name=none", *overrides],
                       get_registry())


def epochs_of(run_dir: Path) -> list[dict]:
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "epoch"]


def install_tiny_ae(site: Path) -> dict[str, str]:
    site.mkdir()
    (site / "tinyae_model.py").write_text(TINY_AE)
    (site / "tinyae_plugin.py").write_text(textwrap.dedent('''
        from fer_core import hookimpl


        @hookimpl
        def register_encoders(register):
            register("tiny_ae", "tinyae_model:build", summary="linear autoencoder (test)")
    '''))
    dist = site / "fer_tinyae-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fer-tinyae\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[fer_core]\ntinyae = tinyae_plugin\n")
    return {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_pretraining_in_two_processes_matches_one(tmp_path):
    root = tmp_path / "faces"
    make_synth_dataset(root, n=60, size=16, seed=1, progress=False, shard_size=20)
    train_count = json.loads((root / "dataset.json").read_text())["splits"]["train"]["count"]
    assert train_count % 2 == 0  # full-batch steps: each process averages the gradient of half the batch
    recipe = tmp_path / "tinyae.yaml"
    recipe.write_text(PRETRAIN.format(root=root, batch=train_count))
    env = install_tiny_ae(tmp_path / "site")
    results = {}
    for nproc in (1, 2):
        out = tmp_path / f"n{nproc}"
        proc = subprocess.run([*FER, "run", str(recipe), "--nproc", str(nproc), "--out", str(out)], env=env,
                              capture_output=True, text=True, timeout=400)
        assert proc.returncode == 0, proc.stderr[-2000:]
        run_dir = next((out / "tinyae").iterdir())
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["task"] == "pretrain" and summary["processes"] == nproc
        state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
        assert set(state) == {*CHECKPOINT_KEYS, "pretrain"} and state["optimizer"] is None
        assert (run_dir / "samples" / "epoch-0003.png").is_file()
        results[nproc] = (state["model"], [r["val_l1"] for r in epochs_of(run_dir)], summary)
    (one, one_l1, one_summary), (two, two_l1, two_summary) = results[1], results[2]
    assert one_l1[-1] < one_l1[0]  # it learns
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-6)
    assert two_l1 == pytest.approx(one_l1, rel=1e-5)
    assert two_summary["test_best"]["l1"] == pytest.approx(one_summary["test_best"]["l1"], rel=1e-5)


def test_pretraining_resumes_bit_identically_after_sigkill(tmp_path):
    root = tmp_path / "faces"
    make_synth_dataset(root, n=60, size=16, seed=1, progress=False, shard_size=20)
    recipe = tmp_path / "tinyae.yaml"
    recipe.write_text(PRETRAIN.format(root=root, batch=16).replace("shuffle_buffer: 1", "shuffle_buffer: 16"))
    env = install_tiny_ae(tmp_path / "site")
    subprocess.run([*FER, "run", str(recipe), "--out", str(tmp_path / "straight")], env=env, check=True,
                   capture_output=True, timeout=300)
    killed = subprocess.run([*FER, "run", str(recipe), "--out", str(tmp_path / "killed")], capture_output=True,
                            env={**env, "TINYAE_KILL_AT_STEP": "5"}, timeout=300)  # 3 steps an epoch: in epoch 2
    assert killed.returncode == -9
    run_dir = next((tmp_path / "killed" / "tinyae").iterdir())
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["counters"]["epoch"] == 1
    subprocess.run([*FER, "run", "--resume", str(run_dir)], env=env, check=True, capture_output=True, timeout=300)
    straight = torch.load(next((tmp_path / "straight" / "tinyae").iterdir()) / "checkpoints" / "last.pt",
                          weights_only=True)
    resumed = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    for key, value in straight["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    assert resumed["pretrain"]["opt"]["state"].keys() == straight["pretrain"]["opt"]["state"].keys()
    assert resumed["counters"] == straight["counters"] | {"train_time": resumed["counters"]["train_time"]}
    assert [r["epoch"] for r in epochs_of(run_dir)] == [0, 1, 2, 3]


def test_early_stopping_mode_min_on_accuracy_stops_when_accuracy_stops_falling(tmp_path):
    colours = pack_colour_set(tmp_path / "colours", {"train": 60, "val": 20}, noise=200)
    recipe = classify_recipe(tmp_path, colours, 4, ["train.early_stopping={metric: accuracy, patience: 1, mode: min}",
                                                    "optim.lr=1.0e-5"])
    run_dir = run(recipe, out=str(tmp_path / "runs"))
    accuracy = [r["val_accuracy"] for r in epochs_of(run_dir)]

    def stop_epoch(better) -> int:  # patience 1: the first epoch that does not improve on the best so far
        best = accuracy[0]
        for epoch, value in enumerate(accuracy[1:], 2):
            if not better(value, best):
                return epoch
            best = value
        return 4

    assert len(accuracy) == stop_epoch(lambda value, best: value < best), accuracy  # mode min: falling improves
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    # best.pt still follows eval.metric (accuracy, higher is better)
    assert state["counters"]["best_epoch"] == 1 + accuracy.index(max(accuracy))


def test_ema_warmup_scores_the_recent_weights_of_a_short_run(tmp_path):
    colours = pack_colour_set(tmp_path / "colours", {"train": 60, "val": 20})  # learnt within these 2 epochs
    accuracy = {}
    for warmup in (False, True):
        recipe = classify_recipe(tmp_path, colours, 2, ["train.ema=true", f"train.ema_warmup={str(warmup).lower()}"])
        run_dir = run(recipe, out=str(tmp_path / f"runs-{warmup}"))
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["scored_weights"] == "ema" and summary["ema"] == {"decay": 0.999, "warmup": warmup}
        assert f"warm-up {'on' if warmup else 'off'}" in (run_dir / "report.md").read_text()
        state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
        drift = max((state["ema"][k].float() - state["model"][k].float()).abs().max().item()
                    for k in state["model"] if state["model"][k].is_floating_point())
        accuracy[warmup] = (epochs_of(run_dir)[-1]["val_loss"], drift)
    # a few updates at decay 0.999 leave the EMA at the initial weights; the warm-up follows the training,
    # so the scored weights are the trained ones: far lower validation loss on this quickly learnt set
    assert accuracy[True][1] < 0.5 * accuracy[False][1], accuracy
    assert accuracy[True][0] < 0.5 * accuracy[False][0], accuracy


def test_fer_eval_uses_the_recipes_tta_unless_told(tmp_path, synth):
    recipe = classify_recipe(tmp_path, synth, 1, ["eval.tta=flip"])
    run_dir = run(recipe, out=str(tmp_path / "runs"))
    report = json.loads((run_dir / "report.json").read_text())
    assert report["summary"]["tta"] == "flip"
    default = CliRunner().invoke(main, ["eval", str(run_dir), "--json"])
    plain = CliRunner().invoke(main, ["eval", str(run_dir), "--json", "--tta", "none"])
    assert default.exit_code == plain.exit_code == 0, default.output + plain.output
    default, plain = json.loads(default.output), json.loads(plain.output)
    assert default["tta"] == "flip" and plain["tta"] is None
    assert default["confusion"] == report["confusion"]  # what `fer run` reported
    shown = CliRunner().invoke(main, ["eval", str(run_dir)])
    assert "test-time augmentation: flip (the recipe's eval.tta)" in shown.output

    # the checkpoint and the run directory are laid out as docs/architecture.md says
    assert set(torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)) == set(CHECKPOINT_KEYS)
    doc = (Path(__file__).resolve().parent.parent / "docs" / "architecture.md").read_text()
    table = doc[doc.index("<!-- run-dir -->"):doc.index("<!-- /run-dir -->")].splitlines()[3:-1]
    for line in table:
        name, writer = (cell.strip() for cell in line.strip("|").split("|"))
        if writer.startswith(("the loop", "classification")):  # not pretraining's, nor other commands' files
            assert (run_dir / name.strip("`")).exists(), name


def test_a_missing_declared_attribute_names_the_component_and_its_plugin(tmp_path, synth):
    registry = get_registry()
    registry.add(Component("backbone", "forgetful", lambda: torch.nn.Flatten(), plugin="fer-forgetful"))
    recipe = classify_recipe(tmp_path, synth, 1, ["model.backbone={name: forgetful}"])
    with pytest.raises(PluginError, match=r"model.backbone 'forgetful' \(plugin fer-forgetful\) does not declare "
                                          r"input_kind"):
        build_model(recipe, registry, ["a", "b"])


def test_lr_mult_scales_the_learning_rate_of_a_part(tmp_path, synth):
    recipe = classify_recipe(tmp_path, synth, 1, ["model.head.lr_mult=10"])
    model = build_model(recipe, get_registry(), ["a", "b"])
    lrs = {id(p): g["lr"] for g in model.param_groups(1e-3, 0.05) for p in g["params"]}
    assert lrs[id(model.head.fc.weight)] == pytest.approx(1e-2)
    assert {lrs[id(p)] for p in model.backbone.parameters()} == {1e-3}


def test_a_plugin_written_for_the_five_hooks_trains_unchanged(tmp_path, synth, fake_plugins):
    fake_plugins.module("oldstyle_model", '''
        import timm
        from torch import nn


        class SmallCnn(nn.Module):
            input_kind = "image"

            def __init__(self, in_chans):
                super().__init__()
                self.body = timm.create_model("resnet10t", num_classes=0, in_chans=in_chans)
                self.num_features = self.body.num_features

            def forward(self, images):
                return self.body(images)


        def build(in_chans: int):
            return SmallCnn(in_chans)
    ''')
    fake_plugins.dist("fer-oldstyle", {"oldstyle": '''
        from fer_core import hookimpl


        @hookimpl
        def register_backbones(register):
            register("small_cnn", "oldstyle_model:build", summary="a timm CNN")
    '''})
    recipe = classify_recipe(tmp_path, synth, 3, ["model.backbone={name: small_cnn}"])
    run_dir = run(recipe, out=str(tmp_path / "runs"))
    losses = [r["train_loss"] for r in epochs_of(run_dir)]
    assert losses[-1] < 0.9 * losses[0], losses  # it trains (learning well above chance: test_train.py)
    versions = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["versions"]
    assert versions.get("fer-oldstyle") == "1.0", versions
