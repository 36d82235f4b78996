"""The plugin host: real entry-point discovery, fault isolation, allow/deny lists, strict mode, clashes.

One test pip-installs the example plugin of CONTRIBUTING.md's walkthrough and finds it
through real discovery; the failure modes use fake entry points (see conftest.py), which
is fast and leaves the environment alone.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import tempfile
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
from click.testing import CliRunner

import fer_core.plugins
from fer_core.cli import main
from fer_core.errors import PluginError
from fer_core.plugins import PluginHost

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "timm", "webdataset", "numpy", "PIL", "matplotlib")

GOOD = """
    from fer_core import hookimpl

    @hookimpl
    def register_heads(register):
        register("tiny", "fakeplug_tiny_impl:build_tiny", summary="a tiny head", aliases=("wee",))
"""
IMPORT_FAILS = """
    import fer_no_such_dependency
"""
HOOK_RAISES = """
    from fer_core import hookimpl

    @hookimpl
    def register_encoders(register):
        register("half_done", "somewhere:build", summary="registered before the other hook raises")

    @hookimpl
    def register_heads(register):
        raise RuntimeError("boom")
"""
CLAIMS_LINEAR = """
    from fer_core import hookimpl

    @hookimpl
    def register_heads(register):
        register("linear", "somewhere:build")
"""
CLAIMS_TINY = """
    from fer_core import hookimpl

    @hookimpl
    def register_heads(register):
        register("other_tiny", "somewhere:build", aliases=("tiny",))
"""


def fer_command() -> list[str]:
    script = Path(sys.executable).with_name("fer")
    return [str(script)] if script.exists() else [sys.executable, "-m", "fer_core"]


def by_name(host: PluginHost) -> dict[str, fer_core.plugins.PluginInfo]:
    return {p.name: p for p in host.plugins}


# -- a real third-party plugin, installed with pip ----------------------------------
def walkthrough_files() -> dict[str, str]:
    """The files of CONTRIBUTING.md's walkthrough: fenced blocks that start with '# file: PATH'."""
    text = (ROOT / "CONTRIBUTING.md").read_text()
    blocks = re.findall(r"```\w*\n# file: (\S+)\n(.*?)```", text, re.S)
    return {path: f"# file: {path}\n{body}" for path, body in blocks}


def walkthrough_json_entry() -> dict:
    text = (ROOT / "CONTRIBUTING.md").read_text()
    return json.loads(re.search(r"```json\n(.*?)```", text, re.S).group(1))


LISTING_IMPORTS = """
import json, sys
from click.testing import CliRunner
from fer_core.cli import main

result = CliRunner().invoke(main, ["plugins"])
assert result.exit_code == 0 and "cosine-head" in result.output, result.output
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r} or m.startswith("fer_cosine_head"))))
"""


def import_like_site(dist_name: str, monkeypatch) -> None:
    """Put an editable install's source folder on sys.path, as its .pth file does at interpreter start."""
    for file in metadata.distribution(dist_name).files or ():
        if file.name.endswith(".pth"):
            for line in file.read_text().splitlines():
                if line.strip() and not line.startswith(("#", "import")):
                    monkeypatch.syspath_prepend(line.strip())


