"""Valence and arousal as data (issue 19): synthetic mapping, manifest summary, `fer data info`, loader targets,
latent shards, the "no valence/arousal" check, AffectNet's not-annotated values."""

import io
import json
import math
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from data_fixtures import pattern, read_shards, save_image, write_affectnet_csv, write_imagefolder  # noqa: E402

from fer_core.data import synth  # noqa: E402
from fer_core.data.cli import data as data_cli  # noqa: E402
from fer_core.data.encode import encode_dataset  # noqa: E402
from fer_core.data.loader import _merge, _split  # noqa: E402
from fer_core.data.pack import make_synth_dataset, pack_dataset  # noqa: E402
from fer_core.data.shards import SplitWriter, read_manifest, write_manifest  # noqa: E402
from fer_core.data.sources import ensure_data, make_loader, missing_va  # noqa: E402
from fer_core.data.va import VaStats, parse_va, sparkline  # noqa: E402
from fer_core.errors import DataError  # noqa: E402
from fer_core.recipe import DEFAULTS  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")]

SIZE = 8  # tiny faces: the drawing, not the pixels, is under test


def data_cfg(root, **overrides) -> dict:
    return {**DEFAULTS["data"], "root": str(root), "image_size": SIZE, "channels": 3, **overrides}


def shard_va(root: Path) -> dict[str, dict[str, tuple[float, float] | None]]:
    """{split: {key: (valence, arousal) or None}} read from the shards."""
    return {split: {s["__key__"]: parse_va(s.get("va.json")) for s in samples}
            for split, samples in read_shards(root).items()}


@pytest.fixture(scope="module")
def synth_set(tmp_path_factory) -> Path:
    return make_synth_dataset(tmp_path_factory.mktemp("affect") / "synth", n=140, size=SIZE, seed=3, progress=False)


# ---- the synthetic faces -----------------------------------------------------------------------------------

def test_synthetic_va_follows_the_expression_and_its_intensity():
    faces = list(synth.synthesize_faces(420, size=SIZE, seed=11))
    va = np.array([f.va for f in faces])
    assert np.abs(va).max() <= 1.0
    by_expression: dict[str, list] = {}
    for face in faces:
        by_expression.setdefault(face.label, []).append(face)
    for name, group in by_expression.items():
        points = np.array([f.va for f in group])
        # intensity is uniform in 0.8..1.2 (mean 1): the mean is the table's point
        np.testing.assert_allclose(points.mean(0), synth.AFFECT[name], atol=0.04, err_msg=name)
        # what is left after intensity * point is the documented noise
        residual = points - np.array([f.intensity for f in group])[:, None] * np.array(synth.AFFECT[name])
        assert 0.035 < residual.std() < 0.065, (name, residual.std())
    # the stronger the expression shows, the further from the centre its valence/arousal
    moving = [f for f in faces if f.label != "neutral"]
    reach = [np.linalg.norm(f.va) / np.linalg.norm(synth.AFFECT[f.label]) for f in moving]
    assert np.corrcoef([f.intensity for f in moving], reach)[0, 1] > 0.75
    assert {round(f.intensity, 6) for f in moving} != {1.0} and 0.8 <= min(f.intensity for f in faces)


def test_synthetic_va_is_reproducible_per_sample_and_leaves_the_pixels_alone():
    faces = list(synth.synthesize_faces(10, size=SIZE, seed=5))
    alone = synth.draw_synth_face(synth.EXPRESSIONS[9 % 7], np.random.default_rng([5, 9]), SIZE)
    assert alone.va == faces[9].va and np.array_equal(alone.pixels, faces[9].pixels)
    pixels, _ = synth.draw_face(synth.EXPRESSIONS[9 % 7], np.random.default_rng([5, 9]), SIZE)
    assert np.array_equal(pixels, faces[9].pixels)
    assert len({f.va for f in faces}) == 10  # the noise differs per sample


# ---- manifest, `fer data info` -----------------------------------------------------------------------------

