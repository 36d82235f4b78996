"""`fer serve`'s API: /health, /info, /predict, every error case, and server-side batching."""

from __future__ import annotations

import asyncio
import io
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'fer-core[serve]'")
import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from fer_core.predictor import decode_array, load_predictor  # noqa: E402
from fer_core.serve.app import create_app  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from serve_fixtures import face_files, tiny_onnx, tiny_run  # noqa: E402

MAX_BYTES = 20_000
CLASSES = ["anger", "happiness", "neutral", "surprise"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> list[Path]:
    return face_files(tmp_path_factory)


@pytest.fixture(scope="module")
def client(run_dir):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with TestClient(create_app(load_predictor(run_dir), max_bytes=MAX_BYTES, max_files=4)) as test_client:
        yield test_client
    torch.set_num_threads(threads)


def upload(*paths: Path, field: str = "image") -> list[tuple[str, tuple[str, bytes, str]]]:
    return [(field, (path.name, path.read_bytes(), "image/png")) for path in paths]


def test_health_and_info(client, run_dir):
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/info").json()
    assert info["name"] == "tiny-serve" and info["format"] == "pytorch"
    assert info["classes"] == json.loads((run_dir / "report.json").read_text())["classes"]
    assert info["parameters"] > 0 and info["file_bytes"] > 0 and info["image_size"] == 32
    assert info["limits"]["max_bytes"] == MAX_BYTES
    assert info["run"] == run_dir.name and info["file"] == "best.pt"  # names only: no path of the server's
    assert str(run_dir.parent) not in json.dumps(info)
    page = client.get("/")
    assert page.status_code == 200 and 'type="file"' in page.text


def test_predict_one_and_several_images_match_fer_predict(client, run_dir, faces):
    from click.testing import CliRunner

    from fer_core.cli import main

    one = client.post("/predict", files=upload(faces[0]))
    assert one.status_code == 200, one.text
    several = client.post("/predict", files=upload(*faces[:2]) + upload(*faces[2:4], field="images"))
    assert several.status_code == 200, several.text
    results = several.json()
    assert [r["filename"] for r in results] == [f.name for f in faces[:4]]
    alone = one.json()[0]  # the same image alone in its batch: the same answer, up to float rounding
    assert alone["label"] == results[0]["label"] and alone["confidence"] == pytest.approx(results[0]["confidence"], abs=1e-5)
    cli = CliRunner().invoke(main, ["predict", str(run_dir), *map(str, faces[:4]), "--json", "--top-k", "7"])
    assert cli.exit_code == 0, cli.output
    expected = [json.loads(line) for line in cli.output.splitlines()]
    for result, row in zip(results, expected):
        probs = result["probabilities"]
        assert abs(sum(probs.values()) - 1) < 1e-4
        assert result["label"] == max(probs, key=probs.get) == row["label"]
        assert result["confidence"] == pytest.approx(row["confidence"], abs=1e-5)
        for top in row["top_k"]:
            assert probs[top["label"]] == pytest.approx(top["probability"], abs=1e-5)


def multipart(fields: list[tuple[str, str, bytes]], boundary: str = "fer-test") -> tuple[bytes, dict]:
    """A hand-made multipart body: (name, filename or '' for a text field, content)."""
    parts = []
    for name, filename, content in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        parts.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


def png(size: tuple[int, int] = (40, 40), noise: bool = False) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8) if noise else np.zeros((*size, 3), np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def error_cases(faces: list[Path]) -> dict[str, tuple[dict, int, str]]:
    """name -> (request keyword arguments, status, a word of the reason)."""
    good = faces[0].read_bytes()
    text_field = multipart([("image", "", b"not a file")])
    return {
        "non-image": ({"files": [("image", ("notes.txt", b"hello, not a picture", "text/plain"))]}, 415, "notes.txt"),
        "truncated image": ({"files": [("image", ("cut.png", good[: len(good) // 2], "image/png"))]}, 415, "cut.png"),
        "oversized": ({"files": [("image", ("big.png", png((200, 200), noise=True), "image/png"))]}, 413, "limit"),
        "empty request": ({}, 400, "empty request"),
        "empty multipart": ({"content": multipart([])[0], "headers": multipart([])[1]}, 400, "empty request"),
        "empty file": ({"files": [("image", ("zero.png", b"", "image/png"))]}, 400, "empty file"),
        "wrong field": ({"files": [("file", ("a.png", good, "image/png"))]}, 422, "'file'"),
        "text in image field": ({"content": text_field[0], "headers": text_field[1]}, 422, "text"),
        "not multipart": ({"content": good, "headers": {"content-type": "image/png"}}, 415, "multipart"),
        "too many files": ({"files": [("image", (f"{i}.png", good, "image/png")) for i in range(5)]}, 413, "more than 4"),
        "malformed multipart": ({"content": b"--x\r\ngarbage", "headers": {"content-type": "multipart/form-data"}},
                                400, "multipart"),
    }


def test_every_error_is_a_one_line_4xx_and_the_server_keeps_serving(client, faces):
    for name, (request, status, word) in error_cases(faces).items():
        response = client.post("/predict", **request)
        assert response.status_code == status, (name, response.status_code, response.text)
        detail = response.json()["detail"]
        assert isinstance(detail, str) and "\n" not in detail and word in detail, (name, detail)
        assert client.post("/predict", files=upload(faces[1])).status_code == 200, f"not serving after {name}"
    assert client.get("/predict").status_code == 405
    assert client.get("/health").status_code == 200


class CountingPredictor:
    """Brightness -> class (so each answer can be checked); counts its forward passes."""

    format, name, image_size, channels = "fake", "counting", 8, 3

    def __init__(self, delay: float = 0.02, fail_next: bool = False):
        self.classes, self.delay, self.fail_next = CLASSES, delay, fail_next
        self.batch_sizes: list[int] = []
        self.lock = threading.Lock()

    def info(self) -> dict:
        return {"name": self.name, "classes": self.classes, "format": self.format, "parameters": 0}

    def decode(self, data: bytes) -> np.ndarray:
        return decode_array(data, self.image_size, self.channels)

    def predict(self, images: np.ndarray) -> np.ndarray:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("simulated\nfailure")
        with self.lock:
            self.batch_sizes.append(len(images))
        time.sleep(self.delay)
        return np.eye(len(self.classes), dtype=np.float32)[np.rint(images.mean(axis=(1, 2, 3)) * 3).astype(int)]


def grey(level: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (level, level, level)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_concurrent_requests_share_forward_passes_and_get_their_own_answers():
    predictor = CountingPredictor()
    app = create_app(predictor, max_batch=8, max_wait_ms=50)
    levels = [0, 85, 170, 255] * 4  # brightness 0, 1/3, 2/3, 1 -> classes 0..3

    async def burst():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as ac:
            return await asyncio.gather(*(ac.post("/predict", files={"image": (f"{i}.png", grey(level), "image/png")})
                                          for i, level in enumerate(levels)))

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    assert [r.json()[0]["label"] for r in responses] == [CLASSES[levels.index(level) % 4] for level in levels]
    assert sum(predictor.batch_sizes) == len(levels)
    assert len(predictor.batch_sizes) < len(levels) and max(predictor.batch_sizes) > 1, predictor.batch_sizes
    assert max(predictor.batch_sizes) <= 8
    app.state.batcher.close()


def test_a_failing_forward_is_a_one_line_500_and_the_next_request_works():
    predictor = CountingPredictor(delay=0, fail_next=True)
    with TestClient(create_app(predictor, max_wait_ms=0)) as test_client:
        failed = test_client.post("/predict", files={"image": ("a.png", grey(0), "image/png")})
        assert failed.status_code == 500 and failed.json()["detail"] == "prediction failed: RuntimeError: simulated failure"
        ok = test_client.post("/predict", files={"image": ("a.png", grey(255), "image/png")})
        assert ok.status_code == 200 and ok.json()[0]["label"] == "surprise"


def test_serving_the_onnx_export_gives_the_same_answers(client, tmp_path_factory, faces):
    pytest.importorskip("onnxruntime")
    with TestClient(create_app(load_predictor(tiny_onnx(tmp_path_factory)))) as onnx_client:
        assert onnx_client.get("/info").json()["format"] == "onnx"
        got = onnx_client.post("/predict", files=upload(*faces[:3])).json()
    expected = client.post("/predict", files=upload(*faces[:3])).json()
    for a, b in zip(got, expected):
        assert a["label"] == b["label"]
        for name in a["probabilities"]:
            assert a["probabilities"][name] == pytest.approx(b["probabilities"][name], abs=1e-5)
