"""Packing a source data set into shards: splitting, writing with a progress bar, the summary.

    pack_dataset("downloads/fer2013.csv", "data/fer2013", "fer2013-csv")
    make_synth_dataset("data/synth")

Splitting is stratified and seeded. A source that has no val split gets one carved out of its
train split (``val_split``, default 0.1); a source with no splits at all is split into
train/val/test (``val_split``/``test_split``, default 0.1 each). Per class, ``round(n * fraction)``
(halves up) samples go to each carved split. Within a split the samples are shuffled
(seeded) before they are written, so every shard holds a mix of classes.
"""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext
import hashlib
import os
import random
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from fer_core.data.formats import load_format
from fer_core.data.formats.base import SPLITS, Dropped, EncodedImage, SkipSample, SourceSample, encode_png
from fer_core.data.meta import META_FIELD, Field, MetaSummary, encode_meta
from fer_core.data.shards import (DEFAULT_SHARD_SIZE, MANIFEST_FORMAT, MANIFEST_NAME, MANIFEST_VERSION, SHARD_RE,
                                  SplitWriter, read_manifest, write_manifest)
from fer_core.data.va import VA_EXTRA, VA_FIELD, VaStats, encode_va, parse_va
from fer_core.errors import DataError, FerError

DEFAULT_VAL_SPLIT = 0.1
DEFAULT_TEST_SPLIT = 0.1  # only for sources without any split
SYNTH_SPLITS = {"val": 0.15, "test": 0.15}
MAX_KEY_LENGTH = 80
DROPPED_LIST = "dropped.tsv"  # beside the manifest: every source item left out, and why


def pack_dataset(source: str | os.PathLike, out_dir: str | os.PathLike, format: str, *,
                 val_split: float | None = None, test_split: float | None = None, seed: int = 0,
                 shard_size: int = DEFAULT_SHARD_SIZE, keep_unknown_classes: bool = False,
                 overwrite: bool = False, workers: int | None = None, progress: bool = True,
                 console: Console | None = None, faces: Callable | None = None) -> dict:
    """Pack ``source`` (in ``format``) into shards under ``out_dir``; returns the manifest.

    ``val_split``/``test_split`` of None mean the defaults above; a fraction for a split the
    source already has is ignored with a note. ``faces`` (a ``fer_core.faces.packing.FaceCropper``)
    replaces each image by its aligned main face and drops images without one (``no_face``).
    """
    console = console or Console(stderr=True)
    source, out_dir = Path(source), Path(out_dir)
    _check_fractions(val_split, test_split)
    _check_out_dir(out_dir, overwrite)
    module = load_format(format)
    if not source.exists():
        raise DataError(f"{source} does not exist; pass the downloaded {format} data set")
    dropped = Dropped()
    options = {"keep_unknown_classes": keep_unknown_classes} if format == "imagefolder" else {}
    with console.status(f"reading {source}", spinner="dots") if progress else nullcontext():
        samples = module.scan(source, dropped, **options)
    if not samples:
        raise DataError(f"{source} holds no usable {format} samples{_dropped_note(dropped)}; check the path and --format")
    splits, notes = assign_splits(samples, val_split, test_split, seed)
    for note in notes:
        console.print(f"[yellow]note:[/] {note}")
    return write_dataset(out_dir, splits, source_format=format, extras=module.EXTRAS, dropped=dropped, seed=seed,
                         shard_size=shard_size, workers=workers, progress=progress, console=console, clear=True,
                         faces=faces, meta_fields=getattr(module, "META", None))


