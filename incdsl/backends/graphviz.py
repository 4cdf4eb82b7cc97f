"""Graphviz diagrams of a network: DOT text at two levels of detail, and rendering it to a file.

``network``: one node per top-level row, labelled like the paper's Table 1 (type, patch, the six
inception columns, params and ops), the output shape on the edge leaving it, aux heads hanging off
their stage by a dashed edge.

``block``: one cluster per template call, one node per layer inside it, so an inception block's
branches show as parallel paths into its concat; each named branch is a nested cluster.

At both levels, consecutive stages made by one ``Nx`` row are folded into their first one. ``render``
writes .dot as is; .svg, .png and .pdf need Graphviz's ``dot``.

>>> import incdsl
>>> text = to_dot(incdsl.load("googlenet"), level="block")
>>> render(text, "googlenet.svg")  # doctest: +SKIP
"""

from __future__ import annotations

import html
import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from types import MappingProxyType

from ..errors import OutputError, did_you_mean
from ..files import write_atomic
from ..ir import Network, Stage
from ..layers import KINDS, Shape
from ..report import COLUMNS, AuxRow, Row, Stats, compute, kilo, mega, size

LEVELS = ("network", "block")
FORMATS = ("dot", "svg", "png", "pdf")

# Not an attribute path of the IR (those never hold '@' outside a concat's id), so no clash.
OUTPUT = "@output"

# newrank=true lets dot keep a block's branches left to right in the order the template writes them.
GRAPH_STYLE = 'fontname="Helvetica", fontsize=12, labelloc=t, nodesep=0.3, ranksep=0.35, newrank=true'
NODE_STYLE = 'shape=box, style="rounded,filled", fillcolor="#ffffff", fontname="Helvetica", fontsize=10'
EDGE_STYLE = 'fontname="Helvetica", fontsize=8, color="#555555", arrowsize=0.6'

FILLS = MappingProxyType(
    {
        "template": "#d9efd3",
        "conv": "#d6e6f5",
        "maxpool": "#fbe3c9",
        "avgpool": "#fbe3c9",
        "adaptive_avgpool": "#fbe3c9",
        "global_avgpool": "#fbe3c9",
        "lrn": "#ececec",
        "dropout": "#ececec",
        "linear": "#e4d7f0",
        "softmax": "#f5d5d5",
        "concat": "#f4f4f4",
    }
)


class Html(str):
    """An HTML-like label, written between ``<`` and ``>`` instead of quotes; escape text with ``_esc``."""


def to_dot(net: Network, level: str = "network") -> str:
    """The DOT text of an annotated network at ``level`` ``network`` or ``block``; deterministic.

    >>> import incdsl
    >>> to_dot(incdsl.load("googlenet")).splitlines()[0]
    'digraph "GoogLeNet" {'
    """
    if level not in LEVELS:
        raise OutputError(
            f"unknown diagram level '{level}'",
            hint=did_you_mean(level, LEVELS) or "levels: " + ", ".join(LEVELS),
        )
    stats = compute(net)
    body = _network_level(net, stats) if level == "network" else _block_level(net, stats)
    return _digraph(net.name, _title(stats), body)


def fold(stages: Iterable[Stage]) -> list[tuple[Stage, ...]]:
    """Consecutive stages expanded from one ``Nx`` row (they share the row's span), grouped.

    >>> import incdsl
    >>> [len(group) for group in fold(incdsl.load("googlenet").stages)][:3]  # no Nx rows there
    [1, 1, 1]
    """
    groups: list[list[Stage]] = []
    for stage in stages:
        if groups and groups[-1][0].row.span == stage.row.span:
            groups[-1].append(stage)
        else:
            groups.append([stage])
    return [tuple(group) for group in groups]


# network level ------------------------------------------------------------------------------


