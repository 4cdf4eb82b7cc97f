"""One exception hierarchy for every mistake a user can make.

Library errors (Lark's, networkx's) are translated into these at the boundary where they arise, so the
CLI only ever prints ``path:line:col: error: message`` with the source line and a caret.
"""

from __future__ import annotations

import difflib
import unicodedata
from dataclasses import dataclass, field

TAB_STOP = 8  # a tab in a source line is shown as spaces up to the next multiple of 8, as gcc does
CONTEXT = (60, 100)  # characters shown before and after the caret of a long source line


@dataclass(frozen=True)
class Span:
    """Where something is in a spec: 1-based line and column, plus the text it came from."""

    path: str
    line: int
    column: int
    source: str = field(default="", repr=False, compare=False)
    width: int = field(default=1, compare=False)

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}"

    def source_line(self) -> str:
        lines = self.source.split("\n")  # as Lark counts lines (str.splitlines also splits at \x1e...)
        return lines[self.line - 1].rstrip("\r") if 0 < self.line <= len(lines) else ""


class IncdslError(Exception):
    """Base of every error incdsl reports to a user; carries an optional source span."""

    kind = "error"

    def __init__(self, message: str, span: Span | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.span = span
        self.hint = hint
        self.notes: list[str] = []  # context, innermost first: "in template 'x', called at ..."

    def format(self) -> str:
        """The message as the CLI prints it: location, message, source line, caret, hint.

        Control characters (ESC, NUL, bidi overrides, ...) are shown escaped, so that neither a spec
        nor a file name can send escape sequences to the terminal; the caret follows the escaped text.
        """
        where = f"{self.span}: " if self.span else ""
        lines = [escape(f"{where}{self.kind}: {self.message}")]
        text = self.span.source_line() if self.span else ""
        if text:
            lines += [f"    {line}" for line in _excerpt(text, self.span.column - 1, max(1, self.span.width))]
        if self.hint:
            lines.append(escape(f"  hint: {self.hint}"))
        lines += [escape(f"  note: {note}") for note in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


class SpecSyntaxError(IncdslError):
    """The text does not follow the grammar."""


class SpecNameError(IncdslError):
    """A name is unknown, duplicated, or not a valid identifier."""


class SpecArgumentError(IncdslError):
    """A row has the wrong number or kind of arguments or options."""


class ShapeError(IncdslError):
    """A layer cannot be applied to the shape that reaches it."""


class BudgetExceeded(IncdslError):
    """The network's multiply-adds exceed its compute budget."""


class OutputError(IncdslError):
    """An output cannot be produced (missing tool, unwritable file)."""


def is_control(char: str) -> bool:
    """C0/C1 controls and DEL (Cc), format characters such as bidi overrides and the BOM (Cf), line
    and paragraph separators (Zl, Zp), lone surrogates (Cs): what must not reach a terminal raw."""
    return unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp", "Cs")


def escaped(char: str) -> str:
    """``\\x1b``, ``\\u202e``, ``\\U000e0001``: as Python writes the character in a string literal."""
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def escape(text: str) -> str:
    """``text`` with control characters escaped; its line breaks kept.

    >>> escape("name\x1b[2J")
    'name\\\\x1b[2J'
    """
    return "\n".join("".join(escaped(c) if is_control(c) else c for c in line) for line in text.split("\n"))


def render(line: str) -> tuple[str, int]:
    """A source line as shown under an error, and how many terminal cells it takes: control characters
    escaped, tabs expanded, East Asian wide characters two cells, combining marks none."""
    parts, cells = [], 0
    for char in line:
        if char == "\t":
            shown = " " * (TAB_STOP - cells % TAB_STOP)
            width = len(shown)
        elif is_control(char):
            shown = escaped(char)
            width = len(shown)
        else:
            shown = char
            width = 0 if unicodedata.combining(char) else 1 + (unicodedata.east_asian_width(char) in "WF")
        parts.append(shown)
        cells += width
    return "".join(parts), cells


def _excerpt(text: str, start: int, width: int) -> tuple[str, str]:
    """The source line (a window of it around the caret when long) and the caret line under it."""
    low, high = max(0, start - CONTEXT[0]), min(len(text), start + width + CONTEXT[1])
    lead, tail = ("..." if low else ""), ("..." if high < len(text) else "")
    window = text[low:high]
    before = len(lead) + render(window[: start - low])[1]
    through = len(lead) + render(window[: start - low + width])[1]
    return lead + render(window)[0] + tail, " " * before + "^" * max(1, through - before)


def did_you_mean(name: str, candidates) -> str | None:
    """A hint naming the closest candidate, or None when nothing is close."""
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None
