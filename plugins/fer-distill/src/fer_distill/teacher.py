"""Frozen teachers: a fer run (or checkpoint) in PyTorch, or an exported ``.onnx`` file.

A teacher maps images float [B, C, H, W] in [0, 1] (the student's inputs, after batch
augments) to logits float32 [B, num_classes]. When the teacher was trained at another
``data.image_size`` the images are resized to its size first (bilinear, antialiased),
so that it sees what it was trained on.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fer_core.errors import RecipeError
from fer_core.inference import load_trained
from fer_core.predictor import OnnxPredictor, is_onnx


def check_teacher_path(teacher: str, where: str = "loss.teacher") -> Path:
    """The teacher's path, or a one-line RecipeError when there is nothing there."""
    path = Path(teacher).expanduser()
    if not path.exists():
        raise RecipeError(f"{where}: {teacher} does not exist; give the run directory of a trained teacher "
                          f"(e.g. -s {where}=runs/quickstart/<timestamp>), a checkpoint, or an exported .onnx file")
    return path


def fit_to(images: torch.Tensor, size: int) -> torch.Tensor:
    """``images`` resized to ``size`` x ``size`` (antialiased) unless they already are."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    return F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)


class Teacher(nn.Module):
    """Common part: class list, input size and channels, the input check and the resize."""

    classes: list[str]
    image_size: int
    channels: int
    source: str

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != self.channels:
            raise RecipeError(f"loss.teacher: the teacher reads images [B, {self.channels}, H, W] but the student's "
                              f"backbone input is {list(images.shape)}; distil into an image student "
                              f"(model.encoder: identity) with the teacher's channels")
        return fit_to(images, self.image_size)


class RunTeacher(Teacher):
    """A trained run's model (EMA weights when the run kept them), frozen in eval mode."""

    def __init__(self, path: Path):
        super().__init__()
        trained = load_trained(path)
        self.model = trained.model.eval().requires_grad_(False)
        data = trained.recipe["data"]
        self.classes = list(trained.classes)
        self.image_size, self.channels = int(data["image_size"]), int(data["channels"])
        self.source = str(trained.checkpoint)

    def train(self, mode: bool = True) -> RunTeacher:
        return super().train(False)  # a teacher never leaves eval mode

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(self.prepare(images))[0].float()


class OnnxTeacher(Teacher):
    """A file written by ``fer export`` (float32 or INT8), run with ONNX Runtime on the CPU."""

    def __init__(self, path: Path):
        super().__init__()
        predictor = OnnxPredictor(path)
        self.session, self.input_name = predictor.session, predictor.input_name
        self.classes, self.image_size, self.channels = predictor.classes, predictor.image_size, predictor.channels
        self.source = str(path)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        batch = self.prepare(images).detach().float().cpu().contiguous().numpy()
        (logits,) = self.session.run(None, {self.input_name: batch})
        return torch.from_numpy(logits).float().to(images.device)


def load_teacher(teacher: str, classes: list[str] | None) -> Teacher:
    """Load ``teacher`` (run directory, checkpoint or .onnx) and check it knows the student's classes."""
    path = check_teacher_path(teacher)
    loaded = OnnxTeacher(path) if is_onnx(path) else RunTeacher(path)
    if classes is not None and list(loaded.classes) != list(classes):
        raise RecipeError(f"loss.teacher: {teacher} predicts the classes {loaded.classes}, the student "
                          f"{list(classes)}; distil from a teacher trained on the same classes in the same order")
    return loaded
