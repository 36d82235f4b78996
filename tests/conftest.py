"""Shared fixtures: a fresh plugin host per test, and fake plugins behind patched entry points."""

from __future__ import annotations

import importlib
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

import fer_core.plugins

PLUGIN_SWITCHES = ("FER_PLUGINS", "FER_DISABLE_PLUGINS", "FER_STRICT_PLUGINS")


@pytest.fixture(autouse=True)
def fresh_plugin_host(monkeypatch):
    """No test sees a host cached by another, nor the plugin switches of the calling shell."""
    for name in PLUGIN_SWITCHES:
        monkeypatch.delenv(name, raising=False)
    fer_core.plugins.reset()
    yield
    fer_core.plugins.reset()


@dataclass
class FakeDist:
    name: str
    version: str


@dataclass
class FakeEntryPoint:
    name: str
    value: str
    dist: FakeDist
    group: str = fer_core.plugins.GROUP

    def load(self):
        return importlib.import_module(self.value)


class FakePlugins:
    """Modules written to a temporary folder and entry points that name them.

    While the fixture is active, ``PluginHost`` discovers exactly these entry points
    (the built-ins still load); the real installed plugins are hidden.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.entry_points: list[FakeEntryPoint] = []

    def module(self, name: str, source: str) -> str:
        (self.folder / f"{name}.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        return name

    def dist(self, dist: str, entry_points: dict[str, str], version: str = "1.0") -> None:
        """Declare distribution ``dist`` with entry points {entry-point name: module source}."""
        for ep_name, source in entry_points.items():
            module = self.module(f"fakeplug_{dist}_{ep_name}".replace("-", "_"), source)
            self.entry_points.append(FakeEntryPoint(ep_name, module, FakeDist(dist, version)))

    def discover(self, group: str) -> list[FakeEntryPoint]:
        return [ep for ep in self.entry_points if ep.group == group]


@pytest.fixture
def fake_plugins(tmp_path, monkeypatch):
    folder = tmp_path / "fake_plugins"
    folder.mkdir()
    fakes = FakePlugins(folder)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setattr(fer_core.plugins, "metadata", SimpleNamespace(entry_points=fakes.discover))
    yield fakes
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", "") or "").startswith(str(folder)):
            del sys.modules[name]
