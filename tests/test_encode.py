"""`fer data encode` and cached latents: shards, manifest, resuming, matching, and a run that reads them."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image
from torch import nn

import fer_core.data.encode as encode_module
from fer_core.data.cli import data as data_cli
from fer_core.data.encode import PROGRESS_NAME, encode_dataset
from fer_core.data.formats.base import SourceSample, encode_png
from fer_core.data.latents import default_latent_dir, latent_cache_key
from fer_core.data.loader import _read_shard, decode_image
from fer_core.data.pack import make_synth_dataset, write_dataset
from fer_core.data.shards import read_manifest
from fer_core.data.sources import cached_latents, find_latents
from fer_core.errors import DataError, FerError
from fer_core.plugins import get_registry
from fer_core.recipe import load_recipe
from fer_core.registry import Component
from fer_core.train import run

SEEN = Counter()  # images through the test encoder's forward


class TinyEncoder(nn.Module):
    """A fast stand-in for pSp: 4x4 average pooling and a linear map to [tokens, dim]."""

    trainable = False
    cacheable = True

    def __init__(self, image_size: int, tokens: int, dim: int, in_chans: int):
        super().__init__()
        self.input_size, self.latent_shape = image_size, (tokens, dim)
        self.proj = nn.Linear(in_chans * 16, tokens * dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        SEEN["images"] += len(images)
        return self.proj(F.adaptive_avg_pool2d(images, 4).flatten(1)).view(len(images), *self.latent_shape)


def build_tiny(checkpoint: str | None = None, tokens: int = 4, dim: int = 8, image_size: int = 48,
               in_chans: int = 3) -> TinyEncoder:
    encoder = TinyEncoder(image_size, tokens, dim, in_chans)
    if checkpoint is not None:
        encoder.load_state_dict(torch.load(checkpoint, weights_only=True))
    return encoder


@pytest.fixture(autouse=True)
def tiny_encoder(fresh_plugin_host):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    get_registry().add(Component("encoder", "tiny_test", build_tiny, plugin="test"))
    SEEN.clear()
    yield
    torch.set_num_threads(threads)


def tiny_checkpoint(path: Path, seed: int = 0) -> str:
    torch.manual_seed(seed)
    torch.save(build_tiny().state_dict(), path)
    return str(path)


def write_faces(root: Path, n: int, shard_size: int = 4, size: int = 48) -> Path:
    """n random RGB images with votes, all in train, shards of ``shard_size``."""
    rng = np.random.default_rng(0)
    classes = ["anger", "happiness", "neutral"]
    samples = []
    for i in range(n):
        image = encode_png(Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)))
        votes = json.dumps({classes[i % 3]: 7, "neutral": 3}).encode()
        samples.append(SourceSample(f"face-{i:03d}", classes[i % 3], "train", lambda image=image: image,
                                    {"votes.json": votes}))
    write_dataset(root, {"train": samples}, source_format="test", extras=["votes"], dropped=Counter(), seed=0,
                  shard_size=shard_size, progress=False)
    return root


def shard_samples(root: Path) -> list[dict]:
    manifest = read_manifest(root)
    return [s for e in manifest["splits"].values() for name in e["shards"] for s in _read_shard(root / name)]


@pytest.fixture
def faces(tmp_path) -> Path:
    return write_faces(tmp_path / "faces", 11, shard_size=4)  # shards of 4, 4, 3


@pytest.mark.parametrize("workers", [0, 1])
def test_latent_shards_keep_samples_order_and_extras(tmp_path, faces, workers):
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    manifest = encode_dataset(faces, tmp_path / "out", {"name": "tiny_test", "checkpoint": ckpt}, batch_size=3,
                              workers=workers, progress=False)
    source, written = shard_samples(faces), shard_samples(tmp_path / "out")
    assert [s["__key__"] for s in written] == [s["__key__"] for s in source]
    assert [s["cls"] for s in written] == [s["cls"] for s in source]
    assert [s["votes.json"] for s in written] == [s["votes.json"] for s in source]
    assert not any("png" in s for s in written)
    encoder = build_tiny(ckpt).eval()
    for sample in (written[0], written[-1]):
        latent = np.load(io.BytesIO(sample["latent.npy"]))
        assert latent.dtype == np.float16 and latent.shape == (4, 8)
        image = next(s for s in source if s["__key__"] == sample["__key__"])["png"]
        with torch.no_grad():
            expected = encoder(decode_image(image, 48, 3)[None])[0]
        torch.testing.assert_close(torch.from_numpy(latent.astype(np.float32)), expected, atol=2e-3, rtol=2e-3)

    on_disk = read_manifest(tmp_path / "out")
    assert on_disk == {k: v for k, v in manifest.items() if k != "latent"} | {
        "latent": {k: v for k, v in manifest["latent"].items() if k != "run"}}
    src = read_manifest(faces)
    assert on_disk["classes"] == src["classes"] and on_disk["extras"] == ["votes"]
    for key in ("shards", "shard_counts", "count", "class_counts", "shard_class_counts"):
        assert on_disk["splits"]["train"][key] == src["splits"]["train"][key], key
    latent = on_disk["latent"]
    assert latent["encoder"] == "tiny_test" and latent["params"] == {"tokens": 4, "dim": 8}
    assert latent["checkpoint_sha256"] == hashlib.sha256(Path(ckpt).read_bytes()).hexdigest()
    assert latent["shape"] == [4, 8] and latent["dtype"] == "float16" and latent["source"] == str(faces)
    assert latent["input"] == {"image_size": 48, "channels": 3} and latent["fer_core"]
    assert not (tmp_path / "out" / PROGRESS_NAME).exists()


def test_interrupted_encoding_resumes_with_the_unfinished_shards(tmp_path, faces, monkeypatch):
    spec = {"name": "tiny_test", "checkpoint": tiny_checkpoint(tmp_path / "tiny.pt")}
    out = tmp_path / "out"
    record = encode_module._record

    def interrupt_after_first(out_dir, state, name, stats):
        record(out_dir, state, name, stats)
        raise KeyboardInterrupt

    monkeypatch.setattr(encode_module, "_record", interrupt_after_first)
    with pytest.raises(KeyboardInterrupt):
        encode_dataset(faces, out, spec, batch_size=3, workers=0, progress=False)
    monkeypatch.setattr(encode_module, "_record", record)
    assert sorted(p.name for p in out.iterdir()) == [PROGRESS_NAME, "train-000000.tar"]  # no half shard
    first = (out / "train-000000.tar").stat().st_mtime_ns

    SEEN.clear()
    manifest = encode_dataset(faces, out, spec, batch_size=3, workers=0, progress=False)
    assert SEEN["images"] == 7 and manifest["latent"]["run"]["skipped_shards"] == 1  # shards 2 and 3 only
    assert (out / "train-000000.tar").stat().st_mtime_ns == first
    fresh = encode_dataset(faces, tmp_path / "fresh", spec, batch_size=3, workers=0, progress=False)
    assert shard_samples(out) == shard_samples(tmp_path / "fresh")
    assert read_manifest(out)["splits"] == fresh["splits"]

    SEEN.clear()
    again = encode_dataset(faces, out, spec, workers=0, progress=False)
    assert SEEN["images"] == 0 and again["latent"]["run"]["images"] == 0


def test_out_dir_of_another_encoder_needs_overwrite(tmp_path, faces):
    out = tmp_path / "out"
    encode_dataset(faces, out, {"name": "tiny_test", "checkpoint": tiny_checkpoint(tmp_path / "a.pt", 0)},
                   workers=0, progress=False)
    other = {"name": "tiny_test", "checkpoint": tiny_checkpoint(tmp_path / "b.pt", 1)}
    with pytest.raises(DataError, match="already holds latents of tiny_test .*--overwrite"):
        encode_dataset(faces, out, other, workers=0, progress=False)
    manifest = encode_dataset(faces, out, other, workers=0, progress=False, overwrite=True)
    assert manifest["latent"]["checkpoint_sha256"] == hashlib.sha256((tmp_path / "b.pt").read_bytes()).hexdigest()
    with pytest.raises(DataError, match="holds latents already"):
        encode_dataset(out, tmp_path / "again", other, workers=0, progress=False)


def test_random_weights_are_refused_unless_allowed(tmp_path, faces):
    with pytest.raises(FerError, match="random weights .*--checkpoint FILE.*--allow-random") as info:
        encode_dataset(faces, tmp_path / "out", {"name": "tiny_test"}, progress=False)
    assert "\n" not in str(info.value)
    manifest = encode_dataset(faces, tmp_path / "out", {"name": "tiny_test"}, workers=0, progress=False,
                              allow_random=True, seed=7)
    assert manifest["latent"]["checkpoint_sha256"] == "random-seed-7"
    with pytest.raises(FerError, match="passes images through"):
        encode_dataset(faces, tmp_path / "x", {"name": "identity"}, progress=False)


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    from fer_core.data.formats.base import EncodedImage

    good = encode_png(Image.fromarray(np.full((48, 48, 3), 128, np.uint8)))
    bad = EncodedImage(b"not a png", "png", 3, (48, 48))
    samples = [SourceSample(f"s{i}", ["anger", "fear"][i % 2], "train", lambda i=i: bad if i == 2 else good)
               for i in range(5)]
    root = tmp_path / "src"
    write_dataset(root, {"train": samples}, source_format="test", extras=[], dropped=Counter(), seed=0,
                  shard_size=3, progress=False)
    spec = {"name": "tiny_test", "checkpoint": tiny_checkpoint(tmp_path / "a.pt")}
    manifest = encode_dataset(root, tmp_path / "out", spec, workers=0, progress=False)
    entry = manifest["splits"]["train"]
    assert entry["shard_counts"] == [2, 2] and entry["count"] == 4 and entry["class_counts"] == {"anger": 2, "fear": 2}
    assert manifest["dropped"]["corrupt_image"] == 1
    assert [s["__key__"] for s in shard_samples(tmp_path / "out")] == ["s0", "s1", "s3", "s4"]


def test_cache_key_ignores_where_the_checkpoint_lies_and_spelled_out_defaults(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    moved = shutil.copy(ckpt, tmp_path / "moved.pt")
    registry = get_registry()
    a = latent_cache_key({"name": "tiny_test", "checkpoint": ckpt}, 48, 3, registry=registry)
    b = latent_cache_key({"name": "tiny_test", "checkpoint": moved, "dim": 8, "freeze": True}, 48, 3,
                         registry=registry)
    assert a == b and default_latent_dir("d", a) == default_latent_dir("d", b)
    assert latent_cache_key({"name": "tiny_test", "checkpoint": ckpt}, 64, 3, registry=registry) != a
    assert latent_cache_key({"name": "tiny_test", "checkpoint": ckpt, "dim": 4}, 48, 3, registry=registry) != a


def test_find_latents_matches_encoder_checkpoint_and_source(tmp_path, faces):
    spec = {"name": "tiny_test", "checkpoint": tiny_checkpoint(tmp_path / "a.pt", 0)}
    other = {"name": "tiny_test", "checkpoint": tiny_checkpoint(tmp_path / "b.pt", 1)}
    data = {"root": str(faces), "image_size": 48, "channels": 3}
    assert find_latents(data, spec) is None
    default = encode_dataset(faces, None, spec, workers=0, progress=False)["latent"]["run"]["out_dir"]
    assert find_latents(data, spec) == Path(default) == default_latent_dir(faces, latent_cache_key(
        spec, 48, 3, registry=get_registry()))
    assert find_latents(data, other) is None
    assert find_latents({**data, "image_size": 64}, spec) is None

    # a latent directory as data.root must match
    assert find_latents({**data, "root": default}, spec) == Path(default)
    with pytest.raises(DataError, match=r"holds latents of tiny_test .*checkpoint [0-9a-f]{12}.* asks for "
                                        r"tiny_test .*different checkpoint") as info:
        find_latents({**data, "root": default}, other)
    assert "\n" not in str(info.value)

    # re-packing the source makes the cache stale
    write_faces(faces, 10, shard_size=4)
    assert find_latents(data, spec) is None


def test_cached_latents_only_for_frozen_cacheable_encoders(tmp_path, faces):
    spec = {"name": "tiny_test", "checkpoint": tiny_checkpoint(tmp_path / "a.pt")}
    data = {"root": str(faces), "image_size": 48, "channels": 3, "cache_latents": True, "num_workers": 0}
    encoder = build_tiny(spec["checkpoint"])
    assert cached_latents(data, spec, encoder, frozen=False) is None
    assert cached_latents(data, {"name": "tiny_test"}, build_tiny(), frozen=True) is None  # random weights
    from fer_core.builtin.augments import hflip

    assert cached_latents(data, spec, encoder, frozen=True, sample_augments=[hflip()]) is None
    assert SEEN["images"] == 0
    roots = cached_latents(data, spec, encoder, frozen=True)
    assert SEEN["images"] == 11 and roots == [(find_latents(data, spec), 1.0)]
    latent_root = {**data, "root": str(roots[0][0])}
    with pytest.raises(DataError, match="holds cached latents, not images, and the recipe trains its encoder"):
        cached_latents(latent_root, spec, encoder, frozen=False)


def test_cli_encode_defaults_to_the_cache_location(tmp_path, faces):
    ckpt = tiny_checkpoint(tmp_path / "a.pt")
    result = CliRunner().invoke(data_cli, ["encode", str(faces), "--encoder", "tiny_test", "--checkpoint", ckpt,
                                           "-p", "dim=8", "--batch-size", "4", "--device", "cpu", "--workers", "0"])
    assert result.exit_code == 0, result.output
    folder = find_latents({"root": str(faces), "image_size": 48, "channels": 3},
                          {"name": "tiny_test", "checkpoint": ckpt})
    assert folder is not None and str(folder) in result.output.replace("\n", "")
    assert "11 latents" in result.output and f"data.root: {faces}" in result.output
    info = CliRunner().invoke(data_cli, ["info", str(folder)])
    assert info.exit_code == 0 and "latents of tiny_test" in info.output
    SEEN.clear()
    again = CliRunner().invoke(data_cli, ["encode", str(faces), "-e", "tiny_test", "-c", ckpt, "--workers", "0"])
    assert again.exit_code == 0 and "nothing to encode" in again.output and SEEN["images"] == 0


RECIPE = """
name: cached
seed: 0
data: {{root: {root}, image_size: 48, channels: 3, num_workers: 0, shuffle_buffer: 64, cache_latents: {cache}}}
model:
  encoder: {{name: tiny_test, checkpoint: {ckpt}}}
  backbone: {{name: latent_vit, embed_dim: 32, depth: 1, heads: 2}}
  head: {{name: linear}}
