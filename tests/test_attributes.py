"""Per-sample attributes: declared fields, the manifest summary, the synthetic faces' traits, RAF-DB's annotations."""

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from data_fixtures import pattern, read_shards, save_image  # noqa: E402

from fer_core.cli import main  # noqa: E402
from fer_core.data import synth  # noqa: E402
from fer_core.data.meta import Field, MetaSummary, check_attribute, encode_meta, read_meta  # noqa: E402
from fer_core.data.pack import make_synth_dataset, pack_dataset  # noqa: E402
from fer_core.data.shards import read_manifest  # noqa: E402
from fer_core.errors import DataError  # noqa: E402

FIELDS = {"tone": Field("category", "", ("light", "dark")), "yaw": Field("number", "", range=(-10.0, 10.0))}


def test_summary_counts_values_missing_and_histograms():
    summary = MetaSummary(FIELDS)
    for meta in ({"tone": "dark", "yaw": -10.0}, {"tone": "dark", "yaw": 9.99}, {"yaw": 25.0}, {}):
        summary.add("train", meta)
    summary.add("test", {"tone": "light"})
    section = summary.section()
    assert section["tone"]["values"] == ["light", "dark"]
    assert section["tone"]["splits"] == {"train": {"counts": {"light": 0, "dark": 2}, "missing": 2},
                                         "test": {"counts": {"light": 1, "dark": 0}, "missing": 0}}
    train = section["yaw"]["splits"]["train"]
    assert (train["count"], train["missing"], train["min"], train["max"]) == (3, 1, -10.0, 25.0)
    assert train["mean"] == pytest.approx((-10 + 9.99 + 25) / 3)
    assert train["histogram"]["edges"][:3] == [-10.0, -8.0, -6.0]
    assert train["histogram"]["counts"] == [1, 0, 0, 0, 0, 0, 0, 0, 0, 2]  # 25 lies beyond the range: last bin
    assert section["yaw"]["splits"]["test"] == {"count": 0, "missing": 1,
                                                "histogram": train["histogram"] | {"counts": [0] * 10}}


def test_undeclared_fields_and_bad_values_are_refused():
    assert json.loads(encode_meta(FIELDS, {"tone": "dark", "yaw": 1.5})) == {"tone": "dark", "yaw": 1.5}
    for bad, message in (({"age": "old"}, "not declared"), ({"tone": "green"}, "not one of light, dark"),
                         ({"yaw": float("nan")}, "finite"), ({"yaw": "3"}, "finite")):
        with pytest.raises(ValueError, match=message):
            encode_meta(FIELDS, bad)


def test_synthetic_faces_report_what_they_were_drawn_with():
    faces = list(synth.synthesize_faces(70, size=16, seed=2))
    for face in faces:
        assert set(face.attributes) == set(synth.META)
        for name, value in face.attributes.items():
            synth.META[name].check(name, value)
        assert face.attributes["pose"] == ("frontal" if abs(face.attributes["yaw"]) <= synth.FRONTAL_YAW else "turned")
    assert {f.attributes["occlusion"] for f in faces} >= {"none"}
    assert len({f.attributes["skin_tone"] for f in faces}) == 3


def test_a_rare_skin_tone_is_rare_and_the_rest_of_the_face_stays():
    shares = synth.rare_skin_shares("dark", 0.05)
    assert shares == pytest.approx((0.475, 0.475, 0.05))
    plain = list(synth.synthesize_faces(300, size=8, seed=4))
    rare = list(synth.synthesize_faces(300, size=8, seed=4, skin_shares=shares))
    assert 3 <= Counter(f.attributes["skin_tone"] for f in rare)["dark"] <= 30  # expected 15
    assert 70 <= Counter(f.attributes["skin_tone"] for f in plain)["dark"] <= 130  # expected 100
    for a, b in zip(plain, rare):  # only the skin tone was redrawn
        assert {k: v for k, v in a.attributes.items() if k != "skin_tone"} == \
               {k: v for k, v in b.attributes.items() if k != "skin_tone"}
    with pytest.raises(ValueError, match="light, medium, dark"):
        synth.rare_skin_shares("purple")


def _person(band_shares, seed):
    rng = np.random.default_rng(seed)
    (traits,) = rng.spawn(1)
    return synth.sample_identity(rng, traits, band_shares)


def test_the_skin_tone_band_sets_the_skin_colour():
    light = [_person((1, 0, 0), s) for s in range(30)]
    dark = [_person((0, 0, 1), s) for s in range(30)]
    assert {p.skin_tone for p in light} == {"light"} and {p.skin_tone for p in dark} == {"dark"}
    assert min(sum(p.skin) for p in light) > max(sum(p.skin) for p in dark)


