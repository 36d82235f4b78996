"""Issue 20 (speed): the decoded-image cache and uint8 augments give the very batches of the plain path;
channels_last, persistent workers, fused optimisers and the torch.compile fallback train and resume
exactly; the run summary's throughput fields; malloc kept from returning tensor memory; smoke runs of the
speed benchmarks at tiny sizes."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import platform
import random
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console

import fer_core.data.loader as loader_module
import fer_core.train as train_module
from fer_core.builtin.augments import hflip
from fer_core.data.loader import pixel_augments
from fer_core.data.shards import SplitWriter, write_manifest
from fer_core.data.sources import make_loader
from fer_core.optim import make_optimizer, use_fused
from fer_core.plugins import get_registry
from fer_core.recipe import DEFAULTS, load_recipe
from fer_core.registry import Component
from fer_core.train import run

sys.path.insert(0, str(Path(__file__).parent))
from data_fixtures import pack_colour_set  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")]

CLASSES = ["anger", "happiness", "neutral"]
BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def write_split(root: Path, split: str, n: int, *, corrupt=(), shard_size: int = 16, size: int = 12) -> None:
    rng = np.random.default_rng(len(split))
    with SplitWriter(root, split, CLASSES, shard_size) as writer:
        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
            writer.write(f"{split}{i:04d}", i % len(CLASSES), {"png": b"garbage" if i in corrupt else buf.getvalue()})
    entry = writer.entry
    manifest_path = root / "dataset.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {
        "format": "fer-shards", "version": 1, "source_format": "test", "classes": CLASSES,
        "image": {"channels": 3, "size": [size, size]}, "splits": {}, "extras": [], "dropped": {}, "seed": 0,
        "created_by": "test"}
    manifest["splits"][split] = entry
    write_manifest(root, manifest)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("speed") / "data"
    write_split(root, "train", 90, corrupt={5, 40})
    write_split(root, "val", 30)
    return root


def batches(root: Path, split: str, *, cache: bool, workers: int, epochs: int = 2, augments=(), size: int = 8) -> list:
    data = {**DEFAULTS["data"], "root": str(root), "image_size": 12, "channels": 3, "shuffle_buffer": 20}
    loader = make_loader(data, split, CLASSES, size, train=split == "train", seed=3, augments=augments,
                         num_workers=workers).configure(cache_mb=64 if cache else 0)
    out = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        out += [(x.clone(), y.clone(), list(k)) for x, y, k in loader] + [sorted(loader.corrupt)]
    assert (loader.stream.cache is not None) == cache
    return out


def same(a: list, b: list) -> None:
    assert len(a) == len(b)
    for one, other in zip(a, b):
        if isinstance(one, list):  # an epoch's corrupt samples
            assert one == other
        else:
            assert torch.equal(one[0], other[0]) and torch.equal(one[1], other[1]) and one[2] == other[2]


@pytest.mark.parametrize("workers", [0, 2])
def test_decoded_cache_gives_the_batches_of_the_uncached_path(shards, workers):
    augments = [hflip(0.5)]
    plain = batches(shards, "train", cache=False, workers=workers, augments=augments)
    cached = batches(shards, "train", cache=True, workers=workers, augments=augments)
    same(plain, cached)
    assert plain[-1] and any(not torch.equal(a[0], b[0]) for a, b in zip(plain[:5], plain[6:11]))  # epochs differ
    same(batches(shards, "val", cache=False, workers=workers), batches(shards, "val", cache=True, workers=workers))


def test_a_split_over_the_cache_budget_is_decoded_every_epoch(shards):
    data = {**DEFAULTS["data"], "root": str(shards), "image_size": 12, "channels": 3}
    loader = make_loader(data, "train", CLASSES, 8, train=True, seed=3, num_workers=0).configure(cache_mb=0.01)
    assert len(list(loader)) == len(loader) and loader.stream.cache is None


class FloatOnlyFlip(torch.nn.Module):
    """The built-in flip without its uint8 path: forces the float path of the loader."""

    def __init__(self):
        super().__init__()
        self.flip = hflip(0.5)

    def forward(self, image):
        return self.flip(image)


def test_uint8_flip_gives_the_batches_of_the_float_flip(shards):
    assert pixel_augments([hflip(0.5)]) and not pixel_augments([FloatOnlyFlip()])
    same(batches(shards, "train", cache=False, workers=0, augments=[FloatOnlyFlip()]),
         batches(shards, "train", cache=False, workers=0, augments=[hflip(0.5)]))


def test_persistent_workers_follow_the_epoch(shards):
    data = {**DEFAULTS["data"], "root": str(shards), "image_size": 12, "channels": 3, "shuffle_buffer": 20}
    fresh = make_loader(data, "train", CLASSES, 8, train=True, seed=3, num_workers=2)
    kept = make_loader(data, "train", CLASSES, 8, train=True, seed=3, num_workers=2).configure(persistent_workers=True)
    for epoch in range(3):
        fresh.set_epoch(epoch)
        kept.set_epoch(epoch)
        assert [k for _, _, keys in fresh for k in keys] == [k for _, _, keys in kept for k in keys]
    assert kept._loader is not None and kept._loader._iterator is not None  # the same worker processes throughout


def test_fused_optimiser_where_supported():
    def cpu():
        return [{"params": [torch.nn.Parameter(torch.zeros(3))], "lr": 0.1, "weight_decay": 0.0}]

    assert use_fused(cpu()) and not use_fused(cpu(), False)
    assert not use_fused([{"params": [torch.nn.Parameter(torch.zeros(3, dtype=torch.complex64))]}])
    for name in ("adamw", "adam", "sgd"):
        optim = {**DEFAULTS["optim"], "name": name}
        assert make_optimizer(cpu(), optim).param_groups[0]["fused"] is True
        assert not make_optimizer(cpu(), {**optim, "fused": False}).param_groups[0]["fused"]


# ---- runs ---------------------------------------------------------------------------------------------------

RECIPE = """
name: fast
seed: 2
data: {{root: {root}, image_size: 16, channels: 3, num_workers: {workers}, shuffle_buffer: 32,
        persistent_workers: {persistent}}}
