"""Recipe text for the tiny runs of this plugin's tests."""

from __future__ import annotations

from pathlib import Path

from fer_core.plugins import get_registry
from fer_core.recipe import load_recipe

CLASSES = ["anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise"]  # sorted, as runs list them

RECIPE = """
name: {name}
seed: 3
data: {{root: {root}, image_size: {size}, channels: 3, num_workers: 0, shuffle_buffer: 64}}
model:
  backbone: {{name: timm, model: {model}}}
  head: {{name: linear}}
loss: {loss}
augment: {{sample: {sample}, batch: {batch}}}
optim: {{name: adamw, lr: 3.0e-3}}
schedule: {{name: cosine, warmup_epochs: 1}}
train: {{epochs: {epochs}, batch_size: 32, log_every: 5}}
eval: {{batch_size: 128}}
"""


def recipe_text(root: Path, name: str = "tiny", size: int = 32, model: str = "test_convnext3",
                loss: str = "{name: cross_entropy}", sample: str = "[]", batch: str = "[]", epochs: int = 2) -> str:
    return RECIPE.format(name=name, root=root, size=size, model=model, loss=loss, sample=sample, batch=batch,
                         epochs=epochs)


def load(tmp_path: Path, text: str, overrides=()) -> dict:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return load_recipe(path, overrides, registry=get_registry())
