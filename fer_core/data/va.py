"""Valence and arousal of a sample: the shard field, its check, the manifest's summary, its view.

A sample may carry ``va.json`` = ``{"valence": v, "arousal": a}``, floats in [-1, 1] (Russell's
circumplex: valence from unpleasant to pleasant, arousal from calm to excited). A data set
whose samples carry it lists ``"va"`` in the manifest's ``extras``, and each split entry gets a
summary (``VaStats.summary``)::

    "va": {"count": 940,                                   # samples of the split that have va.json
           "valence": {"min": -0.98, "max": 0.97, "mean": -0.12, "std": 0.45,
                       "histogram": [31, 85, ...]},        # counts over 10 equal bins of [-1, 1]
           "arousal": {...}}

(``valence``/``arousal`` only when ``count`` > 0.) Values outside [-1, 1] or not finite
(AffectNet writes -2 where a face was not annotated) are no valence/arousal: the packer leaves
such a sample's ``va.json`` out and keeps the sample for its class. Nothing here imports torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

VA_FIELD = "va.json"  # the shard field
VA_EXTRA = "va"  # its name in the manifest's ``extras``
NAMES = ("valence", "arousal")
BINS = 10  # histogram: equal bins of [-1, 1]


def annotated(valence: Any, arousal: Any) -> bool:
    """Both are finite numbers in [-1, 1] (AffectNet's -2 means "not annotated")."""
    return all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and -1 <= x <= 1
               for x in (valence, arousal))


def parse_va(data: bytes | str | Mapping[str, Any] | None) -> tuple[float, float] | None:
    """(valence, arousal) of a ``va.json`` field, or None when it is absent, malformed or not annotated."""
    if data is None:
        return None
    try:
        value = json.loads(data) if isinstance(data, (bytes, str)) else data
        valence, arousal = value["valence"], value["arousal"]
    except (ValueError, TypeError, KeyError):
        return None
    return (float(valence), float(arousal)) if annotated(valence, arousal) else None


def encode_va(valence: float, arousal: float) -> bytes:
    """The ``va.json`` bytes of one sample."""
    return json.dumps({"valence": valence, "arousal": arousal}).encode()


def _bin(value: float) -> int:
    return min(int((value + 1) * BINS / 2), BINS - 1)  # 1.0 falls into the last bin


@dataclass
class VaStats:
    """Running statistics of (valence, arousal) pairs; mergeable, so latent shards can be summed."""

    count: int = 0
    sums: list[float] = field(default_factory=lambda: [0.0, 0.0])
    squares: list[float] = field(default_factory=lambda: [0.0, 0.0])
    low: list[float] = field(default_factory=lambda: [math.inf, math.inf])
    high: list[float] = field(default_factory=lambda: [-math.inf, -math.inf])
    histograms: list[list[int]] = field(default_factory=lambda: [[0] * BINS, [0] * BINS])

    def add(self, va: tuple[float, float]) -> None:
        self.count += 1
        for d, value in enumerate(va):
            self.sums[d] += value
            self.squares[d] += value * value
            self.low[d] = min(self.low[d], value)
            self.high[d] = max(self.high[d], value)
            self.histograms[d][_bin(value)] += 1

    def merge(self, other: VaStats) -> None:
        self.count += other.count
        for d in range(2):
            self.sums[d] += other.sums[d]
            self.squares[d] += other.squares[d]
            self.low[d] = min(self.low[d], other.low[d])
            self.high[d] = max(self.high[d], other.high[d])
            self.histograms[d] = [a + b for a, b in zip(self.histograms[d], other.histograms[d])]

    def state(self) -> dict[str, Any]:
        """Plain JSON that ``from_state`` turns back into the same statistics."""
        return {"count": self.count, "sums": self.sums, "squares": self.squares,
                "low": [x if self.count else None for x in self.low],
                "high": [x if self.count else None for x in self.high], "histograms": self.histograms}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> VaStats:
        empty = not state["count"]
        return cls(int(state["count"]), list(state["sums"]), list(state["squares"]),
                   [math.inf] * 2 if empty else list(state["low"]), [-math.inf] * 2 if empty else list(state["high"]),
                   [list(h) for h in state["histograms"]])

    def summary(self) -> dict[str, Any]:
        """The split entry's ``va`` (see the module docstring)."""
        out: dict[str, Any] = {"count": self.count}
        if self.count:
            for d, name in enumerate(NAMES):
                mean = self.sums[d] / self.count
                std = math.sqrt(max(self.squares[d] / self.count - mean * mean, 0.0))
                out[name] = {"min": self.low[d], "max": self.high[d], "mean": round(mean, 6), "std": round(std, 6),
                             "histogram": list(self.histograms[d])}
        return out


def has_va(manifest: Mapping[str, Any]) -> bool:
    """Whether the data set's samples carry valence and arousal (its manifest lists the ``va`` extra)."""
    return VA_EXTRA in (manifest.get("extras") or [])


# ---- `fer data info` ---------------------------------------------------------------------------

BLOCKS = " ▁▂▃▄▅▆▇█"


def sparkline(counts: list[int]) -> str:
    """One character per bin, its height proportional to the bin's count (blank: empty)."""
    top = max(counts, default=0)
    if not top:
        return " " * len(counts)
    return "".join(BLOCKS[0 if not c else max(1, round(c / top * (len(BLOCKS) - 1)))] for c in counts)


def va_table(splits: Mapping[str, Mapping[str, Any]]):
    """A rich table (fits 80 columns) of each split's valence and arousal: count, range, mean, histogram."""
    from rich.table import Table

    table = Table(title="valence / arousal", caption="histogram: 10 bins from -1 to 1")
    for name, justify in (("split", "left"), ("", "left"), ("count", "right"), ("range", "right"),
                          ("mean ± std", "right"), ("-1   0   1", "left")):
        table.add_column(name, justify=justify, no_wrap=True)
    for split, entry in splits.items():
        summary = entry.get("va")
        if summary is None:
            continue
        if not summary.get("count"):
            table.add_row(split, "", "0", "-", "-", "", end_section=True)
            continue
        for i, name in enumerate(NAMES):
            stats = summary[name]
            table.add_row(split if i == 0 else "", name, str(summary["count"]) if i == 0 else "",
                          f"{stats['min']:+.2f} to {stats['max']:+.2f}", f"{stats['mean']:+.2f} ± {stats['std']:.2f}",
                          f"[cyan]{sparkline(stats['histogram'])}[/]", end_section=i == len(NAMES) - 1)
    return table