model:
  backbone: {{name: {backbone}}}
  head: {{name: linear, dropout: 0.3}}
augment: {{sample: [{{name: hflip}}]}}
optim: {{name: adamw, lr: 1.0e-2}}
schedule: {{name: none}}
train: {{epochs: {epochs}, batch_size: 16, log_every: 2, channels_last: {channels_last}, compile: {compile}}}
eval: {{batch_size: 64}}
"""


class TinyCNN(torch.nn.Module):
    """A small convolutional backbone: quick to build, to trace and to train on colours."""

    input_kind = "image"
    num_features = 8

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8),
                                        torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())

    def forward(self, images):
        return self.body(images)


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    return pack_colour_set(tmp_path_factory.mktemp("colours"), {"train": 32, "val": 10, "test": 10}, size=16)


def recipe(tmp_path: Path, root: Path, *, epochs=2, workers=0, persistent=False, channels_last=False,
           compile=False, backbone="tiny_cnn") -> dict:
    registry = get_registry()
    if "tiny_cnn" not in registry.names("backbone"):
        registry.add(Component("backbone", "tiny_cnn", lambda image_size=16, in_chans=3: TinyCNN(), plugin="test"))
    path = tmp_path / "fast.yaml"
    path.write_text(RECIPE.format(root=root, workers=workers, persistent=str(persistent).lower(), epochs=epochs,
                                  channels_last=str(channels_last).lower(), compile=str(compile).lower(),
                                  backbone=backbone))
    return load_recipe(path, registry=registry)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


def test_channels_last_and_persistent_workers_train_and_report_their_speed(tmp_path, colours):
    out = io.StringIO()
    run_dir = run(recipe(tmp_path, colours, epochs=3, workers=1, persistent=True, channels_last=True),
                  out=tmp_path / "runs", console=Console(file=out, width=200))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test"]["accuracy"] > 0.6  # three colours: chance is 1/3
    assert summary["train_images_per_s"] > 0 and summary["time_to_first_step_s"] > 0
    assert summary["inference_images_per_s"] > 0  # timed on the final test evaluation's forward passes
    text = out.getvalue()
    assert "time to first step:" in text and "images/s (mean of epochs)" in text
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["optimizer"]["param_groups"][0]["fused"] is True


class Crash(Exception):
    pass


def test_resume_with_the_speed_options_is_bit_identical(tmp_path, colours, monkeypatch):
    options = {"epochs": 3, "workers": 1, "persistent": True, "channels_last": True}
    straight = run(recipe(tmp_path, colours, **options), out=tmp_path / "straight", console=Console(quiet=True))
    step = train_module.Window.add
    calls = {"n": 0}

    def crash_in_epoch_two(self, outputs, n, at):
        calls["n"] += 1
        if calls["n"] == 8:  # 6 steps an epoch (96 samples, batch 16): the second step of epoch 2
            raise Crash
        return step(self, outputs, n, at)

    monkeypatch.setattr(train_module.Window, "add", crash_in_epoch_two)
    with pytest.raises(Crash):
        run(recipe(tmp_path, colours, **options), out=tmp_path / "crashed", console=Console(quiet=True))
    monkeypatch.setattr(train_module.Window, "add", step)
    run_dir = next((tmp_path / "crashed" / "fast").iterdir())
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["counters"]["epoch"] == 1
    run(None, resume=run_dir, console=Console(quiet=True))
    reference, resumed = weights(straight), weights(run_dir)
    assert reference.keys() == resumed.keys()
    for key in reference:
        assert torch.equal(reference[key], resumed[key]), key


def failing_backend(graph, example_inputs):
    raise RuntimeError("no compiler for this test")


def test_compile_falls_back_to_eager_with_one_line_and_the_same_weights(tmp_path, colours, monkeypatch):
    eager = run(recipe(tmp_path, colours), out=tmp_path / "eager", console=Console(quiet=True))
    monkeypatch.setattr(train_module.CompiledOrEager, "backend", staticmethod(failing_backend))
    out = io.StringIO()
    fallback = run(recipe(tmp_path, colours, compile=True), out=tmp_path / "compiled",
                   console=Console(file=out, width=300))
    lines = [line for line in out.getvalue().splitlines() if line.startswith("train.compile:")]
    assert len(lines) == 1 and "cannot compile" in lines[0] and "no compiler for this test" in lines[0]
    assert "eager mode" in lines[0]
    reference, compiled = weights(eager), weights(fallback)
    for key in reference:
        assert torch.equal(reference[key], compiled[key]), key


# ---- the benchmarks, at tiny sizes ---------------------------------------------------------------------------

def benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_profile_run_accounts_for_the_steps_of_a_real_run(tmp_path):
    result = benchmark("profile_run").main(["--n", "70", "--epochs", "1", "--workers", "0", "--cache", str(tmp_path),
                                            "-s", "train.batch_size=16", "--json", str(tmp_path / "p.json")])
    train = json.loads(next(tmp_path.glob("synth-70-*/dataset.json")).read_text())["splits"]["train"]["count"]
    steps = -(-train // 16)
    assert json.loads((tmp_path / "p.json").read_text())["steps"] == result["steps"] == steps
    rows = {row["stage"]: row for row in result["rows"]}
    for stage in ("forward", "backward", "optimizer", "decode", "evaluate", "checkpoint", "report", "setup"):
        assert rows[stage]["seconds"] > 0, stage
    assert rows["forward"]["calls"] == rows["backward"]["calls"] == steps and rows["decode"]["where"] == "main"
    assert sum(row["seconds"] for row in result["rows"] if row["where"] != "thread") == pytest.approx(
        result["wall_s"], rel=0.05)  # every second of the run is in one row
    assert [r["seconds"] for r in result["rows"]] == sorted((r["seconds"] for r in result["rows"]), reverse=True)


def test_timm_compare_runs_the_three_sides_on_the_same_images(tmp_path):
    result = benchmark("timm_compare").main(["--n", "70", "--epochs", "1", "--workers", "0", "--cache", str(tmp_path),
                                             "--repeats", "2"])
    assert set(result["median"]) == {"fer", "timm", "limit"}
    for side in result["median"].values():
        assert side["images_per_s"] > 0 and 0 <= side["test_accuracy"] <= 1 and side["wall_s"] > 0
    assert {"fer/timm images/s", "fer/limit images/s"} <= set(result["ratios"])
    # each repeat's own ratio, from the runs of that repeat; their median over the two repeats
    own = [r["fer"]["images_per_s"] / r["limit"]["images_per_s"]
           for r in ({side: runs[i] for side, runs in result["runs"].items()} for i in range(2))]
    assert set(result["repeat_ratios"]) == set(result["ratios"])
    assert result["repeat_ratios"]["fer/limit images/s"] == pytest.approx(sum(own) / 2)
    folder = next(tmp_path.glob("*-imagefolder"))
    assert len(list((folder / "train").rglob("*.png"))) == result["train_samples"] > 0


def test_gpu_benchmark_smoke_runs_on_a_cpu(tmp_path):
    result = benchmark("gpu").main(["--device", "cpu", "--tiny", "--json", str(tmp_path / "g.json")])
    assert [r["model"] for r in result["results"]] == ["resnet18", "vit_tiny_patch16_224"]
    for r in result["results"]:
        assert r["bare"]["images_per_s"] > 0 and r["fer"]["images_per_s"] > 0 and r["ratio"] > 0
        assert r["bare"]["utilisation"] is None  # no GPU to sample


def test_pinned_batches_come_in_order_from_a_background_thread(shards, monkeypatch):
    # no CUDA here: page-locking is the identity, the thread and its hand-over are real
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: self.clone())
    data = {**DEFAULTS["data"], "root": str(shards), "image_size": 12, "channels": 3, "shuffle_buffer": 20}
    plain = make_loader(data, "train", CLASSES, 8, train=True, seed=3, num_workers=1)
    pinned = make_loader(data, "train", CLASSES, 8, train=True, seed=3, num_workers=1).configure(pin_memory=True)
    same([(x, y, k) for x, y, k in plain] + [sorted(plain.corrupt)],
         [(x, y, k) for x, y, k in pinned] + [sorted(pinned.corrupt)])
    first = next(iter(pinned))  # leaving early stops the thread (no hang)
    assert first[0].shape[0] == 8
    assert not [t for t in threading.enumerate() if t.name == "fer-pin-memory"]


def test_pinned_batches_raise_the_loader_error(monkeypatch):
    from fer_core.data.prefetch import pinned as _pinned

    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: self.clone())

    def failing():
        yield torch.zeros(2), torch.zeros(2), ["a", "b"]
        raise ValueError("shard broke")

    with pytest.raises(ValueError, match="shard broke"):
        list(_pinned(failing()))


@pytest.mark.parametrize("workers", [2, 4])
def test_cached_batches_come_from_the_worker_slots_in_process(shards, workers, monkeypatch):
    """With every image in memory, the workers' slots are stepped in this process: the DataLoader's very batches
    (its round-robin over slots, some exhausted before others), no worker process, the caller's RNGs untouched."""
    augments, size = [hflip(0.5)], 11
    plain = batches(shards, "train", cache=False, workers=workers, augments=augments, size=size)
    iterated = []
    real_iter = torch.utils.data.DataLoader.__iter__
    monkeypatch.setattr(torch.utils.data.DataLoader, "__iter__", lambda self: iterated.append(self) or real_iter(self))
    torch.manual_seed(11)
    before = torch.get_rng_state()
    cached = batches(shards, "train", cache=True, workers=workers, augments=augments, size=size)
    assert torch.equal(torch.get_rng_state(), before)
    same(plain, cached)
    assert len(iterated) == 1  # the cache fill's; the epochs start no worker processes
    loader = make_loader({**DEFAULTS["data"], "root": str(shards), "image_size": 12, "channels": 3}, "train",
                         CLASSES, size, train=True, seed=3)
    lengths = [len(list(loader.stream.slot(w, workers, seed_rngs=False))) for w in range(workers)]
    assert workers == 2 or len(set(lengths)) > 1, lengths  # with 4 slots, some run out before the others


