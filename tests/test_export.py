"""`fer export --format onnx`: parity with PyTorch, dynamic batch, metadata, and predicting without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx", reason="the onnx extra is not installed: pip install 'fer-core[onnx]'")
pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install 'fer-core[onnx]'")
from click.testing import CliRunner  # noqa: E402

from fer_core.cli import main  # noqa: E402
from fer_core.inference import load_trained  # noqa: E402
from fer_core.predictor import OnnxPredictor, load_predictor  # noqa: E402
from fer_core.predictor import predict_files as predict_any_files  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from serve_fixtures import ENV, face_files, tiny_onnx, tiny_run  # noqa: E402

# Runs a snippet with torch made unimportable (as if it were not installed) and checks it stayed so.
NO_TORCH = """
import sys
sys.modules["torch"] = None  # `import torch` now raises ImportError
{body}
assert sys.modules["torch"] is None and not any(m.startswith("torch.") for m in sys.modules), "torch was imported"
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory) -> Path:
    return tiny_onnx(tmp_path_factory)


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> list[Path]:
    return face_files(tmp_path_factory)


def test_onnx_and_pytorch_agree_within_1e_4_on_batches_of_any_size(run_dir, onnx_file, one_thread):
    trained = load_trained(run_dir)
    session = OnnxPredictor(onnx_file).session
    assert [i.name for i in session.get_inputs()] == ["images"]
    for batch in (1, 5, 16):
        images = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = trained.model(images)[0].numpy()
        (got,) = session.run(None, {"images": images.numpy()})
        assert got.shape == (batch, len(trained.classes))
        assert np.abs(got - expected).max() < 1e-4, np.abs(got - expected).max()


def test_metadata_makes_the_file_self_contained(run_dir, onnx_file):
    predictor = OnnxPredictor(onnx_file)
    trained = load_trained(run_dir)
    assert predictor.classes == trained.classes and predictor.name == "tiny-serve"
    assert (predictor.image_size, predictor.channels) == (32, 3)
    assert predictor.metadata["output"] == "logits" and predictor.metadata["recipe"]["name"] == "tiny-serve"
    assert predictor.info()["parameters"] == sum(p.numel() for p in trained.model.parameters())


def test_predicting_through_onnx_gives_the_same_labels_as_pytorch(run_dir, onnx_file, faces, one_thread):
    expected = predict_any_files(load_predictor(run_dir), faces, batch_size=4, top_k=3)
    for model in (onnx_file,):
        got = predict_any_files(load_predictor(model), faces, batch_size=4, top_k=3)
        assert [r["image"] for r in got] == [r["image"] for r in expected]
        assert [r["label"] for r in got] == [r["label"] for r in expected]
        for a, b in zip(got, expected):
            assert a["confidence"] == pytest.approx(b["confidence"], abs=1e-5)
            assert [t["label"] for t in a["top_k"]] == [t["label"] for t in b["top_k"]]


def test_fer_export_command_writes_a_checked_file(run_dir, tmp_path, one_thread):
    out = tmp_path / "exported.onnx"
    result = CliRunner().invoke(main, ["export", str(run_dir), "--format", "onnx", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and "max |logit difference|" in result.output
    assert float(result.output.rsplit(":", 1)[1]) < 1e-4
    bad = CliRunner().invoke(main, ["export", str(run_dir), "--format", "tflite"])
    assert bad.exit_code == 2 and "tflite" in bad.output


def test_onnx_prediction_never_imports_torch(onnx_file, faces):
    body = f"""
import json
from fer_core.predictor import load_predictor, predict_files
rows = predict_files(load_predictor({str(onnx_file)!r}), {[str(f) for f in faces[:3]]!r})
print(json.dumps(rows))
"""
    proc = subprocess.run([sys.executable, "-c", NO_TORCH.format(body=body)], env=ENV, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [row["image"] for row in json.loads(proc.stdout)] == [str(f) for f in faces[:3]]


def test_fer_predict_and_serve_app_take_the_onnx_file_without_torch(onnx_file, faces):
    body = f"""
import sys
from fer_core.cli import main
try:
    main(["predict", {str(onnx_file)!r}, {str(faces[0])!r}, "--json"])
except SystemExit as exit:
    assert exit.code in (0, None), exit.code
from fastapi.testclient import TestClient
from fer_core.predictor import load_predictor
from fer_core.serve.app import create_app
with TestClient(create_app(load_predictor({str(onnx_file)!r}))) as client:
    response = client.post("/predict", files={{"image": ("f.png", open({str(faces[0])!r}, "rb").read(), "image/png")}})
    assert response.status_code == 200, response.text
    print(response.json()[0]["label"])
"""
    proc = subprocess.run([sys.executable, "-c", NO_TORCH.format(body=body)], env=ENV, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cli_row, served_label = proc.stdout.strip().splitlines()
    assert json.loads(cli_row)["label"] == served_label
