"""The training and evaluation loader: WebDataset shards -> exact batches.

Training: each source of ``data.sources`` (or the one ``data.root``) is its own stream of
shuffled passes (``fer_core.data.mixture``). An epoch has as many draws as the sources have
samples together, shared by weight; a source with a small share continues in the next epoch
where this one stopped (over k epochs it delivers k times its share, every sample once before
any repeats), one with a large share starts its next reshuffled pass when it runs out, never
repeating a sample within an epoch before all of it was drawn. A single source is therefore
read exactly once per epoch. Every (rank, worker) slot reads its contiguous part of each
source's draws (a shard straddling two parts is read by both, each keeping its part, so there
may be fewer shards than slots), interleaves its sources at random, shuffles the result
through a buffer, decodes, augments and batches it. A rank therefore delivers a known number
of batches (short ranks are padded with repeats), so DDP ranks never hang and no epoch is
silently short. With ``data.balance`` each slot draws its share by class-balanced rejection
sampling from its sources' streams instead (rare classes repeat by design).

Evaluation (``train=False``) never samples: whatever the weights and ``balance``, every sample
of every source is delivered exactly once, source after source in stored order, split into
contiguous parts by rank and worker; ranks are not padded (their batch counts may differ by one).
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import math
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.filters import shuffle as wds_shuffle
from webdataset.tariterators import tarfile_samples

from fer_core.data.decoded import PIXELS, DecodedCache
from fer_core.data.images import pil_pixels
from fer_core.data.mixture import PassStream, interleave, shares, slot_range, stable_seed
from fer_core.data.prefetch import pinned
from fer_core.data.slots import in_process
from fer_core.data.tarstream import tar_samples
from fer_core.data.va import VA_FIELD, parse_va
from fer_core.errors import DataError

IMAGE_KEYS = ("png", "jpg", "jpeg", "webp", "bmp")


@dataclass
class SourceSplit:
    """One split of one data directory, mapped onto the recipe's classes."""

    root: Path
    manifest: dict
    split: str
    classes: list[str]  # recipe order
    weight: float = 1.0
    fraction: float = 1.0
    label_map: dict[int, int] = field(init=False)  # manifest class index -> recipe index
    shard_kept: list[int] = field(init=False)  # kept samples per shard
    quota: list[int] = field(init=False)  # per recipe class, samples kept (train_fraction)

    def __post_init__(self) -> None:
        names = self.manifest["classes"]
        missing = [c for c in self.classes if c not in names]
        if missing:
            raise DataError(f"{self.root}: classes {', '.join(missing)} are not in this data set "
                            f"(it has {', '.join(names)}); fix data.classes")
        if self.split not in self.manifest["splits"]:
            raise DataError(f"{self.root}: no '{self.split}' split (has {', '.join(self.manifest['splits'])})")
        self.label_map = {names.index(c): i for i, c in enumerate(self.classes)}
        entry = self.manifest["splits"][self.split]
        counts = entry["class_counts"]
        self.quota = [math.ceil(counts[c] * self.fraction) for c in self.classes]
        per_shard = entry.get("shard_class_counts") or _scan_class_counts(self.root, entry["shards"], len(names))
        self.shard_class = [[row[m] for m in self.label_map] for row in per_shard]
        self.shard_kept = self._kept_per_shard()
        self._offsets = [[0] * len(self.classes)]  # per shard: per class, samples in the shards before it
        for row in self.shard_class:
            self._offsets.append([a + b for a, b in zip(self._offsets[-1], row)])

    @property
    def entry(self) -> dict:
        return self.manifest["splits"][self.split]

    @functools.cached_property
    def shards(self) -> list[Path]:
        return [self.root / s for s in self.entry["shards"]]

    @property
    def count(self) -> int:
        return sum(self.shard_kept)

    def class_counts(self) -> list[int]:
        return list(self.quota)

    def _kept_per_shard(self) -> list[int]:
        # train_fraction keeps the first quota[c] samples of each class in shard order
        seen = [0] * len(self.classes)
        kept = []
        for row in self.shard_class:
            n = 0
            for c, k in enumerate(row):
                n += max(0, min(k, self.quota[c] - seen[c]))
                seen[c] += k
            kept.append(n)
        return kept

    def class_offsets(self, shard_index: int) -> list[int]:
        """Per class, how many samples of it precede this shard (in stored order)."""
        return list(self._offsets[shard_index])


