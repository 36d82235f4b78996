"""Packaged recipes: `fer recipe list/copy`, names in every recipe command and in `extends`, plugin recipes."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from click.testing import CliRunner

import fer_core.recipes
from fer_core.cli import main
from fer_core.errors import RecipeError
from fer_core.plugins import get_registry
from fer_core.recipe import load_recipe
from fer_core.recipes import find, locate, shipped

CORE_RECIPES = Path(fer_core.recipes.__file__).parent


def fer(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def fake_entry_points(monkeypatch, plugins: dict[str, str]) -> None:
    """Entry points {distribution: package} in fer_core's group, seen by the recipe lookup only."""
    eps = [SimpleNamespace(name=dist, value=package, dist=SimpleNamespace(name=dist))
           for dist, package in plugins.items()]
    monkeypatch.setattr(fer_core.recipes, "metadata", SimpleNamespace(entry_points=lambda group: eps))


def make_package(root: Path, package: str, recipes: dict[str, str]) -> None:
    (root / package / "recipes").mkdir(parents=True)
    (root / package / "__init__.py").write_text("raise RuntimeError('the recipe lookup must not import me')\n")
    for name, text in recipes.items():
        (root / package / "recipes" / f"{name}.yaml").write_text(text)


def test_every_packaged_recipe_validates_and_describes_itself():
    recipes = {r.name: r for r in shipped()}
    assert len(recipes) == len(shipped())
    core = {p.stem for p in CORE_RECIPES.glob("*.yaml")}
    assert core <= set(recipes) and "quickstart" in core and len(core) >= 10
    assert {"vaegan-pretrain", "vaegan-pretrain-synth", "vaegan-latentvit"} <= set(recipes)
    registry = get_registry()
    for name, recipe in recipes.items():
        resolved = load_recipe(recipe.path, registry=registry)
        assert resolved["name"] == name
        assert 10 < len(resolved["description"]) <= 120 and "\n" not in resolved["description"], name