def _network_level(net: Network, stats: Stats) -> list[str]:
    rows = {row.name: row for row in stats.rows}
    groups = fold(net.stages)
    lines = [_node("input", label=Html("<B>input</B>"), shape="ellipse", group="main")]
    lines += [_stage_node(net, group, [rows[s.attr] for s in group]) for group in groups]
    lines += [_aux_node(row) for row in stats.aux]
    lines.append(_node(OUTPUT, label=Html("<B>output</B>"), shape="ellipse", group="main"))
    tails = ["input", *(group[0].attr for group in groups)]
    shapes = [net.input, *(_shape(net, group[-1].output) for group in groups)]
    heads = [*tails[1:], OUTPUT]
    lines += [_edge(tail, head, label=str(shape)) for tail, head, shape in zip(tails, heads, shapes)]
    owner = {stage.attr: group[0].attr for group in groups for stage in group}
    for aux in net.auxes:
        shape = _shape(net, _stage(net, aux.after).output)
        lines.append(_edge(owner[aux.after], aux.name, label=str(shape), style="dashed"))
    return lines


def _stage_node(net: Network, group: tuple[Stage, ...], rows: list[Row]) -> str:
    first = rows[0]
    title = f"{first.type} {first.patch}".strip()
    if len(group) > 1:
        title = f"{len(group)}x {_fold_title(group, rows)}"
    params, macs = sum(r.params for r in rows), sum(r.macs for r in rows)
    return _node(
        group[0].attr,
        label=_table_label(title, first.columns, _counts(params, macs)),
        tooltip=", ".join(s.attr for s in group),
        fillcolor=_fill(net, group[0]),
        group="main",
    )


def _fold_title(group: tuple[Stage, ...], rows: list[Row]) -> str:
    """``inception (4b-4d)`` for labelled template rows, else the first row's type and patch."""
    first, last = group[0], group[-1]
    if first.template and first.label and last.label:
        return f"{first.template} ({first.label}-{last.label})"
    return f"{rows[0].type} {rows[0].patch}".strip()


def _aux_node(row: AuxRow) -> str:
    label = _lines(
        f"{row.name} ({row.type})",
        f"loss weight {row.weight:g}",
        _counts(row.params, row.macs),
        f"output {size(row.output)}",
    )
    return _node(row.name, label=label, style="rounded,filled,dashed", fillcolor="#f7f7f7")


def _table_label(title: str, columns: dict, counts: str) -> Html:
    """Bold title, then Table 1's columns (in the paper's order) when the row has any, then counts."""
    keys = [k for k in COLUMNS if k in columns]
    if not keys:
        return Html("<BR/>".join([f"<B>{_esc(title)}</B>", *([_esc(counts)] if counts else [])]))
    span = f'COLSPAN="{len(keys)}"'
    heads = "".join(f'<TD><FONT POINT-SIZE="8">{_esc(COLUMNS[k])}</FONT></TD>' for k in keys)
    values = "".join(f"<TD>{_esc(str(columns[k]))}</TD>" for k in keys)
    rows = [f"<TR><TD {span}><B>{_esc(title)}</B></TD></TR>", f"<TR>{heads}</TR>", f"<TR>{values}</TR>"]
    if counts:
        rows.append(f"<TR><TD {span}>{_esc(counts)}</TD></TR>")
    return Html(f'<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="1">{"".join(rows)}</TABLE>')


# block level --------------------------------------------------------------------------------


def _block_level(net: Network, stats: Stats) -> list[str]:
    rows = {row.name: row for row in stats.rows}
    members = _members_by_stage(net)
    groups = fold(net.stages)
    lines = [_node("input", label=Html("<B>input</B>"), shape="ellipse")]
    for group in groups:
        lines += _stage_block(net, group, members[group[0].attr], [rows[s.attr] for s in group])
    for aux, row in zip(net.auxes, stats.aux):
        lines += _aux_block(net, aux.stage, members[aux.name], row)
    lines.append(_node(OUTPUT, label=Html("<B>output</B>"), shape="ellipse"))
    stand_ins = _stand_ins(groups)
    lines += _block_edges(net, _drawn(groups, members, net), stand_ins)
    last = net.stages[-1].output if net.stages else "input"
    lines.append(_edge(stand_ins.get(last, last), OUTPUT, label=str(_shape(net, last))))
    return lines


def _members_by_stage(net: Network) -> dict[str, list[str]]:
    members: dict[str, list[str]] = {}
    for node in net.nodes():
        members.setdefault(net.graph.nodes[node]["stage"], []).append(node)
    return members


