"""Faces in the wild, end to end: fer predict on photos (--json, --draw, --no-detect) and videos,
POST /faces of fer serve, fer data pack --detect, and bad inputs to each (one line per file)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

pytest.importorskip("fer_faces", reason="the fer-faces plugin is not installed: pip install -e plugins/fer-faces")
pytest.importorskip("sklearn", reason="the test scenes use scikit-learn's sample photos")

from fer_core.cli import main  # noqa: E402
from fer_core.faces.face import iou  # noqa: E402
from fer_core.faces.photos import face_setting  # noqa: E402
from fer_faces.scenes import face_free_photos, marked_photo, real_scene  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from serve_fixtures import tiny_run  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A group photo with three real faces at known boxes, a photo without faces, and bad files."""
    root = tmp_path_factory.mktemp("photos")
    scene = real_scene(1)
    Image.fromarray(scene.image).save(root / "group.jpg", quality=95)
    Image.fromarray(face_free_photos()["coffee"]).save(root / "coffee.png")
    (root / "notes.png").write_text("not an image")
    (root / "empty.jpg").write_bytes(b"")
    Image.new("RGB", (9000, 6000)).save(root / "bomb.png")  # 54 M pixels: refused before decoding
    return root, scene


def fer(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def json_lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_every_face_of_a_group_photo_with_box_landmarks_and_label(run_dir, photos):
    root, scene = photos
    result = fer("predict", run_dir, root / "group.jpg", root / "coffee.png", "--detect", "--json")
    assert result.exit_code == 0, result.output
    group, coffee = json_lines(result.output)
    assert coffee == {"image": str(root / "coffee.png"), "faces": []}
    assert len(group["faces"]) == len(scene.faces) == 3
    classes = list(group["faces"][0]["probabilities"])
    for truth in scene.faces:
        face = max(group["faces"], key=lambda f: iou(f["box"], truth.box))
        assert iou(face["box"], truth.box) >= 0.5
        assert list(face["landmarks"]) == ["left_eye", "right_eye", "nose", "mouth_left", "mouth_right"]
        assert face["label"] in classes and abs(sum(face["probabilities"].values()) - 1) < 1e-3


def test_no_face_is_said_per_image_and_exit_code_0(run_dir, photos):
    root, _ = photos
    result = fer("predict", run_dir, root / "coffee.png", "--detect")
    assert result.exit_code == 0 and "no face found" in result.output


def test_draw_writes_the_photo_with_boxes_and_labels(run_dir, photos, tmp_path):
    root, scene = photos
    out = tmp_path / "drawn.png"
    assert fer("predict", run_dir, root / "group.jpg", "--detect", "--draw", out).exit_code == 0
    drawn = np.asarray(Image.open(out).convert("RGB")).astype(int)
    original = np.asarray(Image.open(root / "group.jpg").convert("RGB")).astype(int)
    assert drawn.shape == original.shape
    changed = np.abs(drawn - original).sum(axis=2) > 60
    for truth in scene.faces:  # the box outline around each face is drawn
        x1, y1, x2, y2 = (round(v) for v in truth.box)
        assert changed[y1 - 12:y2 + 12, x1 - 12:x2 + 12].mean() > 0.03
    assert changed.mean() < 0.2  # and the rest of the photo is left alone


def test_no_detect_classifies_whole_images_and_is_the_default_for_this_run(run_dir, photos):
    root, _ = photos
    forced = json_lines(fer("predict", run_dir, root / "group.jpg", "--no-detect", "--json").output)
    default = json_lines(fer("predict", run_dir, root / "group.jpg", "--json").output)
    assert "faces" not in forced[0] and forced[0]["label"] and forced == default


def test_the_default_follows_the_runs_data(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"faces": {"detector": "haar", "size": 64, "margin": 0.2}}))
    packed = SimpleNamespace(trained=SimpleNamespace(recipe={"data": {"root": str(tmp_path)}}))
    plain = SimpleNamespace(trained=SimpleNamespace(recipe={"data": {"root": str(tmp_path / "elsewhere")}}))
    assert face_setting(packed) == {"detector": "haar", "size": 64, "margin": 0.2}
    assert face_setting(plain) is None and face_setting(SimpleNamespace(metadata={})) is None


