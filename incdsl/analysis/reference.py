"""Compare computed stats with a table as printed in a paper (``googlenet_table1.tsv``).

The paper's rows are matched to the spec's stages in order, by type: "convolution" rows take as many
consecutive conv stages as their depth says (Table 1's second row is the 1x1 reduce and the 3x3 conv
together), "inception (3a)" takes the stage labelled 3a, and stages the table does not list (LRN) are
skipped. A printed figure disagrees when it is off by more than half a unit of its last digit and
by more than 1%: the paper leaves biases out and rounds, which stays inside that tolerance.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from incdsl import render
from incdsl.analysis.report import Row, Stats, size
from incdsl.errors import IncdslError
from incdsl.files import read_utf8
from incdsl.numbers import MAX_INT, NumberError, read_float, read_int

MAX_TABLE_BYTES = 1024 * 1024  # a printed table is a few KB
NUMBER_COLUMNS = {"params_K": read_float, "ops_M": read_float, "depth": read_int}

# The paper's words for a row's type, and the layer kinds each covers; a printed "inception (3a)"
# is the stage labelled 3a.
_KINDS = {
    "convolution": {"conv"},
    "max pool": {"maxpool"},
    "avg pool": {"avgpool", "adaptive_avgpool", "global_avgpool"},
    "local response norm": {"lrn"},
    "dropout": {"dropout"},
    "linear": {"linear"},
    "softmax": {"softmax"},
}


@dataclass(frozen=True)
class Cell:
    """One printed figure beside the computed one."""

    printed: float
    computed: float
    agrees: bool

    @property
    def deviation(self) -> float:
        return self.computed / self.printed - 1 if self.printed else float("inf")


@dataclass(frozen=True)
class Match:
    type: str
    rows: tuple[str, ...]
    output: tuple[str, str]
    params: Cell | None  # in K = 1024
    macs: Cell | None  # in M = 10^6

    @property
    def agrees(self) -> bool:
        cells = [c for c in (self.params, self.macs) if c is not None]
        return all(c.agrees for c in cells) and self.output[0] == self.output[1]


def load(path: str | Path) -> list[dict]:
    """The rows of a UTF-8 TSV table (lines starting with '#' are comments). Its number cells
    (``params_K``, ``ops_M``, ``depth``) are checked here, so a bad cell is reported with its line."""
    numbered = [(n, line) for n, line in enumerate(_text(path).splitlines(), 1) if not line.startswith("#")]
    rows = list(csv.DictReader((line for _, line in numbered), delimiter="\t"))
    if not rows or "type" not in rows[0]:
        raise IncdslError(f"{path}: a reference table is a TSV with a 'type' column")
    for (line, _), row in zip(numbered[1:], rows):
        if not row.get("type"):
            raise IncdslError(f"{path}:{line}: a row has no 'type'")
        for column, read in NUMBER_COLUMNS.items():
            if row.get(column):
                try:
                    read(row[column], 0, MAX_INT)
                except NumberError as error:
                    raise IncdslError(f"{path}:{line}: column {column}: {error}") from None
    return rows


def _text(path: str | Path) -> str:
    return read_utf8(path, MAX_TABLE_BYTES, "a reference table", f"reference table {path}")


def compare(stats: Stats, table: list[dict]) -> list[Match]:
    rows, j, matches = list(stats.rows), 0, []
    for printed in table:
        group, j = _take(rows, j, printed)
        if not group:
            raise IncdslError(f"the reference row '{printed['type']}' matches no stage of {stats.network}")
        matches.append(_match(printed, group))
    return matches


def _matches(row: Row, printed_type: str) -> bool:
    """Whether a stage is what a printed row's type names: "convolution", "dropout (40%)", or
    "inception (3a)" (the stage labelled 3a)."""
    word, _, rest = printed_type.partition(" (")
    if word in _KINDS:
        return row.kind in _KINDS[word]
    return row.kind == word and row.label is not None and row.label == rest.rstrip(")")


def _take(rows: list[Row], j: int, printed: dict) -> tuple[list[Row], int]:
    count = int(printed.get("depth") or 1) if printed["type"] == "convolution" else 1
    group = []
    while j < len(rows) and len(group) < count:
        if _matches(rows[j], printed["type"]):
            group.append(rows[j])
        elif group:
            if rows[j].params:  # a parameterised stage breaks the run
                break
        j += 1
    return group, j


def _match(printed: dict, group: list[Row]) -> Match:
    params = _cell(printed.get("params_K"), sum(r.params for r in group) / 1024)
    macs = _cell(printed.get("ops_M"), sum(r.macs for r in group) / 1e6)
    output = (printed.get("output", ""), size(group[-1].output))
    return Match(printed["type"], tuple(r.name for r in group), output, params, macs)


def _cell(text: str | None, computed: float) -> Cell | None:
    if not text:
        return None
    printed = float(text)
    decimals = len(text.split(".")[1]) if "." in text else 0
    tolerance = max(0.5 * 10**-decimals, 0.01 * printed)
    return Cell(printed, computed, abs(computed - printed) <= tolerance)


def to_dict(matches: list[Match]) -> list[dict]:
    def cell(c: Cell | None):
        return (
            None
            if c is None
            else {"printed": c.printed, "computed": round(c.computed, 3), "agrees": c.agrees}
        )

    return [
        {
            "type": m.type,
            "rows": list(m.rows),
            "output": {"printed": m.output[0], "computed": m.output[1]},
            "params_K": cell(m.params),
            "ops_M": cell(m.macs),
        }
        for m in matches
    ]


def printed_cells(matches: list[Match]) -> dict[str, tuple[Cell, Cell]]:
    """The paper's figures as table cells, keyed by the last stage of each matched group; a figure
    the shapes contradict is marked."""

    def show(cell: Cell | None, unit: str) -> render.Cell:
        if cell is None:
            return ""
        text = f"{cell.printed:g}{unit}"
        return text if cell.agrees else render.Styled(f"{text} ✗", "bold red")

    return {m.rows[-1]: (show(m.params, "K"), show(m.macs, "M")) for m in matches}


def disagreement_lines(matches: list[Match]) -> list[str]:
    """The lines under ``incdsl stats --reference``'s table: how many figures disagree, then each."""
    lines = disagreements(matches)
    return [
        f"{len(lines)} printed figure(s) disagree with the layer shapes:",
        *(f"  ✗ {line}" for line in lines),
    ]


def disagreements(matches: list[Match]) -> list[str]:
    """One line per printed figure that the layer shapes contradict."""
    lines = []
    for m in matches:
        where = " + ".join(m.rows)
        for what, cell, unit in (("params", m.params, "K"), ("ops", m.macs, "M")):
            if cell is not None and not cell.agrees:
                change = f" ({cell.deviation:+.1%})" if cell.printed else ""
                lines.append(
                    f"{m.type} [{where}]: {what} printed {cell.printed:g}{unit}, "
                    f"computed {cell.computed:,.1f}{unit}{change}"
                )
        if m.output[0] != m.output[1]:
            lines.append(f"{m.type} [{where}]: output printed {m.output[0]}, computed {m.output[1]}")
    return lines
