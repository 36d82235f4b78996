"""Source formats that ``fer data pack`` reads; one module each.

A format module has ``scan(source, dropped) -> list[SourceSample]`` (samples in a deterministic
order, image reads deferred; rows it refuses are counted in ``dropped``) and ``EXTRAS``, the
extra per-sample fields it writes ("votes", "va"); optionally ``META``, the per-sample attributes its
samples carry (``fer_core.data.meta.Field`` by name).
"""

from __future__ import annotations

import importlib
from types import ModuleType

FORMATS = {
    "imagefolder": "fer_core.data.formats.imagefolder",
    "fer2013-csv": "fer_core.data.formats.fer2013",
    "ferplus": "fer_core.data.formats.ferplus",
    "rafdb": "fer_core.data.formats.rafdb",
    "affectnet": "fer_core.data.formats.affectnet",
}


def load_format(name: str) -> ModuleType:
    """The module of a source format; a ValueError lists the known ones."""
    if name not in FORMATS:
        raise ValueError(f"unknown source format {name!r}; choose one of {', '.join(FORMATS)}")
    return importlib.import_module(FORMATS[name])
