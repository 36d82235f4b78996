"""The distributions as a pip user gets them: wheels and sdists of fer-core and every plugin, installed
(non-editable) into fresh venvs and used from a folder outside the repository.

* full venv: every wheel with fer-core[torch,serve,onnx]. Their third-party dependencies are this
  environment's (torch & co. are linked in, not copied), so the install needs no download:
  `fer recipe list`, `fer plugins`, `fer run quickstart` (tiny), `fer export` to ONNX.
* torch-free venv: `pip install "fer-core[infer]"` from the wheel (dependencies from the package index
  or pip's cache), then `fer predict MODEL.onnx` and `fer serve MODEL.onnx`, with no torch installed.

Slow (a minute or two; the torch-free install needs the package index or pip's cache): CI runs it
with `make test`; `pytest -m "not slow"` skips it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import tomllib
import urllib.request
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from PIL import Image

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("packaging")]  # one worker builds the venvs, once

REPO = Path(__file__).resolve().parents[1]
SOURCES = [REPO, *sorted(REPO.glob("plugins/fer-*"))]
PROJECTS = {tomllib.loads((s / "pyproject.toml").read_text())["project"]["name"]: s for s in SOURCES}
TOP_NOT_COPIED = {".venv", ".git", "runs", "data", "pretrained", "build", "dist", "plugins", ".pytest_cache"}
TINY_RUN = ["-s", "data.synth.n=210", "-s", "data.synth.size=32", "-s", "data.image_size=32",
            "-s", "data.num_workers=0", "-s", "train.epochs=1", "-s", "train.batch_size=32", "-s", "eval.tta=null"]


def not_copied(folder: str, names: list[str]) -> set[str]:
    """Build outputs, caches and (at a distribution's top) the checkout's venv, runs and data."""
    top = {n for n in names if n in TOP_NOT_COPIED} if Path(folder) in SOURCES else set()
    return top | {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}


def run(*args, cwd=None, env=None, timeout=600) -> subprocess.CompletedProcess:
    out = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{' '.join(map(str, args))}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check"]  # installs into venvs made --without-pip


def pip(venv: Path, *args) -> subprocess.CompletedProcess:
    return run(*PIP, "--python", venv / "bin" / "python", "install", "-q", *args)


def clean_env() -> dict[str, str]:
    """The caller's environment minus what would leak this checkout or its venv into the fresh venvs."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
           and not k.startswith("FER_")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not p.startswith(str(Path(sys.prefix))))
    return env