def _scan_class_counts(root: Path, shards: Sequence[str], num_classes: int) -> list[list[int]]:
    """Per-shard class counts read from the ``cls`` fields (for manifests that lack them)."""
    out = []
    for shard in shards:
        row = [0] * num_classes
        for sample in _read_shard(root / shard, select=lambda name: name.endswith(".cls"), errors=[]):
            row[int(sample["cls"])] += 1
        out.append(row)
    return out


def _read_shard(path: Path, select=None, errors: list | None = None) -> Iterator[dict]:
    """Samples of one tar shard; a read error ends the shard and is recorded in ``errors``."""

    def handler(exc: Exception) -> bool:
        if errors is None:
            raise exc
        errors.append(f"{path.name}: {type(exc).__name__}: {exc}")
        return False

    if not path.is_file():
        raise DataError(f"shard {path} is missing; re-create the data set with `fer data pack`")
    if _compressed(path):
        yield from tarfile_samples(iter([{"url": str(path)}]), handler=handler, select_files=select)
        return
    try:
        yield from tar_samples(path, select)
    except Exception as exc:
        handler(exc)


def _compressed(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(6)
    return head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x28\xb5\x2f\xfd"))  # gzip, bzip2, xz, zstd


@dataclass
class Decoder:
    """Turns a raw sample into (input tensor, target, key); picklable for workers.

    With ``va`` the target is ``{"label": class target, "va": (valence, arousal)}`` and batches
    carry ``{"label": ..., "va": float32 [B, 2]}``; a sample without an annotated ``va.json``
    raises (the stream skips it as a corrupt sample).
    """

    image_size: int
    channels: int
    num_classes: int
    soft_labels: bool = False
    latent: bool = False
    classes: tuple[str, ...] = ()
    va: bool = False

    def __call__(self, sample: dict, label: int) -> tuple[torch.Tensor, torch.Tensor | dict]:
        if self.latent:
            array = np.load(io.BytesIO(sample["latent.npy"]))
            inputs = torch.from_numpy(array.astype(np.float32))
        else:
            inputs = pixels_to_tensor(self.pixels(sample))
        target = self.target(sample, label)
        return inputs, target if isinstance(target, (torch.Tensor, dict)) else torch.tensor(target)

    def pixels(self, sample: dict) -> np.ndarray:
        """The sample's image as uint8 [size, size, channels]; ``pixels_to_tensor`` makes it an input."""
        if PIXELS in sample:  # decoded before, by the cache (``DecodedCache``)
            pixels = sample[PIXELS]
            if isinstance(pixels, Exception):
                raise pixels
            return pixels
        return decode_pixels(_image_bytes(sample), self.image_size, self.channels)

    def target(self, sample: dict, label: int) -> int | torch.Tensor | dict:
        """The class id, or with ``soft_labels`` the normalised votes [C] (one-hot when there are none);
        with ``va`` that as ``label`` beside the sample's ``va``."""
        if self.va:
            va = parse_va(sample.get(VA_FIELD))
            if va is None:
                raise DataError(f"sample {sample.get('__key__')} has no annotated valence/arousal ({VA_FIELD})")
            return {"label": self.class_target(sample, label), "va": va}
        return self.class_target(sample, label)

    def class_target(self, sample: dict, label: int) -> int | torch.Tensor:
        """The class id, or with ``soft_labels`` the normalised votes [C] (one-hot when there are none)."""
        if self.soft_labels and "votes.json" in sample:
            votes = json.loads(sample["votes.json"])
            target = torch.tensor([float(votes.get(c, 0)) for c in self.classes])
            return target / target.sum() if target.sum() > 0 else torch.nn.functional.one_hot(
                torch.tensor(label), self.num_classes).float()
        if self.soft_labels:
            return torch.nn.functional.one_hot(torch.tensor(label), self.num_classes).float()
        return label


def _image_bytes(sample: dict) -> bytes:
    for key in IMAGE_KEYS:
        if key in sample:
            return sample[key]
    raise ValueError("sample has no image")


def decode_image(data: bytes, size: int, channels: int) -> torch.Tensor:
    """Image bytes -> float tensor [channels, size, size] in [0, 1]."""
    return pixels_to_tensor(decode_pixels(data, size, channels))


def decode_pixels(data: bytes, size: int, channels: int) -> np.ndarray:
    """Image bytes -> uint8 array [size, size, channels]: PIL's L/RGB conversion, bilinear resize if needed."""
    if _plain_png(data, size, channels) and _png_decoder() is not None:
        decode_png, modes = _png_decoder()
        try:
            image = decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                               modes.GRAY if channels == 1 else modes.RGB)  # uint8 [C, H, W]
            return image.permute(1, 2, 0).numpy()
        except Exception:  # a damaged file (or warnings made errors): PIL decides, with its own error
            pass
    return pil_pixels(data, size, channels)


