"""``fer data``: pack downloaded data sets into shards, draw synthetic ones, describe them.

The heavy modules (webdataset, which imports torch) load inside the commands, so that
``fer --help`` stays instant.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console

from fer_core.data.formats import FORMATS
from fer_core.data.shards import DEFAULT_SHARD_SIZE

FRACTION = click.FloatRange(0, 1, max_open=True)


@click.group("data")
def data() -> None:
    """Pack, synthesize and inspect data sets (WebDataset shards + dataset.json)."""


@data.command("pack")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--format", "-f", "format_", type=click.Choice(list(FORMATS)), required=True,
              help="Layout of SOURCE.")
@click.option("--val-split", type=FRACTION, default=None,
              help="Fraction carved (stratified) out of train when SOURCE has no val split  [default: 0.1]")
@click.option("--test-split", type=FRACTION, default=None,
              help="Fraction held out for test when SOURCE has no test split  [default: 0.1 for a single "
                   "folder of class folders, else 0]")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the splitting and shuffling.")
@click.option("--shard-size", type=click.IntRange(min=1), default=DEFAULT_SHARD_SIZE, show_default=True,
              help="Samples per shard at most.")
@click.option("--keep-unknown-classes", is_flag=True,
              help="imagefolder: keep class folders that are no known expression, under their lower-cased name.")
@click.option("--overwrite", is_flag=True, help="Replace the shards and manifest of an earlier pack in OUT.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Threads reading images  [default: up to 8]")
@click.option("--detect", is_flag=True,
              help="Keep the aligned crop of each image's main face; images without a face are dropped (no_face).")
@click.option("--detector", default=None, help="With --detect: the registered face detector  [default: the first]")
@click.option("--face-size", type=click.IntRange(min=8), default=112, show_default=True,
              help="With --detect: side of the aligned square crops, in pixels.")
@click.option("--margin", type=click.FloatRange(0, 2), default=0.1, show_default=True,
              help="With --detect: context around the face, a fraction of the face per side.")
def pack(source: Path, out: Path, format_: str, val_split: float | None, test_split: float | None, seed: int,
         shard_size: int, keep_unknown_classes: bool, overwrite: bool, workers: int | None, detect: bool,
         detector: str | None, face_size: int, margin: float) -> None:
    """Pack the data set at SOURCE into shards under OUT.

    \b
    Formats:
      imagefolder  SOURCE/<class>/*.jpg, or SOURCE/train|val|test/<class>/*.jpg
      fer2013-csv  fer2013.csv (emotion,pixels,Usage), or its folder
      ferplus      folder with fer2013new.csv and fer2013.csv (majority vote, votes kept)
      rafdb        RAF-DB basic/ (EmoLabel/list_patition_label.txt, Image/aligned|original)
      affectnet    folder with training.csv, validation.csv and Manually_Annotated_Images/
                   (validation.csv becomes test: AffectNet's test set is not public)
    """
    from fer_core.data.pack import pack_dataset, summary_table

    if keep_unknown_classes and format_ != "imagefolder":
        raise click.UsageError("--keep-unknown-classes applies to --format imagefolder only")
    faces = None
    if detect:
        from fer_core.faces.detect import load_detector
        from fer_core.faces.packing import FaceCropper

        faces = FaceCropper(load_detector(detector), face_size, margin)
    elif detector:
        raise click.UsageError("--detector applies with --detect only")
    manifest = pack_dataset(source, out, format_, val_split=val_split, test_split=test_split, seed=seed,
                            shard_size=shard_size, keep_unknown_classes=keep_unknown_classes,
                            overwrite=overwrite, workers=workers, console=Console(stderr=True), faces=faces)
    Console().print(summary_table(manifest, title=str(out)))


@data.command("synth")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--n", "n", type=click.IntRange(min=1), default=2100, show_default=True, help="Number of faces.")
@click.option("--size", type=click.IntRange(min=8), default=48, show_default=True, help="Image side in pixels.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--shard-size", type=click.IntRange(min=1), default=DEFAULT_SHARD_SIZE, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace the shards and manifest of an earlier run in OUT.")
@click.option("--rare-skin-tone", metavar="TONE", default=None,
              help="Under-represent this skin tone band (light, medium or dark) on purpose.")
@click.option("--rare-share", type=click.FloatRange(0, 1), default=0.05, show_default=True,
              help="Share of the faces drawn with --rare-skin-tone (the other bands share the rest equally).")
def synth(out: Path, n: int, size: int, seed: int, shard_size: int, overwrite: bool, rare_skin_tone: str | None,
          rare_share: float) -> None:
    """Draw N labelled synthetic faces (7 basic expressions, balanced) into OUT, split 70/15/15.

    Every face keeps the attributes it was drawn with (skin tone, age band, pose, occlusion;
    see `fer data info`), so that `fer eval --by` can compare groups.
    """
    from fer_core.data.pack import make_synth_dataset, summary_table
    from fer_core.data.shards import read_manifest

    make_synth_dataset(out, n=n, size=size, seed=seed, shard_size=shard_size, overwrite=overwrite,
                       rare_skin_tone=rare_skin_tone, rare_share=rare_share, console=Console(stderr=True))
    Console().print(summary_table(read_manifest(out), title=str(out)))


@data.command("encode")
@click.argument("shard_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path), required=False)
@click.option("--encoder", "-e", "encoder", required=True, help="Encoder name (psp, e4e, patches...; see `fer plugins`).")
@click.option("--checkpoint", "-c", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The encoder's weights file; the latents record its sha256.")
@click.option("--param", "-p", "params", multiple=True, metavar="KEY=VALUE",
              help="Another encoder parameter, as in a recipe (repeatable), e.g. -p patch_size=8.")
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1... (auto: cuda when available)")
@click.option("--image-size", type=click.IntRange(min=1), default=None,
              help="Decode images at this size, as the recipe's data.image_size  [default: the source's size]")
@click.option("--channels", type=click.Choice(["1", "3"]), default="3", show_default=True,
              help="Decode images with this many channels, as the recipe's data.channels.")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Processes decoding images  [default: up to 4]")
@click.option("--overwrite", is_flag=True, help="Replace the latents already in OUT_DIR.")
@click.option("--allow-random", is_flag=True,
              help="Encode an encoder that has random weights (benchmarks, tests); no recipe will match them.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights (--allow-random).")
def encode(shard_dir: Path, out_dir: Path | None, encoder: str, checkpoint: str | None, params: tuple[str, ...],
           batch_size: int, device: str, image_size: int | None, channels: str, workers: int | None,
           overwrite: bool, allow_random: bool, seed: int) -> None:
    """Write a frozen encoder's latents of the images in SHARD_DIR as latent shards in OUT_DIR.

    Runs whose recipe uses the same encoder (name, parameters, checkpoint sha256) and data
    (image size, channels) read them and never run the encoder. Without OUT_DIR the latents go
    to SHARD_DIR/latents/<encoder>-<key>/, where such runs find them with data.root: SHARD_DIR;
    with OUT_DIR, set data.root: OUT_DIR. An interrupted run resumes where it stopped.
    """
    import time

    from rich.markup import escape

    from fer_core.data.encode import encode_dataset
    from fer_core.data.latents import describe
    from fer_core.distributed import pick_device
    from fer_core.recipe import parse_override

    spec: dict = {"name": encoder}
    for item in params:
        if "=" not in item:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--param")
        keys, value = parse_override(item)
        spec[".".join(keys)] = value
    if checkpoint:
        spec["checkpoint"] = checkpoint
    started = time.perf_counter()
    manifest = encode_dataset(shard_dir, out_dir, spec, batch_size=batch_size, device=pick_device(device),
                              image_size=image_size, channels=int(channels), workers=workers, seed=seed,
                              allow_random=allow_random, overwrite=overwrite, console=Console(stderr=True))
    latent = manifest["latent"]
    run = latent["run"]
    console = Console()
    where = run["out_dir"]
    total = sum(entry["count"] for entry in manifest["splits"].values())
    rate = run["images"] / run["seconds"] if run["seconds"] else 0.0
    console.print(f"[bold]{escape(where)}[/]: {total} latents {tuple(latent['shape'])} float16 of "
                  f"{escape(describe(latent))}", highlight=False, soft_wrap=True)
    if run["images"] or run["skipped_shards"]:
        console.print(f"encoded {run['images']} images in {run['seconds']:.1f} s ({rate:.1f} img/s)"
                      + (f", {run['skipped_shards']} shards already done" if run["skipped_shards"] else "")
                      + f"; {time.perf_counter() - started:.1f} s in all", highlight=False, soft_wrap=True)
    hint = f"data.root: {shard_dir}" if out_dir is None else f"data.root: {out_dir}"
    console.print(f"use them in a recipe with {hint} and the same model.encoder", highlight=False, soft_wrap=True)


@data.command("info")
@click.argument("dir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def info(dir: Path, as_json: bool) -> None:
    """Describe the data set in DIR: splits, shards, samples per class, bytes, source format, per-sample
    attributes, valence/arousal (ranges and histograms)."""
    from fer_core.data.pack import dataset_summary, summary_table

    summary = dataset_summary(dir)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    console = Console()
    console.print(summary_table(summary, title=str(dir)))
    for name, entry in summary["splits"].items():
        console.print(f"[bold]{name}[/]: {_shard_span(entry['shards'])}")
    if summary["extras"]:
        console.print(f"extras per sample: {', '.join(summary['extras'])}")
    if summary.get("meta"):
        from fer_core.data.meta import meta_table

        console.print(meta_table(summary["meta"]))
    if any("va" in entry for entry in summary["splits"].values()):
        from fer_core.data.va import va_table

        console.print(va_table(summary["splits"]))
    console.print(f"seed {summary['seed']}, {summary['created_by']}")
    if summary.get("latent"):
        from fer_core.data.latents import describe

        latent = summary["latent"]
        console.print(f"latents of {describe(latent)}: {latent['shape']} {latent['dtype']} per sample, "
                      f"from {latent['source']}", highlight=False, soft_wrap=True)
    if summary["missing_shards"]:
        console.print(f"[red]missing shards:[/] {', '.join(summary['missing_shards'])}")
    if summary.get("dropped_list"):
        console.print(f"dropped items, each with its reason: {summary['dropped_list']}", highlight=False,
                      soft_wrap=True)


def _shard_span(shards: list[str]) -> str:
    if not shards:
        return "no shards"
    if len(shards) <= 3:
        return ", ".join(shards)
    return f"{shards[0]} .. {shards[-1]} ({len(shards)} shards)"
