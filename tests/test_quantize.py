"""`fer export --quantize int8`: ONNX Runtime's static and dynamic INT8 against float32."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="the onnx extra is not installed: pip install 'fer-core[onnx]'")
import onnx  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402
from PIL import Image  # noqa: E402

from fer_core.cli import main  # noqa: E402
from fer_core.inference import load_trained  # noqa: E402
from fer_core.predictor import OnnxPredictor, load_predictor, predict_files  # noqa: E402
from fer_core.quantize import choose_mode, labelled_batches, quantize_int8  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from data_fixtures import COLOURS, pack_colour_set  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

RECIPE = """
name: int8-colours
seed: 3
data: {{root: {root}, image_size: 32, channels: 3, num_workers: 0, shuffle_buffer: 256}}
model:
  backbone: {{name: timm, model: resnet10t}}
optim: {{name: adamw, lr: 3.0e-3}}
train: {{epochs: 2, batch_size: 32, log_every: 5}}
eval: {{batch_size: 128}}
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A confident classifier: three classes told apart by their noisy colour (trains in a few seconds)."""
    from rich.console import Console

    from fer_core.plugins import get_registry
    from fer_core.recipe import load_recipe
    from fer_core.train import run

    base = tmp_path_factory.mktemp("int8")
    root = pack_colour_set(base, {"train": 80, "test": 40})
    (base / "recipe.yaml").write_text(RECIPE.format(root=root))
    recipe = load_recipe(base / "recipe.yaml", registry=get_registry())
    return run(recipe, out=str(base / "runs"), console=Console(file=io.StringIO()))


@pytest.fixture(scope="module")
def exported(run_dir) -> Path:
    from fer_core.export import export_onnx

    return export_onnx(load_trained(run_dir), run_dir / "model.onnx")


def _predictions(path: Path, trained) -> tuple[np.ndarray, np.ndarray]:
    predictor = OnnxPredictor(path)
    labels, guesses = [], []
    for images, targets in labelled_batches(trained, "test", 64):
        labels.append(targets)
        guesses.append(predictor.predict(images).argmax(1))
    return np.concatenate(guesses), np.concatenate(labels)


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_int8_predictions_agree_with_float32_on_98_percent_of_test_images(run_dir, exported, mode):
    trained = load_trained(run_dir)
    calibration = [images for images, _ in labelled_batches(trained, "train", 32, limit=64)]
    int8 = quantize_int8(exported, run_dir / f"model.{mode}.onnx", mode=mode, calibration=calibration)
    reference, truth = _predictions(exported, trained)
    got, _ = _predictions(int8, trained)
    assert len(set(reference.tolist())) == len(COLOURS), "the float model should predict every class"
    assert (reference == truth).mean() > 0.8
    assert (got == reference).mean() >= 0.98
    graph_ops = {node.op_type for node in onnx.load(str(int8)).graph.node}
    assert ("QuantizeLinear" if mode == "static" else "DynamicQuantizeLinear") in graph_ops


def test_static_int8_is_smaller_and_keeps_the_fer_metadata(run_dir, exported):
    trained = load_trained(run_dir)
    calibration = [images for images, _ in labelled_batches(trained, "train", 32, limit=32)]
    int8 = quantize_int8(exported, run_dir / "model.meta.onnx", mode="static", calibration=calibration)
    assert int8.stat().st_size < 0.4 * exported.stat().st_size
    predictor = OnnxPredictor(int8)
    assert predictor.classes == trained.classes
    assert predictor.metadata["quantization"] == {"mode": "static", "calibration_images": 32}
    assert predictor.metadata["recipe_name"] == "int8-colours"


def test_static_mode_needs_calibration_images(exported, tmp_path):
    from fer_core.errors import FerError

    with pytest.raises(FerError, match="calibration"):
        quantize_int8(exported, tmp_path / "x.onnx", mode="static", calibration=[])


def _graph(ops: list[str]) -> onnx.ModelProto:
    nodes, inputs = [], [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4, 4])]
    for i, op in enumerate(ops):
        nodes.append(helper.make_node(op, [f"t{i}" if i else "x", f"w{i}"], [f"t{i + 1}"]))
    initializers = [helper.make_tensor(f"w{i}", TensorProto.FLOAT, [4, 4, 1, 1] if op == "Conv" else [4, 4],
                                       [0.1] * 16) for i, op in enumerate(ops)]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(f"t{len(ops)}", TensorProto.FLOAT, None)],
                              initializers)
    return helper.make_model(graph)


def test_auto_mode_is_static_for_convolutional_graphs_and_dynamic_for_matmul_graphs(tmp_path):
    conv, attention = tmp_path / "conv.onnx", tmp_path / "attention.onnx"
    onnx.save(_graph(["Conv", "Conv", "MatMul"]), str(conv))
    onnx.save(_graph(["Conv", "MatMul", "MatMul"]), str(attention))
    assert choose_mode(conv) == "static"
    assert choose_mode(attention) == "dynamic"


def test_fer_export_quantize_reports_both_models_and_predict_runs_the_int8_file(run_dir, exported):
    result = CliRunner().invoke(main, ["export", str(run_dir), "--quantize", "int8", "--calibration", "48",
                                       "--no-check"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "static INT8, 48 training images" in result.output
    for column in ("file MB", "img/s b1", "img/s b32", "accuracy", "macro F1"):
        assert column in result.output
    report = json.loads((run_dir / "quantization.json").read_text())
    assert set(report["models"]) == {"float32", "int8"}
    assert report["models"]["int8"]["agreement"] >= 0.98
    assert abs(report["models"]["int8"]["accuracy"] - report["models"]["float32"]["accuracy"]) <= 0.02
    int8 = run_dir / "model.int8.onnx"
    rows = predict_files(load_predictor(int8), [_image(run_dir.parent, COLOURS["sadness"])], top_k=1)
    assert rows[0]["label"] == "sadness"
    cli = CliRunner().invoke(main, ["predict", str(int8), str(_image(run_dir.parent, COLOURS["happiness"])), "--json"])
    assert cli.exit_code == 0, cli.output
    assert json.loads(cli.output.strip().splitlines()[-1])["label"] == "happiness"


def _image(folder: Path, colour: tuple[int, int, int]) -> Path:
    path = folder / f"colour-{'-'.join(map(str, colour))}.png"
    Image.fromarray(np.full((32, 32, 3), colour, dtype=np.uint8)).save(path)
    return path
