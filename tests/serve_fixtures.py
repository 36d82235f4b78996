"""One tiny trained run (and its ONNX export) shared by the serve, browser and export tests.

The run is made once per pytest session under the session's base temporary folder
(about 10 s on one CPU thread: 140 synthetic faces at 32 px, resnet10t, 1 epoch).
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pytest

RECIPE = """
name: tiny-serve
seed: 3
data: {{root: {root}, image_size: 32, channels: 3, num_workers: 0, shuffle_buffer: 64}}
model:
  backbone: {{name: timm, model: resnet10t}}
  head: {{name: linear}}
optim: {{name: adamw, lr: 3.0e-3}}
train: {{epochs: 1, batch_size: 32, log_every: 2}}
eval: {{batch_size: 128}}
"""
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run directory of the tiny recipe (trained on first use in this session)."""
    base = tmp_path_factory.getbasetemp() / "serve-tiny"
    done = base / "run-dir.txt"
    if done.is_file():
        return Path(done.read_text())
    import torch
    from rich.console import Console

    from fer_core.data.pack import make_synth_dataset
    from fer_core.plugins import get_registry
    from fer_core.recipe import load_recipe
    from fer_core.train import run

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = make_synth_dataset(base / "data", n=140, size=32, seed=1, progress=False, shard_size=40)
        (base / "tiny.yaml").write_text(RECIPE.format(root=root))
        recipe = load_recipe(base / "tiny.yaml", registry=get_registry())
        run_dir = run(recipe, out=str(base / "runs"), console=Console(file=io.StringIO()))
    finally:
        torch.set_num_threads(threads)
    done.write_text(str(run_dir))
    return run_dir


def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run exported with ``fer_core.export.export_onnx`` (once per session)."""
    path = tmp_path_factory.getbasetemp() / "serve-tiny" / "model.onnx"
    if not path.is_file():
        from fer_core.export import export_onnx

        export_onnx(tiny_run(tmp_path_factory), path.with_suffix(".tmp.onnx")).rename(path)
    return path


def face_files(tmp_path_factory: pytest.TempPathFactory, n: int = 6) -> list[Path]:
    """The first ``n`` test-split faces of the tiny data set, as PNG files."""
    base = tmp_path_factory.getbasetemp() / "serve-tiny"
    tiny_run(tmp_path_factory)
    out = base / "faces"
    out.mkdir(exist_ok=True)
    files = []
    for shard in sorted((base / "data").glob("**/*test*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".png") and len(files) < n:
                    path = out / f"face{len(files)}.png"
                    path.write_bytes(tar.extractfile(member).read())
                    files.append(path)
    assert len(files) == n, "the tiny data set has too few test faces"
    return files


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(model: Path, port: int, *extra: str, timeout: float = 90.0) -> subprocess.Popen:
    """``fer serve MODEL`` in a subprocess, returned once ``GET /health`` answers."""
    import httpx

    proc = subprocess.Popen([sys.executable, "-m", "fer_core", "serve", str(model), "--port", str(port), *extra],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"fer serve exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    stop_server(proc)
    raise RuntimeError(f"fer serve did not answer on port {port} within {timeout:.0f} s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
HAVE_BROWSER = Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()


@contextlib.contextmanager
def headless_chromium(*flags: str):
    """A selenium driver for Debian's headless Chromium with a throw-away profile (and extra ``flags``)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="fer-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                     "--disable-dev-shm-usage", "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", f"--user-data-dir={profile}", *flags):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        driver.set_page_load_timeout(30)
        try:
            yield driver
        finally:
            driver.quit()
