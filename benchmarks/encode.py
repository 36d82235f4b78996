"""`fer data encode` against a bare loop of the encoder's forward, and a training epoch on cached latents.

1. Images per second of ``fer_core.data.encode.encode_dataset`` (what ``fer data encode``
   runs: shard reading, decoding in a worker, the forward, float16 latent shards, manifest)
   against a bare loop of the same encoder's forward over the same images already decoded
   in memory, in batches of the same size. Target: at least 0.9x. The encode rate is given
   twice: for the encoding itself (as the command reports it) and for the whole call
   (building the encoder and loading its checkpoint included).
2. The training time of one epoch (``train_time_s`` of ``fer run``) of a small LatentViT
   on the cached latents against the same run with the encoder running on the fly.

By default the encoder is the real pSp (267M parameters) with random weights, written once
as an official-layout checkpoint so that its latents can be cached and matched like those
of the released file. On a CPU pSp takes about a second per 256x256 image, hence the
small default set.

    python benchmarks/encode.py                          # psp, 64 images, batch 8, CPU
    python benchmarks/encode.py --device cuda --n 2048 --batch-size 64
    python benchmarks/encode.py --encoder psp --checkpoint pretrained/psp_ffhq_encode.pt
    python benchmarks/encode.py --encoder patches --param patch_size=8 --n 2000   # no weights
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from fer_core.data.encode import encode_dataset
from fer_core.data.loader import decode_image
from fer_core.data.pack import make_synth_dataset
from fer_core.data.shards import read_manifest
from fer_core.data.tarstream import tar_samples
from fer_core.distributed import pick_device
from fer_core.plugins import get_registry
from fer_core.recipe import load_recipe, parse_override
from fer_core.train import run

RECIPE = """
name: encode-bench-{mode}
seed: 0
data: {{root: {root}, image_size: {size}, channels: 3, num_workers: {workers}, cache_latents: false}}
model:
  encoder: {encoder}
  backbone: {{name: latent_vit, embed_dim: 128, depth: 2, heads: 4}}
  head: {{name: linear}}
