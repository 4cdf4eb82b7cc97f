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
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType

from incdsl.analysis.report import PATCHES, AuxRow, Row, Stats, _cell, compute, kilo, mega, size, spell
from incdsl.errors import OutputError, did_you_mean
from incdsl.files import write_atomic
from incdsl.ir.tree import INPUT, Call, Facts, Fork, Layer, Network, Node, Seq, Stage, Visitor
from incdsl.kinds import layers as L
from incdsl.kinds.layers import Shape
from incdsl.passes.annotate import is_lone

LEVELS = ("network", "block")
FORMATS = ("dot", "svg", "png", "pdf")

# Not a node id of the dataflow graph (those never hold '@' outside a merge's id), so no clash.
OUTPUT = "@output"

# newrank=true lets dot keep a block's branches left to right in the order the template writes them.
GRAPH_STYLE = 'fontname="Helvetica", fontsize=12, labelloc=t, nodesep=0.3, ranksep=0.35, newrank=true'
NODE_STYLE = 'shape=box, style="rounded,filled", fillcolor="#ffffff", fontname="Helvetica", fontsize=10'
EDGE_STYLE = 'fontname="Helvetica", fontsize=8, color="#555555", arrowsize=0.6'

# Fill colours by layer kind and merge kind (the nearest base kind's when a kind has none).
TEMPLATE_FILL = "#d9efd3"
FILLS = MappingProxyType(
    {
        L.Conv: "#d6e6f5",
        L.MaxPool: "#fbe3c9",
        L.AvgPool: "#fbe3c9",
        L.AdaptiveAvgPool: "#fbe3c9",
        L.LRN: "#ececec",
        L.Dropout: "#ececec",
        L.Linear: "#e4d7f0",
        L.Softmax: "#f5d5d5",
        L.Activation: "#ececec",
        L.BatchNorm: "#ececec",
        L.Flatten: "#ececec",
        L.Shuffle: "#ececec",
        L.LayerNorm: "#ececec",
        L.ChannelsLast: "#ececec",
        L.ChannelsFirst: "#ececec",
        L.LayerScale: "#ececec",
        L.StochasticDepth: "#ececec",
        L.Mul: "#f2e6d8",
        L.Concat: "#f4f4f4",
        L.Add: "#e6f2d8",
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
        if groups and groups[-1][0].group == stage.group:
            groups[-1].append(stage)
        else:
            groups.append([stage])
    return [tuple(group) for group in groups]


# network level ------------------------------------------------------------------------------


def _network_level(net: Network, stats: Stats) -> list[str]:
    rows = _rows_by_stage(net, stats)
    groups = fold(net.stages)
    lines = [_node(INPUT, label=Html("<B>input</B>"), shape="ellipse", group="main")]
    lines += [_stage_node(group, [rows[s.attr] for s in group], stats.titles) for group in groups]
    lines += [_aux_node(row) for row in stats.aux]
    lines.append(_node(OUTPUT, label=Html("<B>output</B>"), shape="ellipse", group="main"))
    tails = [INPUT, *(group[0].attr for group in groups)]
    shapes = [net.input, *(net.facts[group[-1].node].output for group in groups)]
    heads = [*tails[1:], OUTPUT]
    lines += [_edge(tail, head, label=str(shape)) for tail, head, shape in zip(tails, heads, shapes)]
    owner = {stage.attr: group[0].attr for group in groups for stage in group}
    for aux in net.auxes:
        shape = net.facts[aux.after.node].output
        lines.append(_edge(owner[aux.after.attr], aux.name, label=str(shape), style="dashed"))
    return lines


def _rows_by_stage(net: Network, stats: Stats) -> dict[str, Row]:
    return {stage.attr: row for stage, row in zip(net.stages, stats.rows)}


def _stage_node(group: tuple[Stage, ...], rows: list[Row], titles: dict[str, str]) -> str:
    first = rows[0]
    title = f"{first.type} {first.patch}".strip()
    if len(group) > 1:
        title = f"{len(group)}x {_fold_title(group, rows)}"
    params, macs = sum(r.params for r in rows), sum(r.macs for r in rows)
    return _node(
        group[0].attr,
        label=_table_label(title, first.columns, titles, _counts(params, macs)),
        tooltip=", ".join(s.name for s in group),
        fillcolor=_fill(group[0].node),
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


def _table_label(title: str, columns: dict, titles: dict[str, str], counts: str) -> Html:
    """Bold title, then the row's template columns (Table 1's, in the paper's order) when it has any,
    then counts."""
    keys = [k for k in titles if k in columns]
    if not keys:
        return Html("<BR/>".join([f"<B>{_esc(title)}</B>", *([_esc(counts)] if counts else [])]))
    span = f'COLSPAN="{len(keys)}"'
    heads = "".join(f'<TD><FONT POINT-SIZE="8">{_esc(titles[k])}</FONT></TD>' for k in keys)
    values = "".join(f"<TD>{_esc(_cell(columns[k]))}</TD>" for k in keys)
    rows = [f"<TR><TD {span}><B>{_esc(title)}</B></TD></TR>", f"<TR>{heads}</TR>", f"<TR>{values}</TR>"]
    if counts:
        rows.append(f"<TR><TD {span}>{_esc(counts)}</TD></TR>")
    return Html(f'<TABLE BORDER="0" CELLBORDER="0" CELLSPACING="0" CELLPADDING="1">{"".join(rows)}</TABLE>')


# block level --------------------------------------------------------------------------------


def _block_level(net: Network, stats: Stats) -> list[str]:
    rows = _rows_by_stage(net, stats)
    groups = fold(net.stages)
    lines = [_node(INPUT, label=Html("<B>input</B>"), shape="ellipse")]
    blocks = _Blocks(net.facts)
    for group in groups:
        lines += blocks.stage(group, [rows[s.attr] for s in group])
    for aux, row in zip(net.auxes, stats.aux):
        lines += blocks.aux(aux.node, row)
    lines.append(_node(OUTPUT, label=Html("<B>output</B>"), shape="ellipse"))
    g = net.graph
    outputs = g.graph["outputs"]
    stand_ins = {outputs[s.attr]: outputs[group[0].attr] for group in groups for s in group[1:]}
    shown = _first_instances(groups, net)
    drawn = {INPUT, *(n for n, data in g.nodes(data=True) if data["stage"] in shown)}
    lines += _block_edges(net, drawn, stand_ins)
    last = outputs[net.stages[-1].attr] if net.stages else INPUT
    lines.append(_edge(stand_ins.get(last, last), OUTPUT, label=str(_shape(net, last))))
    return lines


def _first_instances(groups: list[tuple[Stage, ...]], net: Network) -> set[str]:
    """The stages drawn as themselves: the first of each folded group, and the aux heads."""
    return {group[0].attr for group in groups} | {aux.name for aux in net.auxes}


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
        shortcut = SHORTCUT_STYLE if g.edges[tail, head].get("shortcut") else {}
        style = "dashed" if dashed else None
        lines.append(_edge(stand_ins.get(tail, tail), head, label=label, style=style, **shortcut))
    return lines


class _Blocks(Visitor):
    """Draws blocks as clusters of their layers; each visit returns a node's DOT lines: a layer or
    merge each, a named branch or an inner template call each a nested cluster, in the order the
    spec writes them."""

    def __init__(self, facts: Mapping[Node, Facts]):
        self.facts = facts

    def stage(self, group: tuple[Stage, ...], rows: list[Row]) -> list[str]:
        stage = group[0]
        times = f" x{len(group)}" if len(group) > 1 else ""
        if isinstance(stage.node, Layer):
            return [self.layer(stage.node, times)]
        title = (_fold_title(group, rows) if times else rows[0].type) + times
        params, macs = sum(r.params for r in rows), sum(r.macs for r in rows)
        label = _lines(title, _counts(params, macs))
        style = 'style="rounded,filled", fillcolor="#f1f8ee"'
        node = stage.node
        body = node.body if isinstance(node, Call) else node.branches[0].body  # a nested group
        return _cluster(stage.attr, label, style, self.visit(body))

    def aux(self, node: Layer | Call, row: AuxRow) -> list[str]:
        weight = f"loss weight {row.weight:g}"
        if isinstance(node, Layer):
            channels = f"{self.facts[node].output.channels} channels"
            label = _lines(f"{row.name} ({_layer_title(node)})", weight, channels)
            style = "rounded,filled,dashed"
            return [_node(node.key, label=label, tooltip=node.key, fillcolor=_fill(node), style=style)]
        label = _lines(f"{row.name} ({row.type})", weight, _counts(row.params, row.macs))
        return _cluster(node.key, label, 'style="rounded,dashed"', self.visit(node.body))

    def layer(self, layer: Layer, times: str = "") -> str:
        """A layer drawn as its kind, patch and output channels (``conv 3x3/1``, ``128 channels``)."""
        label = _lines(_layer_title(layer) + times, f"{self.facts[layer].output.channels} channels")
        return _node(layer.key, label=label, tooltip=layer.key, fillcolor=_fill(layer))

    def visit_Layer(self, node: Layer) -> list[str]:
        return [self.layer(node)]

    def visit_Seq(self, node: Seq) -> list[str]:
        return [line for item in node.items for line in self.visit(item)]

    def visit_Fork(self, node: Fork) -> list[str]:
        lines = []
        for branch in node.branches:
            inner = self.visit(branch.body)
            if branch.container is not None and not is_lone(branch):
                inner = _cluster(branch.key, Html(_esc(branch.container)), _NESTED, inner)
            lines += inner
        title = ("split, " if node.split else "") + _merge_title(node.merge)
        label = _lines(title, f"{self.facts[node].output.channels} channels")
        return [*lines, _node(node.key, label=label, tooltip=node.key, fillcolor=_fill(node))]

    def visit_Call(self, node: Call) -> list[str]:
        return _cluster(node.key, Html(_esc(node.attr)), _NESTED, self.visit(node.body))


_NESTED = 'style="rounded,dotted", fontsize=9'


def _merge_title(merge) -> str:
    """``concat``, a gate's ``mul``, or a residual's ``add x0.17, relu``."""
    if isinstance(merge.kind, L.Add):
        scale = "" if merge["scale"] == 1 else f" x{merge['scale']:g}"
        return f"add{scale}" + (", relu" if merge["relu"] else "")
    return merge.kind.name


# A residual's shortcut: the edge from its input (or its projection) straight into the add.
SHORTCUT_STYLE = {"color": "#2a7f62", "penwidth": "1.6", "xlabel": "shortcut"}


def _layer_title(layer: Layer) -> str:
    return f"{layer.op.kind.name} {spell(PATCHES, layer.op)}".strip()


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


# The units of the per-layer counts (``incdsl stats``'s): said once, in the title.
UNITS = "layers: params in K = 1024, ops (multiply-adds) in M = 10^6"


def _title(stats: Stats) -> Html:
    """The network, its input, its exact totals as ``incdsl stats`` prints them, and the units below."""
    totals = f"{stats.params:,} params, {stats.macs:,} multiply-adds"
    return _lines(stats.network, f"{size(stats.input)} input", totals, UNITS)


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


def _shape(net: Network, node_id: str) -> Shape:
    node = net.graph.nodes[node_id]["node"]
    return net.input if node is None else net.facts[node].output


def _fill(node: Node) -> str:
    if isinstance(node, Call):
        return TEMPLATE_FILL
    kind = node.op.kind if isinstance(node, Layer) else node.merge.kind
    for cls in type(kind).__mro__:
        if cls in FILLS:
            return FILLS[cls]
    return "#ffffff"


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
