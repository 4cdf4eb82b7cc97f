"""One exception hierarchy for every mistake a user can make.

Library errors (Lark's, networkx's) are translated into these at the boundary where they arise, so the
CLI only ever prints ``path:line:col: error: message`` with the source line and a caret.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field


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
        """The message as the CLI prints it: location, message, source line, caret, hint."""
        where = f"{self.span}: " if self.span else ""
        lines = [f"{where}{self.kind}: {self.message}"]
        text = self.span.source_line() if self.span else ""
        if text:
            caret = " " * (self.span.column - 1) + "^" * max(1, self.span.width)
            lines += [f"    {text}", f"    {caret}"]
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        lines += [f"  note: {note}" for note in self.notes]
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


def did_you_mean(name: str, candidates) -> str | None:
    """A hint naming the closest candidate, or None when nothing is close."""
    close = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None
