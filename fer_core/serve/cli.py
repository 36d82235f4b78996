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
def serve(model, host, port, max_bytes, max_files, max_batch, max_wait_ms, device, threads) -> None:
    """Serve a web page and a JSON API (POST /predict) for a run, checkpoint or .onnx file."""
    _needs("fastapi", "serve")
    _needs("uvicorn", "serve")
    import uvicorn

    from fer_core.predictor import load_predictor
    from fer_core.serve.app import create_app

    predictor = load_predictor(model, device=device, threads=threads)
    app = create_app(predictor, max_bytes=max_bytes, max_files=max_files, max_batch=max_batch,
                     max_wait_ms=max_wait_ms)
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
              help="Compare ONNX Runtime's logits with PyTorch's on a random batch.")
def export(run_or_checkpoint, fmt, out, opset, check) -> None:
    """Export the whole Encoder->Backbone->Head model (images in [0,1] -> logits, dynamic batch)."""
    _needs("onnx", "onnx")
    import importlib.util

    from fer_core.export import default_onnx_path, export_onnx, max_difference
    from fer_core.inference import load_trained

    trained = load_trained(run_or_checkpoint)
    path = export_onnx(trained, out or default_onnx_path(run_or_checkpoint), opset=opset)
    click.echo(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB, opset {opset}, "
               f"input [batch, {trained.recipe['data']['channels']}, {trained.recipe['data']['image_size']}, "
               f"{trained.recipe['data']['image_size']}] in [0, 1] -> logits [batch, {len(trained.classes)}])")
    if trained.temperature != 1.0:
        click.echo(f"the graph divides the logits by the temperature {trained.temperature:.4f} of `fer calibrate`")
    if check and importlib.util.find_spec("onnxruntime") is not None:
        click.echo(f"max |logit difference| against PyTorch on a batch of 3: {max_difference(trained, path):.2e}")
