"""Recipes through `fer recipe check/show`: every error class, extends, -s overrides, the resolved output.

Errors are asserted in full: one line on stderr, exit status 2, nothing on stdout.
Components come from the built-ins and a fake plugin (conftest.py) that registers a
`psp` encoder and a `latent_vit` backbone, so the messages do not depend on what
else is installed.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from fer_core.cli import main
from fer_core.plugins import PluginHost
from fer_core.recipe import DEFAULTS, deep_merge, load_recipe, parse_override

VALID = """
    name: t
    data: {root: data/x, classes: [a, b, c]}
    model:
      backbone: {name: timm, model: resnet10t}
"""
LATENT_HOOKS = """
    from fer_core import hookimpl

    @hookimpl
    def register_encoders(register):
        register("psp", "fakeplug_latent_impl:build_psp")

    @hookimpl
    def register_backbones(register):
        register("latent_vit", "fakeplug_latent_impl:build_latent_vit")
"""
LATENT_IMPL = """
    def build_psp(checkpoint: str | None = None, image_size: int = 256):
        return None

    def build_latent_vit(latent_shape=None, embed_dim: int = 512, depth: int = 6, heads: int = 8):
        return None
"""


@pytest.fixture(autouse=True)
def latent_plugin(fake_plugins):
    fake_plugins.module("fakeplug_latent_impl", LATENT_IMPL)
    fake_plugins.dist("fer-fake-latent", {"latent": LATENT_HOOKS})


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def fer(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_error(result, message: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert result.stderr == f"error: {message}\n"
    assert "Traceback" not in result.output


def show(path: Path, *overrides: str) -> dict:
    result = fer("recipe", "show", path, *[a for o in overrides for a in ("-s", o)])
    assert result.exit_code == 0, result.output
    return yaml.safe_load(result.stdout)


def test_a_valid_recipe_checks(tmp_path):
    result = fer("recipe", "check", "--no-build", write(tmp_path, "r.yaml", VALID))  # data/x is not there
    assert result.exit_code == 0, result.output
    assert result.stdout == "ok t: identity -> timm -> linear\n"


# -- every error class -------------------------------------------------------------
ERRORS = [
    # unknown keys, with the nearest spelling
    ("trian: {epochs: 1}", (), "trian: unknown key in a recipe; did you mean 'train'?"),
    ("train: {epoch: 1}", (), "train.epoch: unknown key in section 'train'; did you mean 'epochs'?"),
    ("train: {early_stopping: {patiense: 2}}", (),
     "train.early_stopping.patiense: unknown key in section 'train.early_stopping'; did you mean 'patience'?"),
    ("", ("train.epoch=3",), "train.epoch: unknown key in section 'train'; did you mean 'epochs'?"),
    # unknown components and parameters
    ("model: {encoder: {name: pps}}", (),
     "model.encoder.name: unknown encoder 'pps'; installed: <encoder>; did you mean 'psp'?"),
    ("model: {head: {name: softmax}}", (), "model.head.name: unknown head 'softmax'; installed: <head>"),
    ("loss: {name: focal}", (), "loss.name: unknown loss 'focal'; installed: <loss>; it is provided by "
                                "fer-focal-cutmix, which is not installed: pip install fer-focal-cutmix"),
    ("model: {encoder: {name: psp}, backbone: {name: latent_vit, depht: 4}}", (),
     "model.backbone.depht: unknown parameter of 'latent_vit'; did you mean 'depth'? (accepted: embed_dim, depth, heads)"),
    ("model: {backbone: {name: timm, modle: resnet18}}", (),
     "model.backbone.modle: unknown parameter of 'timm'; did you mean 'model'? (accepted: model, pretrained, "
     "pretrained_file, drop_rate, drop_path_rate, grad_checkpointing, img_size, normalize, lora)"),
    ("augment: {sample: [{name: hflip, pp: 0.5}]}", (),
     "augment.sample[0].pp: unknown parameter of 'hflip'; did you mean 'p'? (accepted: p)"),
    ("augment: {batch: [{name: cutmix}]}", (), "augment.batch[0].name: unknown augment 'cutmix'; installed: <augment>; "
     "it is provided by fer-focal-cutmix, which is not installed: pip install fer-focal-cutmix"),
    ("model: {head: {name: linear, num_classes: 7}}", (),
     "model.head.num_classes: set by fer-core from the data and model; remove it from the recipe"),
    # shapes and types
    ("model: {head: linear}", (), "model.head: write components as a mapping, e.g. {name: linear}"),
    ("model: {head: {dropout: 0.1}}", (), "model.head.name: missing; every component needs a name"),
    ("model: {head: {name: linear, freeze: maybe}}", (), "model.head.freeze: expected true/false, got 'maybe'"),
    ("augment: {sample: {name: hflip}}", (), "augment.sample: expected a list of components, got {'name': 'hflip'}"),
    ("train: 5", (), "train: expected a section (mapping), got 5"),
    ("train: {epochs: ten}", (), "train.epochs: expected an integer, got 'ten'"),
    ("train: {batch_size: true}", (), "train.batch_size: expected an integer, got True"),
    ("optim: {lr: fast}", (), "optim.lr: expected a number, got 'fast'"),
    ("train: {clip_grad: [1]}", (), "train.clip_grad: expected a number or null, got [1]"),
    ("model: {head: {name: linear, dropout: high}}", (), "model.head.dropout: expected a number for 'linear', got 'high'"),
    ("augment: {sample: [{name: resize, size: 32.5}]}", (),
     "augment.sample[0].size: expected an integer for 'resize', got 32.5"),
    ("task: clasify", (), "task: must be one of classify, pretrain, affect, expression+affect; got 'clasify'; did you mean 'classify'?"),
    ("data: {channels: 2}", (), "data.channels: must be one of 1, 3; got 2"),
    # cross-key rules
    ("eval: {metric: acuracy}", (),
     "eval.metric: must be one of accuracy, f1_macro, f1_weighted, loss, valence_ccc, valence_pcc, valence_rmse, valence_sagr, arousal_ccc, arousal_pcc, arousal_rmse, arousal_sagr, ccc_mean, rmse_mean; got 'acuracy'; did you mean 'accuracy'?"),
    ("train: {early_stopping: {metric: f1}}", (),
     "train.early_stopping.metric: must be one of accuracy, f1_macro, f1_weighted, loss, valence_ccc, valence_pcc, valence_rmse, valence_sagr, arousal_ccc, arousal_pcc, arousal_rmse, arousal_sagr, ccc_mean, rmse_mean; got 'f1'"),
    ("train: {epochs: 0}", (), "train.epochs: must be in [1, 100000], got 0"),
    ("optim: {lr: 0}", (), "optim.lr: must be in (0, 10], got 0"),
    ("data: {train_fraction: 1.5}", (), "data.train_fraction: must be in (0, 1], got 1.5"),
    ("data: {sources: [{root: a, wieght: 2}]}", (), "data.sources[0].wieght: unknown key; sources take root and weight"),
    # overrides
    ("", ("train.epochs",), "-s train.epochs: overrides look like key.path=value, e.g. train.epochs=5"),
    ("", ("=5",), "-s =5: overrides look like key.path=value, e.g. train.epochs=5"),
    ("", ("data.classes=[a",), "-s data.classes=[a: the value is not valid YAML"),
    ("", ("name.x=1",), "-s name.x=1: name is not a section"),
    ("", ("train.epochs=1e-4",), "train.epochs: expected an integer, got 0.0001"),
]


@pytest.mark.parametrize("extra, overrides, message", ERRORS, ids=[m.split(":")[0] + f"-{i}" for i, (_, _, m) in
                                                                     enumerate(ERRORS)])
def test_recipe_errors_are_one_line_with_exit_status_2(tmp_path, extra, overrides, message):
    registry = PluginHost().registry  # the built-ins and the fake latent plugin
    for kind in ("encoder", "head", "loss", "augment"):
        message = message.replace(f"<{kind}>", ", ".join(registry.names(kind)))
    recipe = yaml.safe_load(textwrap.dedent(VALID))
    recipe = deep_merge(recipe, yaml.safe_load(extra) or {})
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    args = [a for o in overrides for a in ("-s", o)]
    assert_error(fer("recipe", "check", path, *args), message)
    assert_error(fer("recipe", "show", path, *args), message)


def test_missing_backbone_and_missing_data_root(tmp_path):
    no_backbone = write(tmp_path, "a.yaml", "data: {root: x}\nmodel: {head: {name: linear}}\n")
    assert_error(fer("recipe", "check", no_backbone), "model.backbone: missing; a classification recipe needs a backbone")
    no_root = write(tmp_path, "b.yaml", "data: {classes: [a]}\nmodel: {backbone: {name: timm}}\n")
    assert_error(fer("recipe", "check", no_root),
                 "data.root: missing; point it at a directory made by `fer data pack` or `fer data synth`")


def test_missing_file(tmp_path):
    assert_error(fer("recipe", "check", tmp_path / "nope.yaml"), f"{tmp_path / 'nope.yaml'}: recipe file not found, nor a packaged recipe (`fer recipe list` shows them)")


def test_malformed_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "bad.yaml", "name: t\ndata:\n  root: x\n   classes: [a]\n")
    assert_error(fer("recipe", "check", path), f"{path}:4: malformed YAML: mapping values are not allowed here")
    path = write(tmp_path, "open.yaml", "name: t\nmodel: {backbone: {name: timm}\ntrain: {}\n")
    result = fer("recipe", "check", path)
    assert result.exit_code == 2 and result.stderr.startswith(f"error: {path}:3: malformed YAML: ")


def test_a_recipe_must_be_a_mapping(tmp_path):
    path = write(tmp_path, "list.yaml", "- a\n- b\n")
    assert_error(fer("recipe", "check", path), f"{path}: a recipe must be a mapping of sections, got list")


def test_extends_errors(tmp_path):
    a = write(tmp_path, "a.yaml", "extends: b.yaml\n")
    write(tmp_path, "b.yaml", "extends: [c.yaml, a.yaml]\n")
    write(tmp_path, "c.yaml", "name: c\n")
    assert_error(fer("recipe", "check", a), "extends: cycle a.yaml -> b.yaml -> a.yaml")
    itself = write(tmp_path, "self.yaml", "extends: self.yaml\n")
    assert_error(fer("recipe", "check", itself), "extends: cycle self.yaml -> self.yaml")
    missing = write(tmp_path, "m.yaml", "extends: base.yaml\n")
    assert_error(fer("recipe", "check", missing), f"m.yaml: extends: base.yaml: recipe file not found, looked in {tmp_path} and the "
                 f"packaged recipes (`fer recipe list` shows them)")
    number = write(tmp_path, "n.yaml", "extends: 3\n")
    assert_error(fer("recipe", "check", number), "n.yaml: extends: expected a file name or a list of them, got 3")


# -- extends -----------------------------------------------------------------------
BASE = """
    name: base
    data: {root: data/base, classes: [a, b, c], image_size: 64}
    model:
      backbone: {name: timm, model: resnet10t, drop_rate: 0.1}
      head: {name: mlp, hidden: 64}
    augment:
      sample: [{name: hflip}, {name: rotation, degrees: 5}]
    train: {epochs: 3, batch_size: 16}
