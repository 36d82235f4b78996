"""`fer data pack/synth/info`: imagefolder layouts, splitting, shards and manifest, corrupt images."""

import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from data_fixtures import (decode, labels_of, pattern, read_shards, save_image, write_corrupt_files,  # noqa: E402
                           write_imagefolder)

from fer_core.data.cli import data  # noqa: E402
from fer_core.data.formats.base import safe_key  # noqa: E402
from fer_core.data.pack import make_synth_dataset, pack_dataset  # noqa: E402
from fer_core.data.shards import SplitWriter, read_manifest, write_manifest  # noqa: E402
from fer_core.errors import DataError  # noqa: E402


def pack(*args):
    result = CliRunner().invoke(data, ["pack", *map(str, args)])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result


def class_counts(manifest):
    return {split: {c: n for c, n in e["class_counts"].items() if n} for split, e in manifest["splits"].items()}


def test_imagefolder_split_folders_roundtrip(tmp_path):
    src = tmp_path / "src"
    written = write_imagefolder(src, {"train/Happy": 6, "train/sad": 4, "train/Surprised": 5,
                                      "val/happy": 2, "val/SAD": 2, "val/surprised": 1,
                                      "test/happiness": 3, "test/sadness": 2, "test/surprise": 2})
    result = pack(src, tmp_path / "out", "--format", "imagefolder", "--shard-size", "4")
    assert "happiness" in result.output and "samples" in result.output  # the summary table

    manifest = read_manifest(tmp_path / "out")
    assert manifest["source_format"] == "imagefolder"
    assert manifest["classes"] == ["happiness", "sadness", "surprise"]
    assert class_counts(manifest) == {"train": {"happiness": 6, "sadness": 4, "surprise": 5},
                                      "val": {"happiness": 2, "sadness": 2, "surprise": 1},
                                      "test": {"happiness": 3, "sadness": 2, "surprise": 2}}
    train = manifest["splits"]["train"]
    assert train["shards"] == ["train-000000.tar", "train-000001.tar", "train-000002.tar", "train-000003.tar"]
    assert train["shard_counts"] == [4, 4, 4, 3] and train["count"] == 15
    assert [sum(row) for row in train["shard_class_counts"]] == train["shard_counts"]
    assert train["bytes"] == sum((tmp_path / "out" / s).stat().st_size for s in train["shards"])
    assert manifest["image"] == {"channels": 3, "size": [24, 20]}
    assert manifest["extras"] == [] and manifest["dropped"] == {"corrupt_image": 0}

    by_key = {safe_key(str(p.relative_to(src).with_suffix(""))): p for p in written}
    shards = read_shards(tmp_path / "out")
    for split, samples in shards.items():
        for sample, label in zip(samples, labels_of(tmp_path / "out", samples)):
            path = by_key[sample["__key__"]]
            assert path.parts[-3] == split and label.startswith(path.parts[-2].lower()[:3])
            assert sample["png"] == path.read_bytes()  # bytes kept as given
            assert np.array_equal(np.asarray(decode(sample["png"])), written[path])
    assert len({s["__key__"] for ss in shards.values() for s in ss}) == 15 + 5 + 7


def test_imagefolder_train_test_carves_stratified_seeded_val(tmp_path):
    src = tmp_path / "src"
    write_imagefolder(src, {"train/angry": 10, "train/fear": 20, "test/angry": 3, "test/fearful": 3}, ext="jpg")
    pack(src, tmp_path / "a", "-f", "imagefolder")
    manifest = read_manifest(tmp_path / "a")
    assert class_counts(manifest) == {"train": {"anger": 9, "fear": 18}, "val": {"anger": 1, "fear": 2},
                                      "test": {"anger": 3, "fear": 3}}
    assert all("jpg" in s for s in read_shards(tmp_path / "a")["train"])

    # same seed: byte-identical shards and manifest; another seed: another val set
    pack(src, tmp_path / "b", "-f", "imagefolder")
    for name in ["dataset.json", *manifest["splits"]["val"]["shards"], *manifest["splits"]["train"]["shards"]]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    pack(src, tmp_path / "c", "-f", "imagefolder", "--seed", "1", "--val-split", "0.2")
    assert class_counts(read_manifest(tmp_path / "c"))["val"] == {"anger": 2, "fear": 4}
    keys = {d: sorted(s["__key__"] for s in read_shards(tmp_path / d)["val"]) for d in ("a", "c")}
    assert keys["a"] != keys["c"]