def test_recipe_list_shows_origin_description_and_needs():
    result = fer("recipe", "list", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert rows["quickstart"]["origin"] == "fer-core"
    assert rows["quickstart"]["description"].startswith("A small timm CNN")
    assert rows["quickstart"]["needs"] == {"data": ["synthetic faces in data/synth (drawn on the first run)"],
                                           "files": [], "plugins": []}
    assert rows["latentvit-psp-focal"]["needs"] == {   # through extends: latentvit-psp
        "data": ["data/fer2013-shards"], "files": ["pretrained/psp_ffhq_encode.pt"],
        "plugins": ["fer-psp", "fer-latentvit", "fer-focal-cutmix"]}
    assert rows["hybridvit-full"]["needs"]["files"] == ["pretrained/psp_ffhq_encode.pt",
                                                        "pretrained/vit_tiny_patch16_224.safetensors"]
    assert rows["vaegan-pretrain"]["origin"] == "fer-vaegan"
    table = fer("recipe", "list")
    assert table.exit_code == 0 and "quickstart" in table.output and "fer-vaegan" in table.output


def test_a_packaged_name_works_in_every_recipe_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no recipe files here
    shown = fer("recipe", "show", "vit-tiny", "-s", "train.epochs=2")
    assert shown.exit_code == 0, shown.output
    assert yaml.safe_load(shown.output)["train"]["epochs"] == 2
    assert fer("recipe", "check", "quickstart.yaml").output.startswith("ok quickstart: identity -> timm -> linear")
    (tmp_path / "mine.yaml").write_text("extends: quickstart\nname: mine\ntrain: {epochs: 1}\n")
    mine = load_recipe("mine.yaml")
    assert mine["name"] == "mine" and mine["train"]["epochs"] == 1
    assert mine["model"]["backbone"] == {"name": "timm", "model": "resnet10t"}  # from the packaged quickstart


def test_a_file_path_wins_over_a_packaged_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = fer("recipe", "copy", "quickstart")
    assert result.exit_code == 0, result.output
    copy = tmp_path / "quickstart.yaml"
    assert copy.read_text() == (CORE_RECIPES / "quickstart.yaml").read_text()  # comments kept, to edit
    copy.write_text(copy.read_text().replace("epochs: 10", "epochs: 3"))
    for reference in ("quickstart", "quickstart.yaml", str(copy)):
        assert locate(reference) == Path(reference if reference.endswith(".yaml") else f"{reference}.yaml")
        assert load_recipe(reference)["train"]["epochs"] == 3
    (tmp_path / "base.yaml").write_text("name: base\ndata: {root: here}\nmodel: {backbone: {name: timm}}\n")
    (tmp_path / "child.yaml").write_text("extends: base\n")  # a file beside it wins over any packaged name
    assert load_recipe(tmp_path / "child.yaml")["data"]["root"] == "here"


def test_recipe_copy_to_a_folder_never_overwrites(tmp_path):
    assert fer("recipe", "copy", "resnet18-focal", tmp_path).exit_code == 0
    target = tmp_path / "resnet18-focal.yaml"
    assert yaml.safe_load(target.read_text())["extends"] == "resnet18.yaml"
    assert load_recipe(target)["name"] == "resnet18-focal"  # its parent is found among the packaged recipes
    target.write_text("name: edited\n")
    assert one_line_error(fer("recipe", "copy", "resnet18-focal", target)).endswith(
        "exists; pass --force to overwrite it, or another DEST")
    assert target.read_text() == "name: edited\n"
    assert fer("recipe", "copy", "resnet18-focal", target, "--force").exit_code == 0
    assert "Mixup" in target.read_text()


def test_unknown_names_are_one_line_errors_with_a_suggestion(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert one_line_error(fer("run", "quickstrat")) == (
        "error: quickstrat: recipe file not found, nor a packaged recipe (`fer recipe list` shows them); "
        "did you mean 'quickstart'?")
    assert "did you mean 'vit-tiny'" in one_line_error(fer("recipe", "copy", "vit-tinny"))
    (tmp_path / "child.yaml").write_text("extends: resnet81\n")
    assert one_line_error(fer("recipe", "check", "child.yaml")) == (
        f"error: child.yaml: extends: resnet81: recipe file not found, looked in {tmp_path} and the packaged "
        f"recipes (`fer recipe list` shows them); did you mean 'resnet18'?")


def test_plugins_ship_recipes_found_without_importing_them(tmp_path, monkeypatch):
    make_package(tmp_path, "fer_shipper", {"shipped": "extends: quickstart\nname: shipped\n",
                                           "shipped-more": "extends: shipped\ntrain: {epochs: 1}\n",
                                           "shipped-broken": "extends: nowhere\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    fake_entry_points(monkeypatch, {"fer-shipper": "fer_shipper", "fer-broken": "no_such_module"})
    assert find("shipped").origin == "fer-shipper" and find("quickstart").origin == "fer-core"
    assert load_recipe("shipped-more")["train"]["epochs"] == 1
    rows = {row["name"]: row for row in json.loads(fer("recipe", "list", "--json").output)}
    assert rows["shipped"]["origin"] == "fer-shipper" and rows["shipped"]["description"] == ""
    assert rows["shipped-broken"]["needs"]["error"][0].startswith("shipped-broken.yaml: extends: nowhere: ")
    table = fer("recipe", "list")
    assert table.exit_code == 0 and "shipped-broken" in table.output and "error: " in table.output


def test_a_recipe_name_shipped_twice_names_both_distributions(tmp_path, monkeypatch):
    make_package(tmp_path, "fer_clash", {"quickstart": "name: quickstart\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    fake_entry_points(monkeypatch, {"fer-clash": "fer_clash"})
    assert [r.origin for r in shipped() if r.name == "quickstart"] == ["fer-core", "fer-clash"]
    with pytest.raises(RecipeError, match="recipe 'quickstart' is shipped by both fer-core .* and fer-clash "):
        find("quickstart")
    assert "run the one you mean by its path" in one_line_error(fer("run", "quickstart"))
    assert fer("recipe", "check", CORE_RECIPES / "quickstart.yaml").exit_code == 0  # by path: no ambiguity
    assert find("vit-tiny").origin == "fer-core"  # other names are unaffected