def _drawn(groups: list[tuple[Stage, ...]], members: dict[str, list[str]], net: Network) -> set[str]:
    """The IR nodes drawn as themselves: the input, the first instance of each group, the aux heads."""
    stages = [group[0].attr for group in groups] + [aux.name for aux in net.auxes]
    return {"input", *(node for stage in stages for node in members[stage])}


def _stand_ins(groups: list[tuple[Stage, ...]]) -> dict[str, str]:
    """A folded stage's output -> its first instance's, which draws the edges leaving the group."""
    return {stage.output: group[0].output for group in groups for stage in group[1:]}


def _block_edges(net: Network, drawn: set[str], stand_ins: dict[str, str]) -> list[str]:
    """Edges into drawn nodes. Those into an aux head are dashed; of those leaving a stage, the first
    into the main network and the first into an aux head carry its output shape (a fan-out into four
    branches shows it once)."""
    g, lines, labelled = net.graph, [], set()
    for tail, head in g.edges:
        if head not in drawn or (tail not in drawn and tail not in stand_ins):
            continue
        dashed = g.nodes[head]["aux"] is not None and g.nodes[tail]["aux"] is None
        leaves = g.nodes[tail]["stage"] != g.nodes[head]["stage"]
        label = str(_shape(net, tail)) if leaves and (tail, dashed) not in labelled else None
        labelled.add((tail, dashed))
        lines.append(_edge(stand_ins.get(tail, tail), head, label=label, style="dashed" if dashed else None))
    return lines


def _stage_block(net: Network, group: tuple[Stage, ...], nodes: list[str], rows: list[Row]) -> list[str]:
    stage = group[0]
    times = f" x{len(group)}" if len(group) > 1 else ""
    if stage.template is None:
        return [_layer_node(net, stage.output, times)]
    title = (_fold_title(group, rows) if times else rows[0].type) + times
    params, macs = sum(r.params for r in rows), sum(r.macs for r in rows)
    label = _lines(title, _counts(params, macs))
    return _cluster(
        stage.attr, label, 'style="rounded,filled", fillcolor="#f1f8ee"', _nested(net, stage.attr, nodes)
    )


def _aux_block(net: Network, stage: Stage, nodes: list[str], row: AuxRow) -> list[str]:
    weight = f"loss weight {row.weight:g}"
    if stage.template is None:
        data = net.graph.nodes[stage.output]
        label = _lines(f"{row.name} ({_layer_title(data)})", weight, f"{data['shape'].channels} channels")
        fill = FILLS.get(data["kind"], "#ffffff")
        return [
            _node(
                stage.output, label=label, tooltip=stage.output, fillcolor=fill, style="rounded,filled,dashed"
            )
        ]
    label = _lines(f"{row.name} ({row.type})", weight, _counts(row.params, row.macs))
    return _cluster(stage.attr, label, 'style="rounded,dashed"', _nested(net, stage.attr, nodes))


def _nested(net: Network, prefix: str, nodes: list[str]) -> list[str]:
    """The layer nodes under ``prefix``, each sub-container (a named branch, an inner template call)
    in a nested cluster of its own, in the order their first layers appear."""
    lines, seen = [], set()
    for node in nodes:
        head, dot, _ = node[len(prefix) + 1 :].partition(".")
        if not dot:
            lines.append(_layer_node(net, node))
        elif head not in seen:
            seen.add(head)
            inner = f"{prefix}.{head}"
            members = [n for n in nodes if n.startswith(inner + ".")]
            style = 'style="rounded,dotted", fontsize=9'
            lines += _cluster(inner, Html(_esc(head)), style, _nested(net, inner, members))
    return lines


def _layer_node(net: Network, node: str, times: str = "", **attrs: str) -> str:
    """A layer drawn as its kind, patch and output channels (``conv 3x3/1``, ``128 channels``)."""
    data = net.graph.nodes[node]
    label = _lines(_layer_title(data) + times, f"{data['shape'].channels} channels")
    return _node(node, label=label, tooltip=node, fillcolor=FILLS.get(data["kind"], "#ffffff"), **attrs)


def _layer_title(data: dict) -> str:
    layer = data["layer"]
    patch = KINDS[layer.kind].patch(layer) if layer is not None else ""
    return f"{data['kind']} {patch}".strip()