def make_synth_dataset(out_dir: str | os.PathLike, n: int = 2100, size: int = 48, seed: int = 0,
                       progress: bool = True, *, shard_size: int = DEFAULT_SHARD_SIZE, overwrite: bool = False,
                       rare_skin_tone: str | None = None, rare_share: float = 0.05,
                       console: Console | None = None) -> Path:
    """Write ``n`` synthetic faces (``fer_core.data.synth``) as a 70/15/15 data set; returns ``out_dir``.

    ``rare_skin_tone`` draws that skin tone band for only ``rare_share`` of the faces (the
    others equally often), for testing whether a model fails more for an under-represented group.
    """
    from fer_core.data import synth

    console = console or Console(stderr=True)
    out_dir = Path(out_dir)
    if n < 1 or size < 1:
        raise FerError(f"synthetic data needs n >= 1 and size >= 1 (got n={n}, size={size})")
    try:
        shares = synth.rare_skin_shares(rare_skin_tone, rare_share)
    except ValueError as exc:
        raise FerError(str(exc)) from None
    _check_out_dir(out_dir, overwrite)
    samples = []
    with _progress_bar(console, progress) as bar:
        task = bar.add_task("synthesizing", total=n)
        for index, face in enumerate(synth.synthesize_faces(n=n, size=size, seed=seed, skin_shares=shares)):
            encoded = encode_png(_image_from_array(face.pixels))
            samples.append(SourceSample(f"synth-{index:06d}", face.label, None, _constant(encoded),
                                        extras={VA_FIELD: encode_va(*face.va)}, meta=face.attributes))
            bar.advance(task)
    splits, _ = assign_splits(samples, SYNTH_SPLITS["val"], SYNTH_SPLITS["test"], seed)
    settings = {"version": synth.VERSION, "va_noise": synth.VA_NOISE,
                **({"skin_tone_shares": dict(zip(synth.SKIN_TONES, shares))} if shares else {})}
    write_dataset(out_dir, splits, source_format="synth", extras=[VA_EXTRA], dropped=Counter(), seed=seed,
                  shard_size=shard_size, workers=1, progress=progress, console=console, clear=True,
                  meta_fields=synth.META, synth_settings=settings)
    return out_dir


def assign_splits(samples: list[SourceSample], val_split: float | None, test_split: float | None,
                  seed: int) -> tuple[dict[str, list[SourceSample]], list[str]]:
    """Split samples into train/val/test (stratified, seeded) and shuffle each split.

    Returns the splits in write order and notes about options that did not apply.
    """
    samples = _unique_keys(samples)
    given = {s.split for s in samples}
    notes = []
    if given == {None}:
        fractions = {"test": DEFAULT_TEST_SPLIT if test_split is None else test_split,
                     "val": DEFAULT_VAL_SPLIT if val_split is None else val_split}
        splits = stratified_split(samples, fractions, seed)
    else:
        if None in given:
            raise ValueError("a source format mixed samples with and without a split")
        splits = {name: [s for s in samples if s.split == name] for name in SPLITS if name in given}
        fractions = {}
        for name, fraction, default in (("test", test_split, 0.0), ("val", val_split, DEFAULT_VAL_SPLIT)):
            if name in given:
                if fraction:
                    notes.append(f"the source has its own {name} split; --{name}-split {fraction} is ignored")
            elif "train" in given:
                fractions[name] = default if fraction is None else fraction
        if fractions:
            splits.update(stratified_split(splits["train"], fractions, seed))
    ordered = {}
    for name in (*SPLITS, *sorted(set(splits) - set(SPLITS))):
        if splits.get(name):
            ordered[name] = list(splits[name])
            random.Random(f"{seed}:{name}").shuffle(ordered[name])
    return ordered, notes


def stratified_split(samples: list[SourceSample], fractions: dict[str, float],
                     seed: int) -> dict[str, list[SourceSample]]:
    """Carve ``fractions`` (e.g. {"test": 0.1, "val": 0.1}) out of every class; the rest is train."""
    rng = random.Random(seed)
    by_class: dict[str, list[SourceSample]] = {}
    for sample in samples:
        by_class.setdefault(sample.label, []).append(sample)
    out: dict[str, list[SourceSample]] = {"train": [], **{name: [] for name in fractions}}
    for label in sorted(by_class):
        items = by_class[label]
        rng.shuffle(items)
        start = 0
        for name, fraction in fractions.items():
            take = min(int(len(items) * fraction + 0.5), len(items) - start)
            out[name] += items[start:start + take]
            start += take
        out["train"] += items[start:]
    return out