class _Jitter(torch.nn.Module):
    """A sample augment drawing from torch's, Python's and NumPy's RNGs."""

    def forward(self, x):
        return x + 0.01 * (torch.rand(()) + random.random() + np.random.rand())


def test_without_workers_the_loader_gives_one_workers_batches_and_leaves_the_callers_rngs(shards):
    augments = [hflip(0.5), _Jitter()]
    one_worker = batches(shards, "train", cache=False, workers=1, augments=augments, size=11)
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    before = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    in_process = batches(shards, "train", cache=False, workers=0, augments=augments, size=11)
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]
    assert np.array_equal(np.random.get_state()[1], before[2])
    same(one_worker, in_process)


def test_forward_clock_times_the_passes_it_sees_and_detaches():
    from fer_core.classify import ForwardClock

    model = torch.nn.Linear(4, 2)
    with ForwardClock(model, torch.device("cpu")) as clock:
        for size in (5, 5, 3):
            model(torch.randn(size, 4))
    model(torch.randn(7, 4))  # after the clock is detached: not counted
    assert clock.images == 13 and clock.seconds > 0
    assert clock.images_per_s() == pytest.approx(13 / clock.seconds, rel=0.01)
    assert ForwardClock(model, torch.device("cpu")).images_per_s() is None  # nothing seen: no figure


