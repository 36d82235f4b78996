"""``data.cache_decoded``: a split's decoded images kept in memory, so that later epochs skip reading and decoding."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader

if TYPE_CHECKING:
    from fer_core.data.loader import ShardStream, SourceSplit

PIXELS = "__pixels__"  # a cached sample's decoded image (or the error decoding it raised), in place of its bytes


class DecodedCache:
    """A stream's decoded images, kept in memory across epochs (``data.cache_decoded``).

    Filled once, before the stream is first read, with every kept sample of the shards it reads
    (decoded in the loader's worker processes, a shard at a time); the stream then takes each
    shard's items from here instead of reading and decoding the shard, in the same order, so its
    batches are exactly those it delivers without the cache. Samples keep their fields but the
    image bytes, which the decoded uint8 pixels replace (``PIXELS``; a sample that failed to decode
    keeps its error, raised again where it would have been).
    """

    def __init__(self, stream: ShardStream, image_keys: Sequence[str]):
        self.image_keys = tuple(image_keys)
        self.keys = [(i, s) for i, (source, draws) in enumerate(zip(stream.sources, stream.draws)) if draws
                     for s, kept in enumerate(source.shard_kept) if kept]
        self.names = [(str(stream.sources[i].root), stream.sources[i].split) for i in range(len(stream.sources))]
        self.shards: dict[tuple[str, str, int], list[tuple]] = {}
        side, channels = stream.decoder.image_size, stream.decoder.channels
        samples = sum(stream.sources[i].shard_kept[s] for i, s in self.keys)
        self.megabytes = samples * side * side * channels / 2**20

    def items(self, source: SourceSplit, shard: int) -> list[tuple] | None:
        return self.shards.get((str(source.root), source.split, shard))

    def fill(self, stream: ShardStream, workers: int) -> None:
        # its own generator: filling happens at the first epoch a process reads, so drawing the workers'
        # seeds from the global RNG would shift a resumed run's random numbers against the straight run's
        reader = DataLoader(_ShardDecoder(stream, self.keys, self.image_keys), batch_size=None,
                            collate_fn=_as_is, num_workers=min(workers, len(self.keys)),
                            generator=torch.Generator().manual_seed(0))
        for (i, s), items, pixels in reader:
            for sample, _, _ in items:
                if isinstance(sample, dict) and isinstance(sample[PIXELS], int):
                    sample[PIXELS] = pixels[sample[PIXELS]]
            self.shards[(*self.names[i], s)] = items


class _ShardDecoder(torch.utils.data.Dataset):
    """Shard ``keys[n]`` of a stream -> (key, its kept items without image bytes, their pixels [N, H, W, C])."""

    def __init__(self, stream: ShardStream, keys: list[tuple[int, int]], image_keys: tuple[str, ...]):
        self.stream, self.keys, self.image_keys = stream, keys, image_keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, n: int):
        i, s = self.keys[n]
        decoder, items, images = self.stream.decoder, [], []
        for sample, label, where in self.stream._kept(self.stream.sources[i], s):
            if isinstance(sample, dict):
                try:
                    pixels: int | Exception = len(images)
                    images.append(decoder.pixels(sample))
                except Exception as exc:
                    pixels = exc
                sample = {k: v for k, v in sample.items() if k not in self.image_keys} | {PIXELS: pixels}
            items.append((sample, label, where))
        side, channels = decoder.image_size, decoder.channels
        pixels = np.stack(images) if images else np.empty((0, side, side, channels), np.uint8)
        return (i, s), items, pixels


def _as_is(item):
    return item
