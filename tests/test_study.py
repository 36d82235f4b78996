"""`fer study` on a tiny synthetic study: files, table, plot, resume, a failing run, one-line errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from fer_core.data.pack import make_synth_dataset
from fer_core.errors import RecipeError
from fer_core.study import load_study, run_study
from fer_core.study import study as study_command

pytestmark = pytest.mark.usefixtures("one_thread")

LATENT = """
name: tiny-latent
data: {{root: {root}, image_size: 32, num_workers: 0, shuffle_buffer: 32}}
model:
  encoder: {{name: patches, patch_size: 8}}
  backbone: {{name: latent_vit, embed_dim: 32, depth: 1, heads: 2}}
train: {{epochs: 1, batch_size: 32}}
eval: {{batch_size: 64}}
"""
IMAGE = """
name: tiny-image
data: {{root: {root}, image_size: 32, num_workers: 0, shuffle_buffer: 32}}
model:
  backbone: {{name: timm, model: test_vit}}
train: {{epochs: 1, batch_size: 32}}
eval: {{batch_size: 64}}
"""
STUDY = """
name: tiny
overrides: [optim.lr=0.003]
runs:
  - {recipe: latent.yaml, label: latent}
  - {recipe: image.yaml, label: image, set: [optim.weight_decay=0.01]}
grid:
  data.train_fraction: [0.5, 1.0]