def test_synthetic_set_writes_va_and_summarises_it_per_split(synth_set):
    manifest = read_manifest(synth_set)
    assert "va" in manifest["extras"] and manifest["synth"]["version"] == synth.VERSION
    values = shard_va(synth_set)
    for split, entry in manifest["splits"].items():
        pairs = np.array(list(values[split].values()))
        assert len(pairs) == entry["count"] == entry["va"]["count"]  # every face has va.json
        for d, name in enumerate(("valence", "arousal")):
            stats = entry["va"][name]
            assert stats["min"] == pairs[:, d].min() and stats["max"] == pairs[:, d].max()
            assert stats["mean"] == pytest.approx(pairs[:, d].mean(), abs=1e-6)
            assert stats["std"] == pytest.approx(pairs[:, d].std(), abs=1e-6)
            assert stats["histogram"] == np.histogram(pairs[:, d], bins=10, range=(-1, 1))[0].tolist()


def test_va_stats_merge_like_one_pass():
    rng = np.random.default_rng(0)
    pairs = [tuple(p) for p in rng.uniform(-1, 1, (50, 2)).tolist()] + [(1.0, -1.0)]
    whole, a, b = VaStats(), VaStats(), VaStats()
    for i, pair in enumerate(pairs):
        whole.add(pair)
        (a if i % 3 else b).add(pair)
    a.merge(VaStats.from_state(json.loads(json.dumps(b.state()))))
    merged, one = a.summary(), whole.summary()
    assert merged["count"] == one["count"] == 51
    for name in ("valence", "arousal"):
        assert merged[name]["histogram"] == one[name]["histogram"]
        assert {k: v for k, v in merged[name].items() if k != "histogram"} == pytest.approx(
            {k: v for k, v in one[name].items() if k != "histogram"}, abs=1e-6)
    assert whole.summary()["valence"]["histogram"][-1] >= 1 and whole.summary()["arousal"]["histogram"][0] >= 1
    assert VaStats.from_state(VaStats().state()).summary() == {"count": 0}
    assert sparkline([0, 2, 8]) == " ▂█"


