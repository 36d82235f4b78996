"""``fer serve`` and ``fer export``; FastAPI, uvicorn, torch and onnx are imported only when they run."""

from __future__ import annotations

import click

from fer_core.errors import FerError


def _needs(module: str, extra: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise FerError(f"this command needs {module}: pip install 'fer-core[{extra}]'")


@click.command("serve")
@click.argument("model", metavar="RUN_CHECKPOINT_OR_ONNX", type=click.Path(exists=True))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--max-bytes", default=10_000_000, show_default=True, type=click.IntRange(min=1),
              help="Largest accepted image file, in bytes.")
@click.option("--max-files", default=32, show_default=True, type=click.IntRange(min=1),
              help="Most images in one request.")
@click.option("--max-batch", default=32, show_default=True, type=click.IntRange(min=1),
              help="Most images in one forward pass.")
@click.option("--max-wait-ms", default=5.0, show_default=True, type=click.FloatRange(min=0),
              help="How long the first waiting image waits for others to join its batch.")
@click.option("--device", default="cpu", show_default=True, help="torch device for runs and checkpoints.")
@click.option("--threads", default=None, type=click.IntRange(min=1),
              help="CPU threads per forward pass [default: torch's / ONNX Runtime's choice].")
@click.option("--detector", default=None, help="Face detector of POST /faces and the page  [default: the run's, "
                                               "else the first installed]")
@click.option("--margin", type=click.FloatRange(0, 2), default=None,
              help="Alignment margin of POST /faces  [default: the run's, else 0.1]")