def write_dataset(out_dir: Path, splits: dict[str, list[SourceSample]], *, source_format: str, extras: list[str],
                  dropped: Counter, seed: int, shard_size: int = DEFAULT_SHARD_SIZE, workers: int | None = None,
                  progress: bool = True, console: Console | None = None, clear: bool = False,
                  faces: Callable | None = None, meta_fields: dict[str, Field] | None = None,
                  synth_settings: dict | None = None) -> dict:
    """Read every sample's image, write the shards of each split, then the manifest.

    ``faces`` detects, aligns and crops each image (``fer data pack --detect``); ``meta_fields``
    declares the samples' ``meta`` values (stored as ``meta.json``, summarised under the
    manifest's ``meta``); ``synth_settings`` go into the manifest as ``synth``. A sample's
    ``va.json`` (``fer_core.data.va``) is kept when it holds an annotated valence and arousal,
    else left out (the sample stays); each split entry then gets a ``va`` summary, and the
    manifest lists ``va`` in ``extras`` when any sample kept one.
    """
    from fer_core import __version__

    console = console or Console(stderr=True)
    if clear:
        _clear_out_dir(out_dir)
    classes = sorted({s.label for samples in splits.values() for s in samples})
    listing = list(getattr(dropped, "listing", ()))
    dropped = Counter({"corrupt_image": 0, **({"no_face": 0} if faces else {}), **dropped})
    channels, sizes, entries = set(), set(), {}
    meta_fields = meta_fields or {}
    meta_summary = MetaSummary(meta_fields)
    va_stats = {split: VaStats() for split in splits}
    va_left_out = 0
    with _progress_bar(console, progress) as bar:
        for split, samples in splits.items():
            task = bar.add_task(f"writing {split}", total=len(samples))
            with SplitWriter(out_dir, split, classes, shard_size) as writer:
                for sample, image in _read_in_order(samples, workers):
                    if faces is not None and not isinstance(image, str):
                        image = faces(image)  # the aligned main face, or "no_face"
                    if isinstance(image, str):
                        dropped[image] += 1
                        listing.append((sample.key, image))
                    else:
                        fields = {image.ext: image.data, **sample.extras}
                        if VA_FIELD in fields:  # not annotated (AffectNet's -2) or malformed: no va
                            va = parse_va(fields[VA_FIELD])
                            if va is None:
                                del fields[VA_FIELD]
                                va_left_out += 1
                            else:
                                va_stats[split].add(va)
                        if sample.meta:
                            fields[META_FIELD] = encode_meta(meta_fields, sample.meta)
                        writer.write(sample.key, sample.label, fields)
                        meta_summary.add(split, sample.meta)
                        channels.add(image.channels)
                        sizes.add(image.size)
                    bar.advance(task)
            entries[split] = writer.entry
    with_va = any(stats.count for stats in va_stats.values())
    if with_va:
        for split, entry in entries.items():
            entry["va"] = va_stats[split].summary()
    extras = [e for e in extras if e != VA_EXTRA] + ([VA_EXTRA] if with_va else [])
    if va_left_out:
        console.print(f"[yellow]note:[/] {va_left_out} samples have no annotated valence/arousal (outside [-1, 1]); "
                      f"they are kept for their class, and affect tasks skip them", highlight=False)
    if not any(entry["count"] for entry in entries.values()):
        _clear_out_dir(out_dir)
        raise DataError(f"no image could be read{_dropped_note(dropped)}; check that the images are where "
                        f"the {source_format} layout expects them")
    manifest = {
        "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "source_format": source_format,
        "classes": classes,
        "image": {"channels": 3 if 3 in channels else 1, "size": list(sizes.pop()) if len(sizes) == 1 else None},
        "splits": entries, "extras": list(extras) + (["meta"] if meta_summary.seen else []),
        "dropped": dict(sorted(dropped.items())), "seed": seed, "created_by": f"fer-core {__version__}",
        **({"faces": faces.record} if faces is not None else {}),
    }
    if meta_summary.seen:  # a format's attributes, when any sample had them
        manifest["meta"] = meta_summary.section()
    if synth_settings:
        manifest["synth"] = synth_settings
    write_manifest(out_dir, manifest)
    write_dropped_list(out_dir, listing)
    return manifest


def write_dropped_list(out_dir: Path, listing: list[tuple[str, str]]) -> None:
    """``dropped.tsv`` beside the manifest: each source item left out, where it is and why."""
    path = Path(out_dir) / DROPPED_LIST
    if not listing:
        path.unlink(missing_ok=True)
        return
    lines = ["source\treason", *(f"{where}\t{reason}" for where, reason in listing)]
    path.write_text("\n".join(line.replace("\n", " ") for line in lines) + "\n", encoding="utf-8")


# ---- summary ---------------------------------------------------------------------------------------------

def dataset_summary(dir: str | os.PathLike) -> dict:
    """What ``fer data info --json`` prints: the manifest plus totals and shards missing on disk."""
    manifest = read_manifest(dir)
    splits = manifest["splits"]
    missing = [name for entry in splits.values() for name in entry["shards"] if not (Path(dir) / name).is_file()]
    return {
        "path": str(Path(dir)), **{k: v for k, v in manifest.items() if k != "splits"}, "splits": splits,
        "total": {"count": sum(e["count"] for e in splits.values()), "bytes": sum(e["bytes"] for e in splits.values()),
                  "shards": sum(len(e["shards"]) for e in splits.values())},
        "missing_shards": missing,
        "dropped_list": str(Path(dir) / DROPPED_LIST) if (Path(dir) / DROPPED_LIST).is_file() else None,
    }