def _plain_png(data: bytes, size: int, channels: int) -> bool:
    """An 8-bit, non-interlaced grey or RGB PNG of the wanted size, not RGB wanted as grey.

    libpng (through torchvision) decodes those to exactly PIL's pixels with less per-image
    overhead (about 70 against 85 us for a 48x48 face); every other image (JPEG, palette, alpha,
    16-bit, resizing, PIL's own RGB -> L weights) goes through PIL.
    """
    return (len(data) > 33 and data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
            and data[24] == 8 and data[28] == 0
            and (data[25] == 0 or data[25] == 2 and channels == 3)
            and int.from_bytes(data[16:20], "big") == size and int.from_bytes(data[20:24], "big") == size)


@functools.cache
def _png_decoder():
    """torchvision's libpng decoder and its modes, or None where torchvision no longer has it.

    (torchvision 0.29 deprecated its image codecs in favour of TorchCodec; PIL takes over when they go.)
    """
    try:
        from torchvision.io import ImageReadMode, decode_png
    except ImportError:
        return None
    try:  # the operator behind decode_png, without its per-call usage log and deprecation warning (~10% of a decode)
        op = torch.ops.image.decode_png
    except (AttributeError, RuntimeError):
        return decode_png, ImageReadMode
    return (lambda data, mode: op(data, mode.value, False)), ImageReadMode