"""


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "data"
    make_synth_dataset(root, n=140, size=32, seed=1, progress=False, shard_size=40)
    return root


def write_study(folder: Path, root: Path, text: str = STUDY) -> Path:
    (folder / "latent.yaml").write_text(LATENT.format(root=root))
    (folder / "image.yaml").write_text(IMAGE.format(root=root))
    path = folder / "study.yaml"
    path.write_text(text)
    return path


def quiet() -> Console:
    return Console(file=open("/dev/null", "w"), width=200)  # noqa: SIM115


def test_study_writes_table_plot_and_resumes(tmp_path, synth):
    spec = load_study(write_study(tmp_path, synth), out=str(tmp_path / "out"))
    assert [r.id for r in spec.runs] == ["latent_train_fraction=0.5", "latent_train_fraction=1.0",
                                         "image_train_fraction=0.5", "image_train_fraction=1.0"]
    assert spec.runs[2].recipe["optim"]["weight_decay"] == 0.01 and spec.runs[0].recipe["optim"]["lr"] == 0.003
    rows = run_study(spec, quiet())
    out = tmp_path / "out" / "tiny"
    for name in ("results.json", "results.md", "results.csv", "accuracy_vs_fraction.png", "study.json"):
        assert (out / name).is_file(), name
    assert [r["status"] for r in rows] == ["finished"] * 4
    for row in rows:
        assert 0 <= row["accuracy"] <= 1 and row["parameters"] >= row["trainable_parameters"] > 0
        share = 100 * row["trainable_parameters"] / row["parameters"]
        assert row["trainable_percent"] == pytest.approx(share, abs=0.01)
        assert (Path(row["run_dir"]) / "summary.json").is_file()
    header = (out / "results.md").read_text().splitlines()[2]
    for title in ("approach", "train_fraction", "test acc", "macro F1", "weighted F1", "train s", "infer img/s",
                  "peak MB", "params", "trainable", "trainable %"):
        assert f" {title} |" in header, title
    with (out / "results.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [r["label"] for r in table] == ["latent", "latent", "image", "image"]
    assert {r["data.train_fraction"] for r in table} == {"0.5", "1.0"}
    assert (out / "accuracy_vs_fraction.png").read_bytes()[:4] == b"\x89PNG"

    # running it again skips every finished run: same run directories, nothing new
    before = sorted(p for p in (out / "runs").glob("*/*/*"))
    again = run_study(load_study(tmp_path / "study.yaml", out=str(tmp_path / "out")), quiet())
    assert [r["run_dir"] for r in again] == [r["run_dir"] for r in rows]
    assert sorted(p for p in (out / "runs").glob("*/*/*")) == before

    # a run killed before its summary was written continues from its last checkpoint
    killed = Path(rows[1]["run_dir"])
    (killed / "summary.json").unlink()
    resumed = run_study(load_study(tmp_path / "study.yaml", out=str(tmp_path / "out")), quiet())
    assert resumed[1]["run_dir"] == str(killed) and (killed / "summary.json").is_file()
    assert sorted(p for p in (out / "runs").glob("*/*/*")) == before

    # a changed recipe is not mistaken for the finished one: only the changed runs train again
    changed = run_study(load_study(tmp_path / "study.yaml", out=str(tmp_path / "out"),
                                   extra_overrides=("train.batch_size=16",)), quiet())
    assert all(new["run_dir"] != old["run_dir"] for new, old in zip(changed, rows))


def test_failing_run_is_recorded_and_the_study_goes_on(tmp_path, synth, monkeypatch):
    spec = load_study(write_study(tmp_path, synth, STUDY.replace("[0.5, 1.0]", "[1.0]")), out=str(tmp_path / "out"))
    import fer_core.train

    real = fer_core.train.run

    def flaky(recipe, out=None, resume=None, console=None):
        if recipe is not None and recipe["name"] == "tiny-latent":
            raise RuntimeError("simulated crash\nsecond line")
        return real(recipe, out=out, resume=resume, console=console)

    monkeypatch.setattr(fer_core.train, "run", flaky)
    rows = run_study(spec, quiet())
    assert [r["status"] for r in rows] == ["failed", "finished"]
    assert rows[0]["error"] == "RuntimeError: simulated crash"
    assert "failed: RuntimeError: simulated crash" in (tmp_path / "out" / "tiny" / "results.md").read_text()
    state = json.loads((tmp_path / "out" / "tiny" / "study.json").read_text())
    assert state["runs"]["latent_train_fraction=1.0"]["status"] == "failed"
    assert (tmp_path / "out" / "tiny" / "accuracy_vs_fraction.png").is_file()

    # the next invocation retries the failed run only
    monkeypatch.setattr(fer_core.train, "run", real)
    rows = run_study(load_study(tmp_path / "study.yaml", out=str(tmp_path / "out")), quiet())
    assert [r["status"] for r in rows] == ["finished", "finished"]


@pytest.mark.parametrize("text, message", [
    ("name: x\nrunz: []\n", "study.yaml: runz: unknown key in a study file; did you mean 'runs'?"),
    ("name: x\nruns: []\n", "study.yaml: runs: expected a non-empty list"),
    ("runs: [{recipe: missing.yaml}]\n", "study.yaml: runs[0] (missing): "),
    ("runs: [{recipe: latent.yaml, sett: []}]\n", "study.yaml: runs[0].sett: unknown key"),
    ("runs: [latent.yaml]\ngrid: {data.train_fraction: 0.5}\n", "study.yaml: grid.data.train_fraction: expected"),
    ("runs: [latent.yaml, image.yaml]\ngrid: {data.train_fraction: [0.5, 2.0]}\n",
     "study.yaml: runs[0] (latent, data.train_fraction=2.0): data.train_fraction: must be in (0, 1]"),
    ("runs: [latent.yaml, {recipe: image.yaml, set: [model.backbone.depht=2]}]\n",
     "study.yaml: runs[1] (image): model.backbone.depht"),
    ("runs: [latent.yaml, latent.yaml]\n", "two runs are both labelled 'latent'"),
    ("runs: [latent.yaml]\nmetric: acuracy\n", "study.yaml: metric: 'acuracy' is not a test metric"),
])
def test_invalid_studies_fail_in_one_line_before_any_run(tmp_path, synth, text, message):
    path = write_study(tmp_path, synth, text)
    with pytest.raises(RecipeError) as info:
        load_study(path, out=str(tmp_path / "out"))
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)
    assert not (tmp_path / "out").exists()


def test_missing_data_fails_before_training(tmp_path, synth):
    path = write_study(tmp_path, tmp_path / "nowhere", "runs: [latent.yaml]\n")
    with pytest.raises(RecipeError, match=r"runs\[0\] \(latent\): data.root: .*nowhere has no dataset.json"):
        load_study(path)


def test_cli_check_lists_runs(tmp_path, synth):
    path = write_study(tmp_path, synth)
    result = CliRunner().invoke(study_command, [str(path), "--check", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "4 runs validated" in result.output and "image_train_fraction=1.0" in result.output
    assert not (tmp_path / "out").exists()


PRETRAIN = """
name: tiny-vaegan
task: pretrain
data: {{root: {root}, image_size: 32, num_workers: 0, shuffle_buffer: 32}}
model:
  encoder: {{name: vaegan, latent_dim: 8, widths: [8, 16], disc_body: resnet10t}}
optim: {{name: adam, lr: 2.0e-3, betas: [0.5, 0.999], weight_decay: 0.0}}
train: {{epochs: 1, batch_size: 32}}
eval: {{batch_size: 64}}
"""


def test_a_pretraining_recipe_in_a_study_runs_the_pretraining_task(tmp_path, synth):
    (tmp_path / "pretrain.yaml").write_text(PRETRAIN.format(root=synth))
    (tmp_path / "study.yaml").write_text("name: pre\nruns: [{recipe: pretrain.yaml, label: vaegan}]\n")
    rows = run_study(load_study(tmp_path / "study.yaml", out=str(tmp_path / "out")), quiet())
    assert [r["status"] for r in rows] == ["finished"], rows
    run_dir = Path(rows[0]["run_dir"])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["task"] == "pretrain" and summary["val_l1_after"] < summary["val_l1_before"]
    assert (run_dir / "samples" / "epoch-0001.png").is_file()
    assert rows[0]["parameters"] == summary["parameters"] and "accuracy" not in rows[0]
