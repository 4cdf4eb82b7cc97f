"""Per-stage statistics of a network, as the rows of the paper's Table 1, and their renderings.

The dict :func:`to_dict` makes, printed as JSON by ``incdsl stats --format json``, is a stable contract
(documented in the README)::

    {"network": str, "input": [C, H, W], "classes": int | null,
     "conventions": {...},
     "layers": [{"name", "label", "kind", "type", "patch", "depth", "input": [C,H,W], "output": [C,H,W],
                 "columns": {"n1x1": int, ...} | {}, "params": int, "macs": int}],
     "columns": {"n1x1": "#1x1", ...},
     "aux": [{"name", "after", "weight", "type", "output", "params", "macs"}],
     "total": {"params": int, "macs": int},
     "budget": {"macs": int, "within": bool} | null}

With a batch size (``incdsl stats --batch B``, :func:`compute`'s ``memory``), each layer and aux head
gains ``"memory": {"output", "saved", "peak"}`` and the dict a top-level ``"memory"`` (see
:func:`memory_dict` and :mod:`incdsl.backends.pytorch.memory`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from incdsl import render
from incdsl.backends.pytorch.memory import Estimate, Setting, StageMemory, describe, estimate
from incdsl.ir.tree import Call, Facts, Fork, Layer, Network, Node, Stage, Visitor
from incdsl.kinds import layers as L
from incdsl.memory import human_bytes
from incdsl.render import Column, Document, Table

# A residual row's scale (Inception-ResNet's 0.17, 0.10, 0.20) is a column of its own.
SCALE = "scale"

CONVENTIONS = {
    "params": "weights, biases and norm scales/shifts: what numel() counts; not running statistics",
    "macs": "multiply-adds of convolutions and linear layers: FlopCounterMode's FLOPs / 2",
    "total": "inference: the main network only; aux heads are listed separately",
    "units": "in tables, params in K = 1024 and ops in M = 10^6, as the paper prints them",
}


def _window(op: L.Op) -> str:
    kh, kw = op["kernel"]
    return f"{kh}x{kw}/{op['stride']}"


# How the table spells each layer kind: the paper's "type" and "patch size/stride" columns.
TITLES = {
    L.Conv: "convolution",
    L.MaxPool: "max pool",
    L.AvgPool: "avg pool",
    L.AdaptiveAvgPool: "avg pool",
    L.LRN: "local response norm",
    L.Activation: lambda op: op.kind.title,
    L.BatchNorm: "batch norm",
    L.LayerNorm: "layer norm",
    L.LayerScale: "layer scale",
    L.StochasticDepth: lambda op: f"stochastic depth ({op['p'] * 100:g}%)",
    L.Shuffle: lambda op: f"channel shuffle ({op['groups']})",
    L.Dropout: lambda op: f"dropout ({op['p'] * 100:g}%)",
    L.Linear: "linear",
    L.Softmax: "softmax",
}
PATCHES = {
    L.Conv: _window,
    L.MaxPool: _window,
    L.AvgPool: _window,
    L.AdaptiveAvgPool: lambda op: "adaptive {}x{}".format(*op["size"]),
    L.GlobalAvgPool: lambda op: "global",
}


def spell(table: dict, op: L.Op, default: str = "") -> str:
    """The entry of ``table`` for the op's kind (or the nearest base kind's): text, or a function of
    the op giving text."""
    for cls in type(op.kind).__mro__:
        if cls in table:
            entry = table[cls]
            return entry(op) if callable(entry) else entry
    return default


@dataclass(frozen=True)
class Row:
    """One row of the table: a top-level stage. ``kind`` is the layer kind or the template's name."""

    name: str
    label: str | None
    kind: str
    type: str
    patch: str
    depth: int
    input: list[int]
    output: list[int]
    params: int
    macs: int
    columns: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class AuxRow:
    name: str
    after: str
    weight: float
    type: str
    output: list[int]
    params: int
    macs: int


@dataclass(frozen=True)
class Stats:
    network: str
    input: list[int]
    classes: int | None
    rows: tuple[Row, ...]
    aux: tuple[AuxRow, ...]
    params: int
    macs: int
    budget: int | None
    titles: dict[str, str] = field(default_factory=dict)  # a column's key -> its title, in table order
    memory: Estimate | None = field(default=None, repr=False)  # activation memory at a batch size

    @property
    def within_budget(self) -> bool | None:
        return None if self.budget is None else self.macs <= self.budget

    def row_memory(self) -> list[StageMemory | None]:
        """Each row's activation memory (None for every row without a batch size)."""
        return list(self.memory.stages[: len(self.rows)]) if self.memory else [None] * len(self.rows)

    def aux_memory(self) -> list[StageMemory | None]:
        """Each aux head's activation memory (the heads run in training only)."""
        heads = self.memory.stages[len(self.rows) :] if self.memory else ()
        return list(heads) or [None] * len(self.aux)


