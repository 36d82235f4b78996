"""The detector kind: hook, conformance check (passing and broken detectors), alignment, image reading."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from fer_core.errors import FerError
from fer_core.faces.align import align_face, template_points
from fer_core.faces.detect import read_rgb
from fer_core.faces.face import Face, iou, make_face
from fer_core.plugins import get_host
from fer_core.scaffold import plugin_names, plugin_files
from fer_core.scaffold.examples import EXAMPLES
from fer_core.testing import ConformanceError, check_detector
from fer_core.testing.detector import HOPPER_EYES, hopper_photo

DETECTOR_PLUGIN = """
    from fer_core import hookimpl

    @hookimpl
    def register_detectors(register):
        register("kit_detector", "kit_detector_impl:build_kit_detector", summary="the kit's example detector")
        register("broken", "kit_broken:Broken", summary="a detector that breaks the contract")
"""
BROKEN = """
    import numpy as np
    from fer_core.faces.face import Face

    class Broken:
        def __init__(self, fault: str = "landmarks"):
            self.fault = fault

        def detect(self, image):
            h, w = image.shape[:2]
            box = (0.0, 0.0, float(w), float(h))
            if self.fault == "landmarks":
                return [Face(box, 0.9, ((1.0, 1.0),) * 3)]
            if self.fault == "score":
                return [Face(box, 7.0, ((1.0, 1.0),) * 5)]
            if self.fault == "eyes":
                return [Face((165.0, 145.0, 370.0, 330.0), 0.9, ((300.0, 300.0),) * 5)] if h == 600 else []
            return [Face(box, 0.9, ((1.0, 1.0),) * 5)]  # a face everywhere, even on flat grey
"""


@pytest.fixture
def kit(fake_plugins):
    pytest.importorskip("cv2", reason="the example detector uses OpenCV (installed with fer-faces)")
    names = plugin_names("kit-detector")
    example = EXAMPLES["detector"]
    fake_plugins.module("kit_detector_impl", plugin_files(names, "detector")[f"src/{names.package}/{example.module}.py"])
    fake_plugins.module("kit_broken", BROKEN)
    fake_plugins.dist("fer-kit", {"kit": DETECTOR_PLUGIN})
    assert get_host().plugins[-1].status == "loaded"


def test_the_scaffold_example_detector_passes_the_suite(kit):
    report = check_detector("kit_detector", EXAMPLES["detector"].test_params, plugin="fer-kit")
    assert report.passed[-3:] == ["finds_face", "determinism", "input_untouched"]
    assert [c.kind for c in get_host().plugins[-1].components] == ["detector", "detector"]


@pytest.mark.parametrize("fault, message", [
    ("landmarks", "3 landmarks, expected 5"),
    ("score", "score 7.0 is not in [0, 1]"),
    ("everywhere", "finds 1 face(s) on a flat grey image"),
    ("eyes", "puts the eyes on grace_hopper.jpg"),
])
def test_broken_detectors_are_named_with_their_fault(kit, fault, message):
    with pytest.raises(ConformanceError, match=r"detector 'broken': .*" + re.escape(message)):
        check_detector("broken", {"fault": fault})


def _dot(point: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A black image with one white disc of radius 9 px centred on ``point``."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    disc = (xx - point[0]) ** 2 + (yy - point[1]) ** 2 <= 81
    return np.repeat((disc * 255).astype(np.uint8)[..., None], 3, axis=-1)


def test_alignment_moves_the_pixels_at_the_landmarks_onto_the_template():
    template = template_points(112, margin=0.1)
    angle, scale, shift = np.deg2rad(25), 2.3, np.array([150.0, 90.0])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = template @ rotation.T + shift  # a face rotated by 25 degrees, 2.3 times larger
    for point, target in zip(landmarks, template):
        crop = align_face(_dot(point, (480, 640)), landmarks, 112, margin=0.1).crop
        assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
        weight = crop[..., 0].astype(float)
        ys, xs = np.mgrid[:112, :112]
        centre = np.array([(xs * weight).sum(), (ys * weight).sum()]) / weight.sum()
        assert np.hypot(*(centre - target)) < 0.5, (centre, target)


@pytest.mark.parametrize("size, margin", [(112, 0.0), (112, 0.25), (48, 0.1), (300, 0.1)])
def test_hand_marked_eyes_of_a_real_face_land_near_the_template(size, margin):
    # five hand-marked points of a real, smiling face: the least-squares fit leaves the eyes
    # within 4 px of the template at 112 px (fer-faces' tests check detected landmarks at 2 px)
    aligned = align_face(hopper_photo(), np.vstack([HOPPER_EYES, [[270, 247], [228, 277], [310, 276]]]), size, margin)
    assert aligned.crop.shape == (size, size, 3)
    eyes = aligned.to_crop(HOPPER_EYES) * 112 / size
    assert np.abs(eyes - template_points(112, margin)[:2]).max() < 4.0
    # more margin shows more of the photo around the same face
    if margin == 0.25:
        assert np.linalg.norm(eyes[1] - eyes[0]) < np.linalg.norm(np.subtract(*template_points(112, 0.0)[:2]))


def test_alignment_refuses_coinciding_landmarks():
    with pytest.raises(FerError, match="admit no alignment"):
        align_face(hopper_photo(), np.full((5, 2), 100.0), 112)


def test_iou_and_faces():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    face = make_face(np.array([1, 2, 3, 4]), np.float32(0.5), np.zeros(10))
    assert isinstance(face, Face) and face.as_dict()["landmarks"]["nose"] == [0.0, 0.0]


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_bad_images_get_one_line_errors(monkeypatch):
    assert read_rgb(_png(Image.new("L", (7, 5)))).shape == (5, 7, 3)
    with pytest.raises(FerError, match="^a.png: empty file$"):
        read_rgb(b"", "a.png")
    with pytest.raises(FerError, match="^b.png: not a readable image"):
        read_rgb(_png(Image.new("RGB", (40, 40)))[:60], "b.png")
    with pytest.raises(FerError, match="^c.txt: not a readable image"):
        read_rgb(b"hello, not an image", "c.txt")
    monkeypatch.setattr("fer_core.faces.detect.MAX_PIXELS", 1000)
    with pytest.raises(FerError, match="^d.png: over .* decompression bomb"):
        read_rgb(_png(Image.new("RGB", (100, 100))), "d.png")