def summary_table(manifest: dict, title: str = "") -> Table:
    """Samples per class and split, shards and bytes, with the dropped counts as caption."""
    splits = manifest["splits"]
    image = manifest.get("image") or {}
    size = "x".join(map(str, image["size"])) if image.get("size") else "varying size"
    heading = f"{title}  " if title else ""
    table = Table(title=f"{heading}[dim]{manifest.get('source_format')}, {image.get('channels')} channel(s), {size}[/]")
    table.add_column("class")
    for name in (*splits, "total"):
        table.add_column(name, justify="right")
    for cls in manifest["classes"]:
        counts = [splits[s]["class_counts"].get(cls, 0) for s in splits]
        table.add_row(cls, *map(str, counts), str(sum(counts)))
    table.rows[-1].end_section = True
    counts = [e["count"] for e in splits.values()]
    table.add_row("[bold]samples", *map(str, counts), str(sum(counts)))
    shards = [len(e["shards"]) for e in splits.values()]
    table.add_row("shards", *map(str, shards), str(sum(shards)))
    sizes = [e["bytes"] for e in splits.values()]
    table.add_row("size", *map(human_bytes, sizes), human_bytes(sum(sizes)))
    dropped = {k: v for k, v in (manifest.get("dropped") or {}).items() if v}
    table.caption = "dropped: " + ", ".join(f"{k} {v}" for k, v in dropped.items()) if dropped else "dropped: none"
    return table


def human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


# ---- helpers ---------------------------------------------------------------------------------------------

def _read_in_order(samples: list[SourceSample], workers: int | None) -> Iterator[tuple[SourceSample, EncodedImage | str]]:
    """(sample, image or skip reason) in input order, reading ahead on a few threads."""
    workers = workers or min(8, os.cpu_count() or 1)
    if workers <= 1:
        yield from ((s, _read(s)) for s in samples)
        return
    with ThreadPoolExecutor(workers) as pool:
        pending, upcoming = deque(), iter(samples)
        for sample in upcoming:
            pending.append((sample, pool.submit(_read, sample)))
            if len(pending) >= 4 * workers:
                first, future = pending.popleft()
                yield first, future.result()
        while pending:
            first, future = pending.popleft()
            yield first, future.result()


def _read(sample: SourceSample) -> EncodedImage | str:
    try:
        return sample.read()
    except SkipSample as skip:
        return skip.reason


def _unique_keys(samples: Iterable[SourceSample]) -> list[SourceSample]:
    """Shorten over-long keys (hash suffix) and number repeated ones (``key-2``)."""
    seen, out = set(), []
    for sample in samples:
        key = sample.key
        if len(key) > MAX_KEY_LENGTH:
            key = f"{key[:MAX_KEY_LENGTH - 13]}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
        base, number = key, 1
        while key in seen:
            number += 1
            key = f"{base}-{number}"
        seen.add(key)
        out.append(sample if key == sample.key else dataclasses.replace(sample, key=key))
    return out


def _check_fractions(val_split: float | None, test_split: float | None) -> None:
    for name, value in (("--val-split", val_split), ("--test-split", test_split)):
        if value is not None and not 0 <= value < 1:
            raise FerError(f"{name} must be a fraction in [0, 1), got {value}")
    if (val_split or 0) + (test_split or 0) >= 1:
        raise FerError(f"--val-split + --test-split must stay below 1 (got {val_split} + {test_split})")


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir} is a file; choose a folder for the shards")
    if overwrite or not out_dir.is_dir():
        return
    # shards without a manifest are an interrupted pack: those are replaced without asking
    if (out_dir / MANIFEST_NAME).exists() or not all(_ours(path) for path in out_dir.iterdir()):
        raise DataError(f"{out_dir} is not empty; choose a new folder or pass --overwrite")


def _clear_out_dir(out_dir: Path) -> None:
    """Remove the manifest and shards of an earlier pack (nothing else)."""
    if out_dir.is_dir():
        for path in out_dir.iterdir():
            if _ours(path) or path.name == MANIFEST_NAME:
                path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def _ours(path: Path) -> bool:
    """A shard, the dropped list, or a manifest temp file left by an interrupted write."""
    return path.is_file() and bool(SHARD_RE.match(path.name) or path.name.startswith(".dataset-")
                                   or path.name == DROPPED_LIST)


def _dropped_note(dropped: Counter) -> str:
    counts = ", ".join(f"{k} {v}" for k, v in sorted(dropped.items()) if v)
    return f" (dropped: {counts})" if counts else ""


def _progress_bar(console: Console, enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, disable=not enabled, transient=False)


def _image_from_array(pixels):
    from PIL import Image

    return Image.fromarray(pixels)


def _constant(encoded: EncodedImage):
    return lambda: encoded