def pixels_to_tensor(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [..., H, W, C] -> contiguous float [..., C, H, W] in [0, 1] (one image or a stacked batch).

    In NumPy, on one thread: as fast as torch's two-thread copy for a batch, the same values, and it
    leaves torch's thread pool asleep, whose spinning threads would take the cores from the workers."""
    array = pixels.numpy() if isinstance(pixels, torch.Tensor) else pixels
    moved = np.moveaxis(array, -1, -3)
    out = torch.empty(moved.shape, dtype=torch.float32)  # torch's allocation (its alignment), NumPy's loops
    view = out.numpy()
    view[...] = moved
    view /= 255
    return out


class ShardStream(IterableDataset):
    """Batches of one split for one rank; see the module docstring for the contract."""

    def __init__(
        self,
        sources: list[SourceSplit],
        decoder: Decoder,
        batch_size: int,
        *,
        train: bool,
        seed: int = 0,
        augments: Sequence[torch.nn.Module] = (),
        balance: bool = False,
        shuffle_buffer: int = 1000,
        rank: int = 0,
        world: int = 1,
    ):
        self.sources, self.decoder, self.batch_size = sources, decoder, batch_size
        self.train, self.seed, self.augments = train, seed, list(augments)
        self.balance, self.shuffle_buffer = balance and train, shuffle_buffer if train else 0
        self.rank, self.world = rank, world
        # the epoch in shared memory: persistent workers read the one the main process sets
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self.cache: DecodedCache | None = None
        self.total = sum(s.count for s in sources)
        if not decoder.latent:
            _png_decoder()  # import it here, not again in every worker of every epoch
        if self.total == 0:
            raise DataError(f"{sources[0].root}: split '{sources[0].split}' has no samples of the recipe's classes")
        empty = [s for s in sources if s.count == 0 and s.weight > 0]
        if train and empty:
            raise DataError(f"{empty[0].root}: split '{empty[0].split}' has no samples of the recipe's classes; "
                            f"remove it from data.sources or give it weight 0")
        # training shares an epoch of ``total`` draws by weight; evaluation reads every source once
        self.draws = shares(self.total, [s.weight for s in sources]) if train else [s.count for s in sources]
        self.streams = [PassStream(s.shard_kept, n, seed=seed, name=str(s.root), shuffle=train)
                        for s, n in zip(sources, self.draws)]

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    @epoch.setter
    def epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        for stream in self.streams:  # work out the passes' shard orders once, before workers copy the stream
            stream.order((epoch + 1) * stream.draws // max(stream.size, 1))

    # -- sizes ---------------------------------------------------------------
    def rank_count(self, rank: int) -> int:
        """Samples ``rank`` delivers in an epoch (before padding)."""
        return sum(b - a for a, b in (slot_range(n, rank, self.world) for n in self.draws))

    def num_batches(self) -> int:
        """Batches this rank delivers: in training every rank's count (the largest rank's), in evaluation its own."""
        if not self.train:
            return math.ceil(self.rank_count(self.rank) / self.batch_size)
        return math.ceil(max(self.rank_count(r) for r in range(self.world)) / self.batch_size)

    def __len__(self) -> int:
        return self.num_batches()

    # -- iteration (each slot in its worker, or stepped in the main process: fer_core.data.slots) --
    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        return self.slot(info.id, info.num_workers, seed_rngs=True) if info else self.slot(0, 1, seed_rngs=False)

    def slot(self, worker: int, workers: int, seed_rngs: bool) -> Iterator[dict]:
        """The batches of worker slot ``worker`` of ``workers``: the worker process's whole stream."""
        slot_seed = stable_seed(self.seed, self.epoch, self.rank, worker)
        rng = random.Random(slot_seed)
        if seed_rngs:  # every RNG an augment may draw from, seeded per slot and epoch (persistent workers too)
            torch.manual_seed(slot_seed)
            random.seed(slot_seed)
            np.random.seed(slot_seed)
        parts = []
        for source, stream, draws in zip(self.sources, self.streams, self.draws):
            a, b = slot_range(draws, self.rank, self.world, worker, workers)
            start = self.epoch * draws if self.train else 0
            items = (self._balanced(source, stream, start + a, b - a, rng) if self.balance
                     else self._read(source, stream.segments(start + a, start + b)))
            parts.append((items, b - a))
        if not self.train:  # one exact pass, source after source, in stored order
            yield from self._batches(itertools.chain.from_iterable(items for items, _ in parts))
            return
        samples = interleave(parts, rng)
        if self.shuffle_buffer > 1:
            samples = wds_shuffle(bufsize=self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)(samples)
        yield from self._batches(samples)

    def _read(self, source: SourceSplit, segments: Iterator[tuple[int, int, int]]) -> Iterator[tuple]:
        """The kept samples of ``segments`` ((shard, first, end) ranges of kept samples)."""
        for shard, first, end in segments:
            cached = self.cache.items(source, shard) if self.cache is not None else None
            if cached is not None:  # the same items _kept yields, decoded in an earlier pass
                yield from itertools.islice(cached, first, end)
            else:
                yield from itertools.islice(self._kept(source, shard), first, end)

    def _balanced(self, source: SourceSplit, stream: PassStream, position: int, quota: int,
                  rng: random.Random) -> Iterator[tuple]:
        """``quota`` class-balanced draws: rejection sampling from the source's stream.

        A class is accepted with probability (rarest class count / its count). The slot starts
        reading where its share of the epoch's positions begins, scaled by the reads one
        accepted draw takes on average, so slots and epochs read mostly different samples.
        """
        if not quota:
            return
        counts = source.class_counts()
        # classes without samples must not set the rate: min(counts) = 0 would accept ~nothing
        rarest = min((c for c in counts if c > 0), default=1)
        accept = [rarest / c if c else 1.0 for c in counts]
        reads_per_draw = sum(counts) / max(sum(c * p for c, p in zip(counts, accept)), 1e-9)
        produced = 0
        items = self._read(source, stream.segments(int(position * reads_per_draw)))
        for item in items:
            if item[0] == "corrupt" or rng.random() < accept[item[1]]:
                yield item
                produced += 1
                if produced == quota:
                    return
        raise DataError(f"{source.root}: no readable samples in split '{source.split}'")

    def _kept(self, source: SourceSplit, s: int) -> Iterator[tuple]:
        """(raw sample, recipe label, shard name) of the kept samples of shard ``s``."""
        kept = source.shard_kept[s]
        if not kept:
            return
        seen = source.class_offsets(s)
        errors: list[str] = []
        produced = 0
        for sample in _read_shard(source.shards[s], errors=errors):
            try:
                label = source.label_map.get(int(sample["cls"]))
            except (KeyError, ValueError):
                # an unreadable label takes one of the shard's places, so the shard still yields
                # exactly ``kept`` items and the (rank, worker) ranges of the epoch stay aligned
                produced += 1
                yield ("corrupt", 0, f"{source.shards[s].name}:{sample.get('__key__')}")
            else:
                if label is None:
                    continue
                seen[label] += 1
                if seen[label] > source.quota[label]:
                    continue
                produced += 1
                yield (sample, label, source.shards[s].name)
            if produced == kept:  # the rest of the shard is not kept (train_fraction, other classes)
                return
        for _ in range(kept - produced):  # truncated shard: count what is missing
            yield ("corrupt", 0, f"{source.shards[s].name} ({errors[0] if errors else 'short'})")

    def _batches(self, samples: Iterator[tuple]) -> Iterator[dict]:
        augments = self.augments if self.train else []
        # when every sample augment works on uint8 pixels too (``on_pixels``), images stay uint8
        # [B, H, W, C] (a quarter of the bytes between processes); EpochLoader converts whole batches to float
        batched = pixel_augments(augments) and not self.decoder.latent
        inputs, targets, keys, corrupt = [], [], [], []
        for sample, label, where in samples:
            if sample == "corrupt":
                corrupt.append(where)
                continue
            try:
                if batched:
                    x, y = self.decoder.pixels(sample), self.decoder.target(sample, label)
                else:
                    x, y = self.decoder(sample, label)
            except Exception as exc:
                corrupt.append(f"{where}:{sample.get('__key__')} ({type(exc).__name__})")
                continue
            for augment in augments:
                x = augment.on_pixels(x) if batched else augment(x)
            inputs.append(x)
            targets.append(y)
            keys.append(sample["__key__"])
            if len(inputs) == self.batch_size:
                yield _collate(inputs, targets, keys, corrupt)
                inputs, targets, keys, corrupt = [], [], [], []
        if inputs or corrupt:
            yield _collate(inputs, targets, keys, corrupt)


def pixel_augments(augments: Sequence) -> bool:
    """Whether every augment has ``on_pixels(uint8 [H, W, C]) -> uint8 [H, W, C]``: the same change as its
    forward on the float image, with the same draws from torch's RNG, never modifying its input in place."""
    return all(callable(getattr(augment, "on_pixels", None)) for augment in augments)


def _collate(inputs, targets, keys, corrupt) -> dict:
    if not inputs:
        return {"inputs": None, "targets": None, "keys": keys, "corrupt": corrupt}
    uint8 = isinstance(inputs[0], np.ndarray)  # decoded images, converted once per batch by EpochLoader
    if isinstance(targets[0], dict):  # affect: {"label": [B] or [B, C], "va": float32 [B, 2]}
        targets = {"label": _labels([t["label"] for t in targets]),
                   "va": torch.tensor([t["va"] for t in targets], dtype=torch.float32)}
    else:
        targets = _labels(targets)
    return {
        "inputs": torch.from_numpy(np.stack(inputs)) if uint8 else torch.stack(inputs),
        "targets": targets,
        "keys": keys,
        "corrupt": corrupt,
    }


def _labels(targets: list) -> torch.Tensor:
    """Class ids -> int64 [B]; soft targets (or 0-d id tensors) stacked."""
    hard = not isinstance(targets[0], torch.Tensor)
    return torch.tensor(targets, dtype=torch.int64) if hard else torch.stack(targets)


class EpochLoader:
    """Iterates a ShardStream through a DataLoader and yields exactly ``len(self)`` full batches.

    Workers end with partial batches; they are merged here. Corrupt samples are
    listed in ``self.corrupt`` (one name each, shard first). In training, a rank whose
    stream fell short repeats samples so all ranks take the same number of steps; in
    evaluation every sample comes once (``len`` is this rank's own batch count).
    """

    def __init__(self, stream: ShardStream, num_workers: int = 0):
        self.stream = stream
        self.num_workers = num_workers
        self.corrupt: list[str] = []
        self._rng_state: torch.Tensor | None = None
        self.cache_mb, self.persistent_workers, self.pin_memory = 0.0, False, False
        self._loader: DataLoader | None = None

    def configure(self, cache_mb: float = 0, persistent_workers: bool = False, pin_memory: bool = False) -> EpochLoader:
        """``cache_mb``: keep the decoded images in memory across epochs when they take at most this many MiB
        (``DecodedCache``; images only, not cached latents); ``persistent_workers``: keep the worker processes
        between epochs; ``pin_memory``: batches in page-locked memory, made ready in a background thread, for
        non-blocking copies to a CUDA device."""
        self.cache_mb, self.persistent_workers, self.pin_memory = cache_mb, persistent_workers, pin_memory
        return self

    def __len__(self) -> int:
        return self.stream.num_batches()

    def set_epoch(self, epoch: int) -> None:
        self.stream.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
        if self.pin_memory and self.num_workers:  # the workers own their RNG: a thread may drive them
            return pinned(self._batches())
        return self._batches()

    def _source(self) -> Iterable[dict]:
        """The stream's batches: from the DataLoader's workers, or from their slots stepped in this process
        (``fer_core.data.slots``) without workers (one slot) or with every image decoded in memory and
        batches not pinned."""
        if self.stream.cache is None and self.cache_mb and not self.stream.decoder.latent:
            cache = DecodedCache(self.stream, IMAGE_KEYS)
            if cache.megabytes <= self.cache_mb:
                cache.fill(self.stream, self.num_workers)
                self.stream.cache = cache
            self.cache_mb = 0  # decided once
        if not self.num_workers:  # the batches of one worker, and the caller's RNGs untouched
            return in_process(self.stream, 1)
        if self.stream.cache is not None and not self.pin_memory:
            return in_process(self.stream, self.num_workers)
        return self._dataloader()

    def _dataloader(self) -> DataLoader:
        if self._loader is not None:
            return self._loader
        persistent = self.persistent_workers  # only called with workers
        # persistent workers start once per process: their DataLoader draws its seed from its own generator,
        # not from the global RNG, or a resumed run's random numbers would be shifted against the straight run's
        generator = (torch.Generator().manual_seed(stable_seed(self.stream.seed, self.stream.rank))
                     if persistent else None)
        loader = DataLoader(self.stream, batch_size=None, collate_fn=_as_is, num_workers=self.num_workers,
                            persistent_workers=persistent, prefetch_factor=4,
                            generator=generator)
        if persistent:
            self._loader = loader
        return loader

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[str]]]:
        self.corrupt = []
        size, expected = self.stream.batch_size, len(self)
        loader = self._source()
        pending: list[dict] = []
        delivered = 0
        last = None
        for batch in loader:
            self.corrupt.extend(batch["corrupt"])
            if batch["inputs"] is None:
                continue
            if len(batch["keys"]) == size and not pending:
                last = batch
                delivered += 1
                yield _delivered(batch)
            else:
                pending.append(batch)
                merged = _merge(pending)
                while merged is not None and len(merged["keys"]) >= size:
                    head, merged = _split(merged, size)
                    last = head
                    delivered += 1
                    yield _delivered(head)
                pending = [merged] if merged is not None else []
        if pending and delivered < expected:
            last = pending[0]
            delivered += 1
            yield _delivered(last)
        while self.stream.train and delivered < expected and last is not None:  # short rank: keep ranks in step
            delivered += 1
            yield _delivered(last)