def test_expression_lines_and_lips_are_as_dark_against_dark_skin_as_against_light_skin():
    for shares in ((1, 0, 0), (0, 0, 1)):
        for seed in range(20):
            p = _person(shares, seed)
            skin = synth._luma(p.skin)
            assert skin - synth._luma(p.lips) == pytest.approx(synth.LIP_CONTRAST)
            crease = skin - synth._luma(synth._ink(p.skin, 0.7))  # a strong frown line
            assert min(0.3 * synth.INK_REFERENCE, skin) - 1.5 <= crease <= 0.3 * synth.INK_REFERENCE + 1
            if shares[2]:  # the old 30 % of the skin's luminance would be far fainter on dark skin
                assert crease > 0.3 * skin + 10


def test_synthetic_sets_store_attributes_per_sample_and_in_the_manifest(tmp_path):
    root = make_synth_dataset(tmp_path / "synth", n=70, size=16, seed=1, progress=False, shard_size=20,
                              rare_skin_tone="light", rare_share=0.0)
    manifest = read_manifest(root)
    assert "meta" in manifest["extras"] and manifest["synth"]["skin_tone_shares"]["light"] == 0
    shards = read_shards(root)
    for split, entry in manifest["splits"].items():
        tones = manifest["meta"]["skin_tone"]["splits"][split]
        assert sum(tones["counts"].values()) == entry["count"] and tones["missing"] == 0
        assert tones["counts"]["light"] == 0
        meta = read_meta(root, split)
        assert sorted(meta) == sorted(s["__key__"] for s in shards[split])
        for sample in shards[split]:
            assert json.loads(sample["meta.json"]) == meta[sample["__key__"]]
    result = CliRunner().invoke(main, ["data", "info", str(root)])
    assert result.exit_code == 0, result.output
    assert "per-sample attributes" in result.output and "skin_tone" in result.output and "degrees" in result.output
    check_attribute(root, manifest, "age_band")
    with pytest.raises(DataError, match="yaw.* is a number"):
        check_attribute(root, manifest, "yaw")
    with pytest.raises(DataError, match="no per-sample attribute 'gender'; it has skin_tone, age_band"):
        check_attribute(root, manifest, "gender")


def test_synth_cli_refuses_an_unknown_skin_tone_in_one_line(tmp_path):
    result = CliRunner().invoke(main, ["data", "synth", str(tmp_path / "s"), "--n", "7", "--rare-skin-tone", "blue"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["error: unknown skin tone 'blue'; choose one of light, medium, dark"]


# ---- RAF-DB: basic/Annotation/manual/<image>_manu_attri.txt ------------------------------------

LANDMARKS = "226.66 165.18\n324.34 156.49\n281.63 214.64\n245.95 268.88\n321.12 263.73\n"


def write_rafdb_release(root: Path) -> dict[str, dict]:
    """RAF-DB basic/ with labels, aligned images and manual attributes; returns the expected attributes."""
    names = [f"train_{i:05d}" for i in range(1, 9)] + [f"test_{i:04d}" for i in range(1, 5)]
    (root / "EmoLabel").mkdir(parents=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text(
        "".join(f"{name}.jpg {1 + i % 7}\n" for i, name in enumerate(names)))
    manual = root / "Annotation" / "manual"
    manual.mkdir(parents=True)
    expected = {}
    for i, name in enumerate(names):
        save_image(root / "Image" / "aligned" / f"{name}_aligned.jpg", pattern(i, (32, 32)))
        gender, race, age = i % 3, i % 3, i % 5
        if name == "train_00007":
            continue  # no attribute file
        text = LANDMARKS + f"{gender}\n{race}\n{age}\n"
        if name == "train_00008":
            text = LANDMARKS + "1\n7\n2\n"  # race 7 does not exist
        (manual / f"{name}_manu_attri.txt").write_text(text)
        if name != "train_00008":
            expected[name] = {"gender": ("male", "female", "unsure")[gender],
                              "race": ("caucasian", "african-american", "asian")[race],
                              "age_group": ("0-3", "4-19", "20-39", "40-69", "70+")[age]}
    return expected


def test_rafdb_keeps_the_manual_gender_race_and_age_annotations(tmp_path):
    expected = write_rafdb_release(tmp_path / "basic")
    manifest = pack_dataset(tmp_path / "basic", tmp_path / "out", "rafdb", progress=False)
    assert manifest["meta"]["gender"]["values"] == ["male", "female", "unsure"]
    assert manifest["meta"]["race"]["values"] == ["caucasian", "african-american", "asian"]
    assert manifest["meta"]["age_group"]["values"] == ["0-3", "4-19", "20-39", "40-69", "70+"]
    found = {}
    for split in manifest["splits"]:
        found.update(read_meta(tmp_path / "out", split))
    assert found == expected
    missing = sum(entry["missing"] for entry in manifest["meta"]["gender"]["splits"].values())
    assert missing == 2  # no file, and a race code that RAF-DB does not have
    test_keys = [f"test_{i:04d}" for i in range(1, 5)]
    assert manifest["meta"]["gender"]["splits"]["test"]["counts"] == {
        g: sum(expected[k]["gender"] == g for k in test_keys) for g in ("male", "female", "unsure")}
