"""`fer compare` and the per-class report: readable at 80 columns, Markdown/CSV/JSON output, and runs that did
not finish listed with their status instead of ending the comparison (issue 23 item 5, issue 16 item 7)."""

import csv
import io
import json
import random

import pytest
import yaml
from click.testing import CliRunner
from rich.console import Console

from fer_core.cli import _failure_recorded, main
from fer_core.compare import compare_rows, compare_table
from fer_core.evaluate import report_table
from fer_core.run_status import CRASHED, FINISHED, UNFINISHED, UNREADABLE, run_state
from fer_core.runs import new_run_dir, write_json

CLASSES = ["anger", "contempt", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"]


def recipe(name: str, lr: float, epochs: int = 10) -> dict:
    return {"name": name, "seed": 0, "train": {"epochs": epochs, "batch_size": 64},
            "optim": {"name": "adamw", "lr": lr}, "model": {"backbone": {"name": name, "params": {"drop_rate": 0.1}}}}


def finished_run(root, name: str, lr: float, accuracy: float, parameters: int):
    run_dir = root / name / "20261130-100000"
    run_dir.mkdir(parents=True)
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe(name, lr)))
    write_json(run_dir / "summary.json", {
        "recipe": name, "epochs": 10, "test": {"accuracy": accuracy, "f1_macro": accuracy - 0.0123,
                                              "f1_weighted": accuracy - 0.0071},
        "parameters": parameters, "trainable_parameters": parameters // 3, "train_time_s": 3456.7,
        "inference_images_per_s": 12345.6, "inference_input": "images", "peak_memory_mb": 321.0})
    return run_dir


def unfinished_run(root, name: str, epochs_done: int):
    run_dir = root / name / "20261130-110000"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe("resnet18", 1e-3)))
    lines = [json.dumps({"kind": "epoch", "epoch": e, "val_accuracy": 0.5}) for e in range(1, epochs_done + 1)]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + '\n{"kind": "train", "ep')  # cut by a kill
    return run_dir


@pytest.fixture
def runs(tmp_path):
    """Two finished runs, one killed after epoch 3, one crashed after epoch 1, one damaged, one not a run."""
    good = finished_run(tmp_path, "vit_tiny_patch16_224", 3e-4, 0.8523, 5_526_000)
    other = finished_run(tmp_path, "resnet18", 1e-3, 0.8123, 11_180_103)
    killed = unfinished_run(tmp_path, "killed", 3)
    crashed = unfinished_run(tmp_path, "crashed", 1)
    write_json(crashed / "failed.json", {"error": "loss became nan at epoch 2, step 5"})
    damaged = finished_run(tmp_path, "damaged", 1e-2, 0.5, 10)
    (damaged / "summary.json").write_text('{"recipe": "damaged", "te')
    empty = tmp_path / "empty"
    empty.mkdir()
    return {"good": good, "other": other, "killed": killed, "crashed": crashed, "damaged": damaged,
            "empty": empty}


def rendered(renderable, width: int) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


def column(text: str, index: int) -> str:
    """The words of column ``index`` of a rich table rendering, row lines joined (wrapped cells rejoined)."""
    lines = text.splitlines()
    top = next(line for line in lines if line.lstrip().startswith("┏"))
    edges = [i for i, ch in enumerate(top) if ch in "┏┳┓"]
    body = [line for line in lines if line.lstrip().startswith("│")]
    return " ".join(" ".join(line[edges[index] + 1:edges[index + 1]].split()) for line in body)


def test_run_states(runs):
    states = {name: run_state(path) for name, path in runs.items()}
    assert {n: s.status for n, s in states.items()} == {
        "good": FINISHED, "other": FINISHED, "killed": UNFINISHED, "crashed": CRASHED, "damaged": UNREADABLE,
        "empty": UNREADABLE}
    assert states["killed"].describe() == "running or killed (after epoch 3/10)"
    assert states["crashed"].describe() == "crashed: loss became nan at epoch 2, step 5 (after epoch 1/10)"
    assert "summary.json is damaged" in states["damaged"].describe()
    assert "no recipe.yaml" in states["empty"].describe()


def test_compare_fits_80_columns_and_lists_every_run(runs):
    text = rendered(compare_table(list(runs.values())), 80)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text
    flat = " ".join(text.split())
    for header in ("run", "status", "accuracy", "macro F1", "weighted F1", "recipe"):
        assert f" {header} " in flat, header
    for number in ("0.8523", "0.8400", "0.8452", "0.8123", "0.8000", "0.8052"):
        assert number in text
    statuses = " ".join(column(text, 1).split())
    assert "running or killed (after epoch 3/10)" in statuses
    assert "crashed: loss became nan at epoch 2, step 5 (after epoch 1/10)" in statuses
    assert "not shown at this width" in flat, "the dropped columns are named"
    assert text.index("0.8523") < text.index("0.8123") < text.index("running or")  # best first, unfinished last
    wide = rendered(compare_table(list(runs.values())), 200)
    assert "11,180,103" in wide and "12346" in wide and "not shown" not in wide


