"""``fer predict clip.mp4``: sample frames with PyAV, classify every face, follow faces by IoU, write
frames.csv, frames.json and timeline.png (class probabilities, and valence and arousal for models
that predict them, over time per tracked face), and optionally an annotated video.

Frames are sampled ``every`` N frames, or at ``fps`` frames per second of video time (default:
5 per second). PyAV comes with ``pip install 'fer-core[video]'``.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fer_core.errors import FerError
from fer_core.faces.draw import draw_faces
from fer_core.faces.photos import FaceMode, classify_faces
from fer_core.faces.track import IouTracker
from fer_core.outputs import VA_NAMES, has_affect, has_logits
from fer_core.predictor import Predictor, outputs_of

DEFAULT_FPS = 5.0


def _open(path: str):
    try:
        import av
    except ImportError:
        raise FerError("reading videos needs PyAV: pip install 'fer-core[video]'") from None
    if not Path(path).is_file():
        raise FerError(f"{path}: no such video file")
    try:
        container = av.open(str(path))
        stream = container.streams.video[0]
    except (av.FFmpegError, IndexError) as exc:
        raise FerError(f"{path}: not a readable video ({type(exc).__name__})") from None
    return av, container, stream


def sampled_frames(path: str, every: int | None, fps: float | None) -> Iterator[tuple[int, float, np.ndarray]]:
    """(frame index, time in s, RGB frame) of the frames to classify; decoding errors end with a FerError."""
    av, container, stream = _open(path)
    rate = float(stream.average_rate or stream.guessed_rate or 25)
    step = 1.0 / (fps or DEFAULT_FPS)
    next_time = 0.0
    with container:
        try:
            for index, frame in enumerate(container.decode(stream)):
                when = float(frame.time) if frame.time is not None else index / rate
                if every is not None:
                    if index % every:
                        continue
                elif when + 1e-6 < next_time:
                    continue
                else:
                    next_time += step * max(1, int((when - next_time) / step) + 1)
                yield index, when, frame.to_ndarray(format="rgb24")
        except av.FFmpegError as exc:
            raise FerError(f"{path}: video data is corrupt after frame {index} ({type(exc).__name__})") from None


def sampling(path: str, every: int | None, fps: float | None) -> tuple[int | None, float]:
    """(how many frames will be sampled, if known; sampled frames per second of video)."""
    _, container, stream = _open(path)
    with container:
        frames, rate = stream.frames, float(stream.average_rate or stream.guessed_rate or 25)
        seconds = float(stream.duration * stream.time_base) if stream.duration else (frames / rate if frames else 0)
    if every:
        return (-(-frames // every) if frames else None), rate / every
    step_rate = min(fps or DEFAULT_FPS, rate)
    return (int(seconds * step_rate) + 1 if seconds else None), step_rate


class _Writer:
    """The annotated video: sampled frames with their boxes, at the sampling rate."""

    def __init__(self, path: Path, rate: float):
        import av

        self.av, self.container = av, av.open(str(path), "w")
        self.stream = self.container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4",
                                                rate=max(1, round(rate)))
        self.stream.pix_fmt = "yuv420p"
        self.started = False

    def write(self, image) -> None:
        if not self.started:
            self.stream.width, self.stream.height = image.width // 2 * 2, image.height // 2 * 2
            self.started = True
        frame = self.av.VideoFrame.from_image(image.crop((0, 0, self.stream.width, self.stream.height)))
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        if self.started:
            for packet in self.stream.encode():
                self.container.mux(packet)
        self.container.close()


def predict_video(predictor: Predictor, mode: FaceMode, path: str, every: int | None = None,
                  fps: float | None = None, out_dir: str | None = None, draw: Path | None = None,
                  console: Console | None = None) -> dict[str, Any]:
    """Classify the faces of the sampled frames of ``path``; returns a summary with the files written."""
    console = console or Console(stderr=True)
    total, rate = sampling(path, every, fps)  # a file PyAV cannot open fails here, before any output
    out = Path(out_dir) if out_dir else Path(path).with_suffix(".faces")
    out.mkdir(parents=True, exist_ok=True)
    tracker, frames = IouTracker(), []
    writer = _Writer(draw, rate) if draw else None
    start = time.perf_counter()
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("{task.fields[rate]}"), console=console, transient=False)
    try:
        with progress:
            task = progress.add_task(Path(path).name, total=total, rate="")
            for index, when, image in sampled_frames(path, every, fps):
                faces = classify_faces(predictor, mode, image)
                ids = tracker.update([f["box"] for f in faces])
                frames.append({"frame": index, "time": round(when, 3),
                               "faces": [{"track": i, **f} for i, f in zip(ids, faces)]})
                if writer:
                    writer.write(draw_faces(image, faces, ids))
                done = len(frames) / (time.perf_counter() - start)
                progress.update(task, advance=1, rate=f"{done:.1f} frames/s")
    finally:
        if writer:
            writer.close()
    seconds = time.perf_counter() - start
    if not frames:
        raise FerError(f"{path}: no frame could be decoded")
    files = _write_outputs(out, frames, predictor.classes, outputs_of(predictor))
    tracks = sorted({f["track"] for frame in frames for f in frame["faces"]})
    return {"video": str(path), "frames": len(frames), "tracks": len(tracks), "seconds": round(seconds, 3),
            "frames_per_second": len(frames) / seconds if seconds else 0.0, "out_dir": str(out), **files,
            **({"drawn": str(draw)} if draw else {})}


def _write_outputs(out: Path, frames: list[dict], classes: list[str], slices: dict[str, int]) -> dict[str, str]:
    """frames.json, frames.csv (class columns for models that classify, valence and arousal for those that
    predict them) and timeline.png."""
    classifies, affect = has_logits(slices), has_affect(slices)
    (out / "frames.json").write_text(json.dumps(frames))
    with open(out / "frames.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["frame", "time", "track", "x1", "y1", "x2", "y2", "score",
                         *(["label", "confidence", *(f"p_{c}" for c in classes)] if classifies else []),
                         *(VA_NAMES if affect else ())])
        for frame in frames:
            for face in frame["faces"]:
                row = [frame["frame"], frame["time"], face["track"], *face["box"], face["score"]]
                if classifies:
                    row += [face["label"], face["confidence"], *(face["probabilities"][c] for c in classes)]
                if affect:
                    row += [face[name] for name in VA_NAMES]
                writer.writerow(row)
    timeline_plot(frames, classes if classifies else [], out / "timeline.png", affect=affect)
    return {"csv": str(out / "frames.csv"), "json": str(out / "frames.json"), "timeline": str(out / "timeline.png")}


def timeline_plot(frames: list[dict], classes: list[str], path: Path, max_tracks: int = 6,
                  affect: bool = False) -> None:
    """One row of panels per tracked face (the longest ``max_tracks``): each class's probability over time
    (when ``classes``), and valence and arousal over time (when ``affect``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[int, list[tuple[float, dict]]] = {}
    for frame in frames:
        for face in frame["faces"]:
            series.setdefault(face["track"], []).append((frame["time"], face))
    chosen = sorted(series, key=lambda t: -len(series[t]))[:max_tracks]
    kinds = (["classes"] if classes else []) + (["affect"] if affect else [])
    fig, axes = plt.subplots(max(1, len(chosen)), len(kinds), figsize=(9 * len(kinds), 2.2 * max(1, len(chosen))),
                             sharex=True, squeeze=False)
    for row, track in zip(axes, chosen):
        times = [t for t, _ in series[track]]
        for ax, kind in zip(row, kinds):
            names, low = (classes, 0) if kind == "classes" else (VA_NAMES, -1)
            for name in names:
                values = [face["probabilities"][name] if kind == "classes" else face[name] for _, face in series[track]]
                ax.plot(times, values, marker=".", label=name)
            ax.set_ylabel(f"face #{track}")
            ax.set_ylim(low, 1)
            if low:
                ax.axhline(0, color="grey", lw=0.8)
    if not chosen:
        axes[0, 0].text(0.5, 0.5, "no face found in the sampled frames", ha="center", va="center")
    for ax, kind in zip(axes[0], kinds):
        ax.legend(loc="upper right", ncol=min(len(classes), 7) if kind == "classes" else 2, fontsize=7)
        ax.set_title("class probabilities" if kind == "classes" else "valence and arousal", fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("time (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
