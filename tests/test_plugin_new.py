"""`fer plugin new` for every kind: the package pip-installs, passes its own tests, and trains.

For each kind, `fer plugin new demo_<kind> --kind <kind>` writes a package into a
temporary folder. One pip call builds and installs all five (wheels from their
pyproject.toml, with the entry points, no dependencies and no build isolation),
one pytest call runs their generated tests unchanged against the installed
packages, and each component then serves in a recipe that trains one step on a
tiny synthetic set.

pip installs with ``--target`` into the temporary folder, which the test puts on
``sys.path`` (and the pytest subprocess on ``PYTHONPATH``): a real install, with
dist-info and entry points that fer-core discovers, that cannot leak demo plugins
into the shared environment or into tests running beside this one, whatever happens.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fer_core.data.pack import make_synth_dataset
from fer_core.errors import FerError
from fer_core.plugins import get_registry, reset
from fer_core.recipe import load_recipe
from fer_core.scaffold import new_plugin, plugin_names
from fer_core.train import run

KINDS = ("encoder", "backbone", "head", "loss", "augment")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TIMM = "{name: timm, model: resnet10t}"
MODELS = {  # the demo component in a recipe, with built-ins (and latent_vit for the encoder's tokens)
    "encoder": "model:\n  encoder: {name: demo_encoder, input_size: 32, patch_size: 8, embed_dim: 32}\n"
               "  backbone: {name: latent_vit, depth: 1, heads: 2, embed_dim: 32}\n",
    "backbone": "model:\n  backbone: {name: demo_backbone, widths: [8, 16]}\n",
    "head": f"model:\n  backbone: {TIMM}\n  head: {{name: demo_head, scale: 8.0, learn_scale: true}}\n",
    "loss": f"model:\n  backbone: {TIMM}\nloss: {{name: demo_loss, epsilon: 1.0, label_smoothing: 0.1}}\n",
    "augment": f"model:\n  backbone: {TIMM}\naugment:\n  sample: [{{name: demo_augment, std: 0.1, p: 1.0}}]\n",
}
RECIPE = """\
name: demo-{kind}
data: {{root: {root}, image_size: 32, num_workers: 0, shuffle_buffer: 64}}
{model}optim: {{name: adamw, lr: 1.0e-3}}
schedule: {{name: none}}
train: {{epochs: 1, batch_size: 64, log_every: 1}}
eval: {{batch_size: 128}}
"""


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """The five generated packages, pip-installed into ``<tmp>/site``."""
    root = tmp_path_factory.mktemp("kit")
    for kind in KINDS:
        made = subprocess.run([sys.executable, "-m", "fer_core", "plugin", "new", f"demo_{kind}", "--kind", kind,
                               "--dir", str(root)], capture_output=True, text=True, env=ENV, timeout=120)
        assert made.returncode == 0, made.stderr
        assert (root / f"fer-demo-{kind}" / "pyproject.toml").is_file()
    site = root / "site"
    packages = [str(root / f"fer-demo-{kind}") for kind in KINDS]
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--no-index", "--target", str(site), *packages],
                         capture_output=True, text=True, env=ENV, timeout=300)
    assert pip.returncode == 0, pip.stderr[-2000:]
    yield root, site
    for name in [m for m in sys.modules if m.startswith("fer_demo_")]:
        del sys.modules[name]
    reset()


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "data"
    return make_synth_dataset(root, n=70, size=32, seed=1, progress=False)


def test_names_are_spelled_out_and_clashes_refused(tmp_path):
    names = plugin_names("fer-Tiny_CNN")
    assert (names.dist, names.package, names.component, names.entry) == (
        "fer-tiny-cnn", "fer_tiny_cnn", "tiny_cnn", "tiny-cnn")
    for bad in ("", "fer-", "9lives", "a b", "tiny--cnn", "core", "class"):
        with pytest.raises(FerError):
            plugin_names(bad)
    with pytest.raises(FerError, match="head 'linear' is already registered by fer-core"):
        new_plugin("linear", "head", tmp_path)
    with pytest.raises(FerError, match="unknown kind 'optimizer'"):
        new_plugin("adam2", "optimizer", tmp_path)
    assert not list(tmp_path.iterdir())


def test_new_refuses_to_overwrite_and_bad_names(kit, tmp_path):
    root, _ = kit
    again = subprocess.run([sys.executable, "-m", "fer_core", "plugin", "new", "demo_head", "--kind", "head",
                            "--dir", str(root)], capture_output=True, text=True, env=ENV, timeout=120)
    assert again.returncode == 2 and "already exists" in again.stderr
    bad = subprocess.run([sys.executable, "-m", "fer_core", "plugin", "new", "2fast!", "--dir", str(tmp_path)],
                         capture_output=True, text=True, env=ENV, timeout=120)
    assert bad.returncode == 2 and "use lowercase letters" in bad.stderr
    assert not list(tmp_path.iterdir())


def test_generated_packages_pass_their_own_tests(kit):
    root, site = kit
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(site), ENV.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    tests = [str(root / f"fer-demo-{kind}" / "tests") for kind in KINDS]
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--import-mode=importlib",
                             "--rootdir", str(root), *tests], capture_output=True, text=True, env=env, cwd=root,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "15 passed" in result.stdout, result.stdout[-500:]


@pytest.mark.parametrize("kind", KINDS)
def test_generated_component_trains_one_step(kind, kit, synth, tmp_path, monkeypatch, one_thread):
    _, site = kit
    monkeypatch.syspath_prepend(str(site))
    reset()
    component = get_registry().find(kind, f"demo_{kind}")
    assert component.plugin == f"fer-demo-{kind}"
    recipe_path = tmp_path / f"demo-{kind}.yaml"
    recipe_path.write_text(RECIPE.format(kind=kind, root=synth, model=MODELS[kind]))
    run_dir = run(load_recipe(recipe_path, registry=get_registry()), out=str(tmp_path / "runs"))
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["counters"]["step"] == 1 and state["counters"]["epoch"] == 1
    assert state["versions"][f"fer-demo-{kind}"] == "0.1.0"
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_generated_packages_are_publishable(kit):
    """LICENSE, py.typed and project URLs reach the installed package; the sdist recipe ships the tests."""
    from email.parser import Parser

    root, site = kit
    for kind in KINDS:
        package, dist = f"fer_demo_{kind}", f"fer_demo_{kind}-0.1.0.dist-info"
        assert (site / package / "py.typed").is_file()
        assert (site / dist / "licenses" / "LICENSE").read_text().startswith("MIT License\n\nCopyright (c) ")
        meta = Parser().parsestr((site / dist / "METADATA").read_text())
        assert meta["License-Expression"] == "MIT"
        assert meta.get_all("Project-URL") == [f"Homepage, https://pypi.org/project/fer-demo-{kind}/"]
        assert "Requires-Dist: fer-core[torch]>=" in (site / dist / "METADATA").read_text()
        assert "graft tests" in (root / f"fer-demo-{kind}" / "MANIFEST.in").read_text()