def test_data_info_shows_va_ranges_and_histograms(synth_set):
    result = CliRunner().invoke(data_cli, ["info", str(synth_set)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    train = read_manifest(synth_set)["splits"]["train"]["va"]
    assert "valence / arousal" in result.output
    lines = result.output.splitlines()
    valence = next(line for line in lines if "valence" in line and "train" in line)
    assert f"{train['valence']['min']:+.2f} to {train['valence']['max']:+.2f}" in valence
    assert f"{train['valence']['mean']:+.2f} ± {train['valence']['std']:.2f}" in valence
    assert str(train["count"]) in valence
    arousal = lines[lines.index(valence) + 1]
    assert "arousal" in arousal and sparkline(train["arousal"]["histogram"]) in arousal
    assert max(map(len, lines)) <= 80


# ---- loader targets ----------------------------------------------------------------------------------------

def check_targets(batches, expected: dict, classes: list[str], labels: dict | None = None) -> None:
    seen = 0
    for _, targets, keys in batches:
        assert set(targets) == {"label", "va"}
        assert targets["va"].dtype == torch.float32 and targets["va"].shape == (len(keys), 2)
        assert targets["label"].dtype == torch.int64 and targets["label"].shape == (len(keys),)
        for key, va, label in zip(keys, targets["va"].tolist(), targets["label"].tolist()):
            assert va == pytest.approx(expected[key], abs=1e-6), key
            if labels is not None:
                assert label == labels[key], key
            seen += 1
    assert seen == len(expected)


def test_loader_gives_dict_targets_for_images_and_latents(synth_set, tmp_path, fresh_plugin_host):
    manifest = read_manifest(synth_set)
    classes = manifest["classes"]
    expected = shard_va(synth_set)["val"]
    labels = {s["__key__"]: int(s["cls"]) for s in read_shards(synth_set)["val"]}
    cfg = data_cfg(synth_set)
    images = list(make_loader(cfg, "val", classes, 8, train=False, seed=0, va=True))
    check_targets(images, expected, classes, labels)
    plain = list(make_loader(cfg, "val", classes, 8, train=False, seed=0))  # va=False: the class ids as before
    assert all(isinstance(t, torch.Tensor) and t.dtype == torch.int64 for _, t, _ in plain)
    assert torch.equal(torch.cat([t for _, t, _ in plain]), torch.cat([t["label"] for _, t, _ in images]))
    assert all(torch.equal(a, b) for (a, _, _), (b, _, _) in zip(plain, images))

    out = tmp_path / "latents"
    encode_dataset(synth_set, out, {"name": "patches", "patch_size": 4}, image_size=SIZE, batch_size=16,
                   workers=0, progress=False)
    latent_manifest = read_manifest(out)
    assert "va" in latent_manifest["extras"]
    for split, entry in manifest["splits"].items():
        assert latent_manifest["splits"][split]["va"] == entry["va"]
    assert missing_va(data_cfg(out)) is None
    latents = list(make_loader(data_cfg(out), "val", classes, 8, train=False, seed=0, latent=True, va=True))
    check_targets(latents, expected, classes, labels)
    assert latents[0][0].shape[1:] == (4, 48)


def write_va_set(root: Path, n: int, shard_size: int, missing=(), not_annotated=()) -> dict:
    """A train split whose sample i has valence i/n - 0.5 and arousal 0.5 - i/n (key -> va)."""
    classes = ["anger", "happiness", "neutral"]
    expected = {}
    with SplitWriter(root, "train", classes, shard_size) as writer:
        for i in range(n):
            key, va = f"k{i:04d}", (round(i / n - 0.5, 4), round(0.5 - i / n, 4))
            fields = {"png": save_png(pattern(i, (SIZE, SIZE)))}
            if i in not_annotated:
                fields["va.json"] = json.dumps({"valence": -2, "arousal": -2}).encode()
            elif i not in missing:
                fields["va.json"] = json.dumps({"valence": va[0], "arousal": va[1]}).encode()
                expected[key] = va
            writer.write(key, i % 3, fields)
    write_manifest(root, {"format": "fer-shards", "version": 1, "source_format": "test", "classes": classes,
                          "image": {"channels": 3, "size": [SIZE, SIZE]}, "splits": {"train": writer.entry},
                          "extras": ["va"], "dropped": {}, "seed": 0, "created_by": "test"})
    return expected


def save_png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("soft", [False, True])
def test_worker_batches_merged_and_split_keep_va_with_its_key(tmp_path, soft):
    expected = write_va_set(tmp_path / "set", 61, shard_size=5, missing={7}, not_annotated={30})
    loader = make_loader(data_cfg(tmp_path / "set", soft_labels=soft), "train", ["anger", "happiness", "neutral"],
                         8, train=True, seed=1, num_workers=2, va=True)
    loader.set_epoch(0)
    batches = list(loader)
    assert len(batches) == len(loader)
    delivered = Counter()
    for _, targets, keys in batches:
        assert targets["va"].shape == (len(keys), 2)
        label = targets["label"]
        assert label.shape == ((len(keys), 3) if soft else (len(keys),))
        for key, va, y in zip(keys, targets["va"].tolist(), label.tolist()):
            assert va == pytest.approx(expected[key], abs=1e-6), key
            assert (y.index(1.0) if soft else y) == int(key[1:]) % 3
            delivered[key] += 1
    assert set(delivered) == set(expected)  # the sample without va.json and the -2 one are left out...
    assert sorted(c.split(":")[-1].split(" ")[0] for c in loader.corrupt) == ["k0007", "k0030"]  # ...as corrupt


def test_merge_and_split_of_dict_targets():
    def batch(first: int, n: int) -> dict:
        ids = torch.arange(first, first + n)
        return {"inputs": ids.float()[:, None], "targets": {"label": ids, "va": torch.stack([ids / 100, -ids / 100], 1)},
                "keys": [f"k{i}" for i in ids.tolist()], "corrupt": []}

    merged = _merge([batch(0, 3), None, batch(3, 4)])
    head, rest = _split(merged, 5)
    assert head["keys"] == [f"k{i}" for i in range(5)] and rest["keys"] == ["k5", "k6"]
    for part, first in ((head, 0), (rest, 5)):
        ids = torch.arange(first, first + len(part["keys"]))
        assert torch.equal(part["targets"]["label"], ids)
        assert torch.allclose(part["targets"]["va"][:, 0], ids / 100)
        assert torch.equal(part["inputs"][:, 0], ids.float())


# ---- data without valence/arousal --------------------------------------------------------------------------

def test_missing_va_names_the_data_set_that_lacks_it(tmp_path, synth_set):
    write_imagefolder(tmp_path / "src", {"train/happy": 4, "train/sad": 4, "test/happy": 2, "test/sad": 2})
    folder = tmp_path / "folder"
    pack_dataset(tmp_path / "src", folder, "imagefolder", progress=False)
    reason = missing_va(data_cfg(folder))
    assert reason.startswith(f"{folder} has no valence/arousal (its dataset.json lists no 'va')")
    assert "affect and expression+affect" in reason and "\n" not in reason
    with pytest.raises(DataError, match="has no valence/arousal"):
        make_loader(data_cfg(folder), "train", ["happiness", "sadness"], 4, train=True, seed=0, va=True)
    assert len(list(make_loader(data_cfg(folder), "train", ["happiness", "sadness"], 4, train=True, seed=0)))

    assert missing_va(data_cfg(synth_set)) is None
    assert missing_va(data_cfg(tmp_path / "not-drawn-yet", synth={"n": 70, "size": SIZE})) is None
    mixture = data_cfg(synth_set, sources=[{"root": str(synth_set)}, {"root": str(folder), "weight": 0.5}])
    assert missing_va(mixture).startswith(f"{folder} has no valence/arousal")
    assert missing_va({**mixture, "sources": mixture["sources"][:1]}) is None


def test_synthetic_set_of_an_older_version_is_drawn_again(tmp_path):
    root = make_synth_dataset(tmp_path / "old", n=70, size=SIZE, seed=2, progress=False)
    manifest = read_manifest(root)
    manifest["extras"] = [e for e in manifest["extras"] if e != "va"]
    del manifest["synth"]  # as drawn before valence/arousal existed
    write_manifest(root, manifest)
    reason = missing_va(data_cfg(root))
    assert f"fer data synth {root} --n 70 --size {SIZE} --seed 2 --overwrite" in reason
    cfg = data_cfg(root, synth={"n": 70, "size": SIZE, "seed": 2})
    assert missing_va(cfg) is None  # `fer run` draws it again
    ensure_data(cfg)
    again = read_manifest(root)
    assert "va" in again["extras"] and again["synth"]["version"] == synth.VERSION
    assert again["splits"]["train"]["va"]["count"] == again["splits"]["train"]["count"]


def test_affectnet_keeps_va_and_drops_not_annotated_values(tmp_path):
    images = tmp_path / "Manually_Annotated_Images"
    for i in range(6):
        save_image(images / f"{i}" / f"f{i}.png", pattern(i, (40, 40)))
    box = (0, 0, 40, 40)
    write_affectnet_csv(tmp_path / "training.csv", [
        ("0/f0.png", box, 1, 0.5, -0.25), ("1/f1.png", box, 1, 0.9, 0.1), ("2/f2.png", box, 2, -0.6, -0.3),
        ("3/f3.png", box, 6, -2, -2),  # a kept class whose valence/arousal were not annotated
        ("4/f4.png", box, 2, 0.2, 1.5),  # out of range: not a target either
    ])
    write_affectnet_csv(tmp_path / "validation.csv", [("5/f5.png", box, 0, 0.0, 0.1)])
    manifest = pack_dataset(tmp_path, tmp_path / "out", "affectnet", val_split=0, progress=False)
    assert manifest["extras"] == ["va"]
    values = {key: va for split in shard_va(tmp_path / "out").values() for key, va in split.items()}
    assert values == {"0_f0": (0.5, -0.25), "1_f1": (0.9, 0.1), "2_f2": (-0.6, -0.3), "3_f3": None, "4_f4": None,
                      "5_f5": (0.0, 0.1)}
    train = manifest["splits"]["train"]
    assert train["count"] == 5 and train["va"]["count"] == 3
    assert train["va"]["valence"]["max"] == 0.9 and train["va"]["arousal"]["min"] == -0.3
    assert math.isclose(train["va"]["valence"]["mean"], (0.5 + 0.9 - 0.6) / 3, abs_tol=1e-6)
    assert manifest["splits"]["test"]["va"]["count"] == 1
    assert missing_va(data_cfg(tmp_path / "out")) is None
