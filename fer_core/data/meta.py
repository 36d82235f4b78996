"""Per-sample fields beyond the class: who is in the image and how it was taken.

A source format declares the fields it keeps (``META``: name -> :class:`Field`) and gives each
sample a flat ``{name: value}`` dict; the packer stores it in the sample's ``meta.json`` and
describes every field in ``dataset.json`` under ``meta``::

    "meta": {
      "gender": {"kind": "category", "values": ["male", "female", "unsure"],
                 "description": "...", "splits": {"train": {"counts": {"male": 5, ...}, "missing": 0}}},
      "yaw":    {"kind": "number", "range": [-22, 22], "unit": "degrees", "description": "...",
                 "splits": {"train": {"count": 9, "missing": 0, "min": -21.3, "max": 20.8, "mean": 0.4,
                                      "histogram": {"edges": [-22, ..., 22], "counts": [...]}}}}
    }

Category fields (attributes such as gender, race, age group, skin tone) group samples for
``fer eval --by``; number fields (angles, intensities, valence/arousal) are summarised with a
range and a histogram. A sample may lack a field (``missing``). Nothing here imports torch.
"""

from __future__ import annotations

import json
import math
import os
import tarfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fer_core.data.shards import read_manifest, split_shard_paths
from fer_core.data.tarstream import tar_samples
from fer_core.errors import DataError

META_FIELD = "meta.json"  # the shard field of a sample's per-sample values
HISTOGRAM_BINS = 10


@dataclass(frozen=True)
class Field:
    """One per-sample field: ``category`` (one of ``values``) or ``number`` (within ``range``)."""

    kind: str
    description: str
    values: tuple[str, ...] = ()
    range: tuple[float, float] | None = None
    unit: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("category", "number"):
            raise ValueError(f"field kind must be 'category' or 'number', not {self.kind!r}")
        if self.kind == "category" and not self.values:
            raise ValueError("a category field lists its values")
        if self.kind == "number" and (self.range is None or not self.range[0] < self.range[1]):
            raise ValueError("a number field has a range (low, high) with low < high")

    def check(self, name: str, value: Any) -> None:
        if self.kind == "category" and value not in self.values:
            raise ValueError(f"meta field {name!r}: {value!r} is not one of {', '.join(self.values)}")
        if self.kind == "number" and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value)):
            raise ValueError(f"meta field {name!r}: {value!r} is not a finite number")

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "description": self.description}
        if self.kind == "category":
            out["values"] = list(self.values)
        else:
            out["range"] = list(self.range)
            if self.unit:
                out["unit"] = self.unit
        return out


def encode_meta(fields: Mapping[str, Field], meta: Mapping[str, Any]) -> bytes:
    """A sample's ``meta.json`` bytes; a ValueError for an undeclared field or a value it does not allow."""
    for name, value in meta.items():
        if name not in fields:
            raise ValueError(f"meta field {name!r} is not declared (declared: {', '.join(fields) or 'none'})")
        fields[name].check(name, value)
    return json.dumps(dict(meta), sort_keys=True).encode()


@dataclass
class MetaSummary:
    """Counts (category fields) and ranges and histograms (number fields) per split, for the manifest."""

    fields: Mapping[str, Field]
    seen: bool = False  # whether any sample had a value
    _splits: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, split: str, meta: Mapping[str, Any]) -> None:
        """Count one written sample of ``split`` with its values (empty: it has none)."""
        entry = self._splits.setdefault(split, {"n": 0, "values": {name: [] for name in self.fields}})
        entry["n"] += 1
        for name, value in meta.items():
            entry["values"][name].append(value)
            self.seen = True

    def section(self) -> dict[str, Any]:
        """The manifest's ``meta`` section (empty when no field is declared)."""
        out = {}
        for name, spec in self.fields.items():
            splits = {}
            for split, entry in self._splits.items():
                values = entry["values"][name]
                summary = _category(spec, values) if spec.kind == "category" else _number(spec, values)
                splits[split] = {**summary, "missing": entry["n"] - len(values)}
            out[name] = {**spec.describe(), "splits": splits}
        return out


