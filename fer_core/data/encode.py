"""``fer data encode``: a frozen encoder's latents of every image, written once as latent shards.

    encode_dataset("data/fer2013", None, {"name": "psp", "checkpoint": "pretrained/psp_ffhq_encode.pt"})

For each source shard, a latent shard of the same name holds the same samples in the same
order: ``__key__``, ``cls``, ``latent.npy`` (float16 [T, D]) and the extra fields (votes,
``va.json``...), no image. The manifest is the source's (its ``extras`` too) with the counts of
what was written, each split's ``va`` summary of what was written when the source has
valence/arousal, and a ``latent`` section (``fer_core.data.latents``); it is written last, so a
directory with a manifest is complete. Images decode (exactly as the training loader decodes them) in DataLoader workers
while the encoder runs in the main process.

Resuming: a shard is written under a temporary name, renamed when complete and recorded in
``.encode-progress.json``; a rerun after an interruption skips recorded shards.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from fer_core import __version__
from fer_core.data.latents import (default_latent_dir, describe, key_of, latent_cache_key, manifest_sha256,
                                   same_key, uncacheable_reason)
from fer_core.data.loader import IMAGE_KEYS, _read_shard, decode_image
from fer_core.data.shards import MANIFEST_NAME, SHARD_RE, read_manifest, write_manifest
from fer_core.data.va import VA_FIELD, VaStats, has_va, parse_va
from fer_core.errors import DataError, FerError

PROGRESS_NAME = ".encode-progress.json"
LATENT_FIELD = "latent.npy"


def encode_dataset(shard_dir: str | os.PathLike, out_dir: str | os.PathLike | None, encoder: Mapping[str, Any],
                   batch_size: int = 32, device: str | torch.device = "cpu", image_size: int | None = None,
                   channels: int = 3, progress: bool = True, *, workers: int | None = None, seed: int = 0,
                   allow_random: bool = False, overwrite: bool = False, replace_stale: bool = False,
                   module: torch.nn.Module | None = None,
                   console: Console | None = None) -> dict:
    """Encode every split of ``shard_dir`` into ``out_dir``; returns the latent manifest (its
    ``latent.run`` says what this call did: images, seconds, skipped_shards, out_dir).

    encoder: a recipe-style spec ({"name": "psp", "checkpoint": "x.pt"}); ``module`` may give it
        already built (a run's frozen encoder), else it is built through the registry.
    out_dir: None means ``<shard_dir>/latents/<encoder>-<key digest>``, where runs look.
    image_size: pixels the images are decoded at, as a run's ``data.image_size`` would; None
        means the source's size. The encoder resizes to its own input size itself.
    allow_random: encode an encoder with random weights anyway (benchmarks, tests), seeded with
        ``seed``; its ``checkpoint_sha256`` is ``random-seed-<seed>``, which no recipe matches.
    workers: decoding processes; None means up to 4, one less than the CPU count.
    overwrite: replace whatever latents ``out_dir`` holds; ``replace_stale``: only those of another
        key or source version (an unfinished encoding of the same is resumed either way, unless
        ``overwrite``).
    """
    from fer_core.plugins import get_registry

    console = console or Console(stderr=True)
    shard_dir, device = Path(shard_dir), torch.device(device)
    source = read_manifest(shard_dir)
    if source.get("latent"):
        raise DataError(f"{shard_dir} holds latents already; encode the image shards it was made from "
                        f"({source['latent'].get('source')})")
    image_size = image_size or _source_size(source, shard_dir)
    registry = get_registry()
    reason = uncacheable_reason(encoder, registry=registry)
    if reason and not allow_random:
        raise FerError(f"{reason}: no run could match its latents; give the encoder a checkpoint "
                       f"(--checkpoint FILE), or pass --allow-random for benchmarks and tests")
    fingerprint = manifest_sha256(shard_dir)
    if module is None and not overwrite:  # finished before: no need to load the encoder
        key = latent_cache_key(encoder, image_size, channels, registry=registry,
                               random_seed=seed if reason else None)
        done = _finished_dir(out_dir, shard_dir, key, fingerprint)
        if done is not None:
            return _nothing_to_do(done, console)
    if module is None:
        if allow_random:
            torch.manual_seed(seed)
        module = registry.build("encoder", encoder, "encoder", {"image_size": image_size, "in_chans": channels})
    reason = uncacheable_reason(encoder, module)
    random = reason is not None and "random weights" in reason
    if reason and not (random and allow_random):
        raise FerError(f"cannot encode: {reason}")
    key = latent_cache_key(encoder, image_size, channels, registry=registry, random_seed=seed if random else None)
    out_dir = Path(out_dir) if out_dir is not None else default_latent_dir(shard_dir, key)
    if out_dir.resolve() == shard_dir.resolve():
        raise DataError(f"{out_dir} is the source directory; write the latents to another folder")
    latent = {**key, "shape": list(module.latent_shape), "dtype": "float16", "source": str(shard_dir),
              "source_manifest_sha256": fingerprint, "checkpoint": encoder.get("checkpoint"),
              "fer_core": __version__}

    done = _start(out_dir, latent, overwrite, replace_stale)
    if done is not None:
        return _nothing_to_do(done, console)
    shards = [(split, name, count) for split, entry in source["splits"].items()
              for name, count in zip(entry["shards"], entry["shard_counts"])]
    state = _read_progress(out_dir)
    todo = [(i, name) for i, (_, name, _) in enumerate(shards) if not _finished(out_dir, name, state)]
    skipped = len(shards) - len(todo)
    if skipped:
        console.print(f"resuming: {skipped} of {len(shards)} shards are already encoded", highlight=False, soft_wrap=True)

    started = time.perf_counter()
    encoded = _encode_shards(module, shard_dir, out_dir, [(name, count) for _, name, count in shards], todo, state,
                             len(source["classes"]), batch_size, device, image_size, channels, workers,
                             progress=progress, console=console)
    seconds = time.perf_counter() - started

    manifest = _latent_manifest(source, state, latent, out_dir)
    write_manifest(out_dir, manifest)
    (out_dir / PROGRESS_NAME).unlink(missing_ok=True)
    corrupt = sum(s["corrupt"] for s in state["shards"].values())
    if corrupt:
        console.print(f"[yellow]warning:[/] skipped {corrupt} unreadable images", highlight=False)
    # not stored: what this call did
    manifest["latent"]["run"] = {"images": encoded, "seconds": round(seconds, 3), "skipped_shards": skipped,
                                 "out_dir": str(out_dir)}
    return manifest


# -- directory state ---------------------------------------------------------------------------------------

def _finished_dir(out_dir, shard_dir: Path, key: dict, fingerprint: str) -> dict | None:
    """The manifest of a complete encoding of ``key`` in ``out_dir`` (default location if None), or None."""
    folder = Path(out_dir) if out_dir is not None else default_latent_dir(shard_dir, key)
    if folder.is_dir() and _problem(folder, {**key, "source_manifest_sha256": fingerprint}) == "complete":
        manifest = read_manifest(folder)
        manifest["latent"]["run"] = {"out_dir": str(folder)}
        return manifest
    return None


def _nothing_to_do(manifest: dict, console: Console) -> dict:
    out_dir = manifest["latent"]["run"]["out_dir"] if "run" in manifest["latent"] else None
    console.print(f"{out_dir}: the latents of {describe(manifest['latent'])} are complete; nothing to encode",
                  highlight=False, soft_wrap=True)
    manifest["latent"]["run"] = {"images": 0, "seconds": 0.0, "skipped_shards": 0, "out_dir": str(out_dir)}
    return manifest


def _start(out_dir: Path, latent: dict, overwrite: bool, replace_stale: bool) -> dict | None:
    """Check ``out_dir`` against the key; returns its manifest when it is already complete."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir} is a file; choose a folder for the latent shards")
    problem = None if overwrite else _problem(out_dir, latent)
    if problem == "complete":
        manifest = read_manifest(out_dir)
        manifest["latent"]["run"] = {"out_dir": str(out_dir)}
        return manifest
    if problem and not replace_stale:
        raise DataError(f"{out_dir} {problem}; pass --overwrite or choose another OUT_DIR")
    if overwrite or problem:
        _clear(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for partial in out_dir.glob(".*.partial"):
        partial.unlink()
    if not (out_dir / PROGRESS_NAME).is_file():
        _write_json(out_dir / PROGRESS_NAME, {"latent": latent, "shards": {}})
    return None


def _problem(out_dir: Path, latent: dict) -> str | None:
    """'complete', what else ``out_dir`` holds, or None when it is new or an unfinished run of the same."""
    def same(made: dict) -> bool:
        return same_key(made, latent) and made.get("source_manifest_sha256") == latent["source_manifest_sha256"]

    if (out_dir / MANIFEST_NAME).is_file():
        manifest = read_manifest(out_dir)
        made = manifest.get("latent")
        missing = [n for e in manifest["splits"].values() for n in e["shards"] if not (out_dir / n).is_file()]
        if made and same(made):
            return f"lacks shards of its latents ({', '.join(missing[:3])})" if missing else "complete"
        return f"already holds {f'latents of {describe(key_of(made))}' if made else 'a data set'}"
    if (out_dir / PROGRESS_NAME).is_file():
        made = _read_progress(out_dir).get("latent", {})
        return None if same(made) else f"holds an unfinished encoding of {describe(key_of(made))}"
    if out_dir.is_dir() and any(SHARD_RE.match(p.name) for p in out_dir.iterdir()):
        return "holds shards of something else"
    return None


def _clear(out_dir: Path) -> None:
    if out_dir.is_dir():
        for path in out_dir.iterdir():
            if path.is_file() and (SHARD_RE.match(path.name) or path.name in (MANIFEST_NAME, PROGRESS_NAME)
                                   or path.name.endswith(".partial")):
                path.unlink()


def _read_progress(out_dir: Path) -> dict:
    try:
        return json.loads((out_dir / PROGRESS_NAME).read_text())
    except (OSError, json.JSONDecodeError):
        return {"latent": {}, "shards": {}}


def _finished(out_dir: Path, name: str, state: dict) -> bool:
    record = state["shards"].get(name)
    path = out_dir / name
    return record is not None and path.is_file() and path.stat().st_size == record["bytes"]


def _write_json(path: Path, value: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".progress-", suffix=".json", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(value, f)
    os.replace(tmp, path)


def _record(out_dir: Path, state: dict, name: str, stats: dict) -> None:
    """A shard is finished: remember it, so that a rerun skips it."""
    state["shards"][name] = stats
    _write_json(out_dir / PROGRESS_NAME, state)


def _latent_manifest(source: dict, state: dict, latent: dict, out_dir: Path) -> dict:
    classes = source["classes"]
    splits = {}
    for split, entry in source["splits"].items():
        stats = [state["shards"][name] for name in entry["shards"]]
        per_class = [sum(s["class_counts"][c] for s in stats) for c in range(len(classes))]
        splits[split] = {"shards": list(entry["shards"]), "shard_counts": [s["count"] for s in stats],
                         "count": sum(s["count"] for s in stats),
                         "class_counts": dict(zip(classes, per_class)),
                         "bytes": sum(s["bytes"] for s in stats),
                         "shard_class_counts": [list(s["class_counts"]) for s in stats]}
        if has_va(source):  # what was written (unreadable images are left out)
            va = VaStats()
            for s in stats:
                if s.get("va"):
                    va.merge(VaStats.from_state(s["va"]))
            splits[split]["va"] = va.summary()
    corrupt = sum(s["corrupt"] for s in state["shards"].values())
    dropped = dict(source.get("dropped") or {})
    if corrupt:
        dropped["corrupt_image"] = dropped.get("corrupt_image", 0) + corrupt
    return {**source, "splits": splits, "dropped": dropped, "latent": latent,
            "created_by": f"fer-core {__version__} (fer data encode)"}


def _source_size(source: dict, shard_dir: Path) -> int:
    size = (source.get("image") or {}).get("size")
    if not size or size[0] != size[1]:
        raise DataError(f"the images in {shard_dir} vary in size; pass --image-size (the recipe's data.image_size)")
    return int(size[0])


# -- the pipeline ------------------------------------------------------------------------------------------

class _ShardImages(IterableDataset):
    """Batches of decoded images [B, C, H, W] from whole shards; each worker takes every n-th shard.

    A batch may span shards; ``ends`` lists the shards whose last sample is in it or before it.
    Unreadable images and labels are skipped, as the training loader skips them.
    """

    def __init__(self, shard_dir: Path, todo: list[tuple[int, str]], batch_size: int, image_size: int,
                 channels: int):
        self.shard_dir, self.todo = shard_dir, todo
        self.batch_size, self.image_size, self.channels = batch_size, image_size, channels

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        mine = self.todo[info.id::info.num_workers] if info else self.todo
        batch = _new_batch()
        for index, name in mine:
            for sample in _read_shard(self.shard_dir / name, errors=[]):  # a truncated shard ends early
                try:
                    label = int(sample["cls"])
                    image = next(sample[k] for k in IMAGE_KEYS if k in sample)
                    pixels = decode_image(image, self.image_size, self.channels)
                except Exception:
                    continue
                extras = {k: v for k, v in sample.items()
                          if not k.startswith("__") and k not in IMAGE_KEYS and k not in ("cls", LATENT_FIELD)}
                batch["pixels"].append(pixels)
                batch["samples"].append((index, sample["__key__"], label, extras))
                if len(batch["pixels"]) == self.batch_size:
                    yield _finish_batch(batch)
                    batch = _new_batch()
            batch["ends"].append(index)
        if batch["pixels"] or batch["ends"]:
            yield _finish_batch(batch)


def _new_batch() -> dict:
    return {"pixels": [], "samples": [], "ends": []}


def _finish_batch(batch: dict) -> dict:
    batch["pixels"] = torch.stack(batch["pixels"]) if batch["pixels"] else None
    return batch


class _LatentShard:
    """One latent shard being written under a temporary name."""

    def __init__(self, out_dir: Path, name: str, num_classes: int):
        from webdataset import TarWriter

        self.path, self.tmp = out_dir / name, out_dir / f".{name}.partial"
        self.tar = TarWriter(str(self.tmp), encoder=False, mtime=0, user="fer", group="fer")
        self.count, self.class_counts = 0, [0] * num_classes
        self.va = VaStats()

    def write(self, key: str, label: int, latent: np.ndarray, extras: dict) -> None:
        buffer = io.BytesIO()
        np.save(buffer, latent)
        self.tar.write({"__key__": key, "cls": str(label).encode("ascii"), LATENT_FIELD: buffer.getvalue(),
                        **extras})
        self.count += 1
        self.class_counts[label] += 1
        va = parse_va(extras.get(VA_FIELD))
        if va is not None:
            self.va.add(va)

    def finish(self, corrupt: int) -> dict:
        self.tar.close()
        os.replace(self.tmp, self.path)
        return {"count": self.count, "class_counts": self.class_counts, "bytes": self.path.stat().st_size,
                "corrupt": corrupt, "va": self.va.state()}


def _encode_shards(module, shard_dir, out_dir, shards, todo, state, num_classes, batch_size, device, image_size,
                   channels, workers, *, progress, console) -> int:
    """Run the encoder over ``todo`` (indices into ``shards``: (name, samples)); returns the images encoded."""
    if not todo:
        return 0
    if workers is None:
        workers = min(4, max(1, (os.cpu_count() or 2) - 1))
    workers = min(workers, len(todo))
    names = [name for name, _ in shards]
    images = _ShardImages(shard_dir, todo, batch_size, image_size, channels)
    loader = DataLoader(images, batch_size=None, num_workers=workers, prefetch_factor=2 if workers else None,
                        pin_memory=device.type == "cuda")
    writers: dict[int, _LatentShard] = {}
    was_training = module.training
    module.eval().to(device)
    bar = Progress(TextColumn("encoding"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=not progress)
    encoded, started = 0, time.perf_counter()

    def write(batch: dict, latents: torch.Tensor | None) -> None:
        nonlocal encoded
        if latents is not None:
            array = latents.cpu().numpy()
            if not np.isfinite(array).all():
                raise DataError(f"{names[batch['samples'][0][0]]}: the encoder's latents overflow float16 "
                                f"(|x| > 65504) or are not finite; check the encoder and its checkpoint")
            for (index, key, label, extras), latent in zip(batch["samples"], array):
                if index not in writers:
                    writers[index] = _LatentShard(out_dir, names[index], num_classes)
                writers[index].write(key, label, latent, extras)
            encoded += len(array)
        advance = len(batch["samples"])
        for index in batch["ends"]:
            shard = writers.pop(index, None) or _LatentShard(out_dir, names[index], num_classes)
            corrupt = max(0, shards[index][1] - shard.count)  # unreadable images, or a truncated shard
            _record(out_dir, state, names[index], shard.finish(corrupt))
            advance += corrupt
        rate = encoded / max(time.perf_counter() - started, 1e-9)
        bar.update(task, advance=advance, rate=f"{rate:.1f} img/s")

    try:
        with bar, torch.inference_mode():
            task = bar.add_task("encode", total=sum(shards[i][1] for i, _ in todo), rate="")
            pending = None
            for batch in loader:
                latents = None
                if batch["pixels"] is not None:
                    latents = module(batch["pixels"].to(device, non_blocking=True))
                    _check_shape(latents, module, len(batch["samples"]))
                    latents = latents.to(torch.float16)
                if pending is not None:  # written while the device works on this batch
                    write(*pending)
                pending = (batch, latents)
            if pending is not None:
                write(*pending)
    finally:
        for shard in writers.values():  # an interruption leaves no half shard behind
            shard.tar.close()
            shard.tmp.unlink(missing_ok=True)
        module.train(was_training)
    return encoded


def _check_shape(latents: torch.Tensor, module, n: int) -> None:
    expected = (n, *module.latent_shape)
    if tuple(latents.shape) != expected:
        raise FerError(f"the encoder returned {list(latents.shape)} for {n} images, but declares latent_shape "
                       f"{list(module.latent_shape)}; fix the encoder")