def serve(model, host, port, max_bytes, max_files, max_batch, max_wait_ms, device, threads, detector,
          margin) -> None:
    """Serve a web page and a JSON API (POST /predict) for a run, checkpoint or .onnx file."""
    _needs("fastapi", "serve")
    _needs("uvicorn", "serve")
    import uvicorn

    from fer_core.predictor import load_predictor
    from fer_core.serve.app import create_app

    from fer_core.faces.photos import face_mode
    from fer_core.serve.faces import FaceService

    predictor = load_predictor(model, device=device, threads=threads)
    mode = face_mode(predictor, True, detector, margin) if detector or margin is not None else None
    app = create_app(predictor, max_bytes=max_bytes, max_files=max_files, max_batch=max_batch,
                     max_wait_ms=max_wait_ms, faces=FaceService(predictor, mode))
    click.echo(f"serving '{predictor.name}' ({predictor.format}, {len(predictor.classes)} classes) "
               f"at http://{host}:{port}/  (Ctrl-C stops)", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


@click.command("export")
@click.argument("run_or_checkpoint", type=click.Path(exists=True))
@click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Output file [default: RUN/model.onnx, or CHECKPOINT.onnx beside a loose checkpoint].")
@click.option("--opset", default=18, show_default=True, type=click.IntRange(min=13))
@click.option("--check/--no-check", default=True, show_default=True,
              help="Compare ONNX Runtime's outputs with PyTorch's on a random batch.")
@click.option("--quantize", type=click.Choice(["int8"]), default=None,
              help="Also write an INT8 model (RUN/model.int8.onnx) and compare it with float32.")
@click.option("--quantize-mode", type=click.Choice(["auto", "static", "dynamic"]), default="auto", show_default=True,
              help="static: calibrated INT8 activations (CNNs); dynamic: INT8 weights (transformers); "
                   "auto: static when the graph is mostly convolutions.")
@click.option("--calibration", default=256, show_default=True, type=click.IntRange(min=1),
              help="Training images used to calibrate static quantization.")
@click.option("--split", default="test", show_default=True, help="Split on which float32 and INT8 are compared.")
def export(run_or_checkpoint, fmt, out, opset, check, quantize, quantize_mode, calibration, split) -> None:
    """Export the whole Encoder->Backbone->Head model (images in [0,1] -> logits and/or va, dynamic batch)."""
    _needs("onnx", "onnx")
    import importlib.util

    from fer_core.export import default_onnx_path, export_onnx, max_differences
    from fer_core.inference import load_trained

    trained = load_trained(run_or_checkpoint)
    path = export_onnx(trained, out or default_onnx_path(run_or_checkpoint), opset=opset)
    size = trained.recipe["data"]["image_size"]
    outputs = ", ".join(f"{name} [batch, {width}]" for name, width in trained.slices.items())
    task = f", task {trained.task}" if trained.task != "classify" else ""
    click.echo(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB, opset {opset}{task}, "
               f"input [batch, {trained.recipe['data']['channels']}, {size}, {size}] in [0, 1] -> {outputs})")
    if trained.temperature != 1.0:
        click.echo(f"the graph divides the logits by the temperature {trained.temperature:.4f} of `fer calibrate`")
    if check and importlib.util.find_spec("onnxruntime") is not None:
        for name, value in max_differences(trained, path).items():
            click.echo(f"max |{'logit' if name == 'logits' else name} difference| against PyTorch on a batch of 3: "
                       f"{value:.2e}")
    if quantize:
        _needs("onnxruntime", "onnx")
        _export_int8(trained, path, quantize_mode, calibration, split)


def _export_int8(trained, path, mode: str, calibration: int, split: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from fer_core.quantize import calibration_batches, choose_mode, compare_models, quantize_int8
    from fer_core.runs import run_dir_of, write_json

    mode = choose_mode(path) if mode == "auto" else mode
    batches = calibration_batches(trained, calibration) if mode == "static" else None
    int8 = quantize_int8(path, path.with_suffix(".int8.onnx"), mode=mode, calibration=batches)
    used = f"{sum(len(b) for b in batches)} training images" if batches else "no calibration"
    click.echo(f"wrote {int8} ({mode} INT8, {used})")
    rows = compare_models(trained, {"float32": path, "int8": int8}, split=split)
    # (row key, column, format): speed, then class scores for models that classify; valence/arousal in a second table
    speed_and_classes = [("file_mb", "file MB", "{:.2f}"), ("images_per_s_batch1", "img/s b1", "{:.0f}"),
                         ("images_per_s_batch32", "img/s b32", "{:.0f}"), ("accuracy", "accuracy", "{:.4f}"),
                         ("f1_macro", "macro F1", "{:.4f}"), ("agreement", "agrees", "{:.1%}")]
    affect = [("valence_ccc", "valence CCC", "{:.4f}"), ("arousal_ccc", "arousal CCC", "{:.4f}"),
              ("ccc_mean", "CCC mean", "{:.4f}"), ("va_max_difference", "max |Δva| vs float32", "{:.4f}")]
    titles = [f"float32 against INT8 ({split} split, onnxruntime on the CPU)",
              f"valence and arousal, float32 against INT8 ({split} split)"]
    for title, columns in zip(titles, (speed_and_classes, affect)):
        columns = [c for c in columns if c[0] in rows["float32"]]
        if not columns:
            continue
        table = Table(title=title)
        table.add_column("model")
        for _, name, _ in columns:
            table.add_column(name, justify="right")
        for name, row in rows.items():
            table.add_row(name, *(pattern.format(row[key]) for key, _, pattern in columns))
        Console().print(table)
    f, q = rows["float32"], rows["int8"]
    changes = []
    if "accuracy" in f:
        changes.append(f"accuracy {100 * (q['accuracy'] - f['accuracy']):+.2f} points")
    if "ccc_mean" in f:
        changes.append(f"CCC mean {q['ccc_mean'] - f['ccc_mean']:+.4f}")
    click.echo(f"INT8: {f['file_mb'] / q['file_mb']:.1f}x smaller, {q['images_per_s_batch1'] / f['images_per_s_batch1']:.2f}x "
               f"at batch 1, {q['images_per_s_batch32'] / f['images_per_s_batch32']:.2f}x at batch 32"
               + "".join(f", {c}" for c in changes))
    run_dir = run_dir_of(trained.checkpoint)
    if run_dir is not None:
        write_json(run_dir / "quantization.json", {"mode": mode, "calibration_images": sum(len(b) for b in batches or []),
                                                   "split": split, "models": rows})
