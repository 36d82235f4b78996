"""The body of ``fer predict``: photos (whole images or every face) and videos, with rich output."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fer_core.errors import FerError
from fer_core.faces.draw import draw_faces
from fer_core.faces.photos import face_mode, predict_photos
from fer_core.faces.video import predict_video
from fer_core.outputs import has_affect, has_logits
from fer_core.predictor import load_predictor, outputs_of

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".y4m", ".wmv", ".flv", ".ts"}


def is_video(path: str) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def draw_target(draw: str | None, path: str, several: bool, suffix: str = ".png") -> Path | None:
    """--draw OUT: the file itself for one input, else OUT/<stem>.faces<suffix>."""
    if draw is None:
        return None
    if not several:
        return Path(draw)
    Path(draw).mkdir(parents=True, exist_ok=True)
    return Path(draw) / f"{Path(path).stem}.faces{suffix}"


def predict(model: str, inputs: list[str], *, detect: bool | None, detector: str | None, margin: float | None,
            top_k: int, batch_size: int, as_json: bool, draw: str | None, every: int | None, fps: float | None,
            out: str | None, console: Console, err_console: Console) -> None:
    predictor = load_predictor(model)
    mode = face_mode(predictor, detect, detector, margin)
    videos = [p for p in inputs if is_video(p)]
    photos = [p for p in inputs if not is_video(p)]
    if (every or fps) and not videos:
        raise FerError("--every and --fps sample video frames; none of the inputs is a video (.mp4, .mkv, ...)")
    if draw and len(inputs) > 1 and Path(draw).suffix:
        raise FerError(f"--draw {draw}: with several inputs, give a folder (each input gets <name>.faces.png)")
    failed = 0
    if photos:
        failed += _photos(predictor, mode, photos, top_k, batch_size, as_json, draw, len(inputs) > 1, console,
                          err_console)
    for video in videos:
        if mode is None:
            mode = face_mode(predictor, True, detector, margin)  # videos are always read face by face
        try:
            summary = predict_video(predictor, mode, video, every=every, fps=fps, out_dir=out,
                                    draw=draw_target(draw, video, len(inputs) > 1, ".mp4"), console=err_console)
        except FerError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            failed += 1
            continue
        if as_json:
            click.echo(json.dumps(summary))
        else:
            console.print(f"{escape(video)}: {summary['frames']} frames, {summary['tracks']} tracked face(s), "
                          f"{summary['frames_per_second']:.1f} frames/s -> {escape(summary['out_dir'])}", highlight=False)
    if failed:
        sys.exit(2)


def _photos(predictor, mode, photos, top_k, batch_size, as_json, draw, several, console, err_console) -> int:
    failed = 0
    calibrated = f", temperature {predictor.temperature:.3f}" if predictor.temperature != 1.0 else ""
    table = Table(title=f"{predictor.name} predictions" + (" (faces" + calibrated + ")" if mode else
                                                           (f" ({calibrated[2:]})" if calibrated else "")))
    slices = outputs_of(predictor)
    classifies, affect = has_logits(slices), has_affect(slices)
    columns = ["image", *(("face", "box") if mode else ()), *(("label", "confidence", f"top {top_k}") if classifies
                                                              else ()), *(("valence", "arousal") if affect else ())]
    for column in columns:
        table.add_column(column, justify="right" if column in ("valence", "arousal") else "left")
    shown = None if (mode and as_json) else top_k  # JSON lines of faces carry every class's probability
    for result in predict_photos(predictor, photos, mode, shown, batch_size, keep_images=draw is not None):
        if result.error:
            failed += 1
            err_console.print(f"[bold red]error:[/] {escape(result.error)}", highlight=False, soft_wrap=True)
            continue
        target = draw_target(draw, result.path, several)
        if target is not None:
            faces = result.faces if result.faces is not None else []
            draw_faces(result.image, faces).save(target)
        if as_json:
            click.echo(json.dumps(result.as_dict()))
            continue
        rows = result.faces if result.faces is not None else [result.whole]
        if result.faces == []:
            table.add_row(escape(result.path), "-", "-", "[yellow]no face found[/]", *[""] * (len(columns) - 4))
        for i, r in enumerate(rows):
            where = (str(i + 1), " ".join(f"{v:.0f}" for v in r["box"])) if mode else ()
            cells = []
            if classifies:
                others = ", ".join(f"{t['label']} {t['probability']:.2f}" for t in r["top_k"])
                cells += [r["label"], f"{r['confidence']:.3f}", others]
            if affect:
                cells += [f"{r['valence']:+.3f}", f"{r['arousal']:+.3f}"]
            table.add_row(escape(result.path), *where, *cells)
    if not as_json and table.rows:
        console.print(table)
    return failed
