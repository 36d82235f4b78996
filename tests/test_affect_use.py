"""Valence/arousal wherever a run is used (issue 19 item 4): `fer eval` (report, va_scatter.png), `fer predict`
(table, --json, video CSV, drawn labels), `fer serve` (API, page), `fer export` (named ONNX outputs, metadata,
torch-free predicting, INT8), `fer compare` / `fer study` columns; a classification run's outputs unchanged.

Three tiny runs (classify, affect, expression+affect) are trained for one epoch on the same synthetic faces
(timm's test_resnet at 32 px, a few seconds together).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from rich.console import Console

from fer_core.cli import main
from fer_core.compare import compare_rows, compare_text
from fer_core.errors import FerError
from fer_core.faces.draw import face_text
from fer_core.faces.video import _write_outputs
from fer_core.inference import load_trained
from fer_core.outputs import split
from fer_core.predictor import TorchPredictor, load_predictor, predict_files

sys.path.insert(0, str(Path(__file__).parent))
from serve_fixtures import ENV  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

RECIPE = """
name: {name}
seed: 5
task: {task}
data: {{root: {root}, image_size: 32, channels: 3, num_workers: 0, shuffle_buffer: 64}}
model:
  backbone: {{name: timm, model: test_resnet}}
  head: {{name: {head}}}