def _category(spec: Field, values: list) -> dict[str, Any]:
    counts = Counter(values)
    return {"counts": {value: counts[value] for value in spec.values}}


def _number(spec: Field, values: list) -> dict[str, Any]:
    low, high = spec.range
    width = (high - low) / HISTOGRAM_BINS
    histogram = [0] * HISTOGRAM_BINS
    for value in values:  # values outside the range fall into the end bins
        histogram[min(max(int((value - low) // width), 0), HISTOGRAM_BINS - 1)] += 1
    stats = {"min": min(values), "max": max(values), "mean": round(sum(values) / len(values), 6)} if values else {}
    return {"count": len(values), **stats,
            "histogram": {"edges": [round(low + i * width, 6) for i in range(HISTOGRAM_BINS + 1)],
                          "counts": histogram}}


# ---- reading -----------------------------------------------------------------------------------

def category_fields(manifest: Mapping[str, Any]) -> list[str]:
    return [name for name, spec in (manifest.get("meta") or {}).items() if spec.get("kind") == "category"]


def check_attribute(root: str | os.PathLike, manifest: Mapping[str, Any], name: str) -> None:
    """A DataError unless ``name`` is a category field of the data set at ``root``."""
    fields = manifest.get("meta") or {}
    usable = category_fields(manifest)
    if name in usable:
        return
    if name in fields:
        raise DataError(f"{root}: meta field {name!r} is a {fields[name].get('kind')}, not a category; "
                        f"group by one of: {', '.join(usable) or 'none'}")
    have = f"it has {', '.join(usable)}" if usable else "it has no per-sample attributes (`fer data info` lists them)"
    raise DataError(f"{root}: no per-sample attribute {name!r}; {have}")


def read_meta(root: str | os.PathLike, split: str, manifest: Mapping[str, Any] | None = None) -> dict[str, dict]:
    """``{sample key: {field: value}}`` of one split, read from the shards' ``meta.json`` files only."""
    manifest = manifest if manifest is not None else read_manifest(root)
    out: dict[str, dict] = {}
    for path in split_shard_paths(root, split, manifest):
        try:
            for sample in tar_samples(path, select=lambda name: name.endswith("." + META_FIELD)):
                out[sample["__key__"]] = json.loads(sample[META_FIELD])
        except FileNotFoundError:
            raise DataError(f"shard {path} is missing; re-create the data set with `fer data pack`") from None
        except (tarfile.ReadError, ValueError) as exc:
            raise DataError(f"{path}: per-sample attributes are unreadable ({exc}); re-pack the data set") from None
    return out


# ---- `fer data info` ---------------------------------------------------------------------------

def meta_table(meta: Mapping[str, Any]):
    """A rich table of each field per split: counts per value, or the range and mean of numbers."""
    from rich.table import Table

    splits = list(dict.fromkeys(s for spec in meta.values() for s in spec.get("splits", {})))
    table = Table(title="per-sample attributes")
    table.add_column("field")
    table.add_column("value")
    for split in splits:
        table.add_column(split, justify="right")
    for name, spec in meta.items():
        per_split = [spec.get("splits", {}).get(s, {}) for s in splits]
        if spec.get("kind") == "category":
            rows = [(value, [str(e.get("counts", {}).get(value, 0)) for e in per_split]) for value in spec["values"]]
        else:
            rows = [(f"{spec.get('unit') or 'value'}", [_number_cell(e) for e in per_split])]
        if any(e.get("missing") for e in per_split):
            rows.append(("(missing)", [str(e.get("missing", 0)) for e in per_split]))
        for i, (value, cells) in enumerate(rows):
            table.add_row(name if i == 0 else "", value, *cells, end_section=i == len(rows) - 1)
    return table


def _number_cell(entry: Mapping[str, Any]) -> str:
    if not entry.get("count"):
        return "-"
    return f"{entry['min']:.3g} to {entry['max']:.3g}, mean {entry['mean']:.2g}"

