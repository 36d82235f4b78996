"""Which samples of each source an epoch reads: the sources' pass streams and their split by slot.

Every source is an endless stream of *passes*. A pass reads each kept sample of the source once:
its shards in an order seeded by (seed, pass number, source root), each shard in stored order
(evaluation keeps the stored shard order). A training epoch takes ``draws`` consecutive
positions of each source's stream, where the draws of all sources add up to their samples
together and are shared by weight (``shares``); epoch ``e`` reads positions
``[e * draws, (e + 1) * draws)``, so a source continues where the last epoch stopped.

When a pass ends inside an epoch that began inside a pass, the next pass starts with the shards
the epoch has drawn least (those read before the epoch's starting point, shuffled, then the
shard it began in) and only then the others (shuffled). So within one epoch no sample of a
source is drawn twice while one of its samples has not been drawn (each is drawn
``floor(draws / size)`` or ``ceil(draws / size)`` times), and over ``k`` epochs a source has
delivered ``k * draws`` samples, its whole set every ``size / draws`` epochs.

Each (rank, worker) slot reads a contiguous part of every source's positions (``slot_range``),
the same split as a single source's, so together the slots read each position once.
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Iterator, Sequence

from fer_core.errors import DataError


def stable_seed(*parts) -> int:
    """A seed from parts, identical in every process (unlike ``hash`` of strings)."""
    return zlib.crc32(repr(parts).encode())


def shares(total: int, weights: Sequence[float]) -> list[int]:
    """``total`` draws split in proportion to ``weights`` (largest remainders round up; they sum to ``total``)."""
    weight_sum = sum(weights)
    if weight_sum <= 0 or min(weights) < 0:
        raise DataError(f"data.sources weights must be >= 0 with a positive sum, got {list(weights)}")
    exact = [total * w / weight_sum for w in weights]
    out = [math.floor(x) for x in exact]
    for i in sorted(range(len(out)), key=lambda i: out[i] - exact[i])[:total - sum(out)]:
        out[i] += 1
    return out


def slot_range(n: int, rank: int, world: int, worker: int = 0, workers: int = 1) -> tuple[int, int]:
    """The part [a, b) of ``n`` positions read by one worker of one rank (ranks first, then workers)."""
    start, stop = n * rank // world, n * (rank + 1) // world
    return start + (stop - start) * worker // workers, start + (stop - start) * (worker + 1) // workers


class PassStream:
    """One source's endless sequence of passes; see the module docstring."""

    def __init__(self, kept: Sequence[int], draws: int, *, seed: int, name: str, shuffle: bool):
        self.kept, self.draws = list(kept), draws  # kept samples per shard; positions read per epoch
        self.size = sum(self.kept)
        self.seed, self.name, self.shuffle = seed, name, shuffle
        self._orders: list[list[int]] = []

    def order(self, number: int) -> list[int]:
        """The shard order of pass ``number``."""
        while len(self._orders) <= number:
            self._orders.append(self._new_order(len(self._orders)))
        return self._orders[number]

    def segments(self, start: int, stop: int | None = None) -> Iterator[tuple[int, int, int]]:
        """(shard, first, end): in-shard ranges of kept samples covering positions [start, stop) (endless: None)."""
        if self.size == 0 or (stop is not None and stop <= start):
            return
        number, offset = divmod(start, self.size)
        remaining = math.inf if stop is None else stop - start
        while True:
            position = 0
            for shard in self.order(number):
                first = max(offset - position, 0)
                if first < self.kept[shard]:
                    end = min(self.kept[shard], first + remaining)
                    yield shard, first, end
                    remaining -= end - first
                    if remaining <= 0:
                        return
                position += self.kept[shard]
            number, offset = number + 1, 0

    def _new_order(self, number: int) -> list[int]:
        shards = list(range(len(self.kept)))
        if not self.shuffle:
            return shards
        rng = random.Random(stable_seed(self.seed, number, self.name))
        split = self._unread_first(number - 1) if number else None
        if split is None:
            rng.shuffle(shards)
            return shards
        unread, began_in, read = split
        rng.shuffle(unread)
        rng.shuffle(read)
        return unread + began_in + read

    def _unread_first(self, number: int) -> tuple[list[int], list[int], list[int]] | None:
        """Pass ``number``'s shards before / at / after the offset at which the epoch that reads its end began,
        when that epoch goes on into the next pass and did not begin at a pass start (else None).

        Passes read whole inside that epoch were ordered by this same split, so the shards before
        the offset are always the ones the epoch has drawn once less than the others.
        """
        if not self.draws:
            return None
        end = (number + 1) * self.size
        began = (end - 1) // self.draws * self.draws  # first position of the epoch holding the pass's last one
        offset = began % self.size
        if offset == 0 or began + self.draws <= end:
            return None
        position = 0
        before, at, after = [], [], []
        for shard in self.order(number):
            k = self.kept[shard]
            (before if position + k <= offset else after if position >= offset else at).append(shard)
            position += k
        return before, at, after


def interleave(parts: Sequence[tuple[Iterator, int]], rng: random.Random) -> Iterator:
    """All items of ``parts`` ((iterator, length) pairs) in a uniformly random interleaving."""
    if len(parts) == 1:  # a single source: its own order
        yield from parts[0][0]
        return
    order = [i for i, (_, n) in enumerate(parts) for _ in range(n)]
    rng.shuffle(order)
    iterators = [iter(items) for items, _ in parts]
    for i in order:
        yield next(iterators[i])
