"""What the commands print with: the two consoles, one-line errors and frames as tables. Its own module so
that the CLI and what it calls (summary, training) share them without importing the CLI back."""

from __future__ import annotations

import polars as pl
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

out = Console()
if not out.is_terminal:  # piped or captured: don't fold tables to 80 columns
    out = Console(width=220)
err = Console(stderr=True, soft_wrap=True)  # an error is one line, however long


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)  # "[key]" in a message is text, not markup
    return typer.Exit(code)


def print_frame(df: pl.DataFrame, title: str | None = None, max_width: int = 60) -> None:
    table = Table(title=title, show_lines=False, header_style="bold")
    for col in df.columns:
        table.add_column(col, overflow="fold", max_width=max_width)
    for row in df.iter_rows():
        table.add_row(*("" if v is None else str(v) for v in row))
    out.print(table)