optim: {{name: adamw, lr: 3.0e-3}}
train: {{epochs: 2, batch_size: 16}}
eval: {{batch_size: 32}}
"""


def test_run_encodes_once_then_trains_on_cached_latents(tmp_path, capsys):
    root = make_synth_dataset(tmp_path / "synth", n=56, size=48, seed=0, progress=False, shard_size=16)
    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    path = tmp_path / "cached.yaml"
    path.write_text(RECIPE.format(root=root, cache="true", ckpt=ckpt))
    recipe = load_recipe(path, registry=get_registry())

    run_dir = run(recipe, out=str(tmp_path / "runs"))
    assert SEEN["images"] == 56  # every image encoded once, for the cache; none while training or testing
    summary = json.loads((run_dir / "summary.json").read_text())
    assert 0 <= summary["test"]["accuracy"] <= 1 and summary["inference_input"] == "latents"
    assert "reading cached latents from" in capsys.readouterr().out

    SEEN.clear()  # a later run finds the cache even without cache_latents
    path.write_text(RECIPE.format(root=root, cache="false", ckpt=ckpt))
    run(load_recipe(path, registry=get_registry()), out=str(tmp_path / "runs"))
    assert SEEN["images"] == 0


# -- the real pSp encoder -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def psp_checkpoint(tmp_path_factory):
    pytest.importorskip("fer_psp")
    from fer_psp.checkpoint import save_official_checkpoint
    from fer_psp.encoder import GradualStyleEncoder

    torch.manual_seed(0)
    opts = {"encoder_type": "GradualStyleEncoder", "input_nc": 3, "output_size": 1024}
    path = tmp_path_factory.mktemp("psp") / "psp_ffhq_encode.pt"
    save_official_checkpoint(path, GradualStyleEncoder().state_dict(), torch.randn(18, 512) * 0.1, opts)
    yield str(path)
    path.unlink()


def test_psp_latents_of_a_few_faces(tmp_path, psp_checkpoint):
    faces = write_faces(tmp_path / "faces", 3, shard_size=2)
    spec = {"name": "psp", "checkpoint": psp_checkpoint}
    manifest = encode_dataset(faces, None, spec, batch_size=2, workers=0, progress=False)
    latent = manifest["latent"]
    assert latent["shape"] == [18, 512] and latent["params"] == {}
    assert latent["checkpoint_sha256"] == hashlib.sha256(Path(psp_checkpoint).read_bytes()).hexdigest()
    written = shard_samples(Path(latent["run"]["out_dir"]))
    assert [s["__key__"] for s in written] == ["face-000", "face-001", "face-002"]
    codes = np.stack([np.load(io.BytesIO(s["latent.npy"])) for s in written])
    assert codes.dtype == np.float16 and codes.shape == (3, 18, 512) and np.isfinite(codes).all()
    assert find_latents({"root": str(faces), "image_size": 48, "channels": 3}, spec) == Path(latent["run"]["out_dir"])
