"""Issue 17: hostile but fair input gets one-line errors before anything heavy starts.

One test group per numbered finding: alias bombs, out-of-range values, missing shards,
plugin faults, checkpoint refusals, server paths, and runs killed before their first checkpoint.
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner

from fer_core import providers
from fer_core.cli import main
from fer_core.constraints import OneOf, Range, short
from fer_core.data.pack import make_synth_dataset
from fer_core.plugins import PluginHost
from fer_core.predictor import _info
from fer_core.recipe_docs import render
from fer_core.runs import load_checkpoint, save_checkpoint
from fer_core.schema import SCHEMA, Key, Section

ROOT = Path(__file__).resolve().parents[1]
BASE = """\
name: t
data: {root: DATA, image_size: 24, num_workers: 0}
model:
  backbone: {name: timm, model: resnet10t}
  head: {name: linear}
loss: {name: cross_entropy}
train: {epochs: 1, batch_size: 32}
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_synth_dataset(tmp_path_factory.mktemp("hard") / "data", n=140, size=24, seed=0, progress=False,
                              shard_size=40)


def recipe(tmp_path: Path, data: Path | str = "nowhere", text: str = BASE) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text.replace("DATA", str(data)))
    return path


def fer(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def error_of(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    assert result.stderr.count("\n") == 1 and len(result.stderr) <= 300 + len("error: \n")
    return result.stderr.removeprefix("error: ").rstrip("\n")


# -- 1. hostile YAML ---------------------------------------------------------------------
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
    for p, n in zip("abcdefgh", "bcdefghi"))


def test_an_alias_bomb_is_refused_quickly_without_expanding_it(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB + BASE.replace("head: {name: linear}", "head: {name: linear, dropout: *i}"))
    assert path.stat().st_size < 1500
    before, started = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, time.perf_counter()
    message = error_of(fer("recipe", "check", "--no-build", path))
    assert time.perf_counter() - started < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB
    assert message == f"{path}: refused: the YAML expands to more than 100,000 values (nested YAML aliases?)"


def test_a_big_value_is_quoted_short(tmp_path):
    big = "[" + ", ".join(f"[{i}, {i}, {i}]" for i in range(300)) + "]"
    text = BASE.replace("head: {name: linear}", "head: {name: linear, dropout: &big " + big + "}")
    message = error_of(fer("recipe", "check", "--no-build", recipe(tmp_path, text=text)))
    assert message == "model.head.dropout: expected a number for 'linear', got [[0, 0, 0], [1, 1, 1], [2, 2, 2], [3, 3, 3], ...]"


def test_duplicate_keys_are_an_error_with_file_and_line(tmp_path):
    path = recipe(tmp_path, text=BASE + "train: {epochs: 2}\n")
    assert error_of(fer("recipe", "check", "--no-build", path)) == (
        f"{path}:8: malformed YAML: duplicate key 'train'; each key may appear once")
    path = recipe(tmp_path, text=BASE.replace("{epochs: 1, batch_size: 32}", "{epochs: 1, epochs: 2}"))
    assert error_of(fer("recipe", "check", "--no-build", path)) == (
        f"{path}:7: malformed YAML: duplicate key 'epochs'; each key may appear once")


def test_only_safe_tags_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    path = recipe(tmp_path, text=BASE + f"description: !!python/object/apply:os.system ['touch {marker}']\n")
    message = error_of(fer("recipe", "check", "--no-build", path))
    assert message.startswith(f"{path}:8: malformed YAML: could not determine a constructor for the tag")
    assert not marker.exists()


# -- 2. every value in range, checked before anything heavy ----------------------------------
OUT_OF_RANGE = [
    ("eval.batch_size=0", "eval.batch_size: must be in [1, 65536], got 0"),
    ("data.image_size=0", "data.image_size: must be in [8, 4096], got 0"),
    ("model.head.dropout=7", "model.head.dropout: must be in [0, 1) for 'linear', got 7"),
    ("model.head.dropout=-1e308", "model.head.dropout: must be in [0, 1) for 'linear', got -1e+308"),
    ("loss.label_smoothing=2", "loss.label_smoothing: must be in [0, 1) for 'cross_entropy', got 2"),
    (f"seed={2**80}", f"seed: must be in [0, 4294967295], got {2**80}"),
    ("data.num_workers=-3", "data.num_workers: must be in [0, 256], got -3"),
    ("optim=", "optim: empty section; give it keys (see docs/recipes.md) or delete the line"),
    ("optim.lr=.inf", "optim.lr: must be a finite number in (0, 10], got inf"),
    ("optim.betas=[0.9]", "optim.betas: expected exactly 2 items, got 1"),
    ("optim.betas=[0.9, 1.5]", "optim.betas[1]: must be in [0, 1), got 1.5"),
    ("train.device=gpu", "train.device: 'gpu' is not valid here; auto, cpu, mps, cuda or cuda:N"),
    ("name=../../etc", "name: '../../etc' is not valid here; the run's name (a folder under output.dir); "
                       "letters, digits, '.', '_', '-', '+' or spaces; default: the recipe file's name"),
    ("data.classes=[a, a]", "data.classes: each class name may appear once"),
    ("augment.sample=[{name: autoaugment, policy: mnist}]",
     "augment.sample[0].policy: must be one of imagenet, cifar10, svhn for 'autoaugment', got 'mnist'"),
    ("model.head.dropout=.nan", "model.head.dropout: must be a finite number for 'linear', got nan"),
]


@pytest.mark.parametrize(("override", "message"), OUT_OF_RANGE, ids=[o.split("=")[0] for o, _ in OUT_OF_RANGE])
def test_values_out_of_range_fail_the_check_and_the_run_before_anything_starts(tmp_path, override, message):
    path = recipe(tmp_path)
    assert error_of(fer("recipe", "check", "--no-build", path, "-s", override)) == message
    assert error_of(fer("run", path, "-s", override, "--out", tmp_path / "runs")) == message
    assert not (tmp_path / "runs").exists()


def test_a_plugin_declares_ranges_and_choices_in_its_factory_signature(fake_plugins, tmp_path):
    fake_plugins.module("fakeplug_ranged_impl", """
        from typing import Annotated
        from fer_core.constraints import OneOf, Range

        def build(num_features: int, num_classes: int, scale: Annotated[float, Range(0, 10, lo_open=True)] = 1.0,
                  mode: Annotated[str, OneOf("cos", "dot")] = "cos"):
            raise AssertionError("never built by these checks")
    """)
    fake_plugins.dist("fer-ranged", {"ranged": """
        from fer_core import hookimpl

        @hookimpl
        def register_heads(register):
            register("ranged", "fakeplug_ranged_impl:build", summary="declares ranges")
    """})
    path = recipe(tmp_path)
    check = ("recipe", "check", "--no-build", path)
    assert error_of(fer(*check, "-s", "model.head={name: ranged, scale: 0}")) == (
        "model.head.scale: must be in (0, 10] for 'ranged', got 0")
    assert error_of(fer(*check, "-s", "model.head={name: ranged, mode: cosine}")) == (
        "model.head.mode: must be one of cos, dot for 'ranged', got 'cosine'")
    assert fer(*check, "-s", "model.head={name: ranged, scale: 10, mode: dot}").exit_code == 0


def test_constraints_describe_themselves():
    assert Range(0, 1, hi_open=True).problem(1) == "must be in [0, 1)"
    assert Range(0, 1).problem(0.5) is None
    assert Range(lo=1).describe() == ">= 1"
    assert OneOf("a", 1).problem(True) == "must be one of a, 1"
    assert short(list(range(10**6))) == "[0, 1, 2, 3, ...]"


def test_every_shipped_recipe_passes_the_schema():
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        result = fer("recipe", "check", "--no-build", path)
        assert result.exit_code == 0, (path.name, result.output)


# -- the recipe reference, generated from the schema ------------------------------------------
def test_docs_recipes_md_is_generated_from_the_schema():
    assert (ROOT / "docs" / "recipes.md").read_text() == render(), "run `fer recipe docs > docs/recipes.md`"
    assert fer("recipe", "docs").stdout == render()


def test_the_reference_covers_every_key_with_type_default_and_meaning():
    text = render()

    def walk(rules, prefix=""):
        for key, rule in rules.items():
            if isinstance(rule, Section):
                assert f"`{prefix}{key}`" in text
                yield from walk(rule.keys, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", rule

    for path, rule in walk(SCHEMA):
        row = next(line for line in text.splitlines() if line.startswith(f"| `{path}` |"))
        assert rule.doc in row
        if isinstance(rule, Key):
            assert rule.describe() in row
    for topic in ("`extends`", "-s KEY.PATH=VALUE", "Context arguments", "`num_features`", "`class_counts`",
                  "Annotated"):
        assert topic in text


# -- 3. preflight of the data ---------------------------------------------------------------
def copy_of(data: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(data, tmp_path / "copy"))


def test_a_shard_missing_on_disk_fails_in_one_line_and_leaves_no_run_directory(data, tmp_path):
    root = copy_of(data, tmp_path)
    (root / "train-000001.tar").unlink()
    path, out = recipe(tmp_path, root), tmp_path / "runs"
    expected = (f"{root}: shard train-000001.tar of split 'train' is listed in dataset.json but missing; restore "
                f"it or re-pack the data set (`fer data info` on it lists what is missing)")
    assert error_of(fer("run", path, "--out", out)) == expected
    assert error_of(fer("recipe", "check", path)) == expected
    assert not out.exists()


def test_a_truncated_shard_and_unknown_classes_fail_in_one_line(data, tmp_path):
    root = copy_of(data, tmp_path)
    with open(root / "val-000000.tar", "r+b") as handle:
        handle.truncate(1024)
    message = error_of(fer("recipe", "check", recipe(tmp_path, root)))
    assert message.startswith(f"{root}: shard val-000000.tar of split 'val' is 1024 bytes, too small for its ")
    (root / "val-000000.tar").write_bytes((data / "val-000000.tar").read_bytes())
    path = recipe(tmp_path, root, BASE.replace("num_workers: 0}", "num_workers: 0, classes: [joy, anger]}"))
    assert error_of(fer("recipe", "check", path)) == (
        f"data.classes: joy not in {root} (it has anger, disgust, fear, happiness, neutral, sadness, surprise); "
        f"fix data.classes")


# -- 4. plugin faults are the plugin's ---------------------------------------------------------
NOT_CALLABLE = """
    from fer_core import hookimpl

    @hookimpl
    def register_heads(register):
        register("badhead", "fakeplug_five:FIVE", summary="not a factory")
"""


def test_a_target_that_is_not_callable_names_component_and_plugin_even_in_strict_mode(fake_plugins, tmp_path):
    fake_plugins.module("fakeplug_five", "FIVE = 5\n")
    fake_plugins.dist("fer-badplugin", {"bad": NOT_CALLABLE}, version="0.1")
    path = recipe(tmp_path)
    for env in ({}, {"FER_STRICT_PLUGINS": "1"}):
        assert error_of(fer("recipe", "check", "--no-build", path, "-s", "model.head={name: badhead}", env=env)) == (
            "model.head 'badhead' (fer-badplugin 0.1): target fakeplug_five:FIVE is not callable (it is 5); "
            "the plugin must name a factory function or class")


def test_fer_plugins_warns_about_a_hook_module_that_imports_torch_or_is_slow(fake_plugins):
    fake_plugins.dist("fer-heavy", {"heavy": "import torch\n"})
    fake_plugins.dist("fer-slow", {"slow": "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.15:"
                                            "\n    pass\n"})
    fake_plugins.dist("fer-light", {"light": "X = 1\n"})
    result = fer("plugins", "--json")
    assert result.exit_code == 0
    listed = {p["name"]: p for p in json.loads(result.stdout)}
    assert listed["heavy"]["warnings"] == [
        "plugin heavy (fer-heavy): its hook module imports torch; import it inside the factories so `fer plugins` "
        "and `fer recipe` stay fast"]
    assert listed["slow"]["import_ms"] >= 150
    assert listed["slow"]["warnings"][0].startswith("plugin slow (fer-slow): its hook module takes ")
    assert listed["light"]["warnings"] == [] and listed["light"]["import_ms"] < 100
    assert "warning: plugin heavy (fer-heavy): its hook module imports torch" in result.stderr
    import fer_core.plugins

    fer_core.plugins.reset()
    strict = error_of(fer("plugins", env={"FER_STRICT_PLUGINS": "1"}))
    assert strict.startswith("plugin heavy (fer-heavy): its hook module imports torch")
    assert strict.endswith("(FER_STRICT_PLUGINS=1 makes this an error)")


def test_fer_plugins_shows_each_distributions_summary():
    host = PluginHost(env={})
    summaries = {p.dist: p.summary for p in host.plugins}
    assert summaries["fer-core"] == "built-in components"
    assert all(summaries[dist] for dist in summaries if dist.startswith("fer-") and dist != "fer-core")


# -- a missing component names its distribution and the pip command ---------------------------------
def test_a_missing_plugin_component_names_its_distribution_and_pip_command(fake_plugins):
    registry = PluginHost().registry  # only the built-ins: the fake plugin host hides the real ones
    with pytest.raises(Exception) as info:
        registry.get("encoder", "psp", "model.encoder.name")
    assert str(info.value).endswith("; it is provided by fer-psp, which is not installed: pip install fer-psp")
    with providers.recorded({"fer-core": "0.1.0", "fer-psp": "0.1.0"}):
        with pytest.raises(Exception) as info:
            registry.get("encoder", "psp", "model.encoder.name")
    assert str(info.value).endswith("it is provided by fer-psp 0.1.0, recorded in the checkpoint, which is not "
                                    "installed: pip install 'fer-psp==0.1.0'")
    with providers.recorded({"fer-core": "0.1.0", "fer-hogcnn": "0.3.0"}):
        with pytest.raises(Exception) as info:
            registry.get("backbone", "hogcnn", "model.backbone.name")
    assert str(info.value).endswith("; the checkpoint was trained with fer-hogcnn 0.3.0, which is not installed: "
                                    "pip install 'fer-hogcnn==0.3.0'")


def test_the_catalogue_of_published_components_matches_the_plugins_in_the_repository():
    host = PluginHost(env={})
    for (kind, name), dist in providers.CATALOGUE.items():
        assert host.registry.get(kind, name).plugin == dist


# -- 5. checkpoints -------------------------------------------------------------------------
class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_unreadable_or_refused_checkpoints_get_a_complete_line_that_never_suggests_unsafe_loading(tmp_path):
    garbage, evil, foreign = tmp_path / "garbage.pt", tmp_path / "evil.pt", tmp_path / "foreign.pt"
    garbage.write_bytes(b"\x80\x04not a checkpoint at all" * 10)
    torch.save({"model": Payload(tmp_path / "pwned")}, evil)
    torch.save({"weights": torch.zeros(2)}, foreign)
    messages = {}
    for path in (garbage, evil, foreign):
        with pytest.raises(Exception) as info:
            load_checkpoint(path)
        messages[path.name] = str(info.value)
    assert not (tmp_path / "pwned").exists()
    assert messages["evil.pt"] == (f"{evil}: refused by safe loading: it holds Python objects that a fer checkpoint "
                                   f"never contains, so it was not loaded; use a checkpoint written by `fer run`")
    assert messages["garbage.pt"] == (f"{garbage}: not a fer checkpoint: it is not a PyTorch archive; it may be "
                                      f"truncated or from another program")
    assert messages["foreign.pt"].startswith(f"{foreign}: not a fer checkpoint (no 'fer-checkpoint-1' marker)")
    for message in messages.values():
        assert "weights_only" not in message and "\n" not in message and message.endswith(("program", "`fer run`"))
    result = fer("eval", evil)
    assert error_of(result) == messages["evil.pt"]


# -- 6. the server's /info names no server path ------------------------------------------------
def test_info_shows_the_run_name_and_the_files_basename_only(tmp_path):
    checkpoint = tmp_path / "runs" / "quickstart" / "20260101-120000" / "checkpoints" / "best.pt"
    checkpoint.parent.mkdir(parents=True)
    save_checkpoint(checkpoint, {"x": torch.zeros(1)})
    predictor = SimpleNamespace(name="quickstart", classes=["a"], format="pytorch", image_size=24, channels=3,
                                temperature=1.0)
    info = _info(predictor, checkpoint, parameters=1)
    assert info["file"] == "best.pt" and info["run"] == "20260101-120000" and info["name"] == "quickstart"
    assert str(tmp_path) not in json.dumps(info)


# -- 7. a run killed before its first checkpoint ---------------------------------------------------
def test_resuming_a_run_killed_before_its_first_checkpoint_starts_it_over(data, tmp_path, one_thread):
    out = tmp_path / "runs"
    half = out / "t" / "20260101-000000"
    (half / "checkpoints").mkdir(parents=True)
    (half / "recipe.yaml").write_text(BASE.replace("DATA", str(data)))
    (half / "checkpoints" / ".last.pt.x.tmp").write_bytes(b"partial")
    result = fer("run", "--resume", half)
    assert result.exit_code == 0, result.output
    assert "stopped before its first checkpoint: removed it and starting the run over from its recipe" in result.stderr
    assert not half.exists()
    (restarted,) = (out / "t").iterdir()
    assert (restarted / "checkpoints" / "last.pt").is_file() and (restarted / "summary.json").is_file()


def test_a_directory_that_is_not_a_run_is_left_alone(tmp_path):
    folder = tmp_path / "mine"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "recipe.yaml").write_text(BASE)
    (folder / "notes.txt").write_text("mine")
    message = error_of(fer("run", "--resume", folder))
    assert message.startswith(f"{folder}: has no checkpoints/last.pt but holds notes.txt; not touching it")
    assert (folder / "notes.txt").exists()
    assert error_of(fer("run", "--resume", tmp_path)) == (
        f"{tmp_path}: not a run directory of `fer run` (no recipe.yaml, no checkpoints/last.pt)")


# -- 7. `fer data pack` names what it drops ---------------------------------------------------
def test_pack_lists_each_dropped_item_beside_the_manifest_and_info_points_to_it(tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from data_fixtures import fer_pixels, write_corrupt_files, write_fer2013_csv, write_imagefolder

    rows = [(emotion, fer_pixels(emotion), usage) for emotion in range(7) for usage in ("Training", "PublicTest")]
    rows += [(3, "1 2 3", "Training"), (9, fer_pixels(99), "Training"), (2, fer_pixels(5), "Nowhere")]
    csv_path = write_fer2013_csv(tmp_path / "dl" / "fer2013.csv", rows)
    out = tmp_path / "fer"
    assert fer("data", "pack", csv_path, out, "--format", "fer2013-csv").exit_code == 0
    assert (out / "dropped.tsv").read_text() == ("source\treason\nfer2013.csv data row 15\tcorrupt_image\n"
                                                 "fer2013.csv data row 16\tbad_label\nfer2013.csv data row 17\tbad_usage\n")
    info = fer("data", "info", out)
    assert f"dropped items, each with its reason: {out / 'dropped.tsv'}" in info.stdout.replace("\n", "")

    src = tmp_path / "src"
    write_imagefolder(src, {"happy": 3, "sad": 3})
    write_corrupt_files(src / "happy")
    assert fer("data", "pack", src, tmp_path / "folder", "-f", "imagefolder").exit_code == 0
    listed = (tmp_path / "folder" / "dropped.tsv").read_text().splitlines()
    assert sorted(listed[1:]) == ["happy_garbage\tcorrupt_image", "happy_truncated\tcorrupt_image"]
    (src / "happy" / "truncated.jpg").unlink()
    (src / "happy" / "garbage.png").unlink()
    assert fer("data", "pack", src, tmp_path / "folder", "-f", "imagefolder", "--overwrite").exit_code == 0
    assert not (tmp_path / "folder" / "dropped.tsv").exists()  # nothing dropped: no stale list either
    assert "dropped items" not in fer("data", "info", tmp_path / "folder").stdout