def _cluster(name: str, label: Html, style: str, inner: list[str]) -> list[str]:
    head = [f"graph [label={_value(label)}, {style}];"]
    return [f"subgraph {_quote('cluster_' + name)} {{", *_indent([*head, *inner]), "}"]


# DOT text -----------------------------------------------------------------------------------


def _digraph(name: str, title: Html, body: list[str]) -> str:
    head = [
        f"graph [label={_value(title)}, {GRAPH_STYLE}];",
        f"node [{NODE_STYLE}];",
        f"edge [{EDGE_STYLE}];",
    ]
    return "\n".join([f"digraph {_quote(name)} {{", *_indent([*head, *body]), "}"]) + "\n"


def _title(stats: Stats) -> Html:
    return _lines(stats.network, f"{size(stats.input)} input", _counts(stats.params, stats.macs))


def _node(node_id: str, **attrs: str | None) -> str:
    return f"{_quote(node_id)} {_attrs(attrs)};"


def _edge(tail: str, head: str, **attrs: str | None) -> str:
    listed = _attrs(attrs)
    return f"{_quote(tail)} -> {_quote(head)}" + (f" {listed};" if listed != "[]" else ";")


def _attrs(attrs: dict[str, str | None]) -> str:
    return (
        "[" + ", ".join(f"{key}={_value(value)}" for key, value in attrs.items() if value is not None) + "]"
    )


def _value(value: str) -> str:
    return f"<{value}>" if isinstance(value, Html) else _quote(value)


def _quote(text: str) -> str:
    """A DOT double-quoted string; labels are never quoted strings here, so no ``\\n`` escapes apply."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _lines(title: str, *lines: str) -> Html:
    """A bold title and plain lines (empty ones dropped), as an HTML-like label."""
    return Html("<BR/>".join([f"<B>{_esc(title)}</B>", *(_esc(line) for line in lines if line)]))


def _indent(lines: list[str]) -> list[str]:
    return ["  " + line for line in lines]


def _counts(params: int, macs: int) -> str:
    """``163.6K params, 128.0M ops``; a zero count is left out."""
    parts = [f"{kilo(params)} params" if params else "", f"{mega(macs)} ops" if macs else ""]
    return ", ".join(part for part in parts if part)


def _shape(net: Network, node: str) -> Shape:
    return net.graph.nodes[node]["shape"]


def _stage(net: Network, attr: str) -> Stage:
    return next(stage for stage in net.stages if stage.attr == attr)


def _fill(net: Network, stage: Stage) -> str:
    kind = "template" if stage.template else net.graph.nodes[stage.output]["kind"]
    return FILLS.get(kind, "#ffffff")


# rendering ----------------------------------------------------------------------------------


def render(dot_text: str, out_path: str | os.PathLike) -> None:
    """Write DOT text to ``out_path``: ``.dot`` as is, ``.svg``/``.png``/``.pdf`` through Graphviz's
    ``dot``. The file appears whole or not at all (see :func:`incdsl.files.write_atomic`).

    >>> render("digraph { a -> b }", "tiny.svg")  # doctest: +SKIP
    """
    path = Path(out_path)
    fmt = _format(path)
    if fmt == "dot":
        write_atomic(path, dot_text.encode("utf-8"))
    else:
        write_atomic(path, _run_dot(_dot_binary(), fmt, dot_text))


def _format(path: Path) -> str:
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise OutputError(
            f"cannot draw to '{path}': unknown extension '{path.suffix}'",
            hint="use one of " + ", ".join(f".{f}" for f in FORMATS),
        )
    return fmt


def _dot_binary() -> str:
    binary = shutil.which("dot")
    if binary is None:
        raise OutputError(
            "Graphviz's 'dot' was not found; install it (Debian: apt-get install graphviz) or write .dot"
        )
    return binary


def _run_dot(binary: str, fmt: str, dot_text: str) -> bytes:
    """The rendered file's bytes; dot writes them to stdout, so nothing touches the disk on failure."""
    try:
        done = subprocess.run([binary, f"-T{fmt}"], input=dot_text.encode("utf-8"), capture_output=True)
    except OSError as exc:
        raise OutputError(f"cannot run Graphviz's dot ({binary}): {exc.strerror or exc}") from None
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip() or f"exit status {done.returncode}"
        raise OutputError(f"Graphviz's dot failed: {message}")
    return done.stdout
