"""A tiny trained teacher run (and its ONNX export) shared by the tests of this plugin."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fer_core.data.pack import pack_dataset
from fer_core.train import run

sys.path.insert(0, str(Path(__file__).parent))
from distill_helpers import CLASSES, load, recipe_text  # noqa: E402


@pytest.fixture(scope="session")
def synth(tmp_path_factory) -> Path:
    """35 noisy 32 px images per expression, each class its own colour: a tiny model learns them in seconds."""
    source = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    palette = rng.integers(40, 216, (len(CLASSES), 3))
    for k, name in enumerate(CLASSES):
        (source / name).mkdir()
        for i in range(35):
            pixels = np.clip(palette[k] + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(source / name / f"{i:02d}.png")
    root = tmp_path_factory.mktemp("synth") / "data"
    pack_dataset(source, root, "imagefolder", val_split=0.2, test_split=0.2, progress=False, shard_size=50)
    return root


@pytest.fixture(scope="session")
def teacher_run(tmp_path_factory, synth) -> Path:
    """A tiny timm model trained on the tiny set: well above chance, so its logits carry knowledge."""
    folder = tmp_path_factory.mktemp("teacher")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        recipe = load(folder, recipe_text(synth, name="teacher", epochs=3))
        return run(recipe, out=str(folder / "runs"))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def teacher_onnx(tmp_path_factory, teacher_run) -> Path:
    from fer_core.export import export_onnx

    return export_onnx(teacher_run, tmp_path_factory.mktemp("onnx") / "teacher.onnx")
