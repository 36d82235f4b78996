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
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType

import pluggy

from fer_core import hookspecs
from fer_core.errors import PluginError
from fer_core.providers import CATALOGUE, missing_hint
from fer_core.registry import KINDS, Component, Registry, normal_dist

SLOW_IMPORT_S = 0.1  # a hook module should import in well under this (CPU seconds)

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
    summary: str = ""  # the distribution's one-line summary
    import_s: float | None = None  # CPU seconds spent importing the hook module
    imports_torch: bool = False

    @property
    def warnings(self) -> list[str]:
        """Why this plugin slows down every `fer` command (``fer plugins`` shows them)."""
        out = []
        if self.imports_torch:
            out.append(f"plugin {self.name} ({self.dist}): its hook module imports torch; import it inside the "
                       f"factories so `fer plugins` and `fer recipe` stay fast")
        if self.import_s is not None and self.import_s > SLOW_IMPORT_S:
            out.append(f"plugin {self.name} ({self.dist}): its hook module takes {self.import_s * 1000:.0f} ms to "
                       f"import (limit {SLOW_IMPORT_S * 1000:.0f} ms); move heavy imports into the factories")
        return out

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
            "summary": self.summary,
            "import_ms": None if self.import_s is None else round(self.import_s * 1000, 1),
            "warnings": self.warnings,
            "components": [
                {"kind": c.kind, "name": c.name, "summary": c.summary, "aliases": list(c.aliases)}
                for c in self.components
            ],
        }


def _names(value: str | None) -> set[str]:
    return {n.strip() for n in (value or "").split(",") if n.strip()}


def _imports_torch(module: ModuleType) -> bool:
    return any(isinstance(v, ModuleType) and v.__name__.partition(".")[0] == "torch" for v in vars(module).values())


def _summary(dist: metadata.Distribution | None) -> str:
    meta = getattr(dist, "metadata", None)  # None for a distribution without metadata
    return (meta.get("Summary") or "") if meta is not None else ""


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
        self.allow = {normal_dist(n) for n in _names(env.get("FER_PLUGINS"))}
        self.deny = {normal_dist(n) for n in _names(env.get("FER_DISABLE_PLUGINS"))}
        self.plugins: list[PluginInfo] = []
        self.registry = Registry()
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)
        self.registry.missing_hint = self._missing_hint
        self._load()

    def _missing_hint(self, kind: str, name: str) -> str:
        """Why a component is not there: its plugin failed or is disabled, or which one to install."""
        dist = CATALOGUE.get((kind, name))
        for p in self.plugins:
            if dist and normal_dist(p.dist) == normal_dist(dist) and p.status != "loaded":
                return f"; {p.dist} provides it but is {p.status}" + (f" ({p.error})" if p.error else "")
        return missing_hint(kind, name, {normal_dist(p.dist) for p in self.plugins})

    # -- loading -----------------------------------------------------------
    def _load(self) -> None:
        from fer_core import __version__, builtin

        self._add_module(PluginInfo("builtin", "fer-core", __version__), builtin)
        self.plugins[0].summary = "built-in components"
        points = sorted(metadata.entry_points(group=GROUP), key=lambda e: (e.name, e.dist.name if e.dist else ""))
        for ep in points:  # a stable order: in a name clash the first registration keeps the name
            dist = ep.dist.name if ep.dist else "?"
            info = PluginInfo(ep.name, dist, ep.dist.version if ep.dist else "?", summary=_summary(ep.dist))
            self.plugins.append(info)
            if not self._wanted(info):
                info.status = "disabled"
                continue
            had_torch, started = "torch" in sys.modules, time.process_time()
            try:
                module = ep.load()
            except Exception as exc:
                self._fail(info, f"import failed: {type(exc).__name__}: {exc}")
                continue
            info.import_s = time.process_time() - started
            info.imports_torch = (not had_torch and "torch" in sys.modules) or _imports_torch(module)
            self._add_module(info, module, append=False)
        for kind in KINDS:
            self._call_hook(kind)

    def _wanted(self, info: PluginInfo) -> bool:
        names = {normal_dist(info.name), normal_dist(info.dist)}
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
                _found.append(Component(kind, name, target, str(summary), _info.dist, tuple(aliases),
                                        _info.version))

            try:
                impl.function(register=register)
            except Exception as exc:
                self._fail(info, f"{HOOKS[kind]} raised {type(exc).__name__}: {exc}")
                continue
            for component in found:
                try:
                    self.registry.add(component)
                except PluginError as exc:  # a name clash: the earlier registration keeps the name
                    self._fail(info, f"name clash: {exc}")
                    break
                info.components.append(component)

    def _fail(self, info: PluginInfo, error: str) -> None:
        info.status, info.error = "failed", error
        if self._pm.get_plugin(info.key) is not None:
            self._pm.unregister(name=info.key)
        for component in info.components:  # drop what it registered before failing
            self.registry.remove(component)
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
