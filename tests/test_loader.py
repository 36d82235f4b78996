"""The training loader (issue 3): exact epochs over shards, rank/worker splits, decoding, sampling, corrupt data."""

import contextlib
import io
import json
import math
import signal
import tarfile
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from fer_core.builtin.augments import hflip
from fer_core.data.loader import _plain_png, _read_shard, decode_image, decode_pixels
from fer_core.data.pack import make_synth_dataset
from fer_core.data.shards import SplitWriter, read_manifest, write_manifest
from fer_core.data.sources import make_loader, open_split
from fer_core.data.tarstream import tar_samples
from fer_core.errors import FerError
from fer_core.recipe import DEFAULTS
from fer_core.train import _check_corrupt

CLASSES = ["anger", "happiness", "neutral", "sadness"]

# torchvision >= 0.29 warns on every call of its (deprecated) PNG decoder, which the loader uses where it equals PIL
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")]


# ---- helpers -----------------------------------------------------------------------------------------------

def pixels(index: int, channels: int = 1, size: int = 48) -> np.ndarray:
    rng = np.random.default_rng(index)
    return rng.integers(0, 256, (size, size) if channels == 1 else (size, size, 3), dtype=np.uint8)


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def write_set(root, labels, *, classes=CLASSES, shard_size=25, prefix="s", channels=1, size=48,
              extras=None, corrupt=()) -> dict[str, int]:
    """Shards of a train split with ``labels`` (class indices) in this order; returns key -> label.

    ``extras`` maps a sample index to more fields; indices in ``corrupt`` get garbage instead of a PNG.
    """
    keys = {}
    with SplitWriter(root, "train", classes, shard_size) as writer:
        for i, label in enumerate(labels):
            key = f"{prefix}{i:05d}"
            image = b"not a png at all" if i in corrupt else png(pixels(i, channels, size))
            writer.write(key, label, {"png": image, **(extras or {}).get(i, {})})
            keys[key] = label
    write_manifest(root, {"format": "fer-shards", "version": 1, "source_format": "test", "classes": list(classes),
                          "image": {"channels": channels, "size": [size, size]}, "splits": {"train": writer.entry},
                          "extras": [], "dropped": {}, "seed": 0, "created_by": "test"})
    return keys


def data_cfg(root=None, **overrides) -> dict:
    cfg = {**DEFAULTS["data"], "image_size": 48, "channels": 1, **overrides}
    if root is not None:
        cfg["root"] = str(root)
    return cfg


