"""The control node's plain-text tables (the verify table, the status, a load test, a run's
summary), laid out by rich: columns as wide as their widest cell, no colour, no wrapping."""

from __future__ import annotations

from rich.console import Console
from rich.table import Column, Table


def plain(header: list[str], rows: list[list], right: tuple[int, ...] = (), title: str = "") -> str:
    """`rows` under `header`, the columns numbered in `right` aligned right; `title` above."""
    columns = [Column(name, justify="right" if i in right else "left") for i, name in enumerate(header)]
    table = Table(*columns, box=None, pad_edge=False, title=title or None, title_justify="left")
    for row in rows:
        table.add_row(*("-" if cell is None else str(cell) for cell in row))
    console = Console(width=10_000, color_system=None, highlight=False)
    with console.capture() as captured:
        console.print(table)
    return "\n".join(line.rstrip() for line in captured.get().splitlines())
