"""Which distribution provides a component that is not installed, and the pip command for it.

Two sources: the versions a checkpoint recorded (``recorded``), and a catalogue of the
published plugins of this project (``CATALOGUE``; tests check it against the plugins in the
repository, so it cannot drift). Torch-free: the registry uses it for its messages.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from fer_core.registry import normal_dist

# (kind, component name) -> distribution, for the plugins published with fer-core
CATALOGUE: dict[tuple[str, str], str] = {
    ("encoder", "psp"): "fer-psp",
    ("encoder", "e4e"): "fer-e4e",
    ("encoder", "vaegan"): "fer-vaegan",
    ("backbone", "latent_vit"): "fer-latentvit",
    ("backbone", "hybrid_vit"): "fer-hybridvit",
    ("loss", "focal"): "fer-focal-cutmix",
    **{("augment", name): "fer-focal-cutmix"
       for name in ("cutmix", "mixup", "cutmix_or_mixup", "latent_cutmix", "latent_mixup")},
}

_recorded: dict[str, str] = {}  # distribution -> version, of the checkpoint being loaded


@contextlib.contextmanager
def recorded(versions: Mapping[str, str] | None) -> Iterator[None]:
    """While a checkpoint's model is rebuilt: the distributions and versions it was trained with."""
    global _recorded
    before, _recorded = _recorded, dict(versions or {})
    try:
        yield
    finally:
        _recorded = before


def _pip(dist: str, version: str | None) -> str:
    return f"pip install '{dist}=={version}'" if version and version != "?" else f"pip install {dist}"


def missing_hint(kind: str, name: str, installed: set[str]) -> str:
    """'; it is provided by fer-psp 0.1.0 (not installed): pip install ...' or ''."""
    dist = CATALOGUE.get((kind, name))
    if dist is not None:
        version = _recorded.get(dist)
        source = f" {version}, recorded in the checkpoint" if version else ""
        return f"; it is provided by {dist}{source}, which is not installed: {_pip(dist, version)}"
    absent = {d: v for d, v in _recorded.items() if normal_dist(d) not in installed}
    if len(absent) == 1:
        (dist, version), = absent.items()
        return (f"; the checkpoint was trained with {dist} {version}, which is not installed: "
                f"{_pip(dist, version)}")
    if absent:
        listed = ", ".join(f"{d} {v}" for d, v in sorted(absent.items()))
        return f"; the checkpoint was trained with {listed}, not installed here: pip install the one that provides it"
    return ""