def loader(data, batch, *, classes=CLASSES, train=True, seed=0, rank=0, world=1, workers=0, augments=()):
    return make_loader(data, "train", list(classes), batch, train=train, seed=seed, augments=augments, rank=rank,
                       world=world, num_workers=workers)


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail instead of hanging: an epoch that does not end within ``seconds`` raises."""

    def expire(*_):
        raise TimeoutError(f"the loader did not finish an epoch within {seconds}s (a hang?)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def epoch(epoch_loader, number: int = 0, seconds: int = 30) -> list[tuple]:
    epoch_loader.set_epoch(number)
    with deadline(seconds):
        return list(epoch_loader)


def keys_of(batches) -> list[str]:
    return [k for _, _, keys in batches for k in keys]


def check_ranks(data, keys, batch, *, world=2, workers=2, classes=CLASSES):
    """Run one epoch on every rank; check batch counts and that every sample comes exactly once.

    A rank with fewer samples than the longest one ends with repeated (padding) batches so that all ranks take
    the same number of steps; those may only repeat keys that the same rank already delivered.
    """
    loaders = [loader(data, batch, rank=r, world=world, workers=workers, classes=classes) for r in range(world)]
    total = len(keys)
    expected = math.ceil(math.ceil(total / world) / batch)
    delivered = []
    for rank, epoch_loader in enumerate(loaders):
        assert len(epoch_loader) == expected
        batches = epoch(epoch_loader)
        assert len(batches) == expected, (
            f"rank {rank} delivered {len(batches)} batches, expected {expected} (padded batches keep ranks in step)")
        own = total * (rank + 1) // world - total * rank // world
        real = math.ceil(own / batch)  # batches holding this rank's own samples; the rest are padding
        own_keys = keys_of(batches[:real])
        assert len(own_keys) == own, f"rank {rank} should deliver its {own} samples in its first {real} batches"
        assert all(len(b[2]) == batch for b in batches[:real - 1]), "only the last real batch may be short"
        for inputs, targets, batch_keys in batches:
            assert inputs.shape[0] == targets.shape[0] == len(batch_keys) <= batch
        padding = set(keys_of(batches[real:]))
        assert padding <= set(own_keys), f"rank {rank}'s padding batches must repeat its own samples"
        delivered += own_keys
    duplicates = [k for k, n in Counter(delivered).items() if n > 1]
    assert not duplicates, f"samples delivered twice across ranks/workers: {duplicates[:5]}"
    assert set(delivered) == set(keys), f"missing: {sorted(set(keys) - set(delivered))[:5]}"


# ---- ranks x workers: every sample exactly once --------------------------------------------------------------

def test_two_ranks_two_workers_deliver_every_sample_once(tmp_path):
    make_synth_dataset(tmp_path / "synth", n=400, shard_size=25, progress=False)
    manifest = read_manifest(tmp_path / "synth")
    classes = manifest["classes"]
    data = data_cfg(tmp_path / "synth", channels=3)
    source = open_split(data, "train", classes)[0]
    keys = [sample["__key__"] for shard in source.shards for sample in _read_shard(shard)]
    assert len(keys) == manifest["splits"]["train"]["count"] == 274 and len(source.shards) == 11
    check_ranks(data, keys, batch=20, classes=classes)  # 137 samples per rank: 7 batches each, the last short


def test_two_ranks_uneven_split_last_batch_short(tmp_path):
    keys = write_set(tmp_path / "d", [i % 4 for i in range(397)], shard_size=30)
    check_ranks(data_cfg(tmp_path / "d"), keys, batch=20)  # ranks of 198 and 199: 10 batches each, last short


def test_two_ranks_uneven_split_pads_short_rank(tmp_path):
    # ranks of 100 and 101 samples with batch 20: rank 0 has 5 batches of its own, rank 1 has 6;
    # rank 0 repeats a batch so that both take 6 steps (DDP would hang otherwise)
    keys = write_set(tmp_path / "d", [i % 4 for i in range(201)], shard_size=30)
    check_ranks(data_cfg(tmp_path / "d"), keys, batch=20)


@pytest.mark.parametrize("shards", [1, 2])
def test_fewer_shards_than_ranks_times_workers(tmp_path, shards):
    keys = write_set(tmp_path / "d", [i % 4 for i in range(60)], shard_size=math.ceil(60 / shards))
    assert len(read_manifest(tmp_path / "d")["splits"]["train"]["shards"]) == shards
    check_ranks(data_cfg(tmp_path / "d"), keys, batch=8)


def test_more_slots_than_samples(tmp_path):
    keys = write_set(tmp_path / "d", [0, 1, 2], shard_size=10)
    check_ranks(data_cfg(tmp_path / "d"), keys, batch=4)


# ---- determinism ------------------------------------------------------------------------------------------

def test_order_is_seeded_per_epoch(tmp_path):
    write_set(tmp_path / "d", [i % 4 for i in range(200)], shard_size=25)
    data = data_cfg(tmp_path / "d", shuffle_buffer=50)
    one, two = loader(data, 16, workers=2), loader(data, 16, workers=2)
    first = keys_of(epoch(one, 0))
    assert first == keys_of(epoch(two, 0)), "same seed and epoch: same order"
    assert first == keys_of(epoch(one, 0)), "re-iterating an epoch repeats it"
    assert first != keys_of(epoch(one, 1)), "another epoch: another order"
    assert first != keys_of(epoch(loader(data, 16, workers=2, seed=1), 0)), "another seed: another order"
    assert sorted(first) == sorted(keys_of(epoch(one, 1)))


def test_shard_order_is_shuffled_per_epoch(tmp_path):
    keys = write_set(tmp_path / "d", [i % 4 for i in range(200)], shard_size=25)
    data = data_cfg(tmp_path / "d", shuffle_buffer=0)  # no sample shuffle: shards show through

    def shard_order(epoch_loader, number):
        shards = [int(k[1:]) // 25 for k in keys_of(epoch(epoch_loader, number))]
        order = [s for i, s in enumerate(shards) if i == 0 or shards[i - 1] != s]
        assert sorted(order) == list(range(8)), "each shard is read whole, once"
        return order

    train = loader(data, 10)
    orders = [shard_order(train, n) for n in range(3)]
    assert orders[0] != orders[1] != orders[2] and orders[0] != list(range(8))
    assert orders[0] == shard_order(loader(data, 10), 0)
    assert keys_of(epoch(loader(data, 10, train=False), 1)) == list(keys), "evaluation reads in stored order"


# ---- reading shards ---------------------------------------------------------------------------------------

def wds_samples(path, select=None):
    from webdataset.tariterators import tarfile_samples

    return [{k: v for k, v in s.items() if k != "__url__"}
            for s in tarfile_samples(iter([{"url": str(path)}]), select_files=select)]


def add_file(tar: tarfile.TarFile, name: str, data: bytes = b"x", kind=tarfile.REGTYPE) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


@pytest.mark.parametrize("format", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tar_reader_groups_like_webdataset(tmp_path, format):
    path = tmp_path / "odd.tar"
    long_dir = "d" * 120 if format != tarfile.USTAR_FORMAT else "prefix/" + "p" * 90
    with tarfile.open(path, "w", format=format) as tar:
        add_file(tar, "a.png", b"A" * 700)
        add_file(tar, "a.cls", b"3")
        add_file(tar, "a.votes.json", b"{}")
        add_file(tar, "dir", kind=tarfile.DIRTYPE)
        add_file(tar, "dir/b.PNG", b"B" * 513)
        add_file(tar, "dir/b.cls", b"1")
        add_file(tar, "__meta__", b"skip")
        add_file(tar, "nodot", b"skip")
        add_file(tar, f"{long_dir}/c.cls", b"2")
        add_file(tar, "link.cls", kind=tarfile.SYMTYPE)
        if format != tarfile.USTAR_FORMAT:
            add_file(tar, "été.cls", b"4")
        add_file(tar, "e.cls", b"")
    ours = list(tar_samples(path))
    assert ours == wds_samples(path)
    assert ours[0] == {"__key__": "a", "png": b"A" * 700, "cls": b"3", "votes.json": b"{}"}
    assert [s["__key__"] for s in ours][-1] == "e" and ours[1]["png"] == b"B" * 513
    select = lambda name: name.endswith(".cls")  # noqa: E731
    assert list(tar_samples(path, select)) == wds_samples(path, select)


def test_tar_reader_on_packed_shards_and_damage(tmp_path):
    write_set(tmp_path / "d", [i % 4 for i in range(30)], shard_size=30, extras={3: {"votes.json": b'{"anger": 1}'}})
    path = tmp_path / "d" / "train-000000.tar"
    assert list(tar_samples(path)) == wds_samples(path)
    data = path.read_bytes()
    ends = [info.offset_data + info.size for info in tarfile.open(path).getmembers()]
    for cut in (len(data) // 2, 700, 512 * 3 + 100, (ends[9] + 511) // 512 * 512):
        path.write_bytes(data[:cut])
        got = []
        with contextlib.suppress(tarfile.ReadError):
            got.extend(tar_samples(path))
        complete = sum(end <= cut for end in ends) // 2  # two files a sample
        assert [s["__key__"] for s in got][:complete] == [f"s{i:05d}" for i in range(complete)]
        assert len(got) <= complete + 1
    path.write_bytes(b"not a tar file at all" * 40)
    with pytest.raises(tarfile.ReadError):
        list(tar_samples(path))


# ---- sizes, decoding, augments ------------------------------------------------------------------------------

def test_exact_batch_count_and_shapes(tmp_path):
    keys = write_set(tmp_path / "d", [i % 4 for i in range(130)], shard_size=25)
    for workers in (0, 2):
        epoch_loader = loader(data_cfg(tmp_path / "d"), 32, workers=workers)
        batches = epoch(epoch_loader)
        assert len(epoch_loader) == len(batches) == math.ceil(130 / 32) == 5
        assert [b[0].shape for b in batches] == [torch.Size([32, 1, 48, 48])] * 4 + [torch.Size([2, 1, 48, 48])]
        assert all(b[1].dtype == torch.int64 and b[1].shape == (len(b[2]),) for b in batches)
        for inputs, targets, batch_keys in batches:
            assert inputs.dtype == torch.float32 and inputs.is_contiguous() and 0 <= inputs.min() and inputs.max() <= 1
            assert targets.tolist() == [keys[k] for k in batch_keys]
        assert sorted(keys_of(batches)) == sorted(keys)


@pytest.mark.parametrize("stored, wanted, size", [(1, 3, 32), (3, 1, 48), (3, 3, 40), (1, 1, 48)])
def test_decodes_to_recipe_size_and_channels(tmp_path, stored, wanted, size):
    write_set(tmp_path / "d", [0, 1, 2, 3] * 5, channels=stored, size=40)
    batches = epoch(loader(data_cfg(tmp_path / "d", channels=wanted, image_size=size), 8, train=False))
    inputs, _, batch_keys = batches[0]
    assert inputs.shape == (8, wanted, size, size)
    image = Image.fromarray(pixels(int(batch_keys[0][1:]), stored, 40)).convert("L" if wanted == 1 else "RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    expected = torch.from_numpy(np.asarray(image).copy()).float().div(255)
    expected = expected[None] if wanted == 1 else expected.permute(2, 0, 1)
    torch.testing.assert_close(inputs[0], expected, rtol=0, atol=0)
    if stored == 1 and wanted == 3:
        assert torch.equal(inputs[:, 0], inputs[:, 1]) and torch.equal(inputs[:, 1], inputs[:, 2])


def pil_reference(data: bytes, size: int, channels: int) -> np.ndarray:
    """What the loader's decoding must equal: PIL's conversion to L/RGB and bilinear resize."""
    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("L" if channels == 1 else "RGB")
        if image.size != (size, size):
            image = image.resize((size, size), Image.BILINEAR)
        return np.asarray(image).reshape(size, size, channels)


def encoded(mode: str, size: int = 48, format: str = "PNG", seed: int = 0, **options) -> bytes:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (size, size), dtype=np.uint16))
    else:
        image = Image.fromarray(rng.integers(0, 256, (size, size, 4), dtype=np.uint8), "RGBA")
        image = image.convert("RGB").convert("P") if mode == "P" else image.convert(mode)
    buf = io.BytesIO()
    image.save(buf, format=format, **options)
    return buf.getvalue()


@pytest.mark.parametrize("mode, format, options", [
    ("L", "PNG", {}), ("RGB", "PNG", {}), ("L", "PNG", {"transparency": 7}),
    ("RGB", "PNG", {"transparency": (1, 2, 3)}), ("P", "PNG", {}), ("RGBA", "PNG", {}), ("LA", "PNG", {}), ("I;16", "PNG", {}),
    ("L", "JPEG", {}), ("RGB", "JPEG", {"quality": 90})])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [48, 32])
def test_decoding_equals_pil(mode, format, options, channels, size):
    data = encoded(mode, format=format, **options)
    pixels = decode_pixels(data, size, channels)
    assert pixels.dtype == np.uint8 and pixels.shape == (size, size, channels)
    np.testing.assert_array_equal(pixels, pil_reference(data, size, channels))
    fast = format == "PNG" and size == 48 and (mode == "L" or mode == "RGB" and channels == 3)
    assert _plain_png(data, size, channels) == fast  # the libpng path is taken only where it equals PIL
    tensor = decode_image(data, size, channels)
    assert tensor.dtype == torch.float32 and tensor.is_contiguous() and tensor.shape == (channels, size, size)
    torch.testing.assert_close(tensor, torch.from_numpy(pil_reference(data, size, channels).copy()).permute(
        2, 0, 1).float() / 255, rtol=0, atol=0)


def test_damaged_png_raises():
    data = encoded("RGB")
    for broken in (data[:60], data[:-30], data[:40] + bytes(len(data) - 40), data[:33]):
        with pytest.raises(Exception):
            decode_pixels(broken, 48, 3)


def test_sample_augments_only_in_training(tmp_path):
    write_set(tmp_path / "d", [i % 4 for i in range(40)], shard_size=10)
    data = data_cfg(tmp_path / "d")
    plain = {k: x for inputs, _, keys in epoch(loader(data, 8, train=False)) for k, x in zip(keys, inputs)}
    for train, workers in ((True, 0), (True, 2), (False, 0)):
        batches = epoch(loader(data, 8, train=train, workers=workers, augments=[hflip(p=1.0)]))
        for inputs, _, keys in batches:
            for k, x in zip(keys, inputs):
                assert torch.equal(x, plain[k].flip(-1) if train else plain[k]), (train, workers, k)


# ---- classes, fractions, balance, weighted sources -------------------------------------------------------------

def test_recipe_classes_subset_and_order(tmp_path):
    keys = write_set(tmp_path / "d", [i % 4 for i in range(100)])
    classes = ["sadness", "anger"]  # manifest indices 3 and 0, reordered
    batches = epoch(loader(data_cfg(tmp_path / "d"), 10, classes=classes, workers=2))
    got = {k: y for _, targets, batch_keys in batches for k, y in zip(batch_keys, targets.tolist())}
    assert got == {k: {3: 0, 0: 1}[c] for k, c in keys.items() if c in (3, 0)}
    assert len(batches) == 5


def test_train_fraction_keeps_exact_quota_per_class(tmp_path):
    labels = [0] * 41 + [1] * 20 + [2] * 9 + [3] * 30
    order = np.random.default_rng(0).permutation(len(labels))
    keys = write_set(tmp_path / "d", [labels[i] for i in order], shard_size=12)
    data = data_cfg(tmp_path / "d", train_fraction=0.5)
    classes = ["happiness", "anger", "neutral"]
    source = open_split(data, "train", classes)[0]
    quota = [10, 21, 5]  # ceil(20 / 2), ceil(41 / 2), ceil(9 / 2), in recipe order
    assert source.class_counts() == quota and source.count == sum(quota)
    batches = epoch(loader(data, 8, classes=classes, workers=2))
    got = Counter(y for _, targets, _ in batches for y in targets.tolist())
    assert [got[i] for i in range(3)] == quota
    # the kept samples are the first of each class in stored order, whatever the epoch's shard order
    first = {c: [k for k, label in keys.items() if label == c][:q] for c, q in zip((1, 0, 2), quota)}
    assert sorted(keys_of(batches)) == sorted(k for ks in first.values() for k in ks)
    kept = [k for ks in first.values() for k in ks]
    check_ranks(data, {k: keys[k] for k in kept}, batch=8, classes=classes)


def test_balance_gives_near_uniform_classes(tmp_path):
    labels = [0] * 240 + [1] * 60 + [2] * 20
    order = np.random.default_rng(1).permutation(len(labels))
    write_set(tmp_path / "d", [labels[i] for i in order], shard_size=40)
    classes = CLASSES[:3]
    plain = Counter(y for _, t, _ in epoch(loader(data_cfg(tmp_path / "d"), 32, classes=classes)) for y in t.tolist())
    assert plain == {0: 240, 1: 60, 2: 20}
    balanced_loader = loader(data_cfg(tmp_path / "d", balance=True), 32, classes=classes, workers=2)
    batches = epoch(balanced_loader)
    assert len(batches) == len(balanced_loader) == 10
    got = Counter(y for _, targets, _ in batches for y in targets.tolist())
    assert sum(got.values()) == 320
    assert all(80 <= got[c] <= 135 for c in range(3)), f"expected about 107 per class, got {dict(got)}"


def test_balance_with_an_empty_class_does_not_stall(tmp_path):
    # a recipe class without training samples must not drive the acceptance rates of the others to ~0
    write_set(tmp_path / "d", [0] * 480 + [1] * 120, shard_size=60)
    data = data_cfg(tmp_path / "d", balance=True)
    got = Counter(y for _, t, _ in epoch(loader(data, 50, classes=CLASSES[:3]), seconds=10) for y in t.tolist())
    assert got[2] == 0 and 240 <= got[0] <= 360 and 240 <= got[1] <= 360, dict(got)


def test_weighted_sources(tmp_path):
    write_set(tmp_path / "a", [i % 4 for i in range(100)], prefix="a")
    write_set(tmp_path / "b", [i % 4 for i in range(300)], prefix="b")
    data = data_cfg(sources=[{"root": str(tmp_path / "a"), "weight": 3}, {"root": str(tmp_path / "b"), "weight": 1}])
    epoch_loader = loader(data, 25, workers=2)
    batches = epoch(epoch_loader)
    assert len(batches) == len(epoch_loader) == 16  # 400 samples a epoch, the sum of both sources
    origins = Counter(k[0] for k in keys_of(batches))
    assert sum(origins.values()) == 400
    assert 0.68 <= origins["a"] / 400 <= 0.82, f"expected about 3:1 from a:b by weight, got {dict(origins)}"


# ---- corrupt images, truncated shards, the threshold -------------------------------------------------------------

def test_corrupt_images_are_counted_not_fatal(tmp_path):
    keys = write_set(tmp_path / "d", [i % 4 for i in range(100)], corrupt={3, 42, 77})
    epoch_loader = loader(data_cfg(tmp_path / "d"), 10, workers=2)
    batches = epoch(epoch_loader)
    assert len(batches) == len(epoch_loader) == 10
    assert [len(b[2]) for b in batches] == [10] * 9 + [7]  # 97 good samples: no padding needed
    assert len(epoch_loader.corrupt) == 3
    assert sorted(name.split(" ")[0] for name in epoch_loader.corrupt) == [
        "train-000000.tar:s00003", "train-000001.tar:s00042", "train-000003.tar:s00077"]
    assert sorted(keys_of(batches)) == sorted(set(keys) - {"s00003", "s00042", "s00077"})


def test_unreadable_label_is_counted_once(tmp_path):
    extras = {7: {"cls": b"seven"}, 30: {"cls": b""}}
    keys = write_set(tmp_path / "d", [i % 4 for i in range(60)], shard_size=20, extras=extras)
    good = set(keys) - {"s00007", "s00030"}
    delivered, corrupt = [], []
    for rank in range(2):
        epoch_loader = loader(data_cfg(tmp_path / "d"), 10, rank=rank, world=2, workers=2)
        batches = epoch(epoch_loader)
        assert len(batches) == len(epoch_loader) == 3
        delivered += keys_of(batches[:math.ceil((30 - len(epoch_loader.corrupt)) / 10)])
        corrupt += epoch_loader.corrupt
    assert sorted(corrupt) == ["train-000000.tar:s00007", "train-000001.tar:s00030"]
    assert sorted(delivered) == sorted(good), "the other samples come exactly once"


def test_truncated_shard_counts_missing_samples(tmp_path):
    keys = write_set(tmp_path / "d", [i % 4 for i in range(100)], shard_size=25)
    shard = tmp_path / "d" / "train-000002.tar"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    for workers, world in ((0, 1), (2, 2)):
        delivered, corrupt = [], []
        for rank in range(world):
            epoch_loader = loader(data_cfg(tmp_path / "d"), 8, workers=workers, rank=rank, world=world)
            batches = epoch(epoch_loader)
            assert len(batches) == len(epoch_loader) == math.ceil(100 / world / 8)
            real = math.ceil((100 // world - len(epoch_loader.corrupt)) / 8)
            delivered += keys_of(batches[:real])
            corrupt += epoch_loader.corrupt
        lost = {k for k in keys if 50 <= int(k[1:]) < 75} - set(delivered)
        assert 0 < len(lost) < 25
        assert len(corrupt) == len(lost), f"every missing sample is counted once: {corrupt}"
        assert all(name.startswith("train-000002.tar") for name in corrupt)
        assert sorted(delivered) == sorted(set(keys) - lost), "the other samples come exactly once"


def fake_loader(bad: int, total: int = 1000):
    names = [f"train-000004.tar:s{i:05d} (UnidentifiedImageError)" for i in range(bad)]
    return SimpleNamespace(corrupt=names, stream=SimpleNamespace(total=total))


def test_corrupt_threshold_stops_the_run_naming_the_shard(capsys):
    env = SimpleNamespace(world=1, main=True)
    cfg = {"max_corrupt_fraction": 0.01}
    _check_corrupt(fake_loader(0), cfg, env)
    _check_corrupt(fake_loader(10), cfg, env)  # 1 % of 1000: still a warning
    assert "skipped 10 corrupt samples" in capsys.readouterr().out
    with pytest.raises(FerError, match=r"11 corrupt .* first in train-000004\.tar;"):
        _check_corrupt(fake_loader(11), cfg, env)
    with pytest.raises(FerError, match="train-000004.tar"):  # per rank: 1 % of 500
        _check_corrupt(fake_loader(6), cfg, SimpleNamespace(world=2, main=False))


def test_threshold_on_a_real_epoch(tmp_path):
    write_set(tmp_path / "d", [i % 4 for i in range(100)], corrupt={10, 11})
    epoch_loader = loader(data_cfg(tmp_path / "d"), 10)
    epoch(epoch_loader)
    env = SimpleNamespace(world=1, main=True)
    _check_corrupt(epoch_loader, {"max_corrupt_fraction": 0.05}, env)
    with pytest.raises(FerError, match=r"2 corrupt .* first in train-000000\.tar;"):
        _check_corrupt(epoch_loader, {"max_corrupt_fraction": 0.01}, env)


# ---- soft labels --------------------------------------------------------------------------------------------

def test_soft_labels_from_votes(tmp_path):
    votes = {i: {"votes.json": json.dumps({"anger": i % 3, "happiness": 6, "neutral": 2, "sadness": 0,
                                           "contempt": 2}).encode()} for i in range(0, 40, 2)}
    keys = write_set(tmp_path / "d", [1] * 40, extras=votes)  # odd samples have no votes
    classes = ["happiness", "anger", "neutral"]
    batches = epoch(loader(data_cfg(tmp_path / "d", soft_labels=True), 8, classes=classes, workers=2))
    assert len(keys_of(batches)) == len(keys)
    for _, targets, batch_keys in batches:
        assert targets.dtype == torch.float32 and targets.shape == (len(batch_keys), 3)
        torch.testing.assert_close(targets.sum(1), torch.ones(len(batch_keys)))
        for k, t in zip(batch_keys, targets):
            i = int(k[1:])
            if i % 2:
                expected = torch.tensor([1.0, 0.0, 0.0])  # no votes: one-hot of the label
            else:
                expected = torch.tensor([6.0, i % 3, 2.0]) / (8 + i % 3)
            torch.testing.assert_close(t, expected)
    hard = epoch(loader(data_cfg(tmp_path / "d"), 8, classes=classes))
    assert all(t.dtype == torch.int64 and t.ndim == 1 for _, t, _ in hard)
