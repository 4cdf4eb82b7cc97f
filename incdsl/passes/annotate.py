"""Passes over the IR, run in order: each reads the tables earlier ones returned and returns its own.

Like torch.fx's ShapeProp: plain functions of the network, called in order by :func:`run`, each a
walk of the tree (linear in the network's size). The IR's nodes are frozen; what a pass
finds goes into a side table keyed by node, which :func:`run` puts on the Network it returns, so a
consumer can only read a fact that has been computed:

- :func:`infer_shapes`: every concrete node's input and output :class:`~incdsl.kinds.layers.Shape`;
- :func:`count`: every concrete node's tensors, params and MACs (a composite node's are its sums);
- :func:`infer_channels`: every class body's channels as expressions of the class's arguments, each
  class's output channels, and the facts a class needs from its calls (the feature-map size a linear
  layer flattens);
- :func:`check_heads`: each aux head ends in logits the trainer can use.

A spec these passes accept compiles: nothing a backend needs is decided later.
"""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

from incdsl.errors import IncdslError, ShapeError, SpecArgumentError
from incdsl.ir.symbolic import Expr, apply, simplest
from incdsl.ir.tree import (
    IN_CHANNELS,
    BlockClass,
    Branch,
    Call,
    Channels,
    Facts,
    Fork,
    Layer,
    Network,
    Node,
    Seq,
    Visitor,
    walk,
)
from incdsl.kinds.layers import TRAINABLE, Shape, Source


def infer_shapes(net: Network) -> dict[Node, Facts]:
    """Every concrete node's input and output shapes, in data-flow order."""
    facts: dict[Node, Facts] = {}
    x = net.input
    for stage in net.stages:
        x = shape(stage.node, x, facts)
    for aux in net.auxes:
        shape(aux.node, facts[aux.after.node].output, facts)
    return facts


def shape(node: Node, x: Shape, facts: dict[Node, Facts]) -> Shape:
    """A concrete node's output for input ``x``; its facts (and its children's) go into ``facts``."""
    known = facts.get(node)
    if known is not None and known.input == x:
        return known.output  # shaped already (as the builder went: a call's in_channels)
    if isinstance(node, Layer):
        y = node.op.kind.out_shape(node.op, x)
    elif isinstance(node, Fork):
        part = _part(node, x) if node.split else x
        shapes = [shape(b, part, facts) for b in node.branches]
        sources = [_source(b, i == node.merge.args.get("shortcut")) for i, b in enumerate(node.branches)]
        y = node.merge.kind.out_shape(node.merge, shapes, node.span, sources)
    else:  # a sequence, a branch, a call: its children one after another
        y = x
        with _in_call(node):
            for child in node.children():
                y = shape(child, y, facts)
    facts[node] = Facts(x, y)
    return y


def _source(branch: Branch, shortcut: bool) -> Source:
    """What gives a branch's output (its last row: where its width or stride is written), for a merge's
    error message."""
    nodes = [n for n in walk(branch.body) if isinstance(n, (Layer, Call))]
    if not nodes:
        return Source("the block's input")
    widths = [n for n in nodes if isinstance(n, Call) or n.op.kind.out_channels(n.op, 0) != 0]
    last = (widths or nodes)[-1]  # the last row that sets the channels
    strided = [n for n in nodes if isinstance(n, Layer) and "kernel" in n.op.args]
    stride = next((n for n in strided if n.op["stride"] != 1), strided[0] if strided else None)
    what = _describe(last, branch)
    stride_span = stride.op.spans.get("kernel", stride.span) if stride else last.span
    width_span = last.op.spans.get("out", last.span) if isinstance(last, Layer) else last.span
    strides = stride is not None and stride.op["stride"] != 1
    return Source(what, width_span, shortcut, stride_span, strides)


