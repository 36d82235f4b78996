"""Plugin host: entry-point discovery, allow/deny lists, fault isolation.

Plugins are modules named by entry points in the group ``fer_core``. Each one's
hook implementations are called separately, so a plugin that fails to import
or whose hook raises is recorded and skipped while everything else works.
``FER_STRICT_PLUGINS=1`` makes such failures fatal; ``FER_PLUGINS=a,b`` loads
only the named plugins and ``FER_DISABLE_PLUGINS=a,b`` skips some (by entry
point or distribution name). Built-in components come from fer-core's own
plugin module, registered through the same hooks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType

import pluggy

from fer_core import hookspecs
from fer_core.errors import PluginError
from fer_core.registry import KINDS, Component, Registry

GROUP = "fer_core"
HOOKS = {kind: "register_losses" if kind == "loss" else f"register_{kind}s" for kind in KINDS}


@dataclass
class PluginInfo:
    name: str  # entry-point name
    dist: str  # distribution that provides it
    version: str
    status: str = "loaded"  # loaded | failed | disabled
    error: str | None = None
    components: list[Component] = field(default_factory=list)

    @property
    def key(self) -> str:
        """Unique within a host: two distributions may use the same entry-point name."""
        return f"{self.dist}:{self.name}"

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "distribution": self.dist,
            "version": self.version,
            "status": self.status,
            "error": self.error,
            "components": [
                {"kind": c.kind, "name": c.name, "summary": c.summary, "aliases": list(c.aliases)}
                for c in self.components
            ],
        }


def _names(value: str | None) -> set[str]:
    return {n.strip() for n in (value or "").split(",") if n.strip()}


def _normal(name: str) -> str:
    return name.lower().replace("_", "-")


def _check_registration(name: object, target: object, aliases: object) -> None:
    """Catch a malformed ``register`` call inside the hook, so only that plugin is skipped."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"component names must be non-empty strings, got {name!r}")
    if not callable(target) and not (isinstance(target, str) and ":" in target):
        raise TypeError(f"target of {name!r} must be 'module:factory' or a callable, got {target!r}")
    if isinstance(aliases, str) or not all(isinstance(a, str) and a for a in aliases):
        raise TypeError(f"aliases of {name!r} must be a list of names, got {aliases!r}")


class PluginHost:
    """Loads plugins once and builds the component registry from their hooks."""

    def __init__(self, env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        self.strict = env.get("FER_STRICT_PLUGINS", "") not in ("", "0", "false", "no")
        self.allow = {_normal(n) for n in _names(env.get("FER_PLUGINS"))}
        self.deny = {_normal(n) for n in _names(env.get("FER_DISABLE_PLUGINS"))}
        self.plugins: list[PluginInfo] = []
        self.registry = Registry()
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)
        self._load()

    # -- loading -----------------------------------------------------------
    def _load(self) -> None:
        from fer_core import __version__, builtin

        self._add_module(PluginInfo("builtin", "fer-core", __version__), builtin)
        for ep in sorted(metadata.entry_points(group=GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist else "?"
            info = PluginInfo(ep.name, dist, ep.dist.version if ep.dist else "?")
            self.plugins.append(info)
            if not self._wanted(info):
                info.status = "disabled"
                continue
            try:
                module = ep.load()
            except Exception as exc:
                self._fail(info, f"import failed: {type(exc).__name__}: {exc}")
                continue
            self._add_module(info, module, append=False)
        for kind in KINDS:
            self._call_hook(kind)

    def _wanted(self, info: PluginInfo) -> bool:
        names = {_normal(info.name), _normal(info.dist)}
        if self.allow and not names & self.allow:
            return False
        return not names & self.deny

    def _add_module(self, info: PluginInfo, module: ModuleType, append: bool = True) -> None:
        if append:
            self.plugins.append(info)
        unknown = [
            n
            for n in dir(module)
            if getattr(getattr(module, n), f"{hookspecs.PROJECT}_impl", None) is not None
            and n not in HOOKS.values()
        ]
        if unknown:
            self._fail(info, f"unknown hook {unknown[0]!r}; hooks are {', '.join(HOOKS.values())}")
            return
        try:
            self._pm.register(module, name=info.key)
        except Exception as exc:
            self._fail(info, f"invalid hooks: {exc}")

    def _call_hook(self, kind: str) -> None:
        by_key = {p.key: p for p in self.plugins}
        for impl in getattr(self._pm.hook, HOOKS[kind]).get_hookimpls():  # registration order: built-ins first
            info = by_key[impl.plugin_name]
            if info.status != "loaded":
                continue
            found: list[Component] = []

            def register(name, target, *, summary="", aliases=(), _found=found, _info=info):
                _check_registration(name, target, aliases)
                _found.append(Component(kind, name, target, str(summary), _info.dist, tuple(aliases)))

            try:
                impl.function(register=register)
            except Exception as exc:
                self._fail(info, f"{HOOKS[kind]} raised {type(exc).__name__}: {exc}")
                continue
            for component in found:  # a name clash is always an error
                self.registry.add(component)
            info.components.extend(found)

    def _fail(self, info: PluginInfo, error: str) -> None:
        info.status, info.error = "failed", error
        if self._pm.get_plugin(info.key) is not None:
            self._pm.unregister(name=info.key)
        for component in info.components:  # drop what it registered before failing
            table = self.registry.components[component.kind]
            for n in (component.name, *component.aliases):
                table.pop(n, None)
        info.components.clear()
        if self.strict:
            raise PluginError(f"plugin {info.name} ({info.dist}) {error}")

    @property
    def failures(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.status == "failed"]

    def versions(self) -> dict[str, str]:
        """Distribution -> version of every loaded plugin (stored in checkpoints)."""
        return {p.dist: p.version for p in self.plugins if p.status == "loaded"}


_HOST: PluginHost | None = None


def get_host() -> PluginHost:
    """The process-wide plugin host, loaded on first use."""
    global _HOST
    if _HOST is None:
        _HOST = PluginHost()
    return _HOST


def get_registry() -> Registry:
    return get_host().registry


def reset() -> None:
    """Forget the loaded plugins (tests, or after installing a plugin)."""
    global _HOST
    _HOST = None