@pytest.fixture(scope="module")
def walkthrough_plugin(tmp_path_factory):
    """CONTRIBUTING.md's example plugin, pip-installed (editable) for the test and uninstalled after it."""
    try:  # a leftover of a killed test run lives in a temporary folder; anything else is someone's
        source = json.loads(metadata.distribution("fer-cosine-head").read_text("direct_url.json") or "{}")
        if not source.get("url", "").startswith(f"file://{tempfile.gettempdir()}/"):
            pytest.skip("fer-cosine-head is installed already; not replacing it")
    except metadata.PackageNotFoundError:
        pass
    root = tmp_path_factory.mktemp("walkthrough")
    for path, text in walkthrough_files().items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    pip = [sys.executable, "-m", "pip"]
    try:
        out = subprocess.run([*pip, "install", "--no-deps", "--no-build-isolation", "-q", "-e",
                              str(root / "fer-cosine-head")], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        yield root
    finally:
        subprocess.run([*pip, "uninstall", "-y", "-q", "fer-cosine-head"], capture_output=True)


def test_walkthrough_plugin_installed_with_pip_is_found_built_and_used(walkthrough_plugin, monkeypatch,
                                                                          one_thread):
    assert {"fer-cosine-head/pyproject.toml", "fer-cosine-head/src/fer_cosine_head/__init__.py",
            "fer-cosine-head/src/fer_cosine_head/head.py", "recipes/cosine-quickstart.yaml"} <= set(walkthrough_files())

    # Real entry-point discovery, through the installed `fer` command.
    out = subprocess.run([*fer_command(), "plugins", "--json"], capture_output=True, text=True, check=True)
    plugins = {p["name"]: p for p in json.loads(out.stdout)}
    shown = walkthrough_json_entry()  # what CONTRIBUTING.md shows; the import time varies
    assert plugins["cosine-head"].pop("import_ms") < 100 and shown.pop("import_ms") is not None
    assert plugins["cosine-head"] == shown
    assert plugins["builtin"]["status"] == "loaded"

    # Listing imports the plugin's hook module, not its torch code.
    out = subprocess.run([sys.executable, "-c", LISTING_IMPORTS.format(heavy=HEAVY)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == ["fer_cosine_head"]

    # The recipe of the walkthrough checks, and the plugin's own test passes (in this process, which
    # discovers the plugin through the real entry points too).
    import_like_site("fer-cosine-head", monkeypatch)
    try:
        result = CliRunner().invoke(main, ["recipe", "check", str(walkthrough_plugin / "recipes/cosine-quickstart.yaml")])
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith("ok cosine-quickstart: identity -> timm -> cosine (")
        assert fer_core.plugins.get_registry().get("head", "cosine").plugin == "fer-cosine-head"
        spec = importlib.util.spec_from_file_location(
            "walkthrough_test_cosine", walkthrough_plugin / "fer-cosine-head/tests/test_cosine.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.test_core_builds_the_cosine_head()
    finally:
        for name in [m for m in sys.modules if m.startswith("fer_cosine_head")]:
            del sys.modules[name]


def test_fer_plugins_lists_every_installed_plugin_without_importing_torch():
    script = textwrap.dedent(f"""
        import json, sys
        from click.testing import CliRunner
        from fer_core.cli import main
        result = CliRunner().invoke(main, ["plugins", "--json"])
        assert result.exit_code == 0, result.output
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
        print(json.dumps({{"heavy": heavy, "plugins": json.loads(result.output)}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    assert result["heavy"] == []
    installed = {ep.name for ep in metadata.entry_points(group="fer_core")}
    assert {p["name"] for p in result["plugins"]} == installed | {"builtin"}
    assert all(p["status"] == "loaded" for p in result["plugins"]), result["plugins"]


# -- the host with fake entry points -----------------------------------------------
@pytest.fixture
def tiny_impl(fake_plugins):
    fake_plugins.module("fakeplug_tiny_impl", """
        def build_tiny(num_features: int, num_classes: int, width: int = 4):
            return ("tiny", num_features, num_classes, width)
    """)
    return fake_plugins


def test_builtins_come_first_and_belong_to_fer_core(fake_plugins):
    host = PluginHost()
    assert host.plugins[0].name == "builtin" and host.plugins[0].dist == "fer-core"
    assert host.plugins[0].status == "loaded"
    assert {"linear", "mlp"} <= set(host.registry.names("head"))
    assert {c.plugin for c in host.registry.components()} == {"fer-core"}
    assert host.registry.get("loss", "ce").name == "cross_entropy"


def test_a_good_plugin_is_loaded_with_its_components(tiny_impl):
    tiny_impl.dist("fer-tiny", {"tiny": GOOD}, version="2.3")
    host = PluginHost()
    info = by_name(host)["tiny"]
    assert (info.dist, info.version, info.status, info.error) == ("fer-tiny", "2.3", "loaded", None)
    assert [(c.kind, c.name, c.summary, c.aliases) for c in info.components] == [
        ("head", "tiny", "a tiny head", ("wee",))]
    assert host.registry.get("head", "wee").plugin == "fer-tiny"
    assert host.versions() == {"fer-core": fer_core.__version__, "fer-tiny": "2.3"}
    assert info.as_dict()["components"][0] == {"kind": "head", "name": "tiny", "summary": "a tiny head",
                                                "aliases": ["wee"]}


def test_a_plugin_that_fails_to_import_is_reported_and_skipped(tiny_impl):
    tiny_impl.dist("fer-broken", {"broken": IMPORT_FAILS})
    tiny_impl.dist("fer-tiny", {"tiny": GOOD})
    host = PluginHost()
    broken = by_name(host)["broken"]
    assert broken.status == "failed" and broken.components == []
    assert broken.error == "import failed: ModuleNotFoundError: No module named 'fer_no_such_dependency'"
    assert by_name(host)["tiny"].status == "loaded"
    assert host.failures == [broken]
    assert "fer-broken" not in host.versions()


def test_a_plugin_whose_hook_raises_is_reported_and_all_it_registered_is_dropped(tiny_impl):
    tiny_impl.dist("fer-raises", {"raises": HOOK_RAISES})
    tiny_impl.dist("fer-tiny", {"tiny": GOOD})
    host = PluginHost()
    info = by_name(host)["raises"]
    assert info.status == "failed"
    assert info.error == "register_heads raised RuntimeError: boom"
    assert info.components == []
    assert host.registry.find("encoder", "half_done") is None  # registered by its earlier hook
    assert "tiny" in host.registry.names("head")


@pytest.mark.parametrize("source, error", [
    ("from fer_core import hookimpl\n@hookimpl\ndef register_head(register): pass\n",
     "unknown hook 'register_head'; hooks are register_encoders, register_backbones, register_heads"),
    ("from fer_core import hookimpl\n@hookimpl\ndef register_heads(reg): pass\n", "invalid hooks: "),
    ("from fer_core import hookimpl\n@hookimpl\ndef register_heads(register):\n    register('', 'm:f')\n",
     "register_heads raised TypeError: component names must be non-empty strings, got ''"),
    ("from fer_core import hookimpl\n@hookimpl\ndef register_heads(register):\n    register('x', 'no_colon')\n",
     "register_heads raised TypeError: target of 'x' must be 'module:factory' or a callable"),
    ("from fer_core import hookimpl\n@hookimpl\ndef register_heads(register):\n    register('x', 'm:f', aliases='y')\n",
     "register_heads raised TypeError: aliases of 'x' must be a list of names, got 'y'"),
])
def test_malformed_hooks_fail_only_their_plugin(tiny_impl, source, error):
    tiny_impl.dist("fer-bad", {"bad": source})
    tiny_impl.dist("fer-tiny", {"tiny": GOOD})
    host = PluginHost()
    assert by_name(host)["bad"].status == "failed"
    assert by_name(host)["bad"].error.startswith(error)
    assert by_name(host)["tiny"].status == "loaded"


def test_in_a_name_clash_the_first_registration_keeps_the_name_and_the_later_plugin_fails(tiny_impl):
    tiny_impl.dist("fer-tiny", {"tiny": GOOD})
    tiny_impl.dist("fer-copycat", {"copycat": CLAIMS_TINY})
    host = PluginHost()  # entry points in name order: copycat registers first
    assert by_name(host)["copycat"].status == "loaded"
    assert host.registry.get("head", "tiny").plugin == "fer-copycat"
    tiny = by_name(host)["tiny"]
    assert tiny.status == "failed" and tiny.components == []
    assert tiny.error == ("name clash: head 'tiny' is registered by both fer-copycat and fer-tiny; "
                          "uninstall one or skip it with FER_DISABLE_PLUGINS")
    with pytest.raises(PluginError, match="^plugin tiny \\(fer-tiny\\) name clash: head 'tiny' is registered by both"):
        PluginHost(env={"FER_STRICT_PLUGINS": "1"})


def test_a_plugin_claiming_a_builtin_name_clashes_with_fer_core(fake_plugins):
    fake_plugins.dist("fer-mine", {"mine": CLAIMS_LINEAR})
    host = PluginHost()
    assert host.registry.get("head", "linear").plugin == "fer-core"
    assert "head 'linear' is registered by both fer-core and fer-mine" in by_name(host)["mine"].error


def test_disabling_one_side_resolves_a_clash(tiny_impl):
    tiny_impl.dist("fer-tiny", {"tiny": GOOD})
    tiny_impl.dist("fer-copycat", {"copycat": CLAIMS_TINY})
    host = PluginHost(env={"FER_DISABLE_PLUGINS": "fer_copycat"})  # '_' and '-' are the same
    assert by_name(host)["copycat"].status == "disabled"
    assert host.registry.get("head", "tiny").plugin == "fer-tiny"


@pytest.mark.parametrize("env, loaded", [
    ({}, {"builtin", "tiny", "other", "third"}),
    ({"FER_PLUGINS": "tiny"}, {"builtin", "tiny"}),
    ({"FER_PLUGINS": "fer-other, third"}, {"builtin", "other", "third"}),  # distribution names work too
    ({"FER_PLUGINS": "nothing-installed"}, {"builtin"}),
    ({"FER_DISABLE_PLUGINS": "tiny,fer-third"}, {"builtin", "other"}),
    ({"FER_PLUGINS": "tiny,other", "FER_DISABLE_PLUGINS": "other"}, {"builtin", "tiny"}),
])
def test_allow_and_deny_lists(tiny_impl, env, loaded):
    tiny_impl.dist("fer-tiny", {"tiny": GOOD})
    tiny_impl.dist("fer-other", {"other": "x = 1\n"})
    tiny_impl.dist("fer-third", {"third": "y = 2\n"})
    host = PluginHost(env=env)
    status = {p.name: p.status for p in host.plugins}
    assert {n for n, s in status.items() if s == "loaded"} == loaded
    assert {n for n, s in status.items() if s == "disabled"} == set(status) - loaded


def test_a_disabled_plugin_is_never_imported(fake_plugins):
    fake_plugins.dist("fer-broken", {"broken": IMPORT_FAILS})
    host = PluginHost(env={"FER_DISABLE_PLUGINS": "broken"})
    assert by_name(host)["broken"].status == "disabled" and host.failures == []


@pytest.mark.parametrize("source, error", [
    (IMPORT_FAILS, "plugin broken (fer-broken) import failed: ModuleNotFoundError: "
                   "No module named 'fer_no_such_dependency'"),
    (HOOK_RAISES, "plugin broken (fer-broken) register_heads raised RuntimeError: boom"),
])
def test_strict_mode_makes_plugin_failures_fatal(fake_plugins, source, error):
    fake_plugins.dist("fer-broken", {"broken": source})
    with pytest.raises(PluginError) as info:
        PluginHost(env={"FER_STRICT_PLUGINS": "1"})
    assert str(info.value) == error
    for off in ("", "0", "false"):
        assert PluginHost(env={"FER_STRICT_PLUGINS": off}).failures[0].name == "broken"


def test_two_distributions_may_use_the_same_entry_point_name(tiny_impl):
    tiny_impl.dist("fer-tiny", {"tiny": GOOD})
    tiny_impl.dist("fer-tiny-extras", {"tiny": "from fer_core import hookimpl\n@hookimpl\n"
                                               "def register_losses(register):\n    register('tiny_loss', 'm:f')\n"})
    host = PluginHost()
    assert [(p.dist, p.status) for p in host.plugins if p.name == "tiny"] == [
        ("fer-tiny", "loaded"), ("fer-tiny-extras", "loaded")]
    assert host.registry.get("loss", "tiny_loss").plugin == "fer-tiny-extras"


def test_the_process_wide_host_is_cached_until_reset(fake_plugins):
    host = fer_core.plugins.get_host()
    assert fer_core.plugins.get_host() is host
    assert fer_core.plugins.get_registry() is host.registry
    fer_core.plugins.reset()
    assert fer_core.plugins.get_host() is not host


# -- `fer plugins` -----------------------------------------------------------------
def test_fer_plugins_shows_failures_and_keeps_going(tiny_impl):
    tiny_impl.dist("fer-broken", {"broken": IMPORT_FAILS})
    tiny_impl.dist("fer-tiny", {"tiny": GOOD})
    result = CliRunner().invoke(main, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    plugins = {p["name"]: p for p in json.loads(result.output)}
    assert plugins["broken"]["status"] == "failed"
    assert "fer_no_such_dependency" in plugins["broken"]["error"]
    assert plugins["tiny"]["components"] == [{"kind": "head", "name": "tiny", "summary": "a tiny head",
                                              "aliases": ["wee"]}]
    table = CliRunner().invoke(main, ["plugins"], terminal_width=200)
    assert table.exit_code == 0
    assert "fer-broken" in table.output and "failed" in table.output and "tiny" in table.output


def test_fer_plugins_in_strict_mode_fails_with_one_line(fake_plugins):
    fake_plugins.dist("fer-broken", {"broken": IMPORT_FAILS})
    result = CliRunner().invoke(main, ["plugins"], env={"FER_STRICT_PLUGINS": "1"})
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == ("error: plugin broken (fer-broken) import failed: ModuleNotFoundError: "
                             "No module named 'fer_no_such_dependency'\n")


def test_fer_plugins_reports_a_clash_and_keeps_working(tiny_impl):
    tiny_impl.dist("fer-tiny", {"tiny": GOOD})
    tiny_impl.dist("fer-copycat", {"copycat": CLAIMS_TINY})
    result = CliRunner().invoke(main, ["plugins", "--json"])
    assert result.exit_code == 0
    listed = {p["name"]: p for p in json.loads(result.stdout)}
    assert listed["tiny"]["status"] == "failed" and "registered by both" in listed["tiny"]["error"]
    fer_core.plugins.reset()  # the host is cached per process
    strict = CliRunner().invoke(main, ["plugins"], env={"FER_STRICT_PLUGINS": "1"})
    assert strict.exit_code == 2
    assert strict.stderr.startswith("error: plugin tiny (fer-tiny) name clash: head 'tiny' is registered by both "
                                    "fer-copycat and fer-tiny")
    assert strict.stderr.count("\n") == 1
