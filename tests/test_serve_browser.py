"""`fer serve`'s page in a real headless Chromium: pick images, read the predicted labels off the page.

Needs Debian's chromium and chromium-driver (`scripts/install-browser.sh`, run by `make test`)
and selenium (the test extra). The driver path is given explicitly, so selenium never tries
to download a browser or driver.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'fer-core[serve]'")
pytest.importorskip("selenium", reason="selenium is not installed: pip install 'fer-core[test]'")
import httpx  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from serve_fixtures import face_files, free_port, start_server, stop_server, tiny_run  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()),
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
    with tempfile.TemporaryDirectory(prefix="fer-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-dev-shm-usage", "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", f"--user-data-dir={profile}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        driver.set_page_load_timeout(30)
        yield driver
        driver.quit()


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
