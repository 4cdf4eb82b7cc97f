"""Two specs compared stage by stage: what changed in Table 1's columns, shapes, params and MACs.

Stages are matched by name (``inception3a``, ``conv1``); a stage only one spec has is added or removed.

>>> import incdsl
>>> d = compare(incdsl.stats("googlenet"), incdsl.stats("googlenet_tv"))
>>> d.macs_delta
-84295680
>>> [s.name for s in d.stages if s.status == "removed"]
['pool1', 'norm1', 'norm2', 'pool2', 'pool3', 'pool4', 'pool5']
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from incdsl import render
from incdsl.analysis import report
from incdsl.analysis.report import Row, Stats
from incdsl.render import Column, Document, Table

# What is compared, beyond params and MACs, and how each reads in a table.
FIELDS = {"type": "type", "patch": "patch", "input": "input", "output": "output", "depth": "depth"}


@dataclass(frozen=True)
class StageDiff:
    """One stage of either spec: ``status`` is "same", "changed", "added" (only in B) or "removed"."""

    name: str
    status: str
    a: Row | None
    b: Row | None
    changed: dict[str, tuple] = field(default_factory=dict)  # field or column -> (in A, in B)


@dataclass(frozen=True)
class Diff:
    a: Stats
    b: Stats
    stages: tuple[StageDiff, ...]
    aux: tuple[StageDiff, ...]

    @property
    def params_delta(self) -> int:
        return self.b.params - self.a.params

    @property
    def macs_delta(self) -> int:
        return self.b.macs - self.a.macs


def compare(a: Stats, b: Stats) -> Diff:
    """The stage-by-stage difference from ``a`` to ``b``."""
    return Diff(a, b, _matched(a.rows, b.rows), _matched(a.aux, b.aux))


def _matched(a_rows, b_rows) -> tuple[StageDiff, ...]:
    """B's stages in order, each of A's missing from B placed after the A stage before it."""
    in_a = {r.name: r for r in a_rows}
    in_b = {r.name for r in b_rows}
    removed_after: dict[str | None, list] = {}
    previous = None
    for row in a_rows:
        if row.name in in_b:
            previous = row.name
        else:
            removed_after.setdefault(previous, []).append(row)
    out = [StageDiff(r.name, "removed", r, None) for r in removed_after.get(None, [])]
    for row in b_rows:
        old = in_a.get(row.name)
        if old is None:
            out.append(StageDiff(row.name, "added", None, row))
        else:
            changed = _changes(old, row)
            out.append(StageDiff(row.name, "changed" if changed else "same", old, row, changed))
        out += [StageDiff(r.name, "removed", r, None) for r in removed_after.get(row.name, [])]
    return tuple(out)


def _changes(a, b) -> dict[str, tuple]:
    keys = [k for k in (*FIELDS, "params", "macs") if hasattr(a, k)]
    changed = {k: (getattr(a, k), getattr(b, k)) for k in keys if getattr(a, k) != getattr(b, k)}
    columns_a, columns_b = getattr(a, "columns", {}), getattr(b, "columns", {})
    for key in dict.fromkeys([*columns_a, *columns_b]):
        if columns_a.get(key) != columns_b.get(key):
            changed[key] = (columns_a.get(key), columns_b.get(key))
    return changed


# renderings ---------------------------------------------------------------------------------

HEADERS = ["stage", "", "type", "output size", "columns changed", "params", "Δ params", "ops", "Δ ops"]
MARKS = {"same": "", "changed": "~", "added": "+", "removed": "-"}


def titles(diff: Diff) -> dict[str, str]:
    """The template columns of either spec, by key: their titles."""
    return {**diff.a.titles, **diff.b.titles}


def cells(stage: StageDiff, titles: dict[str, str] | None = None) -> list[str]:
    """One stage's row of the table, as text (``titles``: the columns' titles, see :func:`titles`)."""
    titles = titles or {}
    a, b = stage.a, stage.b
    shown = b or a
    type_ = _arrow(a.type, b.type) if a and b and a.type != b.type else shown.type
    output = _arrow(*(report.size(r.output) if r else "" for r in (a, b)), same=stage.status == "same")
    columns = ", ".join(
        f"{titles[k]} {_blank(old)}→{_blank(new)}" for k, (old, new) in stage.changed.items() if k in titles
    )
    params = _arrow(
        *(report.kilo(r.params) if r else "" for r in (a, b)), same=a and b and a.params == b.params
    )
    macs = _arrow(*(report.mega(r.macs) if r else "" for r in (a, b)), same=a and b and a.macs == b.macs)
    return [
        getattr(shown, "label", None) or stage.name, MARKS[stage.status], type_, output, columns,
        params, _delta(a, b, "params", report.kilo), macs, _delta(a, b, "macs", report.mega),
    ]  # fmt: skip


def _blank(value) -> str:
    return "—" if value is None else str(value)


def _arrow(old: str, new: str, same: bool = False) -> str:
    if same or old == new:
        return new or old
    return f"{old or '—'} → {new or '—'}"


def _delta(a, b, key: str, unit) -> str:
    old, new = (getattr(r, key) if r else 0 for r in (a, b))
    if old == new:
        return ""
    sign = "+" if new > old else "-"
    shown = unit(abs(new - old))
    change = f"{sign}{abs(new - old):,}" if shown.startswith("0.0") else f"{sign}{shown}"  # too small for K/M
    return f"{change} ({new / old - 1:+.1%})" if old and new else change


def totals(diff: Diff, names: tuple[str, str] = ("A", "B")) -> str:
    """Both networks' totals and budget verdicts, and the change, as plain lines."""
    lines = []
    for name, stats in zip(names, (diff.a, diff.b)):
        line = f"{name}: {stats.network}: {stats.params:,} params, {stats.macs:,} multiply-adds"
        lines.append(line)
        if stats.budget is not None:
            lines.append("   " + report.budget_verdict(stats.macs, stats.budget))
    a, b = diff.a, diff.b
    lines.append(
        f"change: {diff.params_delta:+,} params ({_ratio(b.params, a.params)}), "
        f"{diff.macs_delta:+,} multiply-adds ({_ratio(b.macs, a.macs)})"
    )
    counts = {s: sum(1 for d in diff.stages if d.status == s) for s in ("changed", "added", "removed")}
    lines.append("stages: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    for aux in diff.aux:
        if aux.status != "same":
            lines.append(f"aux head {aux.name}: {aux.status}" + _aux_change(aux))
    return "\n".join(lines)


def _aux_change(aux: StageDiff) -> str:
    if aux.status != "changed":
        return ""
    parts = [
        f"{key} {old} → {new}" for key, (old, new) in aux.changed.items() if key not in ("params", "macs")
    ]
    if "params" in aux.changed:
        parts.append(f"params {_delta(aux.a, aux.b, 'params', report.kilo)}")
    if "macs" in aux.changed:
        parts.append(f"ops {_delta(aux.a, aux.b, 'macs', report.mega)}")
    return " (" + "; ".join(parts) + ")"


def _ratio(new: int, old: int) -> str:
    return f"{new / old - 1:+.1%}" if old else "n/a"


# How readily a column leaves a narrow terminal (0: never; larger: sooner).
PRIORITIES = {"type": 2, "output size": 3, "columns changed": 0, "params": 1, "Δ params": 0, "ops": 1}
STYLES = {"added": "green", "removed": "red", "same": "dim"}
KINDS = {"stage": "name", "": "name", "type": "text", "output size": "shape", "columns changed": "text"}


def table(diff: Diff, names: tuple[str, str] = ("A", "B")) -> Table:
    """The table of ``incdsl diff``, in the style of ``incdsl stats``'s, both totals under it; in a
    terminal, added stages green, removed red, unchanged dim."""
    columns = tuple(Column(h, KINDS.get(h, "figure"), PRIORITIES.get(h, 0)) for h in HEADERS)
    rows = tuple(tuple(cells(stage, titles(diff))) for stage in diff.stages)
    styles = tuple(STYLES.get(stage.status) for stage in diff.stages)
    title = f"{names[0]} ({diff.a.network}) → {names[1]} ({diff.b.network})"
    return Table(title, columns, rows, tuple(totals(diff, names).splitlines()), styles)


def document(diff: Diff, names: tuple[str, str] = ("A", "B")) -> Document:
    """What ``incdsl diff`` prints, in every format."""
    return Document((table(diff, names),), to_dict(diff, names))


def to_markdown(diff: Diff, names: tuple[str, str] = ("A", "B")) -> str:
    return render.to_markdown(table(diff, names))


def to_dict(diff: Diff, names: tuple[str, str] = ("A", "B")) -> dict:
    def side(name, stats):
        budget = None if stats.budget is None else {"macs": stats.budget, "within": stats.within_budget}
        return {"spec": name, "network": stats.network, "params": stats.params, "macs": stats.macs,
                "budget": budget}  # fmt: skip

    def stage(d: StageDiff) -> dict:
        return {
            "name": d.name,
            "status": d.status,
            "a": asdict(d.a) if d.a else None,
            "b": asdict(d.b) if d.b else None,
            "changed": {k: list(v) for k, v in d.changed.items()},
        }

    return {
        "a": side(names[0], diff.a),
        "b": side(names[1], diff.b),
        "stages": [stage(s) for s in diff.stages],
        "aux": [stage(s) for s in diff.aux],
        "delta": {"params": diff.params_delta, "macs": diff.macs_delta},
    }
