"""pSp encoder: face images -> StyleGAN2 W+ codes [B, 18, 512].

Papers:
* pSp: Richardson et al. 2021, "Encoding in Style: a StyleGAN Encoder for
  Image-to-Image Translation" (CVPR 2021), https://arxiv.org/abs/2008.00951
* IR-SE-50 body: Deng et al. 2019, "ArcFace: Additive Angular Margin Loss for Deep
  Face Recognition" (InsightFace), https://arxiv.org/abs/1801.07698

The GradualStyleEncoder runs an IR-SE-50 body, taps three scales (c1 64x64,
c2 32x32, c3 16x16 for a 256x256 input), merges them top-down like an FPN and
maps them to 18 style vectors: styles 0-2 ("coarse") from c3, 3-6 ("middle") from
p2, 7-17 ("fine") from p1. The official model adds the average latent of the
StyleGAN2 FFHQ generator to the encoder output; ``PSPEncoder`` does the same and
owns the preprocessing, so it takes images in [0, 1] of any size.

Official checkpoint: ``psp_ffhq_encode.pt`` from the pixel2style2pixel release,
loaded with ``build_psp(checkpoint=...)`` (see ``fer_psp.checkpoint``).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from fer_psp.blocks import GradualStyleBlock, ir_se_body, ir_se_stem, upsample_add
from fer_psp.checkpoint import PSP_FORMAT, STYLE_DIM, load_official_encoder

INPUT_SIZE = 256
COARSE_END, MIDDLE_END = 3, 7  # styles [0, 3) read c3, [3, 7) read p2, [7, n) read p1
TAPS = {6: "c1", 20: "c2", 23: "c3"}  # body units whose outputs feed the pyramid


class GradualStyleEncoder(nn.Module):
    """The pSp encoder on an IR-SE-50 body; ``forward`` returns W+ offsets [B, num_styles, 512].

    ``num_styles`` is 2*log2(generator size) - 2: 18 for the 1024x1024 FFHQ generator.
    Expects 256x256 inputs normalised to [-1, 1].
    """

    def __init__(self, num_styles: int = 18, in_chans: int = 3) -> None:
        super().__init__()
        self.num_styles = num_styles
        self.style_dim = STYLE_DIM
        self.input_layer = ir_se_stem(in_chans, 64)
        self.body = ir_se_body()
        # Pyramid level each style reads: 0 = c3 (16x16), 1 = p2 (32x32), 2 = p1 (64x64).
        self.style_levels = [0 if i < COARSE_END else 1 if i < MIDDLE_END else 2 for i in range(num_styles)]
        self.styles = nn.ModuleList(
            GradualStyleBlock(STYLE_DIM, STYLE_DIM, spatial=(16, 32, 64)[level]) for level in self.style_levels
        )
        self.latlayer1 = nn.Conv2d(256, STYLE_DIM, 1)
        self.latlayer2 = nn.Conv2d(128, STYLE_DIM, 1)

    def pyramid(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return the three feature levels (c3, p2, p1) that the style blocks read."""
        taps = {}
        x = self.input_layer(x)
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i in TAPS:
                taps[TAPS[i]] = x
        c3 = taps["c3"]
        p2 = upsample_add(c3, self.latlayer1(taps["c2"]))
        p1 = upsample_add(p2, self.latlayer2(taps["c1"]))
        return c3, p2, p1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = self.pyramid(x)
        codes = [style(levels[level]) for style, level in zip(self.styles, self.style_levels)]
        return torch.stack(codes, dim=1)


class PSPEncoder(nn.Module):
    """FER encoder around a pSp-style inversion network.

    images [B, 3, H, W] in [0, 1] -> resize to 256x256 (bilinear, antialiased, like
    torchvision's ``Resize`` on tensors) -> [-1, 1] -> ``encoder(x) + latent_avg``
    -> W+ codes [B, num_styles, 512]. Grayscale [B, 1, H, W] input is repeated to RGB.
    ``latent_avg`` is a buffer (zeros for a randomly initialised encoder).
    """

    input_size: int = INPUT_SIZE
    trainable: bool = True  # can be fine-tuned; recipes freeze it by default
    cacheable: bool = True  # deterministic in eval mode, so its codes can be cached

    def __init__(self, encoder: GradualStyleEncoder, latent_avg: torch.Tensor | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        shape = (encoder.num_styles, encoder.style_dim)
        self.latent_shape: tuple[int, int] = shape
        if latent_avg is None:
            latent_avg = torch.zeros(shape)
        self.register_buffer("latent_avg", latent_avg.detach().to(torch.float32).expand(shape).clone())

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3 or 1, H, W] in [0, 1] -> [B, 3, 256, 256] in [-1, 1]."""
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        size = (self.input_size, self.input_size)
        if tuple(images.shape[-2:]) != size:
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
        return images * 2.0 - 1.0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.preprocess(images)) + self.latent_avg


def warn_random_weights(name: str, official_file: str) -> None:
    warnings.warn(
        f"{name}: no checkpoint given, using randomly initialised weights (fine for tests or training "
        f"from scratch); for pretrained codes set checkpoint: pretrained/{official_file}",
        UserWarning,
        stacklevel=3,
    )


def build_psp(checkpoint: str | None = None, trust_checkpoint: bool = False) -> PSPEncoder:
    """The ``psp`` encoder.

    checkpoint: path to an official pSp file (``psp_ffhq_encode.pt``); None builds
        random weights (with a warning) and a zero ``latent_avg``.
    trust_checkpoint: allow full unpickling (``torch.load(weights_only=False)``) for a
        file that plain weights-only loading refuses; only for files you trust.
    """
    if checkpoint is None:
        warn_random_weights("psp", PSP_FORMAT.official_file)
        return PSPEncoder(GradualStyleEncoder())
    encoder, latent_avg = load_official_encoder(checkpoint, PSP_FORMAT, GradualStyleEncoder, trust_checkpoint)
    return PSPEncoder(encoder, latent_avg)
