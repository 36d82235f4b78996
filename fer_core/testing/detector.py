"""``check_detector``: the conformance checks of the ``detector`` kind (no torch needed by a detector).

A detector is not a ``torch.nn.Module``, so instead of shapes, devices and gradients it is
checked on images: any size, no face on a blank image, Grace Hopper's face found on the photo
that ships with matplotlib (box and eyes near hand-marked positions), the same answer twice,
and the caller's image left unchanged.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fer_core.faces.face import Face, face_problem, iou
from fer_core.registry import Registry
from fer_core.testing.checks import check_parameters, check_registered
from fer_core.testing.subject import ConformanceError, Report, Subject, one_line

DETECTOR_CHECKS = ("registered", "parameters", "builds", "sizes", "blank", "finds_face", "determinism",
                   "input_untouched")
# Grace Hopper in matplotlib's sample_data/grace_hopper.jpg (512x600), marked by hand.
HOPPER_BOX = (165.0, 145.0, 370.0, 330.0)
HOPPER_EYES = np.array([[222.0, 189.0], [298.0, 186.0]])
EYE_TOLERANCE = 0.25  # of the distance between the marked eyes


@dataclass
class DetectorSpec:
    kind = "detector"
    context: Mapping[str, Any] = None  # type: ignore[assignment]

    def __post_init__(self):
        self.context = {}


def hopper_photo() -> np.ndarray:
    """matplotlib's Grace Hopper photo as uint8 RGB [600, 512, 3]."""
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as f, Image.open(f) as image:
        return np.asarray(image.convert("RGB"))


def _detect(s: Subject, detector: Any, image: np.ndarray, label: str) -> list[Face]:
    try:
        faces = detector.detect(image)
    except Exception as exc:
        s.fail(f"detect on {label} raised {one_line(exc)}")
    if not isinstance(faces, list):
        s.fail(f"detect on {label} returned {type(faces).__name__}, not a list of Face")
    for face in faces:
        problem = face_problem(face, image.shape[1], image.shape[0])
        if problem:
            s.fail(f"on {label}: {problem}")
    return faces


def _build(s: Subject) -> Any:
    try:
        detector = s.registry.build("detector", {"name": s.name, **s.params}, "detector", {})
    except Exception as exc:
        s.fail(f"cannot be built from {s.params or 'its defaults'}: {one_line(exc)}")
    if not callable(getattr(detector, "detect", None)):
        s.fail(f"the factory returned {type(detector).__name__}, which has no detect(image) method")
    return detector


def check_sizes(s: Subject) -> None:
    rng = np.random.default_rng(0)
    for h, w in ((480, 640), (217, 333), (31, 17), (1, 1)):
        _detect(s, s.reference, rng.integers(0, 256, (h, w, 3), dtype=np.uint8), f"noise [{h}, {w}, 3]")


def check_blank(s: Subject) -> None:
    faces = _detect(s, s.reference, np.full((240, 320, 3), 128, np.uint8), "a flat grey image")
    if faces:
        s.fail(f"finds {len(faces)} face(s) on a flat grey image")


def check_finds_face(s: Subject) -> None:
    faces = _detect(s, s.reference, hopper_photo(), "grace_hopper.jpg")
    best = max(faces, key=lambda f: iou(f.box, HOPPER_BOX), default=None)
    if best is None or iou(best.box, HOPPER_BOX) < 0.5:
        s.fail(f"misses the face on grace_hopper.jpg (box near {HOPPER_BOX}); found "
               f"{[tuple(round(v) for v in f.box) for f in faces]}")
    error = np.linalg.norm(best.points[:2] - HOPPER_EYES, axis=1).max()
    limit = EYE_TOLERANCE * np.linalg.norm(HOPPER_EYES[1] - HOPPER_EYES[0])
    if error > limit:
        s.fail(f"puts the eyes on grace_hopper.jpg {error:.0f} px from where they are (limit {limit:.0f} px; "
               f"landmark order: image-left eye, image-right eye, nose, mouth left, mouth right)")


def check_determinism(s: Subject) -> None:
    image = hopper_photo()
    if _detect(s, s.reference, image, "grace_hopper.jpg") != _detect(s, _build(s), image, "grace_hopper.jpg"):
        s.fail("two builds give different faces for the same image")


def check_input_untouched(s: Subject) -> None:
    image = hopper_photo()
    before = image.copy()
    _detect(s, s.reference, image, "grace_hopper.jpg")
    if not np.array_equal(image, before):
        s.fail("detect changes the caller's image in place")


def run_detector_checks(name: str, params: Mapping[str, Any] | None = None, *, plugin: str | None = None,
                        registry: Registry | None = None, skip: Collection[str] = ()) -> Report:
    unknown = set(skip) - set(DETECTOR_CHECKS[3:])
    if unknown:
        raise ValueError(f"cannot skip {sorted(unknown)}; skippable checks are {', '.join(DETECTOR_CHECKS[3:])}")
    from_host = registry is None
    if registry is None:
        from fer_core.plugins import get_registry

        registry = get_registry()
    s = Subject(DetectorSpec(), name, dict(params or {}), registry, plugin, from_host=from_host)
    report = Report("detector", name)
    steps = {"registered": check_registered, "parameters": check_parameters,
             "builds": lambda s: setattr(s, "reference", _build(s)), "sizes": check_sizes, "blank": check_blank,
             "finds_face": check_finds_face, "determinism": check_determinism,
             "input_untouched": check_input_untouched}
    for check, run in steps.items():
        if check in skip:
            report.skipped[check] = "skipped by the caller"
            continue
        try:
            run(s)
        except (ConformanceError, KeyboardInterrupt):
            raise
        except Exception as exc:
            s.fail(f"{check} check raised {one_line(exc)}")
        report.passed.append(check)
    report.plugin = s.component.plugin
    return report
