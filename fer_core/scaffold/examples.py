"""The working example component of each kind that ``fer plugin new`` writes.

Each entry is the source of ``src/fer_<name>/<kind>.py`` (a ``string.Template``:
``$component`` is the component name, ``$dist`` the distribution), the factory's
name, its summary, small recipe parameters for tests, and one behaviour test.
Keep every example small, readable and passing fer_core.testing unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Example:
    module: str  # file name under src/fer_<name>/, without .py
    summary: str
    source: str
    test_params: dict = field(default_factory=dict)  # small parameters for the conformance check
    behaviour_test: str = ""
    recipe: str = ""  # the README's recipe snippet
    dependencies: str = '"torch", "timm>=1.0"'  # besides fer-core, in pyproject.toml


ENCODER = '''\
"""$component: face images -> patch tokens [B, T, D], written by `fer plugin new`.

images [B, C, H, W] in [0, 1] -> resized to ``input_size`` -> scaled to [-1, 1] ->
non-overlapping ``patch_size`` patches, each projected to ``embed_dim`` by timm's
PatchEmbed (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words",
https://arxiv.org/abs/2010.11929) -> tokens [B, (input_size / patch_size) ** 2, embed_dim].

A latent backbone (latent_vit, hybrid_vit) reads the tokens. Replace the
projection with your encoder; keep ``input_size``, ``latent_shape``, ``trainable``
and ``cacheable`` true to what it does (fer_core.testing checks them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed
from torch import nn

from fer_core.errors import RecipeError


class PatchTokenEncoder(nn.Module):
    trainable = True  # recipes may fine-tune it with model.encoder.freeze: false
    cacheable = True  # deterministic in eval mode, so `fer data encode` may cache its tokens

    def __init__(self, input_size: int, patch_size: int, embed_dim: int, in_chans: int):
        super().__init__()
        self.input_size = input_size
        self.patch_embed = PatchEmbed(input_size, patch_size, in_chans, embed_dim)
        self.latent_shape = (self.patch_embed.num_patches, embed_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = (self.input_size, self.input_size)
        if tuple(images.shape[-2:]) != size:
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
        return self.patch_embed(images * 2.0 - 1.0)


def build_$component(input_size: int = 32, patch_size: int = 8, embed_dim: int = 64,
                     in_chans: int = 3) -> PatchTokenEncoder:
    """The ``$component`` encoder; ``in_chans`` comes from the data (fer-core passes it)."""
    if patch_size < 1 or input_size % patch_size:
        raise RecipeError(f"model.encoder.patch_size: {patch_size} must divide input_size {input_size}")
    if embed_dim < 1:
        raise RecipeError(f"model.encoder.embed_dim: must be at least 1, got {embed_dim}")
    return PatchTokenEncoder(input_size, patch_size, embed_dim, in_chans)
'''

ENCODER_TEST = '''\
def test_tokens_follow_the_patch_grid_at_any_image_size():
    from $package.encoder import build_$component

    encoder = build_$component(input_size=32, patch_size=8, embed_dim=16).eval()
    assert encoder.latent_shape == (16, 16)
    for size in (24, 48):
        assert encoder(torch.rand(2, 3, size, size)).shape == (2, 16, 16)
'''

BACKBONE = '''\
"""$component: a small convolutional backbone for face images, written by `fer plugin new`.

images [B, C, H, W] in [0, 1] -> scaled to [-1, 1] -> one (3x3 conv, BatchNorm, ReLU)
stage per entry of ``widths``, each after the first halving the resolution ->
global average pooling -> features [B, widths[-1]].

Replace the stages with your network; keep ``input_kind`` and ``num_features``
true to what it does (fer_core.testing checks them).
"""

from __future__ import annotations

import torch
from timm.layers import ConvNormAct, SelectAdaptivePool2d
from torch import nn

from fer_core.errors import RecipeError


class SmallConvNet(nn.Module):
    input_kind = "image"  # reads images; "latent" backbones read an encoder's tokens [B, T, D]

    def __init__(self, widths: list[int], in_chans: int):
        super().__init__()
        stages, channels = [], in_chans
        for i, width in enumerate(widths):
            stages.append(ConvNormAct(channels, width, kernel_size=3, stride=1 if i == 0 else 2))
            channels = width
        self.stages = nn.Sequential(*stages)
        self.pool = SelectAdaptivePool2d(pool_type="avg", flatten=True)
        self.num_features = channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stages(images * 2.0 - 1.0))


def build_$component(widths: list[int] = (16, 32, 64), in_chans: int = 3) -> SmallConvNet:
    """The ``$component`` backbone; ``in_chans`` comes from the data (fer-core passes it)."""
    if not widths or not all(isinstance(w, int) and w > 0 for w in widths):
        raise RecipeError(f"model.backbone.widths: expected a list of positive ints, got {widths!r}")
    return SmallConvNet(list(widths), in_chans)
'''

BACKBONE_TEST = '''\
def test_features_are_as_wide_as_the_last_stage():
    from $package.backbone import build_$component

    backbone = build_$component(widths=[4, 8, 12]).eval()
    assert backbone.num_features == 12
    assert backbone(torch.rand(2, 3, 40, 40)).shape == (2, 12)
'''

HEAD = '''\
"""$component: a cosine-similarity classifier head, written by `fer plugin new`.

features [B, F] -> logits [B, C] = scale * cos(features, class weight), as in
NormFace (Wang et al. 2017, https://arxiv.org/abs/1704.06369): both the features and
the class weights are L2-normalised, so a logit only measures the angle between
them; ``scale`` (fixed, or learned with ``learn_scale``) sets the softmax temperature.

Replace the classifier with yours; keep ``num_classes`` true (fer_core.testing checks it).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import trunc_normal_
from torch import nn

from fer_core.errors import RecipeError


class CosineHead(nn.Module):
    def __init__(self, num_features: int, num_classes: int, scale: float, learn_scale: bool):
        super().__init__()
        self.num_classes = num_classes
        self.weight = nn.Parameter(torch.empty(num_classes, num_features))
        trunc_normal_(self.weight, std=0.02)
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)), requires_grad=learn_scale)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        cosine = F.linear(F.normalize(features, dim=-1), F.normalize(self.weight, dim=-1))
        return self.log_scale.exp() * cosine


def build_$component(num_features: int, num_classes: int, scale: float = 16.0,
                     learn_scale: bool = False) -> CosineHead:
    """The ``$component`` head; ``num_features`` and ``num_classes`` come from fer-core."""
    if scale <= 0:
        raise RecipeError(f"model.head.scale: must be positive, got {scale}")
    return CosineHead(num_features, num_classes, scale, learn_scale)
'''

HEAD_TEST = '''\
def test_logits_are_bounded_by_the_scale():
    from $package.head import build_$component

    head = build_$component(num_features=8, num_classes=3, scale=4.0)
    logits = head(100 * torch.randn(5, 8))
    assert logits.shape == (5, 3) and logits.abs().max() <= 4.0 + 1e-5
'''

LOSS = '''\
"""$component: Poly-1 cross-entropy, written by `fer plugin new`.

loss = CE(p, t) + epsilon * (1 - p_t), the first-order PolyLoss of Leng et al. 2022
("PolyLoss: A Polynomial Expansion Perspective of Classification Loss Functions",
https://arxiv.org/abs/2204.12511), where p_t is the probability given to the target.
Targets are class ids [B] or soft targets [B, C] (from CutMix/MixUp); both are
smoothed with ``label_smoothing`` first. ``epsilon: 0`` is plain cross-entropy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fer_core.errors import RecipeError


class PolyLoss(nn.Module):
    def __init__(self, num_classes: int, epsilon: float, label_smoothing: float):
        super().__init__()
        self.num_classes = num_classes
        self.epsilon = epsilon
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits.float()  # stable under mixed precision
        if not targets.is_floating_point():
            targets = F.one_hot(targets, self.num_classes)
        targets = targets.float() * (1.0 - self.label_smoothing) + self.label_smoothing / self.num_classes
        log_probs = logits.log_softmax(dim=-1)
        cross_entropy = -(targets * log_probs).sum(dim=-1)
        p_target = (targets * log_probs.exp()).sum(dim=-1)
        return (cross_entropy + self.epsilon * (1.0 - p_target)).mean()


def build_$component(num_classes: int, epsilon: float = 1.0, label_smoothing: float = 0.0) -> PolyLoss:
    """The ``$component`` loss; ``num_classes`` comes from fer-core."""
    if not 0.0 <= label_smoothing < 1.0:
        raise RecipeError(f"loss.label_smoothing: must be in [0, 1), got {label_smoothing}")
    return PolyLoss(num_classes, epsilon, label_smoothing)
'''

LOSS_TEST = '''\
def test_epsilon_zero_is_cross_entropy():
    from $package.loss import build_$component

    logits, targets = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    loss = build_$component(num_classes=4, epsilon=0.0)
    assert torch.allclose(loss(logits, targets), torch.nn.functional.cross_entropy(logits, targets))
'''

AUGMENT = '''\
"""$component: additive Gaussian pixel noise for one image, written by `fer plugin new`.

A sample-stage augment: the data loader calls it on every training image
[C, H, W] in [0, 1] (in worker processes, so it must pickle: keep plain
attributes, no lambdas or open files). With probability ``p`` it adds noise of
standard deviation ``std`` and clamps back to [0, 1].
"""

from __future__ import annotations

import torch
from torch import nn

from fer_core.errors import RecipeError


class GaussianNoise(nn.Module):
    stage = "sample"  # "batch" augments get (inputs, targets) inside the model instead
    spaces = ("image",)

    def __init__(self, std: float, p: float):
        super().__init__()
        self.std, self.p = std, p

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) >= self.p:  # torch's RNG: seeded per worker by the data loader
            return image
        return (image + self.std * torch.randn_like(image)).clamp_(0.0, 1.0)


def build_$component(std: float = 0.05, p: float = 0.5) -> GaussianNoise:
    """The ``$component`` augment."""
    if std < 0:
        raise RecipeError(f"augment.std: must not be negative, got {std}")
    if not 0.0 <= p <= 1.0:
        raise RecipeError(f"augment.p: must be in [0, 1], got {p}")
    return GaussianNoise(std, p)
'''

AUGMENT_TEST = '''\
def test_p_zero_keeps_the_image_and_p_one_stays_in_range():
    from $package.augment import build_$component

    image = torch.rand(3, 16, 16)
    assert torch.equal(build_$component(p=0.0)(image), image)
    noisy = build_$component(std=0.5, p=1.0)(image)
    assert not torch.equal(noisy, image) and 0.0 <= noisy.min() and noisy.max() <= 1.0
'''

DETECTOR = '''\
"""$component: RGB image -> faces (box, score, five landmarks), written by `fer plugin new`.

OpenCV's frontal-face Haar cascade (shipped inside the opencv-python-headless wheel, so
nothing is downloaded) finds the boxes; the five landmarks are placed at their mean
positions inside the box. Replace ``detect`` with your detector; keep its contract
(fer_core.testing.check_detector checks it): uint8 RGB [H, W, 3] of any size in, a list of
fer_core.faces.face.Face out, best score first, landmarks ordered image-left eye,
image-right eye, nose tip, image-left mouth corner, image-right mouth corner.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from fer_core.faces.face import Face, make_face

LANDMARKS_IN_BOX = np.array([[0.30, 0.38], [0.68, 0.38], [0.51, 0.62], [0.31, 0.77], [0.71, 0.77]])


class CascadeDetector:
    def __init__(self, min_neighbors: int, min_size: int):
        self.min_neighbors, self.min_size = min_neighbors, min_size
        self.cascade = cv2.CascadeClassifier(str(Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"))

    def detect(self, image: np.ndarray) -> list[Face]:
        if min(image.shape[:2]) < self.min_size:
            return []
        grey = cv2.equalizeHist(cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY))
        boxes, support = self.cascade.detectMultiScale2(grey, scaleFactor=1.1, minNeighbors=self.min_neighbors,
                                                        minSize=(self.min_size, self.min_size))
        faces = [make_face((x, y, x + w, y + h), n / (n + self.min_neighbors), LANDMARKS_IN_BOX * (w, h) + (x, y))
                 for (x, y, w, h), n in zip(np.asarray(boxes).reshape(-1, 4), np.asarray(support).reshape(-1))]
        return sorted(faces, key=lambda f: -f.score)


def build_$component(min_neighbors: int = 5, min_size: int = 24) -> CascadeDetector:
    """The ``$component`` detector."""
    return CascadeDetector(min_neighbors, min_size)
'''

DETECTOR_TEST = '''\
def test_more_neighbours_never_find_more_faces():
    import numpy as np

    from fer_core.testing.detector import hopper_photo
    from $package.detector import build_$component

    photo = np.ascontiguousarray(np.hstack([hopper_photo(), hopper_photo()[:, ::-1]]))  # two faces
    found = [len(build_$component(min_neighbors=n).detect(photo)) for n in (3, 5, 40)]
    assert found[0] >= found[1] >= found[2] and found[1] == 2
'''

EXAMPLES: dict[str, Example] = {
    "encoder": Example(
        "encoder", "images -> patch tokens [B, (input_size/patch_size)^2, embed_dim] (example encoder)", ENCODER,
        {"input_size": 32, "patch_size": 8, "embed_dim": 32}, ENCODER_TEST,
        "model:\n  encoder: {name: $component, input_size: 32, patch_size: 8, embed_dim: 64}\n"
        "  backbone: {name: latent_vit, depth: 2, heads: 4, embed_dim: 64}   # any latent backbone",
    ),
    "backbone": Example(
        "backbone", "small conv net: images -> features [B, widths[-1]] (example backbone)", BACKBONE,
        {"widths": [8, 16]}, BACKBONE_TEST,
        "model:\n  backbone: {name: $component, widths: [16, 32, 64]}",
    ),
    "head": Example(
        "head", "cosine-similarity classifier with a fixed or learned scale (example head)", HEAD,
        {"scale": 16.0, "learn_scale": True}, HEAD_TEST,
        "model:\n  head: {name: $component, scale: 16.0}",
    ),
    "loss": Example(
        "loss", "Poly-1 cross-entropy with label smoothing and soft targets (example loss)", LOSS,
        {"epsilon": 1.0, "label_smoothing": 0.1}, LOSS_TEST,
        "loss: {name: $component, epsilon: 1.0, label_smoothing: 0.1}",
    ),
    "augment": Example(
        "augment", "Gaussian pixel noise on one image, with probability p (example augment)", AUGMENT,
        {"std": 0.1, "p": 1.0}, AUGMENT_TEST,
        "augment:\n  sample: [{name: $component, std: 0.05, p: 0.5}]",
    ),
    "detector": Example(
        "detector", "OpenCV Haar cascade faces with box-placed landmarks (example detector)", DETECTOR,
        {"min_neighbors": 5}, DETECTOR_TEST,
        "# detectors are picked on the command line, not in a recipe:\n"
        "#   fer predict RUN photo.jpg --detector $component\n"
        "#   fer data pack SOURCE OUT --format imagefolder --detect --detector $component",
        '"opencv-python-headless>=4.8,<5"',
    ),
}
