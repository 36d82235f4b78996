"""The `fer` command itself: version, help, one-line errors, --debug."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

import fer_core
import fer_core.recipe
from fer_core.cli import main
from fer_core.errors import RecipeError

RECIPE = """
    name: t
    data: {root: data/x}
    model:
      backbone: {name: timm, model: resnet10t}
"""


def fer(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent(RECIPE))
    return path


def test_version():
    result = fer("--version")
    assert result.exit_code == 0
    assert result.stdout == f"fer, version {fer_core.__version__}\n"


def test_help_lists_the_commands():
    result = fer("--help")
    assert result.exit_code == 0
    for command in ("plugins", "recipe", "run", "data"):
        assert f"  {command} " in result.stdout


def test_the_installed_command_runs():
    out = subprocess.run([sys.executable, "-m", "fer_core", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == f"fer, version {fer_core.__version__}\n"


def test_errors_are_one_line_on_stderr_without_a_traceback(recipe):
    result = fer("recipe", "check", recipe, "-s", "train.epochs=0")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == "error: train.epochs: must be in [1, 100000], got 0\n"


def test_debug_shows_the_traceback(recipe):
    result = fer("--debug", "recipe", "check", recipe, "-s", "train.epochs=0")
    assert isinstance(result.exception, RecipeError)
    assert result.exit_code == 1 and result.exc_info[2] is not None
    assert str(result.exception) == "train.epochs: must be in [1, 100000], got 0"


def test_an_unexpected_exception_is_one_line_too(recipe, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("something inside broke")

    monkeypatch.setattr(fer_core.recipe, "load_recipe", broken)
    result = fer("recipe", "check", recipe)
    assert result.exit_code == 2
    assert result.stderr == ("error: internal error: ValueError: something inside broke "
                             "(rerun with --debug for the traceback)\n")
    assert isinstance(fer("--debug", "recipe", "check", recipe).exception, ValueError)


def test_usage_errors_exit_2():
    result = fer("recipe", "check")
    assert result.exit_code == 2 and "Missing argument 'PATH'" in result.stderr


@pytest.mark.parametrize("key", ["[/x]", "[bold]y"])
def test_error_text_is_printed_as_is_not_read_as_markup(tmp_path, key):
    path = tmp_path / "r.yaml"
    path.write_text(textwrap.dedent(RECIPE) + f'"{key}": 1\n')
    result = fer("recipe", "check", path)
    assert result.exit_code == 2
    assert result.stderr == f"error: {key}: unknown key in a recipe\n"


def test_fer_plugins_table_lists_the_builtins():
    result = CliRunner().invoke(main, ["plugins"], env={"FER_PLUGINS": "builtin"}, terminal_width=200)
    assert result.exit_code == 0
    for text in ("builtin", "fer-core", fer_core.__version__, "loaded", "identity", "timm", "cross_entropy"):
        assert text in result.stdout


def test_a_command_that_needs_torch_says_which_extra_installs_it(tmp_path):
    """A torch-free install (fer-core[infer]) lists and checks recipes; training names the extra to install."""
    script = textwrap.dedent("""
        import sys
        for name in ("torch", "torchvision", "timm"):
            sys.modules[name] = None  # as if not installed: importing them raises ModuleNotFoundError
        from click.testing import CliRunner
        from fer_core.cli import main
        listed = CliRunner().invoke(main, ["recipe", "copy", "quickstart", sys.argv[1]])
        assert listed.exit_code == 0, listed.output
        for command in (["run", "quickstart"], ["recipe", "check", "quickstart"]):
            result = CliRunner().invoke(main, command)
            print(result.exit_code, result.output.strip())
    """)
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "q.yaml")], capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout == 2 * ("2 error: this command needs PyTorch and fer-core's training stack (torch is not "
                              "installed): pip install 'fer-core[torch]'\n")
