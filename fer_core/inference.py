"""Loading a trained model back from a run directory or checkpoint, and predicting."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from fer_core.data.loader import decode_image
from fer_core.errors import FerError
from fer_core.model import FerModel, build_model
from fer_core.plugins import get_registry
from fer_core.runs import load_checkpoint, resolve_checkpoint


@dataclass
class Trained:
    model: FerModel
    recipe: dict
    classes: list[str]
    checkpoint: Path


def load_trained(run_or_checkpoint: str | Path, device: str | torch.device = "cpu",
                 use_ema: bool = True) -> Trained:
    """Rebuild the recipe's model and load the best (or given) checkpoint's weights."""
    from fer_core.train import load_model_state

    path = resolve_checkpoint(run_or_checkpoint)
    state = load_checkpoint(path)
    recipe, classes = state["recipe"], state["classes"]
    torch.manual_seed(recipe["seed"])  # frozen random encoders are rebuilt identically
    model = build_model(recipe, get_registry(), classes)
    load_model_state(recipe, model, state["ema"] if use_ema and state.get("ema") else state["model"])
    return Trained(model.to(device).eval(), recipe, classes, path)


@torch.no_grad()
def predict_files(trained: Trained, paths: Sequence[str | Path], batch_size: int = 64,
                  top_k: int = 3, device: str | torch.device = "cpu") -> list[dict]:
    """Label, confidence and top-k probabilities per image file, in batches."""
    data = trained.recipe["data"]
    results = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        images = []
        for path in chunk:
            try:
                images.append(decode_image(Path(path).read_bytes(), data["image_size"], data["channels"]))
            except FileNotFoundError:
                raise FerError(f"{path}: no such image file") from None
            except Exception as exc:
                raise FerError(f"{path}: not a readable image ({type(exc).__name__})") from None
        logits, _ = trained.model(torch.stack(images).to(device))
        probs = logits.float().softmax(dim=1).cpu()
        for path, p in zip(chunk, probs):
            top = p.topk(min(top_k, len(trained.classes)))
            results.append({
                "image": str(path),
                "label": trained.classes[int(top.indices[0])],
                "confidence": round(float(top.values[0]), 6),
                "top_k": [{"label": trained.classes[int(i)], "probability": round(float(v), 6)}
                          for v, i in zip(top.values, top.indices)],
            })
    return results
