"""`fer serve`'s page with faces, in headless Chromium: boxes and labels on an uploaded group photo,
and the webcam mode fed by Chromium's fake camera playing a .y4m video of that photo.

Skips like tests/test_serve_browser.py when chromium and chromium-driver are missing
(`scripts/install-browser.sh`), or when fer-faces is not installed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'fer-core[serve]'")
pytest.importorskip("selenium", reason="selenium is not installed: pip install 'fer-core[test]'")
pytest.importorskip("fer_faces", reason="the fer-faces plugin is not installed: pip install -e plugins/fer-faces")
pytest.importorskip("sklearn", reason="the test scenes use scikit-learn's sample photos")
av = pytest.importorskip("av", reason="PyAV writes the fake camera's video: pip install 'fer-core[video]'")
import httpx  # noqa: E402
from PIL import Image  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from fer_core.faces.face import iou  # noqa: E402
from fer_faces.scenes import real_scene  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from serve_fixtures import HAVE_BROWSER, headless_chromium, free_port, start_server, stop_server, tiny_run  # noqa: E402

pytestmark = pytest.mark.skipif(not HAVE_BROWSER,
                                reason="chromium and chromium-driver are not installed; run scripts/install-browser.sh")


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """The group photo as a JPEG and as a 2-second 640x480 .y4m video for the fake camera."""
    root = tmp_path_factory.mktemp("webcam")
    scene = real_scene(1)
    Image.fromarray(scene.image).save(root / "group.jpg", quality=95)
    with av.open(str(root / "camera.y4m"), "w", format="yuv4mpegpipe") as container:
        stream = container.add_stream("wrapped_avframe", rate=10)
        stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
        for _ in range(20):
            for packet in stream.encode(av.VideoFrame.from_ndarray(scene.image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return root, scene


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    proc = start_server(tiny_run(tmp_path_factory), port)
    yield f"http://127.0.0.1:{port}"
    stop_server(proc)


@pytest.fixture(scope="module")
def browser(scene):
    root, _ = scene
    with headless_chromium("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                           f"--use-file-for-fake-video-capture={root / 'camera.y4m'}") as driver:
        yield driver


def _boxes(elements) -> list[list[float]]:
    return [[float(v) for v in e.get_attribute("data-box").split(",")] for e in elements]


def test_an_uploaded_photo_gets_a_box_and_label_per_face(server, browser, scene):
    root, truth = scene
    expected = httpx.post(f"{server}/faces", files=[("image", ("group.jpg", (root / "group.jpg").read_bytes(),
                                                                "image/jpeg"))], timeout=60).json()[0]
    browser.get(server + "/")
    browser.find_element(By.ID, "files").send_keys(str(root / "group.jpg"))
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, '.card[data-faces="3"]'))
    card = browser.find_element(By.CSS_SELECTOR, ".card")
    faces = card.find_elements(By.CSS_SELECTOR, ".faces .face")
    assert [f.get_attribute("data-label") for f in faces] == [f["label"] for f in expected["faces"]]
    assert _boxes(faces) == [f["box"] for f in expected["faces"]]
    # the boxes are drawn on the card's canvas: its pixels at a box edge are the box colour, not the photo's
    pixel = browser.execute_script(
        "const c = document.querySelector('.card canvas'); const [x1, y1, x2, y2] = arguments[0];"
        "return Array.from(c.getContext('2d').getImageData(Math.round((x1 + x2) / 2), Math.round(y1), 1, 1).data);",
        expected["faces"][0]["box"])
    assert pixel[:3] == [255, 64, 64]


def test_the_webcam_mode_boxes_and_labels_faces_live(server, browser, scene):
    _, truth = scene
    browser.get(server + "/")
    WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "model-name").text != "…")
    browser.find_element(By.ID, "camera-start").click()
    status = browser.find_element(By.ID, "camera-status")
    WebDriverWait(browser, 90).until(lambda d: int(status.get_attribute("data-frames")) >= 3)
    # one script reads the whole list: each new frame replaces its elements, so found elements go stale
    faces = browser.execute_script(
        "return Array.from(document.querySelectorAll('#live-faces .face'), f => [f.dataset.box, f.dataset.label]);")
    boxes = [[float(v) for v in box.split(",")] for box, _ in faces]
    assert len(boxes) == 3 and all(label for _, label in faces)
    assert all(max(iou(b, t.box) for b in boxes) >= 0.5 for t in truth.faces), boxes
    overlay = browser.execute_script(
        "const c = document.getElementById('camera-overlay');"
        "return [c.width, c.height, Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)"
        ".filter((v, i) => i % 4 === 3 && v > 0).length];")
    assert overlay[:2] == [640, 480] and overlay[2] > 500  # boxes and labels drawn over the video
    browser.find_element(By.ID, "camera-stop").click()
    assert browser.find_element(By.ID, "camera-start").is_enabled()
    assert browser.execute_script("return document.getElementById('camera').srcObject.getVideoTracks()"
                                  ".every(t => t.readyState === 'ended')")