def compute(net: Network, memory: Setting | None = None) -> Stats:
    """Stats of a network whose passes have run (one walk of the tree); with ``memory``, its activation
    memory at that batch size too (:func:`incdsl.backends.pytorch.memory.estimate`)."""
    titles: dict[str, str] = {}
    rows = tuple(_row(stage, net.facts[stage.node], titles) for stage in net.stages)
    aux = tuple(
        AuxRow(
            a.name,
            a.after.attr,
            a.weight,
            _kind(a.node) if isinstance(a.node, Call) else _title(a.node),
            net.facts[a.node].output.as_list(),
            net.facts[a.node].params,
            net.facts[a.node].macs,
        )  # fmt: skip
        for a in net.auxes
    )
    return Stats(
        net.name, net.input.as_list(), net.classes, rows, aux,
        sum(r.params for r in rows), sum(r.macs for r in rows), net.budget, titles,
        None if memory is None else estimate(net, memory),
    )  # fmt: skip


def _row(stage: Stage, facts: Facts, titles: dict[str, str]) -> Row:
    node = stage.node
    columns = _columns(node, titles)
    return Row(
        stage.name, stage.label, _kind(node), _stage_type(stage), _patch(node), depth(node),
        facts.input.as_list(), facts.output.as_list(), facts.params, facts.macs, columns,
    )  # fmt: skip


def _columns(node: Layer | Call, titles: dict[str, str]) -> dict:
    """A template call's titled arguments (the template says which are columns: ``n1x1 "#1x1"``),
    and a residual's scale; ``titles`` collects each column's title, in the order they appear. A
    nested sequential stage of calls shows its first call's (EfficientNet's stage rows)."""
    if isinstance(node, Fork) and len(node.branches) == 1:
        calls = [item for item in node.branches[0].body.items if isinstance(item, Call)]
        node = calls[0] if calls else node
    if not isinstance(node, Call):
        return {}
    template = node.cls.template
    columns = {}
    for param, value in node.args.items():
        title = template.title(param)
        if title is not None:
            columns[param] = value
            titles.setdefault(param, title)
    scale = _scale(node.body)
    if scale is not None:
        columns[SCALE] = scale
        titles.setdefault(SCALE, SCALE)
    return columns


def _scale(node: Node) -> float | None:
    """The scale of the first residual in a block's own body (not in the blocks it calls)."""
    if isinstance(node, Fork) and isinstance(node.merge.kind, L.Add):
        return node.merge["scale"] if node.merge["scale"] != 1 else None
    children = () if isinstance(node, Call) else node.children()
    return next((s for s in map(_scale, children) if s is not None), None)


def _kind(node: Layer | Call | Fork) -> str:
    if isinstance(node, Fork):
        return "sequential"
    return node.cls.template.name if isinstance(node, Call) else node.op.kind.name


def _stage_type(stage: Stage) -> str:
    if isinstance(
        stage.node, Call
    ):  # "inception (3a)"; a named stage shows its name: "InceptionA (Mixed_5b)"
        return f"{stage.template} ({stage.label or stage.name})"
    if isinstance(stage.node, Fork):  # a nested sequential group: "2x mbconv (features.2)"
        return f"{_group_title(stage.node.branches[0].body.items)} ({stage.label or stage.name})"
    return _title(stage.node)


def _group_title(items) -> str:
    kinds = [_kind(item) for item in items]
    return f"{len(kinds)}x {kinds[0]}" if kinds and len(set(kinds)) == 1 else "sequential"


def _title(layer: Layer) -> str:
    return spell(TITLES, layer.op, layer.op.kind.name)


def _patch(node: Layer | Call) -> str:
    return spell(PATCHES, node.op) if isinstance(node, Layer) else ""


def depth(node: Node) -> int:
    """Longest chain of layers with weights through a node (the paper's "depth" column)."""
    return _Depth().visit(node)


class _Depth(Visitor):
    def visit_Layer(self, node: Layer) -> int:
        return node.op.kind.depth(node.op)

    def visit_Fork(self, node: Fork) -> int:
        return max((self.visit(b) for b in node.branches), default=0)

    def generic_visit(self, node: Node) -> int:  # a sequence, a branch, a call: its children in a chain
        return sum(self.visit(child) for child in node.children())


# renderings ---------------------------------------------------------------------------------