optim: {{name: adamw, lr: 3.0e-3}}
train: {{epochs: 1, batch_size: 32, log_every: 2}}
eval: {{batch_size: 64, metric: {metric}}}
"""
TASKS = {"classify": ("linear", "accuracy"), "affect": ("va", "ccc_mean"),
         "expression+affect": ("multitask", "accuracy")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """task -> the run directory of a one-epoch run of that task on 120 synthetic faces."""
    from fer_core.data.pack import make_synth_dataset
    from fer_core.plugins import get_registry
    from fer_core.recipe import load_recipe
    from fer_core.train import run

    base = tmp_path_factory.mktemp("affect-use")
    root = make_synth_dataset(base / "data", n=120, size=32, seed=2, progress=False, shard_size=40)
    out, threads = {}, torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before the per-test one_thread
    try:
        for task, (head, metric) in TASKS.items():
            name = task.replace("+", "-")
            (base / f"{name}.yaml").write_text(RECIPE.format(name=name, task=task, root=root, head=head,
                                                             metric=metric))
            recipe = load_recipe(base / f"{name}.yaml", registry=get_registry())
            out[task] = run(recipe, out=str(base / "runs"), console=Console(file=io.StringIO()))
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def faces(runs) -> list[Path]:
    """The first three test-split faces of the runs' data set, as PNG files."""
    base = runs["classify"].parent.parent.parent
    folder = base / "faces"
    folder.mkdir(exist_ok=True)
    paths = []
    for shard in sorted((base / "data").glob("test-*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".png") and len(paths) < 3:
                    paths.append(folder / f"face{len(paths)}.png")
                    paths[-1].write_bytes(tar.extractfile(member).read())
    assert len(paths) == 3
    return paths


def fer(*args) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def torch_outputs(run_dir: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    """The run's own model on ``images``, split by hand into its output slices."""
    trained = load_trained(run_dir)
    with torch.no_grad():
        output, _ = trained.model(torch.from_numpy(images))
    return {name: value.numpy() for name, value in split(output, trained.slices).items()}


def stacked(predictor, paths) -> np.ndarray:
    return np.stack([predictor.decode(Path(p).read_bytes()) for p in paths])


# -- export --------------------------------------------------------------------------------------
def test_multitask_onnx_has_named_outputs_that_match_pytorch_and_metadata_saying_so(runs, tmp_path):
    import onnxruntime as ort

    from fer_core.export import export_onnx, max_differences
    from fer_core.predictor import OnnxPredictor

    trained = load_trained(runs["expression+affect"])
    path = export_onnx(trained, tmp_path / "mt.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "va"]
    for batch in (1, 5):
        images = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
        logits, va = session.run(None, {"images": images.numpy()})
        expected = torch_outputs(runs["expression+affect"], images.numpy())
        assert logits.shape == (batch, len(trained.classes)) and va.shape == (batch, 2)
        assert np.abs(logits - expected["logits"]).max() < 1e-4 and np.abs(va - expected["va"]).max() < 1e-5
        assert np.abs(va).max() < 1  # tanh-bounded
    predictor = OnnxPredictor(path)
    assert predictor.metadata["task"] == "expression+affect"
    assert predictor.metadata["outputs"] == {"logits": len(trained.classes), "va": 2}
    assert max(max_differences(trained, path).values()) < 1e-4

    affect = load_trained(runs["affect"])
    only_va = OnnxPredictor(export_onnx(affect, tmp_path / "va.onnx"))
    assert [o.name for o in only_va.session.get_outputs()] == ["va"]
    assert only_va.metadata["task"] == "affect" and only_va.metadata["outputs"] == {"va": 2}
    images = np.random.default_rng(0).random((4, 3, 32, 32), dtype=np.float32)
    assert set(only_va.infer(images)) == {"va"}
    np.testing.assert_allclose(only_va.infer(images)["va"], torch_outputs(runs["affect"], images)["va"], atol=1e-5)
    with pytest.raises(FerError, match="valence and arousal only"):
        only_va.predict(images)


def test_torch_free_predict_of_the_onnx_gives_valence_and_arousal(runs, faces, tmp_path):
    from fer_core.export import export_onnx

    path = export_onnx(load_trained(runs["expression+affect"]), tmp_path / "mt.onnx")
    snippet = f"""
import sys, json
sys.modules["torch"] = None  # `import torch` now raises ImportError
from fer_core.predictor import load_predictor, predict_files
print(json.dumps(predict_files(load_predictor({str(path)!r}), {[str(f) for f in faces]!r})))
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules if sys.modules[m] is not None)
"""
    done = subprocess.run([sys.executable, "-c", snippet], env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout)
    expected = predict_files(load_predictor(runs["expression+affect"]), faces)
    for a, b in zip(got, expected):
        assert a["label"] == b["label"] and -1 < a["valence"] < 1 and -1 < a["arousal"] < 1
        assert a["valence"] == pytest.approx(b["valence"], abs=1e-5)
        assert a["arousal"] == pytest.approx(b["arousal"], abs=1e-5)


def test_int8_export_of_affect_models_reports_ccc(runs):
    from fer_core.predictor import OnnxPredictor

    run_dir = runs["expression+affect"]
    output = fer("export", run_dir, "--quantize", "int8", "--quantize-mode", "dynamic")
    assert "max |logit difference|" in output and "max |va difference|" in output
    for column in ("accuracy", "valence CCC", "arousal CCC", "CCC mean", "max |Δva|"):
        assert column in output, column
    models = json.loads((run_dir / "quantization.json").read_text())["models"]
    float32, int8 = models["float32"], models["int8"]
    assert float32["va_max_difference"] == 0 and int8["va_max_difference"] < 0.1
    assert abs(int8["ccc_mean"] - float32["ccc_mean"]) < 0.1 and int8["agreement"] >= 0.9
    images = np.random.default_rng(1).random((3, 3, 32, 32), dtype=np.float32)
    got = OnnxPredictor(run_dir / "model.int8.onnx").infer(images)
    assert got["probabilities"].shape == (3, len(load_trained(run_dir).classes)) and got["va"].shape == (3, 2)


# -- predict -------------------------------------------------------------------------------------
def test_predict_json_and_table_carry_valence_and_arousal(runs, faces):
    for task in ("expression+affect", "affect"):
        predictor = TorchPredictor(runs[task])
        expected = torch_outputs(runs[task], stacked(predictor, faces))
        lines = [json.loads(line) for line in fer("predict", runs[task], *faces, "--json").splitlines()]
        assert [line["image"] for line in lines] == [str(f) for f in faces]
        for line, va in zip(lines, expected["va"]):
            assert (line["valence"], line["arousal"]) == pytest.approx(tuple(va), abs=1e-5)
        assert ("label" in lines[0]) == (task == "expression+affect")
        table = fer("predict", runs[task], *faces)
        assert "valence" in table and "arousal" in table and f"{expected['va'][0][0]:+.3f}" in table
        assert ("confidence" in table) == (task == "expression+affect")


def test_a_classification_run_predicts_exactly_as_before(runs, faces):
    lines = [json.loads(line) for line in fer("predict", runs["classify"], *faces, "--json").splitlines()]
    assert all(set(line) == {"image", "label", "confidence", "top_k"} for line in lines)
    rows = predict_files(load_predictor(runs["classify"]), faces, top_k=None)
    assert all(set(row) == {"image", "label", "confidence", "probabilities"} for row in rows)
    table = fer("predict", runs["classify"], *faces)
    assert "valence" not in table and "confidence" in table


def test_drawn_labels_and_video_files_carry_valence_and_arousal(runs, faces, tmp_path):
    assert face_text({"label": "happiness", "confidence": 0.871, "valence": 0.42, "arousal": -0.1}) == \
        "happiness 0.87 V+0.42 A-0.10"
    assert face_text({"valence": -0.5, "arousal": 0.25, "score": 1.0}) == "V-0.50 A+0.25"
    assert face_text({"label": "anger", "confidence": 0.5, "score": 1.0}) == "anger 0.50"
    for task in ("expression+affect", "affect", "classify"):
        predictor = load_predictor(runs[task])
        rows = predict_files(predictor, faces, top_k=None)
        frames = [{"frame": i, "time": i / 5, "faces": [{"track": 1, "box": [0, 0, 32, 32], "score": 1.0,
                                                        "landmarks": {}, **{k: v for k, v in row.items()
                                                                             if k != "image"}}]}
                  for i, row in enumerate(rows)]
        out = tmp_path / task
        out.mkdir()
        _write_outputs(out, frames, predictor.classes, predictor.outputs)
        header, *lines = (out / "frames.csv").read_text().splitlines()
        columns = header.split(",")
        assert ("valence" in columns and "arousal" in columns) == (task != "classify")
        assert ("label" in columns) == (task != "affect")
        assert len(lines) == len(faces) and Image.open(out / "timeline.png").size[0] > 300
        if task != "classify":
            values = [float(line.split(",")[columns.index("valence")]) for line in lines]
            assert values == pytest.approx([row["valence"] for row in rows])


# -- serve ---------------------------------------------------------------------------------------
def test_serve_api_returns_valence_and_arousal_and_the_page_draws_the_circle(runs, faces, tmp_path):
    from fastapi.testclient import TestClient

    from fer_core.export import export_onnx
    from fer_core.serve.app import create_app

    files = [("image", (f.name, f.read_bytes(), "image/png")) for f in faces]
    onnx_file = export_onnx(load_trained(runs["expression+affect"]), tmp_path / "mt.onnx")
    answers = {}
    for name, model in (("mt", runs["expression+affect"]), ("mt-onnx", onnx_file), ("va", runs["affect"]),
                        ("classify", runs["classify"])):
        with TestClient(create_app(load_predictor(model))) as client:
            info = client.get("/info").json()
            answers[name] = client.post("/predict", files=files).json()
            page = client.get("/").text
        assert info["valence_arousal"] == (name != "classify") and info["classifies"] == (name != "va")
    assert "vaCircle" in page and "valence" in page
    expected = torch_outputs(runs["expression+affect"], stacked(TorchPredictor(runs["expression+affect"]), faces))
    for torch_row, onnx_row, va in zip(answers["mt"], answers["mt-onnx"], expected["va"]):
        assert (torch_row["valence"], torch_row["arousal"]) == pytest.approx(tuple(va), abs=1e-5)
        assert onnx_row["valence"] == pytest.approx(torch_row["valence"], abs=1e-5)
        assert torch_row["label"] == onnx_row["label"] and abs(sum(torch_row["probabilities"].values()) - 1) < 1e-4
    assert all(set(row) == {"filename", "valence", "arousal"} for row in answers["va"])
    assert all("valence" not in row and row["label"] for row in answers["classify"])


# -- eval ----------------------------------------------------------------------------------------
def test_eval_reports_valence_arousal_with_a_scatter_plot(runs):
    for task in ("expression+affect", "affect"):
        report = json.loads(fer("eval", runs[task], "--json"))
        folder = runs[task] / "eval" / "test"
        saved = json.loads((folder / "report.json").read_text())
        for name in ("valence", "arousal"):
            assert set(saved["affect"][name]) == {"ccc", "pcc", "rmse", "sagr"}
            assert saved[f"{name}_ccc"] == report[f"{name}_ccc"] == saved["affect"][name]["ccc"]
            assert 0 <= saved["affect"][name]["sagr"] <= 1 and saved["affect"][name]["rmse"] >= 0
        assert "va_points" not in saved and saved["va_plot"] == "va_scatter.png"
        width, height = Image.open(folder / "va_scatter.png").size
        assert width > 2 * height > 600  # three square panels side by side
        markdown = (folder / "report.md").read_text()
        assert "| dimension | CCC | PCC | RMSE | SAGR |" in markdown
        assert f"| valence | {saved['affect']['valence']['ccc']:.4f} |" in markdown
        classifies = task == "expression+affect"
        assert ("confusion" in saved) == classifies and (folder / "confusion.png").is_file() == classifies
        assert ("accuracy" in report) == classifies and ("Confusion matrix" in markdown) == classifies
    table = fer("eval", runs["affect"])  # the console table of a valence/arousal-only run
    assert "CCC mean" in table and "valence" in table and "macro F1" not in table


def test_class_only_commands_refuse_an_affect_only_run_in_one_line(runs):
    for args in (("calibrate", runs["affect"]), ("eval", runs["affect"], "--by", "skin_tone")):
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert result.exit_code == 2, result.output
        assert result.stderr.count("\n") == 1 and "valence and arousal only" in result.stderr


# -- compare, study ------------------------------------------------------------------------------
def test_compare_and_study_show_valence_arousal_columns_beside_classification(runs, tmp_path):
    from fer_core.study_report import write_results

    everything = [runs["classify"], runs["affect"], runs["expression+affect"]]
    rows, _ = compare_rows(everything, "ccc_mean")
    by_task = {Path(row["dir"]): row for row in rows}
    for task in ("affect", "expression+affect"):
        summary = json.loads((runs[task] / "summary.json").read_text())
        assert by_task[runs[task]]["ccc_mean"] == summary["test"]["ccc_mean"]
        assert by_task[runs[task]]["valence_rmse"] == summary["test"]["valence_rmse"]
    assert by_task[runs["affect"]]["accuracy"] is None and by_task[runs["classify"]]["ccc_mean"] is None
    assert rows[-1]["dir"] == str(runs["classify"])  # no CCC: sorted last
    markdown = compare_text(rows, [], "md")
    header = markdown.splitlines()[0]
    for title in ("accuracy", "macro F1", "valence CCC", "arousal CCC", "CCC mean", "valence RMSE"):
        assert f"| {title} |" in header, title
    classify_only = compare_text(*compare_rows([runs["classify"]]), "md").splitlines()[0]
    assert "CCC" not in classify_only and "| accuracy | macro F1 | weighted F1 |" in classify_only
    assert "ccc_mean" not in compare_text(*compare_rows([runs["classify"]]), "json")
    assert "CCC mean" in fer("compare", *everything, "--metric", "ccc_mean")

    def study_run(task):
        return SimpleNamespace(id=task, label=task, settings={}, recipe={"name": task})

    study = SimpleNamespace(name="s", path=tmp_path / "s.yaml", description="", metric="ccc_mean", grid={},
                            out_dir=tmp_path / "study", runs=[study_run(t) for t in runs])
    study.out_dir.mkdir()
    write_results(study, {t: {"status": "finished", "run_dir": str(d)} for t, d in runs.items()})
    lines = (study.out_dir / "results.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| approach"))
    assert header.startswith("| approach | status | test acc | macro F1 | weighted F1 | valence CCC |")
    affect_row = next(line for line in lines if line.startswith("| affect |"))
    assert affect_row.startswith("| affect | finished | - | - | - | ")
    assert (study.out_dir / "ccc_mean.png").is_file()