MALLOC_PROBE = """
import ctypes, json
from fer_core.allocator import tune_malloc

class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Mallinfo2
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
tuned = tune_malloc()
mapped = libc.mallinfo2().hblkhd
block = libc.malloc(4 << 20)  # 4 MiB: mmapped under glibc's initial 128 KiB threshold
mapped_after = libc.mallinfo2().hblkhd
libc.free(block)
print(json.dumps({"tuned": tuned, "mapped": mapped_after - mapped}))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc",
                    reason="glibc's malloc only")
@pytest.mark.parametrize("setting", ["1", "0"])
def test_fer_run_keeps_freed_tensor_memory_in_the_heap(setting):
    env = {**os.environ, "FER_MALLOC_TUNE": setting}
    out = json.loads(subprocess.run([sys.executable, "-c", MALLOC_PROBE], env=env, check=True, capture_output=True,
                                    text=True).stdout)
    if setting == "1":  # a 4 MiB block comes from the heap, where a freed one is reused without new pages
        assert out == {"tuned": True, "mapped": 0}
    else:  # left as it is: glibc maps the block on its own
        assert out["tuned"] is False and out["mapped"] >= 4 << 20


def test_allocator_benchmark_runs_both_sides_in_fresh_processes():
    result = benchmark("allocator").main(["--steps", "2", "--warmup", "0", "--repeats", "1", "--size", "32",
                                          "--batch-size", "8"])
    assert len(result["runs"]["system"]) == len(result["runs"]["tuned"]) == 1
    assert all(value > 0 for values in result["runs"].values() for value in values)


def test_limit_paired_steps_the_limit_inside_the_run_and_restores_the_loop(tmp_path):
    before = (train_module.make_loader, loader_module.EpochLoader.__iter__)
    result = benchmark("limit_paired").main(["--n", "70", "--epochs", "2", "--workers", "0", "--cache", str(tmp_path),
                                             "-s", "train.batch_size=16"])
    assert result["limit_steps"] == 2 * -(-result["train_images"] // 16)  # one after each of fer's batches
    for side in ("fer", "limit"):
        assert result[side]["images_per_s"] > 0 and result[side]["val_s"] > 0 and result[side]["test_s"] > 0
    assert result["fer"]["wall_s"] > result["fer"]["train_s"] + result["fer"]["val_s"]
    assert (train_module.make_loader, loader_module.EpochLoader.__iter__) == before
