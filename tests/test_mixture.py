"""Weighted mixtures read every sample (issue 23 items 1-2): coverage per epoch and across epochs, by rank
and worker, and evaluation as one exact pass whatever the weights and class balancing."""

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_loader import CLASSES, deadline, keys_of, pixels, png  # noqa: E402

from fer_core.data.mixture import PassStream, shares  # noqa: E402
from fer_core.data.shards import SplitWriter, write_manifest  # noqa: E402
from fer_core.data.sources import make_loader  # noqa: E402
from fer_core.errors import DataError  # noqa: E402
from fer_core.recipe import DEFAULTS  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread")]

SIZE = 16  # small images: the tests count keys, not pixels
SPLITS = {"a": {"train": 120, "val": 37, "test": 23}, "b": {"train": 100, "val": 41, "test": 19}}


def write_source(root: Path, prefix: str, counts: dict[str, int], shard_size: int,
                 labels=lambda i: i % len(CLASSES)) -> dict[str, list[str]]:
    """A data set with the given samples per split (sample i has class ``labels(i)``); returns each split's keys."""
    keys, entries = {}, {}
    for split, n in counts.items():
        with SplitWriter(root, split, CLASSES, shard_size) as writer:
            for i in range(n):
                writer.write(f"{prefix}{split}{i:04d}", labels(i), {"png": png(pixels(i, size=SIZE))})
        entries[split], keys[split] = writer.entry, [f"{prefix}{split}{i:04d}" for i in range(n)]
    write_manifest(root, {"format": "fer-shards", "version": 1, "source_format": "test", "classes": CLASSES,
                          "image": {"channels": 1, "size": [SIZE, SIZE]}, "splits": entries, "extras": [],
                          "dropped": {}, "seed": 0, "created_by": "test"})
    return keys


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    """Two sources of 120 and 100 training samples in shards of 25 and 30 (so passes end inside shards)."""
    root = tmp_path_factory.mktemp("mixture")
    keys = {"a": write_source(root / "a", "a", SPLITS["a"], 25), "b": write_source(root / "b", "b", SPLITS["b"], 30)}
    return root, keys


def config(root: Path, weights: tuple[float, float], **overrides) -> dict:
    sources = [{"root": str(root / name), "weight": w} for name, w in zip("ab", weights)]
    return {**DEFAULTS["data"], "image_size": SIZE, "channels": 1, "sources": sources, "shuffle_buffer": 40,
            **overrides}


def delivered(data: dict, split: str, *, train: bool, number: int, world: int, workers: int) -> list[str]:
    """The keys of one epoch over all ranks (padding batches of short training ranks left out)."""
    out = []
    for rank in range(world):
        loader = make_loader(data, split, CLASSES, 16, train=train, seed=3, rank=rank, world=world,
                             num_workers=workers)
        loader.set_epoch(number)
        with deadline(30):
            batches = list(loader)
        assert len(batches) == len(loader)
        keys = keys_of(batches)
        own = loader.stream.rank_count(rank)
        assert len(keys) >= own
        assert train or len(keys) == own, "evaluation is never padded"
        out += keys[:own]
    return out


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("weights", [(1, 1), (3, 1)])
def test_mixture_covers_every_source_by_weight(mixture, weights, workers, world):
    root, keys = mixture
    sizes = {name: len(keys[name]["train"]) for name in "ab"}  # 120 and 100
    draws = dict(zip("ab", shares(sum(sizes.values()), weights)))  # 1:1 -> 110 each; 3:1 -> 165 and 55
    data = config(root, weights)
    seen = {name: set() for name in "ab"}
    for number in range(3):
        got = Counter(delivered(data, "train", train=True, number=number, world=world, workers=workers))
        for name in "ab":
            mine = {k: n for k, n in got.items() if k.startswith(name)}
            assert sum(mine.values()) == draws[name], f"epoch {number}: source {name} gives its share by weight"
            # no repeats while unseen samples remain: as many distinct samples as draws, up to the whole source
            assert len(mine) == min(draws[name], sizes[name]), (name, number, len(mine))
            if draws[name] >= sizes[name]:  # every sample floor(draws / size) or ceil(draws / size) times
                low, high = draws[name] // sizes[name], -(-draws[name] // sizes[name])
                assert low <= min(mine.values()) and max(mine.values()) <= high, (name, number, Counter(mine.values()))
            assert set(mine) <= set(keys[name]["train"])
            seen[name] |= set(mine)
            # over k epochs a source delivers k shares, every sample once before any repeats
            assert len(seen[name]) == min(sizes[name], (number + 1) * draws[name])
    assert all(len(seen[name]) == sizes[name] for name in "ab"), "three epochs cover both sources"
    if weights == (3, 1):
        assert draws["a"] > sizes["a"], "the high-weight source is covered in every epoch (checked above)"


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("workers", [0, 2])
def test_evaluation_is_one_exact_pass(mixture, workers, world):
    root, keys = mixture
    data = config(root, (3, 1), balance=True)
    for split in ("val", "test"):
        got = Counter(delivered(data, split, train=False, number=1, world=world, workers=workers))
        assert max(got.values()) == 1, "no sample twice"
        assert set(got) == set(keys["a"][split]) | set(keys["b"][split]), "every sample of every source"