@pytest.mark.parametrize("detect", ["--detect", "--no-detect"])
def test_bad_files_get_one_line_each_and_the_rest_is_processed(run_dir, photos, detect):
    root, _ = photos
    files = [root / n for n in ("notes.png", "group.jpg", "empty.jpg", "bomb.png", "missing.jpg")]
    result = CliRunner().invoke(main, ["predict", str(run_dir), *map(str, files), detect, "--json"])
    assert result.exit_code == 2
    assert [r["image"] for r in json_lines(result.stdout)] == [str(root / "group.jpg")]
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 4, errors
    for line, reason in zip(errors, ("not a readable image", "empty file", "decompression bomb", "no such image")):
        assert line.startswith("error: ") and reason in line


def _clip(path: Path, frames: int = 8) -> Path:
    import av

    scene = real_scene(1).image
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
        for i in range(frames):  # the faces drift right by 3 px a frame
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.roll(scene, 3 * i, axis=1)), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_video_faces_are_tracked_and_written_per_frame(run_dir, tmp_path):
    import av

    clip = _clip(tmp_path / "clip.mp4")
    out, drawn = tmp_path / "out", tmp_path / "drawn.mp4"
    result = fer("predict", run_dir, clip, "--every", "2", "--out", out, "--draw", drawn, "--json")
    assert result.exit_code == 0, result.output
    summary = json_lines(result.output)[0]
    assert summary["frames"] == 4 and summary["tracks"] == 3 and summary["frames_per_second"] > 0
    frames = json.loads((out / "frames.json").read_text())
    assert [f["frame"] for f in frames] == [0, 2, 4, 6]
    assert all(sorted(face["track"] for face in f["faces"]) == [1, 2, 3] for f in frames)
    rows = (out / "frames.csv").read_text().splitlines()
    assert len(rows) == 1 + 12 and rows[0].startswith("frame,time,track,x1,y1,x2,y2,score,label,confidence,p_")
    assert Image.open(out / "timeline.png").size[0] > 300
    with av.open(str(drawn)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 4


def test_video_sampling_by_fps_and_a_corrupt_video(run_dir, tmp_path):
    clip = _clip(tmp_path / "clip.mp4")
    result = fer("predict", run_dir, clip, "--fps", "2", "--out", tmp_path / "o", "--json")
    assert [f["frame"] for f in json.loads((tmp_path / "o" / "frames.json").read_text())] == [0, 4]
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 1000)
    result = CliRunner().invoke(main, ["predict", str(run_dir), str(tmp_path / "bad.mp4")])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "not a readable video" in result.stderr


def test_serve_finds_faces_with_boxes_and_landmarks(run_dir, photos):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from fer_core.predictor import load_predictor
    from fer_core.serve.app import create_app

    root, scene = photos
    with TestClient(create_app(load_predictor(run_dir))) as client:
        files = [("image", (n, (root / n).read_bytes(), "image/png")) for n in ("group.jpg", "coffee.png")]
        group, coffee = client.post("/faces", files=files).json()
        assert (group["width"], group["height"], coffee["faces"]) == (640, 480, [])
        assert sorted(max(iou(f["box"], t.box) for f in group["faces"]) >= 0.5 for t in scene.faces) == [True] * 3
        assert all(len(f["landmarks"]) == 5 and f["label"] for f in group["faces"])
        bad = client.post("/faces", files=[("image", ("notes.png", b"not an image", "image/png"))])
        assert bad.status_code == 415 and bad.json()["detail"].startswith("notes.png: not a readable image")
        assert client.get("/info").json()["faces"]["detector"] == "haar"


def test_pack_detect_keeps_aligned_main_faces_and_drops_photos_without(tmp_path):
    source = tmp_path / "source"
    for label, names in {"happiness": ("astronaut",), "neutral": ("grace_hopper",)}.items():
        (source / label).mkdir(parents=True)
        for name in names:
            Image.fromarray(marked_photo(name)).save(source / label / f"{name}.png")
        Image.fromarray(real_scene(3, faces=1, sizes=(140, 160)).image).save(source / label / "scene.jpg")
    Image.fromarray(face_free_photos()["coffee"]).save(source / "neutral" / "coffee.png")
    (source / "neutral" / "broken.jpg").write_bytes(b"\xff\xd8 broken")
    result = fer("data", "pack", source, tmp_path / "packed", "-f", "imagefolder", "--detect", "--face-size", "64",
                 "--test-split", "0")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "packed" / "dataset.json").read_text())
    assert manifest["dropped"] == {"corrupt_image": 1, "no_face": 1}
    assert manifest["faces"] == {"detector": "haar", "size": 64, "margin": 0.1}
    assert manifest["image"]["size"] == [64, 64] and sum(e["count"] for e in manifest["splits"].values()) == 4
