"""On a tiny trained run: `fer eval --by`, `fer compare --worst-group`, `fer calibrate` and its use by
predict/serve/export, and `fer crosseval` across data sets with different classes."""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from rich.console import Console

sys.path.insert(0, str(Path(__file__).parent))
from data_fixtures import read_shards  # noqa: E402
from serve_fixtures import face_files, tiny_run  # noqa: E402

from fer_core.cli import main  # noqa: E402
from fer_core.compare import compare_rows, compare_table, compare_text  # noqa: E402
from fer_core.crosseval import shared_classes  # noqa: E402
from fer_core.data import synth  # noqa: E402
from fer_core.data.pack import pack_dataset  # noqa: E402
from fer_core.predictor import load_predictor, softmax  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def run_dir(tmp_path_factory, tmp_path) -> Path:
    """A private copy of the session's tiny run (these tests write into it)."""
    return Path(shutil.copytree(tiny_run(tmp_path_factory), tmp_path / "run"))


def fer(*args) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_eval_by_attribute_writes_groups_into_the_report(run_dir):
    report = json.loads(fer("eval", run_dir, "--by", "skin_tone", "--by", "occlusion", "--min-support", "1",
                            "--json"))
    folder = run_dir / "eval" / "test"
    for name in ("report.json", "report.md", "confusion.png", "reliability.png", "groups-skin_tone.png",
                 "groups-occlusion.png"):
        assert (folder / name).is_file(), name
    assert json.loads((folder / "report.json").read_text())["groups"] == report["groups"]
    tones = report["groups"]["skin_tone"]
    assert [row["group"] for row in tones["groups"]] == [t for t in synth.SKIN_TONES
                                                         if any(r["group"] == t for r in tones["groups"])]
    assert sum(row["support"] for row in tones["groups"]) == report["samples"] and tones["missing"] == 0
    correct = sum(row["accuracy"] * row["support"] for row in tones["groups"])
    assert correct == pytest.approx(report["accuracy"] * report["samples"])
    for row in tones["groups"]:
        assert sum(map(sum, row["confusion"])) == row["support"]
    markdown = (folder / "report.md").read_text()
    assert "## By skin_tone" in markdown and "## By occlusion" in markdown
    assert f"expected calibration error (ECE, 15 bins): {report['ece']:.4f}" in markdown

    rows, _ = compare_rows([run_dir], worst_group="skin_tone")
    worst = tones["worst"]
    assert rows[0]["worst_group"] == {"group": worst["group"], "accuracy": worst["accuracy"]}
    text = compare_text(*compare_rows([run_dir], worst_group="skin_tone"), "csv")
    assert f"{worst['accuracy']:.4f} ({worst['group']})" in text.splitlines()[1]
    assert compare_rows([run_dir], worst_group="age_band")[0][0]["worst_group"] is None  # not evaluated
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(compare_table([run_dir], worst_group="skin_tone"))
    shown = console.export_text()
    assert "worst" in shown and "skin_tone" in shown and f"{worst['accuracy']:.4f}" in shown


