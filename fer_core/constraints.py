"""Value constraints shared by the recipe schema and component factories, and a safe value rendering.

A plugin declares a parameter's range in its factory signature with ``typing.Annotated``::

    from typing import Annotated
    from fer_core.constraints import Range

    def build_head(num_features: int, num_classes: int,
                   dropout: Annotated[float, Range(0, 1, hi_open=True)] = 0.0): ...

``fer recipe check`` and ``fer run`` then reject ``dropout: 7`` with a one-line error
before anything is built. ``OneOf`` restricts a parameter to a set of values.
"""

from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass
from typing import Any

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 2, 40, 40
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4


def short(value: Any, limit: int = 60) -> str:
    """A bounded rendering of ``value`` for error messages: never expands a huge or nested value."""
    text = _REPR.repr(value).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def clip(text: Any, limit: int = 60) -> str:
    """Plain text (a key, a path, a name) cut to ``limit`` characters."""
    text = str(text).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fmt(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


@dataclass(frozen=True)
class Range:
    """``lo <= value <= hi`` (either bound may be open or absent); numbers must also be finite."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is out of range, or None."""
        if not is_number(value):
            return None  # the type check speaks about the type
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number {self.describe()}".rstrip()
        low = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
        high = self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)
        return f"must be {self.describe()}" if low or high else None

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{_fmt(self.lo)}, {_fmt(self.hi)}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {_fmt(self.lo)}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {_fmt(self.hi)}"
        return ""


@dataclass(frozen=True)
class OneOf:
    """The value must be one of ``choices``."""

    choices: tuple[Any, ...]

    def __init__(self, *choices: Any):
        object.__setattr__(self, "choices", tuple(choices))

    def problem(self, value: Any) -> str | None:
        if any(value == c and type(value) is type(c) for c in self.choices):
            return None
        return f"must be {self.describe()}"

    def describe(self) -> str:
        return "one of " + ", ".join("null" if c is None else str(c) for c in self.choices)


Constraint = Range | OneOf
