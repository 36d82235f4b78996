"""`fer generate RUN`: faces decoded by a pretrained generative encoder (e.g. a VAE-GAN run).

Two PNG files:

* a grid of ``n`` faces (10x10 for 100), decoded from random codes z ~ N(0, I)
  (``--mode sample``) or from random convex mixtures of the codes of training faces
  (``--mode interpolate``: Dirichlet weights over ``--mix`` faces at a time);
* reconstructions: faces of the run's validation (or test) split, each followed by
  its reconstruction.

The run's encoder must implement ``decode`` and ``reconstruct`` of the pretraining
protocol (``fer_core.pretrain``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import click

from fer_core.errors import FerError

if TYPE_CHECKING:
    import torch

MODES = ("sample", "interpolate")
RECONSTRUCTIONS = 32  # faces in the reconstructions PNG, shown as 8 (input, reconstruction) pairs per row


def generate_images(run: str | Path, n: int = 100, mode: str = "sample", out: str | Path | None = None,
                    seed: int = 0, mix: int = 3, device: str | torch.device | None = None) -> dict[str, Path]:
    """Write the grid and the reconstructions PNG; returns their paths ({"grid": ..., "reconstructions": ...})."""
    import torch  # here, so that `fer --help` does not import torch

    with torch.no_grad():
        return _generate(run, n, mode, out, seed, mix, device)


def _generate(run, n, mode, out, seed, mix, device) -> dict[str, Path]:
    import torch  # these imports are here: `fer --help` and `fer plugins` (which list this command) must not import torch
    from torchvision.utils import save_image

    from fer_core.data.sources import make_loader, resolve_classes
    from fer_core.pretrain import load_pretrained
    from fer_core.runs import run_dir_of
    from fer_core.train import open_split_names

    if mode not in MODES:
        raise FerError(f"--mode must be one of {', '.join(MODES)}; got {mode!r}")
    if n < 1 or mix < 1:
        raise FerError(f"--n and --mix must be at least 1 (got n={n}, mix={mix})")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    encoder, recipe, checkpoint = load_pretrained(run, device)
    for method in ("decode", "reconstruct"):
        if not callable(getattr(encoder, method, None)):
            raise FerError(f"{checkpoint}: encoder '{recipe['model']['encoder']['name']}' cannot generate "
                           f"images (it has no {method})")
    data = recipe["data"]
    classes = resolve_classes(data)
    generator = torch.Generator().manual_seed(seed)

    def faces(split: str, count: int) -> torch.Tensor:
        loader = make_loader(data, split, classes, min(count, 256), train=False, seed=recipe["seed"], num_workers=0)
        batches, seen = [], 0
        for images, _, _ in loader:
            batches.append(images)
            seen += len(images)
            if seen >= count:
                break
        return torch.cat(batches)[:count].to(device)

    # -- the grid: decoded random codes, or mixtures of encoded training faces --
    if mode == "sample":
        codes = torch.randn(n, *encoder.latent_shape, generator=generator)
    else:
        pool = encoder(faces("train", max(4 * n, 64))).float().cpu()  # codes [P, T, D] of training faces
        k = min(mix, len(pool))
        picks = torch.stack([torch.randperm(len(pool), generator=generator)[:k] for _ in range(n)])
        weights = -torch.rand(n, k, generator=generator).log()  # Dirichlet(1, ..., 1): normalised exponentials
        weights = weights / weights.sum(1, keepdim=True)
        codes = torch.einsum("nk,nktd->ntd", weights, pool[picks])
    grid = torch.cat([encoder.decode(chunk.to(device)).float().cpu() for chunk in codes.split(256)])

    # -- reconstructions beside their inputs --
    names = open_split_names(data)
    split = "val" if "val" in names else "test" if "test" in names else "train"
    inputs = faces(split, RECONSTRUCTIONS)
    recon = encoder.reconstruct(inputs).float()
    inputs = torch.nn.functional.interpolate(inputs.float(), size=recon.shape[-2:], mode="bilinear",
                                             antialias=True).expand_as(recon)
    pairs = torch.stack([inputs, recon], dim=1).flatten(0, 1).cpu()  # input, reconstruction, input, ...

    run_dir = run_dir_of(checkpoint) or Path(checkpoint).parent
    grid_path = Path(out) if out else run_dir / "generated" / f"{mode}-{n}.png"
    recon_path = grid_path.with_name(f"{grid_path.stem}-reconstructions.png")
    grid_path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid.clamp(0, 1), grid_path, nrow=max(1, round(math.sqrt(n))), padding=2)
    save_image(pairs.clamp(0, 1), recon_path, nrow=16, padding=2)
    return {"grid": grid_path, "reconstructions": recon_path, "checkpoint": checkpoint}


@click.command("generate")
@click.argument("run", metavar="RUN", type=click.Path(exists=True))
@click.option("--n", "n", default=100, show_default=True, help="Faces in the grid (100 makes 10x10).")
@click.option("--mode", type=click.Choice(MODES), default="sample", show_default=True,
              help="sample: random codes; interpolate: random convex mixtures of encoded training faces.")
@click.option("--mix", default=3, show_default=True, help="Training faces per mixture (--mode interpolate).")
@click.option("--out", type=click.Path(dir_okay=False), help="Grid PNG (default RUN/generated/MODE-N.png).")
@click.option("--seed", default=0, show_default=True, help="Seed of the codes and mixtures.")
def generate(run, n, mode, mix, out, seed) -> None:
    """Decode a grid of faces from a pretraining RUN (e.g. a VAE-GAN), plus reconstructions."""
    from rich.console import Console

    paths = generate_images(run, n=n, mode=mode, out=out, seed=seed, mix=mix)
    console = Console()
    console.print(f"{n} faces ({mode}) from {paths['checkpoint']}: {paths['grid']}", highlight=False, soft_wrap=True)
    console.print(f"inputs beside their reconstructions: {paths['reconstructions']}", highlight=False, soft_wrap=True)