optim: {{name: adamw, lr: 1.0e-3}}
train: {{epochs: 1, batch_size: {batch}, device: {device}}}
eval: {{batch_size: {batch}}}
"""


def in_memory_batches(root: Path, batch_size: int, size: int) -> list[torch.Tensor]:
    """Every image of the data set, decoded as the loader decodes them, in batches."""
    manifest = read_manifest(root)
    images = [decode_image(sample["png"], size, 3) for entry in manifest["splits"].values()
              for name in entry["shards"] for sample in tar_samples(root / name)]
    return [torch.stack(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]


@torch.inference_mode()
def bare_loop(encoder: torch.nn.Module, batches: list[torch.Tensor], device: torch.device) -> float:
    """Images per second of ``encoder(batch)`` alone, the batches already on the device."""
    batches = [b.to(device) for b in batches]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for batch in batches:
        encoder(batch).to(torch.float16)
    sync()
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def encode_call(root: Path, spec: dict, args, size: int) -> tuple[float, float]:
    """(images/s of the encoding as reported, images/s of the whole call); writes where runs look."""
    start = time.perf_counter()
    manifest = encode_dataset(root, None, spec, batch_size=args.batch_size, device=args.device, image_size=size,
                              workers=args.workers, overwrite=True, progress=False)
    total = time.perf_counter() - start
    done = manifest["latent"]["run"]
    return done["images"] / done["seconds"], done["images"] / total


def epoch_time(root: Path, spec: dict, args, size: int, out: Path, mode: str) -> tuple[float, float]:
    """(training time of the one epoch, wall time of the whole run) of a ``fer run``."""
    path = out / f"{mode}.yaml"
    path.write_text(RECIPE.format(mode=mode, root=root, size=size, workers=args.workers or 0,
                                  encoder=json.dumps(spec), batch=args.batch_size, device=args.device))
    recipe = load_recipe(path, registry=get_registry())
    start = time.perf_counter()
    run_dir = run(recipe, out=str(out / "runs"), console=Console(quiet=True))
    wall = time.perf_counter() - start
    return json.loads((run_dir / "summary.json").read_text())["train_time_s"], wall


def write_random_checkpoint(encoder: torch.nn.Module, folder: Path) -> str | None:
    """An official-layout file of a randomly initialised pSp/e4e, so that its latents can be cached."""
    if not hasattr(encoder, "latent_avg"):
        return None
    from fer_psp.checkpoint import save_official_checkpoint

    kind = type(encoder).__name__
    opts = {"encoder_type": "Encoder4Editing" if kind.startswith("E4E") else "GradualStyleEncoder",
            "input_nc": 3, "output_size": 1024}
    return str(save_official_checkpoint(folder / "random-encoder.pt", encoder, encoder.latent_avg, opts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="psp")
    parser.add_argument("--checkpoint", default=None, help="weights file [default: random weights, seeded]")
    parser.add_argument("--param", "-p", action="append", default=[], metavar="KEY=VALUE",
                        help="another encoder parameter (repeatable)")
    parser.add_argument("--n", type=int, default=64, help="synthetic images (all splits)")
    parser.add_argument("--size", type=int, default=48, help="their side in pixels")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=None, help="decoding processes of the encoder run")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved measurements; the median is shown")
    parser.add_argument("--no-epoch", action="store_true", help="skip the training-epoch comparison")
    parser.add_argument("--threads", type=int, default=None, help="torch threads [default: torch's]")
    parser.add_argument("--tmp", default=None, help="work folder [default: a temporary one]")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    args.device = str(device)
    console = Console()
    spec = {"name": args.encoder, **{".".join(k): v for k, v in map(parse_override, args.param)}}

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        root = make_synth_dataset(tmp / "data", n=args.n, size=args.size, seed=0, progress=False, shard_size=16)
        torch.manual_seed(0)
        if args.checkpoint:
            spec["checkpoint"] = args.checkpoint
        encoder = get_registry().build("encoder", spec, "encoder", {"image_size": args.size, "in_chans": 3})
        if not args.checkpoint and any(p.numel() for p in encoder.parameters()):
            checkpoint = write_random_checkpoint(encoder, tmp)
            if checkpoint is None:
                raise SystemExit(f"{args.encoder} has random weights and no official checkpoint layout; "
                                 f"pass --checkpoint")
            spec["checkpoint"] = checkpoint
        encoder.eval().to(device)
        batches = in_memory_batches(root, args.batch_size, args.size)
        bare_loop(encoder, batches[:1], device)  # warm-up, for both
        bare, encoding, whole = [], [], []
        for _ in range(args.repeats):  # interleaved, so that both see the same machine load
            bare.append(bare_loop(encoder, batches, device))
            rate, call = encode_call(root, spec, args, args.size)
            encoding.append(rate)
            whole.append(call)
        del encoder

        b, e, w = statistics.median(bare), statistics.median(encoding), statistics.median(whole)
        threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
        table = Table(title=f"{args.encoder}: {args.n} images of {args.size}px, batch {args.batch_size}, "
                            f"{device}{threads}, median of {args.repeats}")
        for column in ("", "images/s", "vs bare", "runs"):
            table.add_column(column)
        table.add_row("bare forward loop", f"{b:.3g}", "1.00x", ", ".join(f"{x:.3g}" for x in bare))
        table.add_row("fer data encode", f"{e:.3g}", f"{e / b:.2f}x", ", ".join(f"{x:.3g}" for x in encoding))
        table.add_row("  with encoder build", f"{w:.3g}", f"{w / b:.2f}x", ", ".join(f"{x:.3g}" for x in whole))
        table.caption = "target: fer data encode >= 0.9x the bare loop"
        console.print(table)

        if args.no_epoch:
            return
        # the run looks for latents under data.root: move them aside for the run on the fly
        cache = tmp / "data" / "latents"
        cache.rename(tmp / "latents-aside")
        fly_train, fly_wall = epoch_time(root, spec, args, args.size, tmp, "on-the-fly")
        (tmp / "latents-aside").rename(cache)
        cached_train, cached_wall = epoch_time(root, spec, args, args.size, tmp, "cached")
        table = Table(title="one training epoch of LatentViT (embed 128, depth 2) on the train split")
        for column in ("encoder", "epoch s", "whole run s (val, test, throughput)"):
            table.add_column(column)
        table.add_row("on the fly", f"{fly_train:.2f}", f"{fly_wall:.1f}")
        table.add_row("cached latents", f"{cached_train:.2f}", f"{cached_wall:.1f}")
        table.caption = f"cached epoch {fly_train / max(cached_train, 1e-9):.0f}x faster"
        console.print(table)


if __name__ == "__main__":
    main()
