"""`fer serve`'s page in a real headless Chromium: pick images, read the predicted labels off the page.

Needs Debian's chromium and chromium-driver (`scripts/install-browser.sh`, run by `make test`)
and selenium (the test extra). The driver path is given explicitly, so selenium never tries
to download a browser or driver.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'fer-core[serve]'")
pytest.importorskip("selenium", reason="selenium is not installed: pip install 'fer-core[test]'")
import httpx  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from serve_fixtures import (HAVE_BROWSER, face_files, free_port, headless_chromium, start_server, stop_server,  # noqa: E402
                            tiny_run)

pytestmark = pytest.mark.skipif(not HAVE_BROWSER,
                                reason="chromium and chromium-driver are not installed; run scripts/install-browser.sh")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    run_dir = tiny_run(tmp_path_factory)
    port = free_port()
    proc = start_server(run_dir, port)
    yield f"http://127.0.0.1:{port}"
    stop_server(proc)


@pytest.fixture(scope="module")
def browser():
    with headless_chromium() as driver:
        yield driver


def test_picking_images_on_the_page_shows_label_and_a_bar_per_class(server, browser, tmp_path_factory):
    faces = face_files(tmp_path_factory)[:2]
    info = httpx.get(f"{server}/info").json()
    expected = {r["filename"]: r["label"] for r in httpx.post(
        f"{server}/predict", files=[("image", (f.name, f.read_bytes(), "image/png")) for f in faces]).json()}

    browser.get(server + "/")
    WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "model-name").text == info["name"])
    browser.find_element(By.ID, "files").send_keys("\n".join(str(f) for f in faces))
    WebDriverWait(browser, 30).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, '.card[data-state="done"]')) == len(faces))

    for card in browser.find_elements(By.CSS_SELECTOR, ".card"):
        name = card.find_element(By.CSS_SELECTOR, ".name").text
        label = card.find_element(By.CSS_SELECTOR, ".label").text  # e.g. "happiness (41.3 %)"
        assert label.split(" (")[0] == expected[name], (name, label)
        bars = card.find_elements(By.CSS_SELECTOR, ".bar")
        assert [bar.get_attribute("data-class") for bar in bars] == info["classes"]
        top = card.find_element(By.CSS_SELECTOR, ".bar.top")
        assert top.get_attribute("data-class") == expected[name]


def test_a_non_image_shows_the_servers_reason_on_its_card(server, browser, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a face")
    browser.get(server + "/")
    browser.find_element(By.ID, "files").send_keys(str(notes))
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, '.card[data-state="error"]'))
    message = browser.find_element(By.CSS_SELECTOR, '.card[data-state="error"] .label').text
    assert "notes.txt: not a readable image" in message