def test_imagefolder_single_folder_split_and_shuffled_shards(tmp_path):
    src = tmp_path / "src"
    write_imagefolder(src, {"Neutral": 10, "disgusted": 20, "contempt": 10})
    pack(src, tmp_path / "out", "-f", "imagefolder", "--shard-size", "8")
    manifest = read_manifest(tmp_path / "out")
    assert class_counts(manifest) == {"train": {"contempt": 8, "disgust": 16, "neutral": 8},
                                      "val": {"contempt": 1, "disgust": 2, "neutral": 1},
                                      "test": {"contempt": 1, "disgust": 2, "neutral": 1}}
    # each shard of train holds a class mix (the split is shuffled before writing)
    assert all(sum(1 for n in row if n) >= 2 for row in manifest["splits"]["train"]["shard_class_counts"])

    pack(src, tmp_path / "out2", "-f", "imagefolder", "--val-split", "0.2", "--test-split", "0.3")
    assert class_counts(read_manifest(tmp_path / "out2")) == {
        "train": {"contempt": 5, "disgust": 10, "neutral": 5},
        "val": {"contempt": 2, "disgust": 4, "neutral": 2},
        "test": {"contempt": 3, "disgust": 6, "neutral": 3}}


def test_unknown_class_names_error_or_kept(tmp_path):
    src = tmp_path / "src"
    write_imagefolder(src, {"happy": 3, "Confused": 2, "bored": 2})
    with pytest.raises(DataError) as error:
        pack(src, tmp_path / "out", "-f", "imagefolder")
    message = str(error.value)
    assert "'Confused'" in message and "'bored'" in message and "--keep-unknown-classes" in message
    assert "\n" not in message and not (tmp_path / "out").exists()

    pack(src, tmp_path / "out", "-f", "imagefolder", "--keep-unknown-classes", "--val-split", "0", "--test-split", "0")
    manifest = read_manifest(tmp_path / "out")
    assert manifest["classes"] == ["bored", "confused", "happiness"]
    assert class_counts(manifest) == {"train": {"bored": 2, "confused": 2, "happiness": 3}}


def test_corrupt_and_odd_images_are_counted_not_fatal(tmp_path):
    src = tmp_path / "src"
    write_imagefolder(src, {"happy": 4, "sad": 3})
    write_corrupt_files(src / "happy")
    grey = pattern(7, (30, 30), channels=1)
    save_image(src / "sad" / "grey.bmp", grey)  # not png/jpg: re-encoded as png
    pack(src, tmp_path / "out", "-f", "imagefolder", "--val-split", "0", "--test-split", "0")
    manifest = read_manifest(tmp_path / "out")
    assert manifest["dropped"] == {"corrupt_image": 2}
    assert class_counts(manifest) == {"train": {"happiness": 4, "sadness": 4}}
    assert manifest["image"] == {"channels": 3, "size": None}  # mixed modes and sizes
    sample = next(s for s in read_shards(tmp_path / "out")["train"] if s["__key__"] == "sad_grey")
    image = decode(sample["png"])
    assert image.mode == "L" and np.array_equal(np.asarray(image), grey)


def test_out_dir_must_be_empty_unless_overwrite(tmp_path):
    src = tmp_path / "src"
    write_imagefolder(src, {"happy": 2, "sad": 2})
    pack(src, tmp_path / "out", "-f", "imagefolder")
    with pytest.raises(DataError, match="not empty.*--overwrite"):
        pack(src, tmp_path / "out", "-f", "imagefolder")
    pack(src, tmp_path / "out", "-f", "imagefolder", "--overwrite", "--val-split", "0", "--test-split", "0")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["dataset.json", "train-000000.tar"]
    (tmp_path / "out" / "dataset.json").unlink()  # an interrupted pack is replaced without asking
    (tmp_path / "out" / "train-000007.tar").write_bytes(b"")
    pack(src, tmp_path / "out", "-f", "imagefolder", "--val-split", "0", "--test-split", "0")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["dataset.json", "train-000000.tar"]
    result = CliRunner().invoke(data, ["pack", str(src), str(tmp_path / "x"), "-f", "rafdb", "--keep-unknown-classes"])
    assert result.exit_code == 2 and "imagefolder only" in result.output


