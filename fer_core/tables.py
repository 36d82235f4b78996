"""Rich tables that fit the terminal without cutting a header or a number.

Columns that may wrap (names, paths, notes) fold to the width left by the others; when even
that does not fit, optional columns are dropped, least important first, and the table's
caption says which. Numbers and headers are never shortened.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table
from rich.text import Text

WRAP_MIN = 10  # narrowest a wrapping column gets (more when a header word is longer)


@dataclass
class Col:
    title: str
    justify: str = "right"
    wrap: bool = False  # may wrap and fold to fit
    drop: int = 0  # 0: always shown; otherwise dropped when the table does not fit, highest first


Cell = str | Text


def _lines(cell: Cell) -> list[str]:
    return (cell.plain if isinstance(cell, Text) else cell).split("\n")


def _natural(column: Col, cells: Sequence[Cell]) -> int:
    return max([len(column.title)] + [len(line) for cell in cells for line in _lines(cell)])


def _minimum(column: Col, cells: Sequence[Cell]) -> int:
    if not column.wrap:
        return _natural(column, cells)
    return min(_natural(column, cells), max([WRAP_MIN] + [len(word) for word in column.title.split()]))


def required(columns: Sequence[Col], rows: Sequence[Sequence[Cell]]) -> int:
    """The narrowest width at which ``fit`` shows every column."""
    return sum(_minimum(column, [row[i] for row in rows]) for i, column in enumerate(columns)) + _overhead(len(columns))


def _overhead(n: int) -> int:  # padding of one space either side, a border between and around columns
    return 3 * n + 1


def fit(columns: Sequence[Col], rows: Sequence[Sequence[Cell]], width: int, **table_options) -> Table:
    """A table of ``rows`` no wider than ``width`` (when its fixed columns allow it)."""
    kept = list(range(len(columns)))
    cells = [[row[i] for row in rows] for i in range(len(columns))]

    def needed() -> int:
        return sum(_minimum(columns[i], cells[i]) for i in kept) + _overhead(len(kept))

    dropped = []
    while needed() > width and any(columns[i].drop for i in kept):
        worst = max(kept, key=lambda i: columns[i].drop)
        kept.remove(worst)
        dropped.append(columns[worst].title)
    widths = {i: _minimum(columns[i], cells[i]) for i in kept}
    # wrapping columns share what is left equally, none beyond its natural width
    lack = sorted((_natural(columns[i], cells[i]) - widths[i], i) for i in kept if columns[i].wrap)
    spare = width - needed()
    for n, (short, i) in enumerate(lack):
        grow = min(short, spare // (len(lack) - n))
        widths[i] += grow
        spare -= grow
    if dropped:
        note = f"not shown at this width: {', '.join(dropped)}"
        table_options["caption"] = f"{table_options['caption']}; {note}" if table_options.get("caption") else note
    table = Table(**table_options)
    for i in kept:
        column = columns[i]
        table.add_column(column.title, justify=column.justify, no_wrap=not column.wrap, overflow="fold",
                         min_width=widths[i], max_width=widths[i] if column.wrap else None)
    for row in rows:
        table.add_row(*(row[i] if isinstance(row[i], Text) else Text(row[i]) for i in kept))
    return table


class Fitted:
    """A renderable whose table is built for the width it is printed at: ``build(width)`` -> renderables."""

    def __init__(self, build: Callable[[int], Sequence]):
        self.build = build

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield from self.build(options.max_width)