def link_dependencies(venv: Path) -> None:
    """Make this environment's third-party distributions visible in ``venv`` (symlinks + one .pth file),
    leaving out every fer distribution, so that pip installs only the wheels and downloads nothing."""
    site = Path(next(p for p in sys.path if p.endswith("site-packages") and p.startswith(sys.prefix)))
    farm = venv / "linked-deps"
    farm.mkdir()
    for entry in site.iterdir():
        if entry.name.startswith(("fer_", "fer-", "__editable__", "_fer")) or entry.suffix == ".pth":
            continue
        (farm / entry.name).symlink_to(entry)
    venv_site = next((venv / "lib").glob("python3*/site-packages"))
    (venv_site / "linked-deps.pth").write_text(f"{farm}\n")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Wheels and sdists of every distribution, built from a copy of the tracked sources."""
    work = tmp_path_factory.mktemp("build")
    copies = []
    for source in SOURCES:
        copy = work / ("fer-core" if source == REPO else source.name)
        shutil.copytree(source, copy, ignore=not_copied)
        copies.append(copy)
    wheels, sdists = work / "wheels", work / "sdists"
    sdist = f"from setuptools import build_meta; build_meta.build_sdist({str(sdists)!r})"
    builds = [subprocess.Popen([sys.executable, "-c", sdist], cwd=copy, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True) for copy in copies]  # beside the wheels
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", wheels, *copies)
    for build in builds:
        assert build.wait(timeout=300) == 0, build.stderr.read()[-3000:]
    return wheels, sdists


@pytest.fixture(scope="module")
def infer_install(built, tmp_path_factory):
    """The torch-free venv, installed in the background (mostly waiting on the package index) while the
    full install trains; the test that uses it waits for it."""
    wheels, _ = built
    venv = tmp_path_factory.mktemp("infer") / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    core = next(wheels.glob("fer_core-*.whl"))
    install = subprocess.Popen([*PIP, "--python", venv / "bin" / "python", "install", "-q", f"{core}[infer]"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    yield venv, install
    install.kill()


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    """A working folder outside the repository."""
    return tmp_path_factory.mktemp("user")


@pytest.fixture(scope="module")
def full_venv(built, tmp_path_factory):
    wheels, _ = built
    venv = tmp_path_factory.mktemp("full") / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    link_dependencies(venv)
    core = next(wheels.glob("fer_core-*.whl"))
    plugins = [w for w in wheels.glob("*.whl") if w != core]
    pip(venv, "--no-index", "--find-links", wheels, f"{core}[torch,serve,onnx]", *plugins)
    return venv


def wheel_files(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as z:
        return set(z.namelist())


def test_every_distribution_ships_licence_types_urls_and_its_tests(built, infer_install):
    wheels, sdists = built
    assert len(list(wheels.glob("*.whl"))) == len(list(sdists.glob("*.tar.gz"))) == len(PROJECTS)
    for name, source in PROJECTS.items():
        stem = name.replace("-", "_")
        wheel = next(wheels.glob(f"{stem}-*.whl"))
        files = wheel_files(wheel)
        package = "fer_core" if name == "fer-core" else stem
        assert f"{package}/py.typed" in files, name
        licence = next(f for f in files if f.endswith(".dist-info/licenses/LICENSE"))
        with zipfile.ZipFile(wheel) as z:
            meta = Parser().parsestr(z.read(next(f for f in files if f.endswith(".dist-info/METADATA"))).decode())
            assert z.read(licence).decode().startswith("MIT License")
        assert meta["License-Expression"] == "MIT", name
        urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL"))
        assert {"Homepage", "Source", "Issues"} <= set(urls) and all(u.startswith("https://") for u in urls.values())
        with tarfile.open(next(sdists.glob(f"{stem}-*.tar.gz"))) as tar:
            names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        tests = {n for n in names if n.startswith("tests/") and n.endswith(".py")}
        assert "LICENSE" in names and tests == {str(p.relative_to(source)) for p in source.glob("tests/*.py")}, name
    core_files = wheel_files(next(wheels.glob("fer_core-*.whl")))
    assert "fer_core/recipes/quickstart.yaml" in core_files and "fer_core/recipes/studies/approaches.yaml" in core_files
    assert "fer_vaegan/recipes/vaegan-pretrain.yaml" in wheel_files(next(wheels.glob("fer_vaegan-*.whl")))
    with tarfile.open(next(sdists.glob("fer_core-*.tar.gz"))) as tar:  # and what the core's tests read
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"tests/conftest.py", "tests/data_fixtures.py", "CONTRIBUTING.md", "docs/hooks.md"} <= names
    for name in ("psp", "e4e"):
        licence = (REPO / "plugins" / f"fer-{name}" / "LICENSE").read_text()
        assert "InsightFace_Pytorch" in licence and "pixel2style2pixel" in licence


@pytest.fixture(scope="module")
def exported(full_venv, outside):
    """`fer run quickstart` (tiny) from the full install, in a folder outside the repo, exported to ONNX."""
    fer, env = full_venv / "bin" / "fer", clean_env()
    run(fer, "run", "quickstart", *TINY_RUN, cwd=outside, env=env)
    (run_dir,) = (outside / "runs" / "quickstart").iterdir()
    run(fer, "export", run_dir, "--out", outside / "model.onnx", cwd=outside, env=env)
    return run_dir, outside / "model.onnx"


def test_full_install_lists_recipes_and_plugins_and_runs_the_quickstart(full_venv, outside, exported):
    fer = full_venv / "bin" / "fer"
    env = clean_env()
    listing = run(fer, "recipe", "list", "--json", cwd=outside, env=env)
    rows = {row["name"]: row for row in json.loads(listing.stdout)}
    assert rows["quickstart"]["origin"] == "fer-core" and rows["vaegan-pretrain"]["origin"] == "fer-vaegan"
    assert all(str(full_venv) in row["file"] for row in rows.values())  # the installed files, not the checkout
    plugins = {p["name"]: p for p in json.loads(run(fer, "plugins", "--json", cwd=outside, env=env).stdout)}
    assert {p["distribution"] for p in plugins.values()} == set(PROJECTS)
    assert all(p["status"] == "loaded" for p in plugins.values()), plugins
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        run(fer, "plugins", cwd=outside, env=env)
        timings.append(time.perf_counter() - start)
    print(f"\nfer plugins from the wheel install: best of 3 {min(timings):.2f} s")
    size = run(full_venv / "bin" / "python", "-c", INSTALLED_BYTES, env=env).stdout.split()
    print(f"full install: {int(size[0]) / 1e9:.2f} GB of installed distributions ({int(size[1]) / 1e6:.1f} MB fer)")
    print(run(fer, "recipe", "list", cwd=outside, env={**env, "COLUMNS": "160"}).stdout)

    run_dir, model = exported
    report = json.loads((run_dir / "report.json").read_text())
    assert (outside / "data" / "synth" / "dataset.json").is_file()  # drawn by the run, in the user's folder
    assert len(report["classes"]) == 7 and 0 <= report["accuracy"] <= 1
    assert model.stat().st_size > 100_000


def test_torch_free_install_predicts_and_serves_an_exported_model(infer_install, exported, tmp_path):
    _, model = exported
    venv, install = infer_install  # pip install "fer-core[infer]": the one documented command, from the wheel
    assert install.wait(timeout=600) == 0, install.stderr.read()[-3000:]
    python, fer, env = venv / "bin" / "python", venv / "bin" / "fer", clean_env()
    assert run(python, "-c", "import importlib.util as u; print(u.find_spec('torch'))", env=env).stdout == "None\n"

    face = tmp_path / "face.png"
    Image.new("RGB", (40, 40), (180, 140, 120)).save(face)
    result = json.loads(run(fer, "predict", model, face, "--json", cwd=tmp_path, env=env).stdout)
    assert result["image"] == str(face) and 0 < result["confidence"] <= 1 and len(result["top_k"]) == 3

    port = free_port()
    server = subprocess.Popen([fer, "serve", model, "--port", str(port)], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        info = json.loads(get(f"http://127.0.0.1:{port}/info", server))
        assert info["format"] == "onnx" and len(info["classes"]) == 7
        boundary = "fer-test-boundary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"face.png\"\r\n"
                f"Content-Type: image/png\r\n\r\n").encode() + face.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=body, headers={
            "Content-Type": f"multipart/form-data; boundary={boundary}"})
        with urllib.request.urlopen(request, timeout=60) as response:
            (served,) = json.loads(response.read())
        assert served["label"] == result["label"] and set(served["probabilities"]) == set(info["classes"])
    finally:
        server.terminate()
        server.wait(timeout=30)

    needs_torch = subprocess.run([fer, "run", "quickstart"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert needs_torch.returncode == 2 and needs_torch.stderr.count("\n") == 1, needs_torch.stderr
    assert "pip install 'fer-core[torch]'" in needs_torch.stderr

    size = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file() and not f.is_symlink())
    print(f"\ntorch-free venv: {size / 1e6:.0f} MB")
    assert size < 300e6


INSTALLED_BYTES = """
from importlib import metadata
sizes = {d.name: sum(f.locate().stat().st_size for f in d.files or () if f.locate().is_file())
         for d in metadata.distributions()}
print(sum(sizes.values()), sum(v for k, v in sizes.items() if k.startswith("fer")))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, server: subprocess.Popen, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode()
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"fer serve did not answer: {server.stderr.read() if server.stderr else ''}")
            time.sleep(0.2)