def test_info_json_and_table(tmp_path):
    src = tmp_path / "src"
    write_imagefolder(src, {"happy": 10, "sad": 10})
    pack(src, tmp_path / "out", "-f", "imagefolder", "--shard-size", "5")
    result = CliRunner().invoke(data, ["info", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["source_format"] == "imagefolder" and info["classes"] == ["happiness", "sadness"]
    assert {s: e["count"] for s, e in info["splits"].items()} == {"train": 16, "val": 2, "test": 2}
    assert info["splits"]["train"]["shards"] == [f"train-00000{i}.tar" for i in range(4)]
    assert info["splits"]["val"]["class_counts"] == {"happiness": 1, "sadness": 1}
    assert info["total"]["count"] == 20 and info["missing_shards"] == []
    assert info["total"]["bytes"] == sum(p.stat().st_size for p in (tmp_path / "out").glob("*.tar"))

    table = CliRunner().invoke(data, ["info", str(tmp_path / "out")])
    assert table.exit_code == 0 and "happiness" in table.output and "train-000003.tar" in table.output


def test_read_manifest_errors(tmp_path):
    with pytest.raises(DataError, match="has no dataset.json; create one with `fer data pack` or `fer data synth`"):
        read_manifest(tmp_path)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(DataError, match="not readable JSON"):
        read_manifest(tmp_path)
    write_manifest(tmp_path, {"format": "fer-shards", "version": 1, "classes": ["anger"], "splits": {"train": {}}})
    with pytest.raises(DataError, match="split 'train' lacks shards") as error:
        read_manifest(tmp_path)
    assert "\n" not in str(error.value)


def test_split_writer_accepts_extra_fields(tmp_path):
    latent = np.arange(6, dtype=np.float16).reshape(2, 3)
    with SplitWriter(tmp_path, "train", ["anger", "fear"], shard_size=2) as writer:
        for i in range(3):
            writer.write(f"s{i}", i % 2, {"latent.npy": latent.tobytes(), "png": b"x"})
    assert writer.entry == {"shards": ["train-000000.tar", "train-000001.tar"], "shard_counts": [2, 1], "count": 3,
                            "class_counts": {"anger": 2, "fear": 1},
                            "bytes": sum(p.stat().st_size for p in tmp_path.glob("*.tar")),
                            "shard_class_counts": [[1, 1], [1, 0]]}
    with tarfile.open(tmp_path / "train-000000.tar") as tar:
        assert tar.getnames() == ["s0.cls", "s0.latent.npy", "s0.png", "s1.cls", "s1.latent.npy", "s1.png"]
        assert tar.extractfile("s1.cls").read() == b"1"
    with pytest.raises(ValueError, match="no dots"):
        SplitWriter(tmp_path, "val", ["anger"]).write("a.b", 0, {})


def test_synth_dataset_70_15_15(tmp_path):
    out = make_synth_dataset(tmp_path / "synth", n=140, size=32, seed=0, progress=False)
    manifest = read_manifest(out)
    assert manifest["source_format"] == "synth" and len(manifest["classes"]) == 7
    assert {s: e["count"] for s, e in manifest["splits"].items()} == {"train": 98, "val": 21, "test": 21}
    assert all(n == 3 for n in manifest["splits"]["val"]["class_counts"].values())
    assert manifest["image"]["size"] == [32, 32]
    sample = read_shards(out)["test"][0]
    assert decode(sample["png"]).size == (32, 32)

    result = CliRunner().invoke(data, ["synth", str(tmp_path / "cli"), "--n", "140", "--size", "32"])
    assert result.exit_code == 0, result.output
    for name in ["dataset.json", "train-000000.tar", "test-000000.tar"]:  # same seed, same bytes
        assert (tmp_path / "cli" / name).read_bytes() == (out / name).read_bytes()


def test_recipe_synth_data_is_drawn_once_and_must_match_its_settings(tmp_path):
    from fer_core.data.sources import ensure_data

    root = tmp_path / "synth"
    spec = {"root": str(root), "synth": {"n": 21, "size": 16, "seed": 3}}
    ensure_data(spec)
    assert sum(e["count"] for e in read_manifest(root)["splits"].values()) == 21
    before = (root / "dataset.json").stat().st_mtime_ns
    ensure_data(spec)  # same settings: reused as it is
    assert (root / "dataset.json").stat().st_mtime_ns == before
    with pytest.raises(DataError, match=rf"^{root} holds synthetic faces drawn with n=21, size=16, but data.synth "
                                        rf"asks for n=28, size=24; delete {root} to draw them again"):
        ensure_data({**spec, "synth": {"n": 28, "size": 24, "seed": 3}})
    write_manifest(root, {**read_manifest(root), "source_format": "imagefolder"})
    ensure_data({**spec, "synth": {"n": 28}})  # a packed real data set there is used, not second-guessed


def test_pack_function_reports_nothing_packed(tmp_path):
    src = tmp_path / "src"
    write_corrupt_files(src / "happy")
    with pytest.raises(DataError, match="no image could be read .dropped: corrupt_image 2"):
        pack_dataset(src, tmp_path / "out", "imagefolder", progress=False)
    assert not list((tmp_path / "out").glob("*"))