def to_dict(stats: Stats) -> dict:
    budget = None if stats.budget is None else {"macs": stats.budget, "within": stats.within_budget}
    data = {
        "network": stats.network,
        "input": stats.input,
        "classes": stats.classes,
        "conventions": CONVENTIONS,
        "layers": [_with_memory(asdict(r), m) for r, m in zip(stats.rows, stats.row_memory())],
        "columns": stats.titles,
        "aux": [_with_memory(asdict(a), m) for a, m in zip(stats.aux, stats.aux_memory())],
        "total": {"params": stats.params, "macs": stats.macs},
        "budget": budget,
    }
    if stats.memory is not None:
        data["memory"] = memory_dict(stats.memory)
    return data


def _with_memory(row: dict, memory: StageMemory | None) -> dict:
    """A row's dict, with ``"memory": {"output", "saved", "peak"}`` in bytes when there is a batch
    size: its output, what its layers keep for backward (0 in inference) and the activations alive at
    once while it runs (inference; null in training)."""
    if memory is not None:
        row["memory"] = {"output": memory.output, "saved": memory.saved, "peak": memory.peak}
    return row


def memory_dict(est: Estimate) -> dict:
    """The top-level ``"memory"`` of the JSON output: the setting, then bytes (see the README)."""
    s = est.setting
    training = s.training
    return {
        "batch": s.batch,
        "mode": "training" if training else "inference",
        "dtype": s.dtype,
        "device": s.device,
        "optimizer": s.optimizer if training else None,
        "input": est.input,
        "activations": est.activations,
        "saved": est.saved,
        "live": None if training else est.live,
        "weights": est.weights,
        "gradients": est.gradients,
        "optimizer_state": est.optimizer,
        "averaged": est.averaged,
        "transient": est.transient if training else 0,
        "peak": est.peak,
    }


def size(shape: list[int]) -> str:
    c, h, w = shape
    return f"{h}x{w}x{c}"


def kilo(params: int) -> str:
    return f"{params / 1024:,.1f}K" if params else ""


def mega(macs: int) -> str:
    return f"{macs / 1e6:,.1f}M" if macs else ""


HEADERS = ["type", "patch size/stride", "input size", "output size", "depth", "params", "ops"]


def shown_titles(stats: Stats) -> list[str]:
    """The template columns' titles, each once (two templates may title their parameters alike)."""
    return list(dict.fromkeys(stats.titles.values()))


def headers(stats: Stats) -> list[str]:
    """The table's headers: the paper's, with the templates' columns before params and ops, and the
    memory columns after them when there is a batch size."""
    return [*HEADERS[:5], *shown_titles(stats), *HEADERS[5:], *memory_headers(stats)]


def memory_headers(stats: Stats) -> list[str]:
    if stats.memory is None:
        return []
    return ["activations", "saved" if stats.memory.setting.training else "live peak"]


def cells(row: Row, titles: dict[str, str] | None = None, memory: StageMemory | None = None) -> list[str]:
    """The table's cells for one row, as text (``titles``: :attr:`Stats.titles`, the columns;
    ``memory``: the row's activation memory, when there is a batch size)."""
    titles = titles or {}
    shown = list(dict.fromkeys(titles.values()))
    by_title = {titles[k]: v for k, v in row.columns.items() if k in titles}
    return [
        row.type, row.patch, size(row.input), size(row.output), str(row.depth) if row.depth else "0",
        *(_cell(by_title.get(t, "")) for t in shown), kilo(row.params), mega(row.macs),
        *_memory_cells(memory),
    ]  # fmt: skip


def _memory_cells(memory: StageMemory | None) -> list[str]:
    return [human_bytes(b) for b in _memory_figures(memory)]


def _memory_figures(memory: StageMemory | None) -> list[int]:
    """A row's memory columns, in bytes: its output, then what it keeps for backward (training) or
    the most activation bytes alive while it runs (inference); none without a batch size."""
    if memory is None:
        return []
    return [memory.output, memory.saved if memory.peak is None else memory.peak]


