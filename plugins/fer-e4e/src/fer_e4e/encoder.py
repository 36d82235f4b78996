"""e4e encoder: face images -> StyleGAN2 W+ codes [B, 18, 512] close to W.

Papers:
* e4e: Tov et al. 2021, "Designing an Encoder for StyleGAN Image Manipulation"
  (SIGGRAPH 2021), https://arxiv.org/abs/2102.02766
* built on pSp: Richardson et al. 2021, "Encoding in Style: a StyleGAN Encoder for
  Image-to-Image Translation", with the IR-SE-50 body of ArcFace / InsightFace
  (Deng et al. 2019).

Encoder4Editing has exactly the pSp GradualStyleEncoder's modules and weights
(the blocks and the FPN come from ``fer_psp``); only the forward differs. e4e
predicts one base code w from the coarsest style block and broadcasts it to all
18 rows, then adds a learned delta to rows 1-17, which keeps the codes near W and
easy to edit:

    w_0 = styles[0](c3);  w_i = w_0 + styles[i](level_i) for i = 1..17

Training unlocks the deltas progressively; the released model runs in the final
("inference") stage where all 17 deltas are active, which is what this module
does. ``latent_avg`` is added on top, as in the official model.

Official checkpoint: ``e4e_ffhq_encode.pt`` from the encoder4editing release.
"""

from __future__ import annotations

import torch

from fer_psp.checkpoint import OfficialFormat, load_official_encoder
from fer_psp.encoder import GradualStyleEncoder, PSPEncoder, warn_random_weights

E4E_FORMAT = OfficialFormat("e4e", "e4e", "Encoder4Editing", "stylegan_size", "e4e_ffhq_encode.pt")


class Encoder4Editing(GradualStyleEncoder):
    """e4e on the pSp modules; ``forward`` returns W+ offsets [B, num_styles, 512] (all deltas active)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = self.pyramid(x)
        base = self.styles[0](levels[0]).unsqueeze(1)
        deltas = [style(levels[level]) for style, level in zip(self.styles[1:], self.style_levels[1:])]
        return torch.cat([base, base + torch.stack(deltas, dim=1)], dim=1)


class E4EEncoder(PSPEncoder):
    """FER encoder around Encoder4Editing: the preprocessing and ``latent_avg`` of ``PSPEncoder``."""

    def __init__(self, encoder: Encoder4Editing, latent_avg: torch.Tensor | None = None) -> None:
        super().__init__(encoder, latent_avg)


def build_e4e(checkpoint: str | None = None, trust_checkpoint: bool = False) -> E4EEncoder:
    """The ``e4e`` encoder.

    checkpoint: path to an official e4e file (``e4e_ffhq_encode.pt``); None builds
        random weights (with a warning) and a zero ``latent_avg``.
    trust_checkpoint: allow full unpickling (``torch.load(weights_only=False)``) for a
        file that plain weights-only loading refuses; only for files you trust.
    """
    if checkpoint is None:
        warn_random_weights("e4e", E4E_FORMAT.official_file)
        return E4EEncoder(Encoder4Editing())
    encoder, latent_avg = load_official_encoder(checkpoint, E4E_FORMAT, Encoder4Editing, trust_checkpoint)
    return E4EEncoder(encoder, latent_avg)