def _delivered(batch: dict) -> tuple[torch.Tensor, torch.Tensor | dict[str, torch.Tensor], list[str]]:
    """(inputs, targets, keys) with uint8 pixel batches [B, H, W, C] made float [B, C, H, W] in [0, 1];
    targets are a tensor, or with valence/arousal ``{"label": ..., "va": [B, 2]}``."""
    inputs = batch["inputs"]
    return pixels_to_tensor(inputs) if inputs.dtype == torch.uint8 else inputs, batch["targets"], batch["keys"]


def _as_is(batch: dict) -> dict:
    """The DataLoader's collate_fn: ShardStream batches are complete (default_convert would walk every key)."""
    return batch


def _merge(batches: list[dict]) -> dict | None:
    batches = [b for b in batches if b is not None and b["inputs"] is not None]
    if not batches:
        return None
    targets = [b["targets"] for b in batches]
    return {
        "inputs": torch.cat([b["inputs"] for b in batches]),
        "targets": ({k: torch.cat([t[k] for t in targets]) for k in targets[0]} if isinstance(targets[0], dict)
                    else torch.cat(targets)),
        "keys": [k for b in batches for k in b["keys"]],
        "corrupt": [],
    }


def _split(batch: dict, size: int) -> tuple[dict, dict | None]:
    head = {k: batch[k][:size] for k in ("inputs", "keys")}
    rest = {k: batch[k][size:] for k in ("inputs", "keys")}
    targets = batch["targets"]
    if isinstance(targets, dict):
        head["targets"] = {k: t[:size] for k, t in targets.items()}
        rest["targets"] = {k: t[size:] for k, t in targets.items()}
    else:
        head["targets"], rest["targets"] = targets[:size], targets[size:]
    head["corrupt"] = rest["corrupt"] = []
    return head, (rest if len(rest["keys"]) else None)
