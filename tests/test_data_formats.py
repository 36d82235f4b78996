"""`fer data pack` from the downloaded formats: FER2013 csv, FER+, RAF-DB, AffectNet."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from data_fixtures import (decode, fer_pixels, labels_of, pattern, read_shards, save_image,  # noqa: E402
                           write_affectnet_csv, write_fer2013_csv, write_ferplus_csv)

from fer_core.data.cli import data  # noqa: E402
from fer_core.data.formats.ferplus import majority  # noqa: E402
from fer_core.data.shards import read_manifest  # noqa: E402
from fer_core.errors import DataError  # noqa: E402

FER_EMOTIONS = ["anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral"]


def pack(*args):
    result = CliRunner().invoke(data, ["pack", *map(str, args)])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result


def class_counts(manifest):
    return {split: {c: n for c, n in e["class_counts"].items() if n} for split, e in manifest["splits"].items()}


def test_fer2013_csv(tmp_path):
    rows = []
    for emotion in range(7):
        for usage in ["Training"] * 3 + ["PublicTest", "PrivateTest"]:
            rows.append((emotion, fer_pixels(len(rows)), usage))
    rows.append((3, "1 2 3", "Training"))  # not 48x48: a corrupt image
    rows.append((9, fer_pixels(99), "Training"))  # no such emotion
    csv_path = write_fer2013_csv(tmp_path / "dl" / "fer2013.csv", rows)
    pack(csv_path, tmp_path / "out", "--format", "fer2013-csv", "--shard-size", "10")

    manifest = read_manifest(tmp_path / "out")
    assert manifest["classes"] == sorted(FER_EMOTIONS)
    assert manifest["image"] == {"channels": 1, "size": [48, 48]}
    assert class_counts(manifest) == {"train": {c: 3 for c in sorted(FER_EMOTIONS)},
                                      "val": {c: 1 for c in sorted(FER_EMOTIONS)},
                                      "test": {c: 1 for c in sorted(FER_EMOTIONS)}}
    assert manifest["dropped"] == {"bad_label": 1, "corrupt_image": 1}

    # read back with webdataset, as the loader does
    import webdataset as wds

    urls = [str(tmp_path / "out" / s) for s in manifest["splits"]["train"]["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    assert len(samples) == 21
    for sample in samples:
        row = int(sample["__key__"][3:])
        image = decode(sample["png"])
        assert image.mode == "L" and np.array_equal(np.asarray(image), rows[row][1])
        assert manifest["classes"][int(sample["cls"])] == FER_EMOTIONS[rows[row][0]]

    pack(tmp_path / "dl", tmp_path / "out2", "-f", "fer2013-csv")  # the folder works too
    assert read_manifest(tmp_path / "out2")["splits"]["val"]["count"] == 7


FERPLUS_ROWS = [  # Usage, Image name, votes: neutral happiness surprise sadness anger disgust fear contempt unknown NF
    ("Training", "fer0000000.png", [6, 4, 0, 0, 0, 0, 0, 0, 0, 0]),   # neutral
    ("Training", "", [10, 0, 0, 0, 0, 0, 0, 0, 0, 0]),                # no image name: dropped
    ("Training", "fer0000002.png", [0, 5, 5, 0, 0, 0, 0, 0, 0, 0]),   # tie
    ("PublicTest", "fer0000003.png", [4, 0, 0, 0, 0, 0, 0, 0, 6, 0]),  # unknown wins
    ("PrivateTest", "fer0000004.png", [0, 0, 0, 0, 0, 0, 0, 0, 0, 10]),  # not a face
    ("PrivateTest", "fer0000005.png", [0, 0, 0, 0, 3, 0, 0, 7, 0, 0]),  # contempt
    ("Training", "fer0000006.png", [0, 9, 0, 0, 0, 0, 0, 0, 0, 1]),   # happiness
    ("PublicTest", "fer0000007.png", [0, 0, 0, 4, 0, 0, 3, 0, 3, 0]),  # sadness
]


def test_ferplus_majority_vote_with_votes(tmp_path):
    write_fer2013_csv(tmp_path / "fer2013.csv", [(0, fer_pixels(i), r[0]) for i, r in enumerate(FERPLUS_ROWS)])
    write_ferplus_csv(tmp_path / "fer2013new.csv", FERPLUS_ROWS)
    pack(tmp_path, tmp_path / "out", "-f", "ferplus")

    manifest = read_manifest(tmp_path / "out")
    assert manifest["classes"] == ["contempt", "happiness", "neutral", "sadness"]
    assert class_counts(manifest) == {"train": {"happiness": 1, "neutral": 1}, "val": {"sadness": 1},
                                      "test": {"contempt": 1}}
    assert manifest["dropped"] == {"corrupt_image": 0, "no_image_name": 1, "tie": 1, "unknown_or_nf": 2}
    assert manifest["extras"] == ["votes"]
    shards = read_shards(tmp_path / "out")
    train = {s["__key__"]: s for s in shards["train"]}
    assert sorted(train) == ["fer0000000", "fer0000006"]
    assert json.loads(train["fer0000000"]["votes.json"]) == {
        "anger": 0, "contempt": 0, "disgust": 0, "fear": 0, "happiness": 4, "neutral": 6, "sadness": 0, "surprise": 0}
    assert np.array_equal(np.asarray(decode(train["fer0000006"]["png"])), fer_pixels(6))
    assert labels_of(tmp_path / "out", shards["test"]) == ["contempt"]
    assert majority({"a": 2, "b": 2, "c": 1}) is None and majority({"a": 1, "b": 2}) == "b"


def test_ferplus_rows_must_align(tmp_path):
    write_fer2013_csv(tmp_path / "fer2013.csv", [(0, fer_pixels(0), "Training")])
    write_ferplus_csv(tmp_path / "fer2013new.csv", FERPLUS_ROWS)
    with pytest.raises(DataError, match="row-aligned"):
        pack(tmp_path, tmp_path / "out", "-f", "ferplus")


def write_rafdb(root: Path, aligned: bool) -> dict[str, Path]:
    labels = [f"train_{i:05d}.jpg {4 if i <= 10 else 7}" for i in range(1, 21)]
    labels += [f"test_{i:04d}.jpg {1 if i <= 2 else 6}" for i in range(1, 5)]
    (root / "EmoLabel").mkdir(parents=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(labels) + "\n")
    paths = {}
    for i, line in enumerate(labels):
        stem = line.split()[0][:-4]
        if stem == "train_00020":
            continue  # listed, but the image is missing
        save_image(root / "Image" / "original" / f"{stem}.jpg", pattern(1000 + i))
        if aligned:
            paths[stem] = save_image(root / "Image" / "aligned" / f"{stem}_aligned.jpg", pattern(i, (100, 100)))
        else:
            paths[stem] = root / "Image" / "original" / f"{stem}.jpg"
    return paths


@pytest.mark.parametrize("aligned", [True, False])
def test_rafdb(tmp_path, aligned):
    paths = write_rafdb(tmp_path / "basic", aligned)
    pack(tmp_path / "basic", tmp_path / "out", "-f", "rafdb")
    manifest = read_manifest(tmp_path / "out")
    assert class_counts(manifest) == {"train": {"happiness": 9, "neutral": 8}, "val": {"happiness": 1, "neutral": 1},
                                      "test": {"anger": 2, "surprise": 2}}
    assert manifest["dropped"] == {"corrupt_image": 0, "missing_image": 1}
    assert manifest["image"]["size"] == ([100, 100] if aligned else [24, 20])
    for split, samples in read_shards(tmp_path / "out").items():
        for sample, label in zip(samples, labels_of(tmp_path / "out", samples)):
            assert sample["jpg"] == paths[sample["__key__"]].read_bytes()
            number = int(sample["__key__"].split("_")[1])
            if split == "test":
                assert label == ("surprise" if number <= 2 else "anger")
            else:
                assert label == ("happiness" if number <= 10 else "neutral")


def test_affectnet_crops_and_drops(tmp_path):
    images = tmp_path / "Manually_Annotated_Images"
    box = (10, 5, 30, 40)  # x, y, w, h
    scene = np.zeros((60, 80, 3), np.uint8)
    scene[..., 2] = 220
    scene[5:45, 10:40] = (200, 30, 30)
    for i in range(5):
        save_image(images / "1" / f"a{i}.jpg", scene)
    face = pattern(5, (60, 80))
    save_image(images / "2" / "b.png", face)
    save_image(images / "3" / "c.jpg", scene)
    write_affectnet_csv(tmp_path / "training.csv", [
        *[(f"1/a{i}.jpg", box, 1, 0.5, -0.25) for i in range(5)],
        ("2/b.png", (50, 30, 40, 40), 6, -0.7, 0.8),  # runs over the edge: clipped to 30x30
        ("3/c.jpg", box, 8, -2, -2), ("3/c.jpg", box, 9, -2, -2), ("3/c.jpg", box, 10, -2, -2),
    ])
    write_affectnet_csv(tmp_path / "validation.csv", [("3/c.jpg", box, 7, 0.1, 0.2),
                                                      ("9/missing.jpg", box, 0, 0.0, 0.0)])
    pack(tmp_path, tmp_path / "out", "-f", "affectnet")

    manifest = read_manifest(tmp_path / "out")
    assert class_counts(manifest) == {"train": {"anger": 1, "happiness": 4}, "val": {"happiness": 1},
                                      "test": {"contempt": 1}}
    assert manifest["dropped"] == {"corrupt_image": 0, "missing_image": 1, "no_face": 1, "none": 1, "uncertain": 1}
    assert manifest["extras"] == ["va"] and manifest["image"] == {"channels": 3, "size": None}
    shards = read_shards(tmp_path / "out")
    train = {s["__key__"]: s for s in shards["train"]}
    crop = np.asarray(decode(train["2_b"]["png"]))
    assert np.array_equal(crop, face[30:60, 50:80])
    assert json.loads(train["2_b"]["va.json"]) == {"valence": -0.7, "arousal": 0.8}
    happy = next(s for s in [*shards["train"], *shards["val"]] if s["__key__"].startswith("1_a"))
    image = decode(happy["jpg"])
    assert image.size == (30, 40)
    inner = np.asarray(image, np.float32)[4:-4, 4:-4]  # away from the JPEG edge blur
    assert np.abs(inner.mean((0, 1)) - (200, 30, 30)).max() < 8
    assert json.loads(happy["va.json"]) == {"valence": 0.5, "arousal": -0.25}


@pytest.mark.parametrize("images", ["Manually_Annotated_Images", "Manually_Annotated/Manually_Annotated_Images"])
def test_affectnet_release_layout_as_unpacked(tmp_path, images):
    """The file lists in Manually_Annotated_file_lists/ beside the images folder; valence/arousal kept."""
    source = tmp_path / "AffectNet"
    for i, expression in enumerate([1, 1, 1, 2, 2, 6]):
        save_image(source / images / str(i) / f"f{i}.png", pattern(i, (40, 40)))
    lists = source / "Manually_Annotated_file_lists"
    lists.mkdir()
    write_affectnet_csv(lists / "training.csv", [(f"{i}/f{i}.png", (0, 0, 40, 40), e, i / 10, -i / 10)
                                                 for i, e in enumerate([1, 1, 1, 2, 2])])
    write_affectnet_csv(lists / "validation.csv", [("5/f5.png", (0, 0, 40, 40), 6, -0.5, 0.75)])
    pack(source, tmp_path / "out", "-f", "affectnet", "--val-split", "0")

    manifest = read_manifest(tmp_path / "out")
    assert class_counts(manifest)["test"] == {"anger": 1}
    assert sum(sum(c.values()) for c in class_counts(manifest).values()) == 6
    shards = read_shards(tmp_path / "out")
    samples = {s["__key__"]: s for split in shards.values() for s in split}
    assert json.loads(samples["5_f5"]["va.json"]) == {"valence": -0.5, "arousal": 0.75}
    assert json.loads(samples["3_f3"]["va.json"]) == {"valence": 0.3, "arousal": -0.3}
    assert np.array_equal(np.asarray(decode(samples["3_f3"]["png"])), pattern(3, (40, 40)))


def test_affectnet_without_file_lists_says_where_it_looked(tmp_path):
    from fer_core.cli import main

    (tmp_path / "Manually_Annotated_Images").mkdir()
    result = CliRunner().invoke(main, ["data", "pack", str(tmp_path), str(tmp_path / "out"), "-f", "affectnet"])
    assert result.exit_code == 2
    assert "no training.csv and validation.csv, neither in Manually_Annotated_file_lists/ nor at the top" in result.output
    assert len(result.output.strip().splitlines()) == 1