def test_eval_by_an_attribute_the_data_lacks_is_one_line(run_dir):
    result = CliRunner().invoke(main, ["eval", str(run_dir), "--by", "gender"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "no per-sample attribute 'gender'; it has skin_tone, age_band, pose, occlusion" in lines[0]


def test_calibration_changes_confidence_never_labels_and_reaches_predict_serve_export(run_dir, tmp_path_factory):
    faces = face_files(tmp_path_factory)
    images = np.stack([load_predictor(run_dir).decode(path.read_bytes()) for path in faces])
    before = load_predictor(run_dir).predict(images)
    output = fer("calibrate", run_dir)
    assert "temperature" in output and "ECE" in output
    record = json.loads((run_dir / "calibration.json").read_text())
    temperature = record["temperature"]
    assert temperature > 0 and temperature != 1.0
    assert record["after"]["accuracy"] == record["before"]["accuracy"]
    assert record["after"]["nll"] <= record["before"]["nll"] + 1e-9  # T = 1 was a candidate
    assert (run_dir / "calibration.png").is_file()

    predictor = load_predictor(run_dir)
    assert predictor.temperature == temperature and predictor.info()["temperature"] == temperature
    after = predictor.predict(images)
    assert np.array_equal(after.argmax(1), before.argmax(1))
    with torch.no_grad():
        logits = predictor.trained.model(torch.from_numpy(images))[0].numpy()
    np.testing.assert_allclose(after, softmax(logits / temperature), atol=1e-6)

    fer("export", run_dir, "--out", run_dir / "calibrated.onnx")
    onnx = load_predictor(run_dir / "calibrated.onnx")
    assert onnx.temperature == pytest.approx(temperature)
    np.testing.assert_allclose(onnx.predict(images), after, atol=1e-4)

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from fer_core.serve.app import create_app

    with TestClient(create_app(predictor)) as client:
        assert client.get("/info").json()["temperature"] == temperature
        served = client.post("/predict", files=[("image", (faces[0].name, faces[0].read_bytes(), "image/png"))])
        probabilities = served.json()[0]["probabilities"]
        assert list(probabilities.values()) == pytest.approx(after[0].tolist(), abs=1e-5)

    report = json.loads(fer("eval", run_dir, "--json"))
    assert report["calibrated"]["temperature"] == temperature and "ece" in report["calibrated"]


def test_shared_classes_go_through_the_canonical_names():
    model = ["anger", "happiness", "neutral", "sadness"]
    assert shared_classes(model, ["Happy", "sad", "contempt"]) == [(1, "Happy"), (3, "sad")]
    assert shared_classes(model, ["contempt"]) == []


def test_crosseval_scores_runs_on_the_classes_each_data_set_shares(run_dir, tmp_path):
    source = tmp_path / "folders"
    for index, face in enumerate(synth.synthesize_faces(42, size=32, seed=9)):
        folder = {"happiness": "happy", "sadness": "sad", "anger": "contempt"}.get(face.label)
        if folder:
            (source / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(face.pixels).save(source / folder / f"{index}.png")
    other = tmp_path / "other"
    pack_dataset(source, other, "imagefolder", test_split=0.5, val_split=0.0, progress=False)
    own = Path(load_predictor(run_dir).trained.recipe["data"]["root"])
    out = tmp_path / "cross"
    fer("crosseval", run_dir, "--data", own, "--data", other, "--out", out)
    cells = json.loads((out / "results.json").read_text())["cells"]
    assert [c["data"] for c in cells] == [str(own), str(other)]
    mine = json.loads((run_dir / "report.json").read_text())
    assert cells[0]["accuracy"] == pytest.approx(mine["accuracy"]) and cells[0]["left_out"] == {"model": [], "data": []}
    cell = cells[1]
    assert cell["classes"] == ["happiness", "sadness"] and cell["left_out"]["data"] == ["contempt"]

    # by hand: the model's happiness and sadness outputs only, on the other set's test samples
    predictor = load_predictor(run_dir)
    columns = [predictor.classes.index("happiness"), predictor.classes.index("sadness")]
    manifest = json.loads((other / "dataset.json").read_text())
    samples = [s for s in read_shards(other)["test"] if manifest["classes"][int(s["cls"])] != "contempt"]
    images = np.stack([predictor.decode(s["png"]) for s in samples])
    with torch.no_grad():
        logits = predictor.trained.model(torch.from_numpy(images))[0][:, columns]
    truth = torch.tensor([["happiness", "sadness"].index(manifest["classes"][int(s["cls"])]) for s in samples])
    assert cell["samples"] == len(samples) == 6  # half of the 6 happy and 6 sad faces
    assert cell["accuracy"] == pytest.approx((logits.argmax(1) == truth).double().mean().item())
    assert "contempt (data)" in (out / "results.md").read_text()
    assert (out / "results.csv").read_text().splitlines()[0] == "run,run_dir,data,split,samples,accuracy,f1_macro,ece,classes"
