"""One table model and its renderings: plain text, rich, markdown, CSV; and JSON for a command's data.

Every command that prints a table (``stats``, ``diff``, ``runs``, ``bench``, ``stats --reference``)
builds a :class:`Document`: its tables, the lines under them, and the data its ``--format json``
prints. :func:`emit` writes a document in a format; nothing else in the package knows a format.

A table is fitted to the terminal: a header or a cell of several words wraps at spaces, and when even
that is too wide, columns are dropped, the least important first (:attr:`Column.priority`), and a
line under the table names them and how to see them. A cell is never cut: a name or a shape stays
whole even when the table is wider than the terminal.

>>> table = Table("sizes", (Column("name"), Column("count", "figure", priority=1)),
...               (("conv1", "9"), ("inception3a", "160")))
>>> print(to_text(table))
sizes
name         count
conv1            9
inception3a    160
>>> print(to_text(table, width=14).split("(not shown")[0], end="")
sizes
name
conv1
inception3a
>>> fit(table, 14).dropped
('count',)
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
import textwrap
from dataclasses import dataclass
from typing import Any, TextIO

FORMATS = ("table", "markdown", "csv", "json")
RICH_ROWS = 1000  # a longer table is printed as plain text: rich lays out about 500 rows a second


@dataclass(frozen=True)
class Styled:
    """A cell with a rich style (a figure the paper misprints: ``Styled("463K ✗", "bold red")``); the
    other renderings show its text."""

    text: str
    style: str

    def __str__(self) -> str:
        return self.text


Cell = str | Styled


# A column's kind: what its cells are, so how they may be laid out. A name (a stage, a path), a shape
# and a figure are never broken; text wraps at spaces. Figures align right, the others left.
KINDS = ("name", "shape", "figure", "text")


@dataclass(frozen=True)
class Column:
    """A column: its title, its kind (see ``KINDS``), and how readily it is dropped from a narrow
    terminal (``priority`` 0: never; a larger number goes sooner). ``align``: "left" or "right",
    by default right for a figure and left otherwise."""

    title: str
    kind: str = "name"
    priority: int = 0
    align: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"a column's kind is one of {', '.join(KINDS)}, not {self.kind!r}")
        if not self.align:
            object.__setattr__(self, "align", "right" if self.kind == "figure" else "left")

    @property
    def wraps(self) -> bool:
        return self.kind == "text"


@dataclass(frozen=True)
class Table:
    """A table: title, columns, rows of text cells (``styles``: a rich style per row, or None), and the
    lines printed under it."""

    title: str
    columns: tuple[Column, ...]
    rows: tuple[tuple[Cell, ...], ...]
    footer: tuple[str, ...] = ()
    styles: tuple[str | None, ...] = ()

    def __post_init__(self) -> None:
        for row in self.rows:
            if len(row) != len(self.columns):
                raise ValueError(f"a row of {len(row)} cells in a table of {len(self.columns)} columns")


@dataclass(frozen=True)
class Document:
    """What a command prints: tables (each with its footer), then ``notes`` (dim in a terminal; how
    something was measured), and ``data``, the value ``--format json`` prints. ``csv``: the table
    ``--format csv`` writes (exact figures), when the command offers CSV."""

    tables: tuple[Table, ...]
    data: Any = None
    notes: tuple[str, ...] = ()
    csv: Table | None = None


# fitting ------------------------------------------------------------------------------------------


def text(cell: Cell) -> str:
    return cell.text if isinstance(cell, Styled) else cell


def _longest_word(value: str) -> int:
    return max((len(word) for word in value.split()), default=0)


def _widths(table: Table, column: int) -> tuple[int, int, int]:
    """The least width a column can take (its longest word; a whole cell when it does not wrap), the
    width its cells take on one line, and the width it takes with its title on one line too."""
    cells = [text(row[column]) for row in table.rows]
    wraps = table.columns[column].wraps
    least = max(
        [_longest_word(table.columns[column].title), *(_longest_word(c) if wraps else len(c) for c in cells)]
    )
    one_line = max([least, *map(len, cells)])
    return least, one_line, max(one_line, len(table.columns[column].title))


@dataclass(frozen=True)
class Layout:
    """Which columns are shown and how wide each is; the titles of those left out."""

    shown: tuple[int, ...]
    widths: tuple[int, ...]
    dropped: tuple[str, ...]


def fit(table: Table, width: int | None, gap: int = 2, edges: int = 0) -> Layout:
    """The columns to show in ``width`` characters (None: no limit), ``gap`` between columns and
    ``edges`` around them: the least important dropped first until the others fit, wrapped at spaces."""
    sizes = [_widths(table, i) for i in range(len(table.columns))]
    shown = list(range(len(table.columns)))

    def needed(columns, which) -> int:
        return sum(sizes[i][which] for i in columns) + gap * max(len(columns) - 1, 0) + edges

    if width is not None:
        droppable = sorted(
            (i for i in shown if table.columns[i].priority > 0),
            key=lambda i: (-table.columns[i].priority, -i),
        )
        for column in droppable:
            if needed(shown, 0) <= width:
                break
            shown.remove(column)
    widths = [sizes[i][2] for i in shown]
    if width is not None and needed(shown, 2) > width:  # wrap: each column its least, the rest shared,
        widths = [sizes[i][0] for i in shown]  # first to put cells on one line, then titles
        spare = width - needed(shown, 0)
        for which in (1, 2):
            for k, i in enumerate(shown):
                grow = max(0, min(spare, sizes[i][which] - widths[k]))
                widths[k] += grow
                spare -= grow
    dropped = tuple(table.columns[i].title for i in range(len(table.columns)) if i not in shown)
    return Layout(tuple(shown), tuple(widths), dropped)


def dropped_note(layout: Layout, width: int | None) -> str | None:
    if not layout.dropped:
        return None
    return (
        f"(not shown at {width} columns: {', '.join(layout.dropped)}; "
        "a wider terminal or --format markdown shows every column)"
    )


# renderings ---------------------------------------------------------------------------------------


def to_text(table: Table, width: int | None = None) -> str:
    """Plain aligned columns (linear in the rows), fitted to ``width`` characters."""
    layout = fit(table, width)
    columns = [table.columns[i] for i in layout.shown]
    lines = [table.title] if table.title else []
    lines += _text_row([c.title for c in columns], columns, layout.widths)
    for row in table.rows:
        lines += _text_row([text(row[i]) for i in layout.shown], columns, layout.widths)
    note = dropped_note(layout, width)
    return "\n".join([*lines, *wrap_lines([*([note] if note else []), *table.footer], width)])


def wrap_lines(lines: list[str] | tuple[str, ...], width: int | None) -> list[str]:
    """Prose lines wrapped at spaces to ``width`` (a continuation indented two more spaces)."""
    if width is None:
        return list(lines)
    out = []
    for line in lines:
        indent = " " * (len(line) - len(line.lstrip(" ")) + 2)
        wrapped = textwrap.wrap(
            line, width, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False
        )
        out += wrapped or [line]
    return out


def _text_row(cells: list[str], columns: list[Column], widths: tuple[int, ...]) -> list[str]:
    wrapped = [
        textwrap.wrap(cell, w, break_long_words=False, break_on_hyphens=False) or [""]
        if len(cell) > w
        else [cell]
        for cell, w in zip(cells, widths)
    ]
    height = max((len(w) for w in wrapped), default=1)
    lines = []
    for k in range(height):
        parts = [
            (part.rjust(w) if c.align == "right" else part.ljust(w))
            for part, w, c in zip((w[k] if k < len(w) else "" for w in wrapped), widths, columns)
        ]
        lines.append("  ".join(parts).rstrip())
    return lines


def to_rich(table: Table, width: int | None = None):
    """A rich renderable: the table, fitted to ``width`` as :func:`to_text` fits it, with the note of
    dropped columns under it. Cell text is never read as rich markup."""
    from rich import box
    from rich.console import Group
    from rich.table import Table as RichTable
    from rich.text import Text

    layout = fit(table, width)  # two spaces between columns, none at the edges, as to_text
    rich_table = RichTable(
        title=table.title or None,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_edge=False,
        padding=(0, 1, 0, 0),
    )  # a column's right padding and the box's blank divider: two spaces between columns
    for i, width_ in zip(layout.shown, layout.widths):
        column = table.columns[i]
        rich_table.add_column(column.title, justify=column.align, overflow="fold", width=width_)
    styles = table.styles or (None,) * len(table.rows)
    for row, style in zip(table.rows, styles):
        rich_table.add_row(*(_rich_cell(row[i]) for i in layout.shown), style=style)
    note = dropped_note(layout, width)
    parts = [rich_table, *([Text(note, style="dim")] if note else [])]
    return Group(*parts, *(Text(line) for line in table.footer))


def _rich_cell(cell: Cell):
    from rich.text import Text

    return Text(cell.text, style=cell.style) if isinstance(cell, Styled) else Text(cell)


def to_markdown(table: Table, heading: bool = True) -> str:
    """A markdown table (``|`` in cells escaped), under ``# title`` when ``heading``; its footer as a
    paragraph after it."""
    lines = [f"# {table.title}", ""] if heading and table.title else []
    lines.append("| " + " | ".join(c.title for c in table.columns) + " |")
    lines.append("|" + "---|" * len(table.columns))
    lines += ["| " + " | ".join(text(c).replace("|", "\\|") for c in row) + " |" for row in table.rows]
    if table.footer:
        lines += ["", *table.footer]
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([c.title for c in table.columns])
    writer.writerows([text(c) for c in row] for row in table.rows)
    return out.getvalue()


def to_json(data: Any) -> str:
    """``data`` as JSON, indented (JSON has no Infinity or NaN: a ValueError if it holds one)."""
    return json.dumps(data, indent=2, allow_nan=False)


# emitting -----------------------------------------------------------------------------------------


def terminal_width(stream: TextIO) -> int | None:
    """The width to fit tables to: ``COLUMNS`` when set, the terminal's when ``stream`` is one, else
    no limit (a file or a pipe gets every column)."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    if _isatty(stream):
        return shutil.get_terminal_size().columns
    return None


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def render(document: Document, fmt: str = "table", width: int | None = None, rich: bool = False) -> str:
    """A document as text in a format (``rich``: not here, see :func:`emit`)."""
    if fmt == "json":
        return to_json(document.data) + "\n"
    if fmt == "csv":
        if document.csv is None:
            raise ValueError("this command has no CSV rendering")
        return to_csv(document.csv)
    if fmt == "markdown":
        parts = [to_markdown(t) for t in document.tables]
        return "\n".join(parts) + "\n"
    parts = [to_text(t, width) for t in document.tables]
    return "\n".join([*parts, *wrap_lines(document.notes, width)]) + "\n"


def emit(document: Document, fmt: str = "table", stream: TextIO | None = None) -> None:
    """Write a document to ``stream`` (stdout) in a format: ``table`` is rich in a terminal (when rich
    is installed and the tables are not thousands of rows long) and plain text elsewhere, fitted to
    the terminal's width (:func:`terminal_width`)."""
    stream = sys.stdout if stream is None else stream
    width = terminal_width(stream)
    if fmt == "table" and _isatty(stream) and _rich_fits(document):
        _emit_rich(document, stream, width)
    else:
        stream.write(render(document, fmt, width))
    stream.flush()


def _rich_fits(document: Document) -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return all(len(t.rows) <= RICH_ROWS for t in document.tables)


def _emit_rich(document: Document, stream: TextIO, width: int | None) -> None:
    from rich.console import Console
    from rich.text import Text

    class PipedConsole(Console):
        def on_broken_pipe(self) -> None:  # rich exits 1 (our "over budget"); cli.main says 141
            self.quiet = True
            raise BrokenPipeError

    console = PipedConsole(file=stream, width=width)
    for table in document.tables:
        console.print(to_rich(table, width))
    for note in document.notes:
        console.print(Text(note, style="dim"))
