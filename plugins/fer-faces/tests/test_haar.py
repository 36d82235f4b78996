"""The haar detector on real faces pasted at known boxes onto face-free photos (fer_faces.scenes)."""

from __future__ import annotations

import numpy as np
import pytest

from fer_core.faces.align import align_face, template_points
from fer_core.faces.face import iou
from fer_core.testing import check_detector, check_plugin
from fer_faces.haar import HaarDetector
from fer_faces.scenes import MARKED, face_free_photos, marked_photo, real_scene


@pytest.fixture(scope="module")
def detector() -> HaarDetector:
    return HaarDetector()


@pytest.fixture(scope="module")
def scenes():
    return [real_scene(seed) for seed in range(6)]


def test_plugin_loads_alone_and_imports_no_torch():
    check_plugin("fer-faces")


def test_haar_conforms():
    check_detector("haar", plugin="fer-faces")


def test_recall_and_precision_at_iou_half_on_composite_photos(detector, scenes):
    truths = found = predicted = 0
    for scene in scenes:
        faces = detector.detect(scene.image)
        predicted += len(faces)
        truths += len(scene.faces)
        found += sum(any(iou(f.box, t.box) >= 0.5 for f in faces) for t in scene.faces)
    assert truths >= 15
    assert found / truths >= 0.9, f"recall {found}/{truths}"
    assert found / predicted >= 0.8, f"precision {found}/{predicted}"


def test_landmarks_land_near_the_marked_ones(detector, scenes):
    errors = []
    for scene in scenes:
        faces = detector.detect(scene.image)
        for truth in (t for t in scene.faces if t.landmarks is not None):
            face = max(faces, key=lambda f: iou(f.box, truth.box))
            ocular = np.linalg.norm(truth.landmarks[1] - truth.landmarks[0])
            errors.append(np.linalg.norm(face.points - truth.landmarks, axis=1).mean() / ocular)
    assert len(errors) >= 8 and np.mean(errors) < 0.15, errors


@pytest.mark.parametrize("name", sorted(MARKED))
def test_detected_eyes_land_within_2_px_of_the_template_at_112(detector, name):
    photo = marked_photo(name)
    face = max(detector.detect(photo), key=lambda f: iou(f.box, MARKED[name][0]))
    aligned = align_face(photo, face.points, 112)
    assert np.abs(aligned.to_crop(face.points[:2]) - template_points(112)[:2]).max() < 2.0
    # and the aligned crop shows the face: re-detected, its box covers most of the crop
    again = detector.detect(align_face(photo, face.points, 112, margin=0.3).crop)
    assert again and (again[0].box[2] - again[0].box[0]) > 50


@pytest.mark.parametrize("name", ["china", "flower", "chelsea", "coffee"])
def test_photos_without_a_face_yield_no_face(detector, name):
    assert detector.detect(face_free_photos()[name]) == []


def test_tiny_and_large_images(detector):
    assert detector.detect(np.zeros((10, 10, 3), np.uint8)) == []
    big = np.ascontiguousarray(np.kron(marked_photo("astronaut"), np.ones((2, 2, 1), np.uint8)))  # 1024x1024
    faces = detector.detect(big)
    assert any(iou(f.box, [2 * v for v in MARKED["astronaut"][0]]) >= 0.5 for f in faces)