def _cell(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def csv_table(stats: Stats) -> Table:
    """The table ``--format csv`` writes: exact counts and bytes, a row per aux head and the total."""
    keys = list(stats.titles)
    extra = _csv_memory_headers(stats)
    titles = ["name", "type", "patch", "input", "output", "depth", *keys, "params", "macs", *extra]
    rows = []
    for r, m in zip(stats.rows, stats.row_memory()):
        cols = [r.columns.get(k, "") for k in keys]
        shapes, memory = [size(r.input), size(r.output)], _memory_figures(m)
        rows.append([r.name, r.type, r.patch, *shapes, r.depth, *cols, r.params, r.macs, *memory])
    for a, m in zip(stats.aux, stats.aux_memory()):
        blank = [""] * len(keys)
        place = [f"after {a.after}", "", size(a.output), ""]
        memory = _memory_figures(m) if m else [""] * len(extra)
        rows.append([a.name, a.type, *place, *blank, a.params, a.macs, *memory])
    total = _csv_total(stats.memory) if stats.memory else []
    rows.append(["total", "", "", "", "", "", *[""] * len(keys), stats.params, stats.macs, *total])
    columns = tuple(Column(title) for title in titles)
    return Table("", columns, tuple(tuple(str(cell) for cell in row) for row in rows))


def to_csv(stats: Stats) -> str:
    return render.to_csv(csv_table(stats))


# How readily a column leaves a narrow terminal (0: never; larger: sooner), by header.
PRIORITIES = {
    "type": 0,
    "patch size/stride": 4,
    "input size": 5,
    "output size": 0,
    "depth": 3,
    "params": 0,
    "ops": 0,
}
TEMPLATE_PRIORITY, MEMORY_PRIORITY = 2, 1


def table(stats: Stats, matches=None) -> Table:
    """The table of ``incdsl stats``: the paper's columns, the templates' (``#1x1``...), params and ops,
    memory with a batch size; with ``matches`` (:mod:`incdsl.analysis.reference`), the paper's printed figures
    beside the computed ones, disagreeing ones marked, and a line per disagreement under it."""
    kinds = {"type": "text", "patch size/stride": "shape", "input size": "shape", "output size": "shape"}
    columns = [Column(h, kinds.get(h, "figure"), _priority(h, stats)) for h in headers(stats)]
    rows = [cells(r, stats.titles, m) for r, m in zip(stats.rows, stats.row_memory())]
    footer = summary(stats).splitlines()
    if matches is not None:
        from incdsl.analysis import reference

        columns += [Column("paper params", "figure", 1), Column("paper ops", "figure", 1)]
        printed = reference.printed_cells(matches)
        rows = [[*shown, *printed.get(r.name, ("", ""))] for shown, r in zip(rows, stats.rows)]
        footer += reference.disagreement_lines(matches)
    title = f"{stats.network}: {size(stats.input)} input"
    return Table(title, tuple(columns), tuple(map(tuple, rows)), tuple(footer))


def _priority(header: str, stats: Stats) -> int:
    if header in memory_headers(stats):
        return MEMORY_PRIORITY
    return PRIORITIES.get(header, TEMPLATE_PRIORITY)


def document(stats: Stats, matches=None) -> Document:
    """What ``incdsl stats`` prints, in every format."""
    data = to_dict(stats)
    if matches is not None:
        from incdsl.analysis import reference

        data["reference"] = reference.to_dict(matches)
    conventions = "conventions: " + "; ".join(f"{k}: {v}" for k, v in CONVENTIONS.items())
    return Document((table(stats, matches),), data, (conventions,), csv_table(stats))


def _csv_memory_headers(stats: Stats) -> list[str]:
    """Exact bytes: each row's output and what it keeps for backward (training) or its live peak."""
    if stats.memory is None:
        return []
    return ["activation_bytes", "saved_bytes" if stats.memory.setting.training else "peak_bytes"]


def _csv_total(est: Estimate) -> list:
    return [est.activations, est.saved if est.setting.training else est.live]


def to_markdown(stats: Stats) -> str:
    return render.to_markdown(table(stats))


def summary(stats: Stats) -> str:
    """Totals, aux heads, the budget verdict and the memory estimate, as plain lines."""
    lines = [f"total (inference): {stats.params:,} params, {stats.macs:,} multiply-adds"]
    for a, m in zip(stats.aux, stats.aux_memory()):
        saved = f"; saved for backward {human_bytes(m.saved)}" if m else ""
        lines.append(
            f"aux head {a.name} (after {a.after}, loss weight {a.weight:g}): "
            f"{a.params:,} params, {a.macs:,} multiply-adds (training only){saved}"
        )
    if stats.budget is not None:
        lines.append(budget_verdict(stats.macs, stats.budget))
    if stats.memory is not None:
        lines += describe(stats.memory)
    return "\n".join(lines)


def budget_verdict(macs: int, budget: int) -> str:
    if macs <= budget:
        return f"budget: {macs:,} <= {budget:,} multiply-adds ({macs / budget:.1%} of budget)"
    return (
        f"budget exceeded: {macs:,} multiply-adds > budget {budget:,} "
        f"(over by {macs - budget:,}, {macs / budget - 1:.1%})"
    )