"""


def test_extends_merges_mappings_and_replaces_lists(tmp_path, monkeypatch):
    write(tmp_path, "bases/root.yaml", BASE)
    write(tmp_path, "bases/mid.yaml", "extends: root.yaml\ntrain: {amp: true}\n")  # relative to bases/
    child = write(tmp_path, "exp/child.yaml", """
        extends: ../bases/mid.yaml
        name: child
        data: {classes: [x, y]}
        model:
          backbone: {model: resnet18}
          head: {name: linear}
        augment:
          sample: [{name: grayscale}]
        train: {epochs: 5}
    """)
    monkeypatch.chdir(write(tmp_path, "elsewhere/x", "").parent)  # paths resolve from the file, not the cwd
    recipe = show(child)
    assert recipe["name"] == "child"
    assert recipe["data"]["root"] == "data/base" and recipe["data"]["image_size"] == 64
    assert recipe["data"]["classes"] == ["x", "y"]  # lists are replaced
    assert recipe["augment"]["sample"] == [{"name": "grayscale"}]
    assert recipe["model"]["backbone"] == {"name": "timm", "model": "resnet18", "drop_rate": 0.1}  # merged
    assert recipe["model"]["head"] == {"name": "linear"}  # a renamed component starts afresh: no 'hidden'
    assert recipe["train"]["epochs"] == 5 and recipe["train"]["batch_size"] == 16 and recipe["train"]["amp"] is True


def test_extends_a_list_later_files_win(tmp_path):
    write(tmp_path, "one.yaml", "data: {root: one}\ntrain: {epochs: 1, batch_size: 8}\n")
    write(tmp_path, "two.yaml", "data: {root: two}\ntrain: {epochs: 2}\n")
    path = write(tmp_path, "r.yaml", "extends: [one.yaml, two.yaml]\nmodel: {backbone: {name: timm}}\n")
    recipe = show(path)
    assert (recipe["data"]["root"], recipe["train"]["epochs"], recipe["train"]["batch_size"]) == ("two", 2, 8)
    assert recipe["name"] == "r"  # the file's stem when the recipe has no name


# -- overrides ---------------------------------------------------------------------
def test_overrides_are_parsed_as_yaml(tmp_path):
    path = write(tmp_path, "r.yaml", VALID)
    recipe = show(path, "train.epochs=5", "train.amp=true", "optim.lr=1e-4", "data.classes=[p, q]",
                  "model.head={name: mlp, hidden: 8}", "eval.tta=flip", "train.clip_grad=null", "name=renamed",
                  "train.epochs=7")
    assert recipe["train"]["epochs"] == 7  # the last one wins
    assert recipe["train"]["amp"] is True
    assert recipe["optim"]["lr"] == pytest.approx(1e-4)
    assert recipe["data"]["classes"] == ["p", "q"]
    assert recipe["model"]["head"] == {"name": "mlp", "hidden": 8}
    assert recipe["eval"]["tta"] == "flip" and recipe["train"]["clip_grad"] is None
    assert recipe["name"] == "renamed"


def test_overrides_create_missing_sections(tmp_path):
    path = write(tmp_path, "r.yaml", VALID)
    assert show(path, "schedule.warmup_epochs=2")["schedule"]["warmup_epochs"] == 2


@pytest.mark.parametrize("text, value", [("a.b=1e-4", 1e-4), ("a.b=3E+2", 300.0), ("a.b=2.0e-3", 2e-3), ("a.b=5", 5),
                                         ("a.b=x y", "x y"), ("a.b=", None), ("a.b='5'", "5"), ("a.b=1e5x", "1e5x")])
def test_parse_override(text, value):
    assert parse_override(text) == (["a", "b"], value)


def test_exponent_floats_in_files_are_numbers(tmp_path):
    path = write(tmp_path, "r.yaml", VALID + "    optim: {lr: 3e-4, weight_decay: 5E-2}\n")
    recipe = load_recipe(path)
    assert recipe["optim"]["lr"] == pytest.approx(3e-4) and recipe["optim"]["weight_decay"] == pytest.approx(0.05)


# -- fer recipe show ---------------------------------------------------------------
def test_show_prints_the_fully_resolved_recipe(tmp_path):
    path = write(tmp_path, "r.yaml", VALID)
    result = fer("recipe", "show", path, "-s", "train.epochs=2")
    assert result.exit_code == 0 and result.stderr == ""
    recipe = yaml.safe_load(result.stdout)
    assert list(recipe)[:4] == ["name", "seed", "task", "data"]
    assert set(recipe) == set(DEFAULTS) | {"name"}
    assert recipe["train"] == {**DEFAULTS["train"], "epochs": 2}
    assert recipe["model"] == {"encoder": {"name": "identity"}, "backbone": {"name": "timm", "model": "resnet10t"},
                               "head": {"name": "linear"}}
    assert recipe["data"]["classes"] == ["a", "b", "c"] and recipe["data"]["image_size"] == 48


def test_a_shown_recipe_is_itself_a_valid_recipe_that_resolves_to_itself(tmp_path):
    first = fer("recipe", "show", write(tmp_path, "r.yaml", VALID), "-s", "optim.lr=1e-4").stdout
    again = fer("recipe", "show", write(tmp_path, "resolved.yaml", first))
    assert again.exit_code == 0, again.output
    assert yaml.safe_load(again.stdout) == yaml.safe_load(first)