def test_balanced_mixture_still_balances(tmp_path):
    # class 0 is common, class 2 rare, in both sources; data.balance evens them out per source
    common = {"c": [0] * 100 + [1] * 35 + [2] * 15, "d": [0] * 60 + [1] * 15 + [2] * 5}
    for name, labels in common.items():
        order = [labels[i] for i in np.random.default_rng(0).permutation(len(labels))]
        write_source(tmp_path / name, name, {"train": len(labels)}, 20, labels=order.__getitem__)
    sources = [{"root": str(tmp_path / "c"), "weight": 3}, {"root": str(tmp_path / "d"), "weight": 1}]
    data = {**config(tmp_path, (3, 1), balance=True), "sources": sources}
    got, origins = Counter(), Counter()
    for rank in range(2):
        loader = make_loader(data, "train", CLASSES[:3], 20, train=True, seed=0, rank=rank, world=2, num_workers=0)
        with deadline(30):
            batches = list(loader)
        got.update(y for _, targets, _ in batches for y in targets.tolist())
        origins.update(k[0] for k in keys_of(batches))
    assert sum(got.values()) == 230  # 115 draws a rank, no padding
    assert all(55 <= got[c] <= 105 for c in range(3)), f"expected about 80 per class, got {dict(got)}"
    assert 0.65 <= origins["c"] / 240 <= 0.85, dict(origins)


@pytest.mark.parametrize("seed", range(40))
def test_pass_streams_repeat_nothing_before_everything(seed):
    # positions only: random shard sizes and shares, including passes that end inside shards and epochs
    rng = np.random.default_rng(seed)
    kept = [int(k) for k in rng.integers(0, 9, rng.integers(1, 8))]
    size = sum(kept)
    if not size:
        return
    draws = int(rng.integers(1, 3 * size))
    stream = PassStream(kept, draws, seed=seed, name="x", shuffle=True)
    seen = set()
    for epoch in range(8):
        got = Counter((s, i) for s, first, end in stream.segments(epoch * draws, (epoch + 1) * draws)
                      for i in range(first, end))
        assert sum(got.values()) == draws
        assert len(got) == min(draws, size), f"epoch {epoch} repeats a sample before drawing them all"
        if draws >= size:
            assert {draws // size, -(-draws // size)} >= set(got.values())
        seen |= set(got)
        assert len(seen) == min(size, (epoch + 1) * draws)


@pytest.mark.parametrize("weights, message", [((1, "a lot"), "data.sources\\[1\\].weight: expected a number"),
                                              ((0, 0), "weights must be >= 0 with a positive sum"),
                                              ((-1, 2), "data.sources\\[0\\].weight: expected a number >= 0")])
def test_bad_weights_are_one_line_errors(mixture, weights, message):
    root, _ = mixture
    with pytest.raises(DataError, match=message):
        make_loader(config(root, weights), "train", CLASSES, 16, train=True, seed=0, num_workers=0)


def test_a_source_without_the_recipe_classes_is_a_one_line_error(tmp_path):
    write_source(tmp_path / "a", "a", {"train": 8}, 4)
    write_source(tmp_path / "c", "c", {"train": 8}, 4, labels=lambda i: 3)  # only sadness
    data = {**config(tmp_path, (1, 1)), "sources": [{"root": str(tmp_path / "a")}, {"root": str(tmp_path / "c")}]}
    with pytest.raises(DataError, match="c: split 'train' has no samples of the recipe's classes; remove it"):
        make_loader(data, "train", CLASSES[:2], 4, train=True, seed=0, num_workers=0)
    data["sources"][1]["weight"] = 0
    loader = make_loader(data, "train", CLASSES[:2], 4, train=True, seed=0, num_workers=0)
    assert sorted(keys_of(list(loader))) == ["atrain0000", "atrain0001", "atrain0004", "atrain0005"]