def _describe(node: Layer | Call, branch: Branch) -> str:
    """``conv3 (line 12)``, ``downsample.0 (line 14)``."""
    name = (
        node.key.rsplit(".", 2)[-2:]
        if branch.container and node.attr.isdigit()
        else [node.attr or branch.container or ""]
    )
    label = ".".join(p for p in name if p) or (
        node.op.kind.name if isinstance(node, Layer) else node.cls.name
    )
    return f"{label} (line {node.span.line})"


def _part(fork: Fork, x: Shape) -> Shape:
    """What each branch of a split gets: an equal part of the input's channels."""
    n = len(fork.branches)
    if x.flat or x.channels % n:
        raise ShapeError(
            f"a split cuts its input's channels into {n} equal parts; {_text(x)} does not divide",
            fork.span,
            f"give it a multiple of {n} channels",
        )
    return replace(x, channels=x.channels // n)


def _text(x: Shape) -> str:
    return f"{x.channels} (flat)" if x.flat else str(x)


class _in_call:
    """Errors inside a call say which call, as the builder's do."""

    def __init__(self, node: Node):
        self.call = node if isinstance(node, Call) else None

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if self.call is not None and isinstance(exc, IncdslError):
            exc.notes.append(f"in template '{self.call.cls.template.name}', called at {self.call.span}")
        return False


def count(net: Network, facts: dict[Node, Facts]) -> dict[Node, Facts]:
    """Every concrete node's facts with its tensors, params and MACs (a composite's are its sums)."""
    counted: dict[Node, Facts] = {}
    for root in net.roots():
        _count(root, facts, counted)
    return counted


def _count(node: Node, facts, counted) -> Facts:
    own = facts[node]
    if isinstance(node, Layer):
        kind, op = node.op.kind, node.op
        state = kind.state(op, own.input, own.output)
        params = sum(t.numel for t in state if t.role in TRAINABLE)
        counted[node] = replace(own, params=params, macs=kind.macs(op, own.input, own.output), state=state)
    else:
        sums = [_count(child, facts, counted) for child in node.children()]
        counted[node] = replace(own, params=sum(f.params for f in sums), macs=sum(f.macs for f in sums))
    return counted[node]


def infer_channels(
    net: Network, facts: dict[Node, Facts]
) -> tuple[dict[Node, Channels], dict[BlockClass, Expr]]:
    """Channels of every class body as expressions of its arguments (callees first, so a call's
    output is its class's, in the caller's terms)."""
    pass_ = _Channels(net, facts)
    for cls in net.blocks:
        pass_.cls = cls
        pass_.outs[cls] = pass_.run(cls.body, Expr.of(IN_CHANNELS))
    pass_.cls = None
    x = Expr.of(net.input.channels)
    for stage in net.model.stages:
        x = pass_.run(stage.node, x)
    for aux in net.model.auxes:
        pass_.run(aux.node, pass_.channels[aux.after.node].output)
    return pass_.channels, pass_.outs


class _Channels(Visitor):
    """Each visit takes the node's input channels (``self.c``) and returns its output channels."""

    def __init__(self, net: Network, facts):
        self.twins, self.facts = net.twins, facts
        self.channels: dict[Node, Channels] = {}
        self.outs: dict[BlockClass, Expr] = {}
        self.cls: BlockClass | None = None
        self.c = Expr.of(0)

    def run(self, node: Node, c: Expr) -> Expr:
        self.c = c
        out = self.visit(node)
        self.channels.setdefault(node, Channels(c, out))
        return out

    def visit_Layer(self, node: Layer) -> Expr:
        flat_input, spatial = _flattened(node, self.cls, [self.facts[t].input for t in self.twins[node]])
        out = Expr.of(node.op.kind.out_channels(node.op, self.c, spatial))
        self.channels[node] = Channels(self.c, out, flat_input, spatial)
        return out

    def visit_Seq(self, node: Seq) -> Expr:
        out = self.c
        for item in node.items:
            out = self.run(item, out)
        return out

    def visit_Fork(self, node: Fork) -> Expr:
        c = self.c
        part = Expr.of(apply("//", simplest(c), len(node.branches))) if node.split else c
        outs = [self.run(b, part) for b in node.branches]
        return Expr.of(node.merge.kind.out_channels(node.merge, outs))

    def visit_Branch(self, node: Branch) -> Expr:
        out = self.run(node.body, self.c)
        _check_container(node, self.channels)
        return out

    def visit_Call(self, node: Call) -> Expr:  # its class's output, in the caller's terms
        values = {IN_CHANNELS: self.c}
        values.update({p: Expr.of(v) for p, v in node.args.items() if not isinstance(v, float)})
        return self.outs[node.cls].substitute(values)


def _flattened(layer: Layer, cls: BlockClass | None, inputs: list[Shape]) -> tuple[bool, tuple[int, int]]:
    """Whether a flattening layer's input (``inputs``: its twins') is already flat, and the feature map
    it flattens, which must be one size in every call of its class (the class has one nn.Linear)."""
    if not layer.op.kind.flattens:
        return False, (1, 1)
    if all(s.last for s in inputs):
        return True, (1, 1)  # a linear layer on each position of a channels-last map: nothing to flatten
    flat = all(s.flat for s in inputs)
    sizes = sorted({(s.height, s.width) for s in inputs if not s.flat})
    if len(sizes) > 1 or (sizes and any(s.flat for s in inputs)):
        listed = ", ".join([f"{h}x{w}" for h, w in sizes] + ["flat"] * any(s.flat for s in inputs))
        raise ShapeError(
            f"the calls of template '{cls.template.name}' flatten feature maps of different sizes ({listed}) "
            f"into this {layer.op.kind.name} layer, which must have one input size",
            layer.span,
            "pool to a fixed size first (adaptive_avgpool or global_avgpool) so every call agrees",
        )
    return flat, sizes[0] if sizes else (1, 1)


def _check_container(branch: Branch, channels: dict[Node, Channels]) -> None:
    """An nn.Sequential cannot flatten a feature map before its linear layer."""
    if branch.container is None or is_lone(branch):
        return
    for item in branch.body.items:
        if isinstance(item, Layer) and item.op.kind.flattens and not channels[item].flat_input:
            raise SpecArgumentError(
                f"a {item.op.kind.name} layer on a feature map cannot sit in a named branch of several "
                "layers (an nn.Sequential, which cannot flatten)",
                item.span,
                "leave the branch unnamed and name its layers (they become attributes), or pool to 1x1 "
                "and flatten before the branch",
            )


def is_lone(branch: Branch) -> bool:
    """A named branch that is its single layer itself (``branch b1: conv 1x1 64``)."""
    items = branch.body.items
    return len(items) == 1 and isinstance(items[0], (Layer, Call)) and items[0].attr == ""


def check_heads(net: Network, facts: dict[Node, Facts]) -> None:
    """An aux head's output is logits: flat, one per class."""
    for aux in net.auxes:
        out = facts[aux.node].output
        if not out.flat:
            raise ShapeError(
                f"aux head '{aux.name}' gives a {out} feature map; an aux head ends in logits",
                aux.node.span,
                "end the head with a linear layer: linear classes",
            )
        if net.classes is not None and out.channels != net.classes:
            raise ShapeError(
                f"aux head '{aux.name}' gives {out.channels} outputs; the network has {net.classes} classes",
                aux.node.span,
                "end the head with: linear classes",
            )


def run(net: Network) -> Network:
    """The network with the passes' tables, each pass given what the passes before it found."""
    facts = count(net, infer_shapes(net))
    channels, outs = infer_channels(net, facts)
    check_heads(net, facts)
    return replace(
        net, facts=MappingProxyType(facts), channels=MappingProxyType(channels), outs=MappingProxyType(outs)
    )
