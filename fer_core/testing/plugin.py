"""``check_plugin``: an installed plugin loads on its own, registers lazily and imports no torch."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

from fer_core.plugins import GROUP, PluginHost
from fer_core.registry import Component, normal_dist
from fer_core.testing.subject import ConformanceError

IMPORTS_TORCH = "import sys, importlib; importlib.import_module({module!r}); print('torch' in sys.modules)"


def check_plugin(dist: str) -> list[Component]:
    """Check the installed distribution ``dist`` (e.g. ``"fer-tiny-cnn"``) and return its components.

    * it has an entry point in the ``fer_core`` group, and loads with no error when it is
      the only plugin (``FER_PLUGINS``), so it depends on no other plugin's side effects;
    * it registers at least one component, each with a summary and a ``"module:factory"``
      target (imported only when built), not a callable;
    * importing its hook module does not import torch, so ``fer plugins`` stays instant.
    """
    label = f"plugin {dist}"
    points = [ep for ep in metadata.entry_points(group=GROUP) if ep.dist and normal_dist(ep.dist.name) == normal_dist(dist)]
    if not points:
        raise ConformanceError(f"{label}: no entry point in group '{GROUP}' is installed; add "
                               f"[project.entry-points.{GROUP}] to pyproject.toml and pip install the package")
    host = PluginHost(env={"FER_PLUGINS": dist, "FER_STRICT_PLUGINS": ""})
    infos = [p for p in host.plugins if normal_dist(p.dist) == normal_dist(dist)]
    for info in infos:
        if info.status != "loaded":
            raise ConformanceError(f"{label}: entry point {info.name} {info.status}: {info.error}")
    components = [c for info in infos for c in info.components]
    if not components:
        raise ConformanceError(f"{label}: its hooks register no component")
    for c in components:
        if not isinstance(c.target, str):
            raise ConformanceError(f"{label}: {c.kind} '{c.name}' is registered with a callable; register "
                                   f"'module:factory' so that listing plugins imports nothing heavy")
        if not c.summary.strip():
            raise ConformanceError(f"{label}: {c.kind} '{c.name}' has no summary (shown by `fer plugins`)")
    for ep in points:
        probe = subprocess.run([sys.executable, "-c", IMPORTS_TORCH.format(module=ep.value.partition(":")[0])],
                               capture_output=True, text=True, timeout=120)
        if probe.returncode != 0:
            raise ConformanceError(f"{label}: importing {ep.value} fails: {probe.stderr.strip().splitlines()[-1:]}")
        if probe.stdout.strip() == "True":
            raise ConformanceError(f"{label}: importing its hook module {ep.value} imports torch; import torch "
                                   f"only in the modules that the 'module:factory' targets name")
    return components
