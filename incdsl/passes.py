"""Passes over the IR, run in order: each reads what earlier ones attached and adds its own records.

Like sqlglot's optimizer RULES or torch.fx's ShapeProp: plain functions, an ordered tuple, each a walk
of the tree (linear in the network's size).

- :func:`infer_shapes`: every concrete node's input and output :class:`~incdsl.layers.Shape`;
- :func:`count`: every concrete node's tensors, params and MACs (a composite node's are its sums);
- :func:`infer_channels`: every class body's channels as expressions of the class's arguments, and
  the facts a class needs from its calls (the feature-map size a linear layer flattens);
- :func:`check_heads`: each aux head ends in logits the trainer can use.

A spec these passes accept compiles: nothing a backend needs is decided later.
"""

from __future__ import annotations

from dataclasses import replace

from .errors import IncdslError, ShapeError, SpecArgumentError
from .ir import IN_CHANNELS, BlockClass, Branch, Call, Channels, Facts, Fork, Layer, Network, Node, Seq, walk
from .layers import TRAINABLE, Shape, Source
from .symbolic import Expr, apply, simplest


def infer_shapes(net: Network) -> None:
    """Attach input and output shapes to every concrete node, in data-flow order."""
    x = net.input
    for stage in net.stages:
        x = _shape(stage.node, x)
    for aux in net.auxes:
        _shape(aux.node, aux.after.node.facts.output)


def shape(node: Node, x: Shape) -> Shape:
    """A concrete node's output for input ``x``, its facts (and its children's) attached."""
    return _shape(node, x)


def _shape(node: Node, x: Shape) -> Shape:
    if node.facts is not None and node.facts.input == x:
        return node.facts.output  # shaped already (as the builder went: a call's in_channels)
    if isinstance(node, Layer):
        y = node.op.kind.out_shape(node.op, x)
    elif isinstance(node, Seq):
        y = x
        for item in node.items:
            y = _shape(item, y)
    elif isinstance(node, Fork):
        part = _part(node, x) if node.split else x
        shapes = [_shape(b, part) for b in node.branches]
        sources = [_source(b, i == node.merge.args.get("shortcut")) for i, b in enumerate(node.branches)]
        y = node.merge.kind.out_shape(node.merge, shapes, node.span, sources)
    elif isinstance(node, Call):
        with _in_call(node):
            y = _shape(node.body, x)
    else:  # Branch
        y = _shape(node.body, x)
    node.facts = Facts(x, y)
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

    def __init__(self, call: Call):
        self.call = call

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if isinstance(exc, IncdslError):
            exc.notes.append(f"in template '{self.call.cls.template.name}', called at {self.call.span}")
        return False


def count(net: Network) -> None:
    """Attach tensors, params and MACs to every concrete node."""
    for stage in net.stages:
        _count(stage.node)
    for aux in net.auxes:
        _count(aux.node)


def _count(node: Node) -> tuple[int, int]:
    facts = node.facts
    if isinstance(node, Layer):
        kind, op = node.op.kind, node.op
        state = kind.state(op, facts.input, facts.output)
        params = sum(t.numel for t in state if t.role in TRAINABLE)
        node.facts = replace(facts, params=params, macs=kind.macs(op, facts.input, facts.output), state=state)
        return node.facts.params, node.facts.macs
    sums = [_count(child) for child in _children(node)]
    params, macs = sum(p for p, _ in sums), sum(m for _, m in sums)
    node.facts = replace(facts, params=params, macs=macs)
    return params, macs


def _children(node: Node) -> tuple[Node, ...]:
    if isinstance(node, Seq):
        return node.items
    if isinstance(node, Fork):
        return node.branches
    return (node.body,)


def infer_channels(net: Network) -> None:
    """Channels of every class body as expressions of its arguments (callees first, so a call's
    output is its class's, in the caller's terms)."""
    for cls in net.blocks:
        cls.out = _channels(cls.body, Expr.of(IN_CHANNELS), cls)
    x = Expr.of(net.input.channels)
    for stage in net.model.stages:
        x = _channels(stage.node, x)
    for aux in net.model.auxes:
        _channels(aux.node, aux.after.node.channels.output)


def _channels(node: Node, c: Expr, cls: BlockClass | None = None) -> Expr:
    if isinstance(node, Layer):
        flat_input, spatial = _flattened(node, cls)
        out = Expr.of(node.op.kind.out_channels(node.op, c, spatial))
        node.channels = Channels(c, out, flat_input, spatial)
        return out
    if isinstance(node, Seq):
        out = c
        for item in node.items:
            out = _channels(item, out, cls)
    elif isinstance(node, Fork):
        part = Expr.of(apply("//", simplest(c), len(node.branches))) if node.split else c
        outs = [_channels(b, part, cls) for b in node.branches]
        out = Expr.of(node.merge.kind.out_channels(node.merge, outs))
    elif isinstance(node, Branch):
        out = _channels(node.body, c, cls)
        _check_container(node)
    else:  # a Call: its class's output, in the caller's terms
        values = {IN_CHANNELS: c}
        values.update({p: Expr.of(v) for p, v in node.args.items() if not isinstance(v, float)})
        out = node.cls.out.substitute(values)
    node.channels = Channels(c, out)
    return out


def _flattened(layer: Layer, cls: BlockClass | None) -> tuple[bool, tuple[int, int]]:
    """Whether a flattening layer's input is already flat, and the feature map it flattens, which
    must be one size in every call of its class (the class has one nn.Linear)."""
    if not layer.op.kind.flattens:
        return False, (1, 1)
    inputs = [twin.facts.input for twin in layer.instances]
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


def _check_container(branch: Branch) -> None:
    """An nn.Sequential cannot flatten a feature map before its linear layer."""
    if branch.container is None or is_lone(branch):
        return
    for item in branch.body.items:
        if isinstance(item, Layer) and item.op.kind.flattens and not item.channels.flat_input:
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


def check_heads(net: Network) -> None:
    """An aux head's output is logits: flat, one per class."""
    for aux in net.auxes:
        out = aux.node.facts.output
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


PASSES = (infer_shapes, count, infer_channels, check_heads)


def run(net: Network) -> Network:
    for fn in PASSES:
        fn(net)
    return net