def test_report_table_fits_80_columns():
    rng = random.Random(0)
    confusion = [[rng.randint(0, 99_999) for _ in CLASSES] for _ in CLASSES]
    per = {"precision": [rng.random() for _ in CLASSES], "recall": [rng.random() for _ in CLASSES],
           "f1": [rng.random() for _ in CLASSES], "support": [sum(row) for row in confusion]}
    report = {"recipe": "vit-tiny", "split": "test", "classes": CLASSES, "accuracy": 0.71234, "f1_macro": 0.61,
              "f1_weighted": 0.7, "per_class": per, "confusion": confusion}
    for width in (80, 200):
        text = rendered(report_table(report), width)
        assert max(len(line) for line in text.splitlines()) <= width
        assert "…" not in text
        cells = text.replace("│", " ").replace("┃", " ").split()
        for i, name in enumerate(CLASSES):
            assert name in cells
            for value in (f"{per['precision'][i]:.3f}", f"{per['recall'][i]:.3f}", f"{per['f1'][i]:.3f}"):
                assert value in cells
            assert all(str(v) in cells for v in confusion[i]), f"row {name} of the confusion matrix is cut"
        assert ("(by number)" in text) == (width == 80), "class numbers head the matrix only when names do not fit"


def test_compare_formats(runs, tmp_path):
    dirs = [str(runs[name]) for name in ("other", "good", "crashed")]
    runner = CliRunner()
    md = runner.invoke(main, ["compare", *dirs, "--format", "md"])
    assert md.exit_code == 0, md.output
    lines = md.output.splitlines()
    assert lines[0].startswith("| run | dir | status | accuracy |") and "optim.lr" in lines[0]
    assert len(lines) == 5 and lines[2].startswith("| vit_tiny_patch16_224 |") and "| 0.8523 |" in lines[2]

    out = tmp_path / "table.csv"
    result = runner.invoke(main, ["compare", *dirs, "--output", str(out)])  # the format from the suffix
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert [r["run"] for r in rows] == ["vit_tiny_patch16_224", "resnet18", "resnet18"]
    assert float(rows[0]["accuracy"]) == 0.8523 and int(rows[1]["parameters"]) == 11_180_103
    assert rows[2]["status"].startswith("crashed") and rows[2]["accuracy"] == ""
    assert rows[0]["optim.lr"] == "0.0003"

    data = json.loads(runner.invoke(main, ["compare", *dirs, "--format", "json", "--metric", "f1_macro"]).output)
    assert data["metric"] == "f1_macro" and "optim.lr" in data["differing_keys"]
    assert [r["status"] for r in data["runs"]] == [FINISHED, FINISHED, CRASHED]
    assert data["runs"][0]["f1_macro"] == pytest.approx(0.84)

    bad = runner.invoke(main, ["compare", *dirs, "--output", str(tmp_path / "table.txt")])
    assert bad.exit_code == 2 and "--format md, csv or json" in bad.output


def test_compare_survives_broken_runs(runs):
    result = CliRunner().invoke(main, ["compare", *map(str, runs.values())], terminal_width=80)
    assert result.exit_code == 0, result.output
    assert "6 runs" in result.output and "unreadable" in result.output
    rows, _ = compare_rows(list(runs.values()))
    assert [r["status"] for r in rows][:2] == [FINISHED, FINISHED] and len(rows) == 6


def test_a_run_that_raises_is_marked_crashed_and_resuming_clears_it(tmp_path):
    parent = tmp_path / "runs" / "tiny"
    with pytest.raises(RuntimeError), _failure_recorded(parent=parent):
        run_dir = new_run_dir(tmp_path / "runs", "tiny")
        (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe("tiny", 0.1, epochs=2)))
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied\nmore detail")
    state = run_state(run_dir)
    assert state.status == CRASHED and state.error == "RuntimeError: mat1 and mat2 shapes cannot be multiplied"
    with _failure_recorded(resume=str(run_dir)):
        assert run_state(run_dir).status == UNFINISHED


def test_study_report_shows_status_and_survives_broken_runs(runs, tmp_path):
    from types import SimpleNamespace

    from fer_core.study_report import write_results

    def run(name):
        return SimpleNamespace(id=name, label=name, settings={}, recipe={"name": name})

    names = ["good", "killed", "crashed", "damaged", "pending"]
    study = SimpleNamespace(name="s", path=tmp_path / "s.yaml", description="", metric="accuracy", grid={},
                            out_dir=tmp_path / "study", runs=[run(n) for n in names])
    study.out_dir.mkdir()
    records = {"good": {"status": "finished", "run_dir": str(runs["good"])},
               "killed": {"status": "running", "run_dir": str(runs["killed"])},  # the study process was killed
               "crashed": {"status": "failed", "run_dir": str(runs["crashed"]), "error": "RuntimeError: boom"},
               "damaged": {"status": "finished", "run_dir": str(runs["damaged"])}}
    console = Console(width=160, record=True, file=io.StringIO())
    rows = write_results(study, records, console=console)
    assert [r["status"] for r in rows] == ["finished", "running", "failed", UNREADABLE, "pending"]
    markdown = (study.out_dir / "results.md").read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| approach"))
    assert header.startswith("| approach | status | test acc |")
    assert "| killed | running or killed (after epoch 3/10) |" in markdown
    assert "| crashed | failed: RuntimeError: boom (after epoch 1/10) |" in markdown
    assert "| damaged | unreadable: summary.json is damaged" in markdown
    assert "| good | finished | 0.8523 |" in markdown
    assert "running or killed" in console.export_text()
