"""Shape comments for a block class's forward: ``# (N, n1x1 + n3x3 + n5x5 + pool_proj, H, W)``.

In a class a step's channels are the expression the passes computed of the constructor's arguments
(:attr:`~incdsl.ir.tree.Channels.output`); its size is the class input's ``H`` and ``W`` divided by the
strides on the way, a number or a stride argument (``H/2``, ``H/s``), as every call of the class
computes it (checked against each call's concrete shapes); a size that follows no such rule is
``H'``, a pooled one its number.

>>> import incdsl
>>> net = incdsl.load("resnet50")
>>> cls = net.blocks[0]
>>> comments = shape_comments(net, cls)
>>> [comments[id(n)] for n in cls.body.items[0].branches[0].body.items[3:5]]
['# (N, w, H/s, W/s)', '# (N, w, H/s, W/s)']
"""

from __future__ import annotations

import math

from incdsl.ir.symbolic import Expr, Sym
from incdsl.ir.tree import BlockClass, Call, Layer, Network, Node, walk

Divisor = tuple[int, tuple[str, ...]]  # a number times the named arguments
ONE: Divisor = (1, ())


def shape_comments(net: Network, cls: BlockClass) -> dict[int, str]:
    """Each node of the class body (by id) and the comment saying its output's shape."""
    instances: dict[int, list[tuple]] = {}
    for call in cls.calls:
        x = net.facts[call].input
        for node, twin in zip(walk(cls.body), walk(call.body)):
            instances.setdefault(id(node), []).append((call, x, net.facts[twin].output))
    strides = sorted({name for node in walk(cls.body) for name in _stride_names(node)})
    comments = {}
    for node in walk(cls.body):
        seen = instances.get(id(node))
        if seen and node in net.channels:
            comments[id(node)] = _comment(net.channels[node].output, seen, _divisor(seen, strides))
    return comments


def input_comment() -> str:
    return "# (N, in_channels, H, W)"


def _comment(channels: Expr, seen: list[tuple], divisor: Divisor | None) -> str:
    if all(out.flat for _, _, out in seen):
        return f"# (N, {channels})"
    h = _side("H", [out.height for _, _, out in seen], divisor)
    w = _side("W", [out.width for _, _, out in seen], divisor)
    return f"# (N, {channels}, {h}, {w})"


def _side(name: str, sizes: list[int], divisor: Divisor | None) -> str:
    if divisor is not None:
        number, params = divisor
        factors = [str(number)] * (number != 1) + list(params)
        if not factors:
            return name
        return f"{name}/{factors[0]}" if len(factors) == 1 else f"{name}/({' * '.join(factors)})"
    if len(set(sizes)) == 1:
        return str(sizes[0])
    return f"{name}'"


def _divisor(seen: list[tuple], strides: list[str]) -> Divisor | None:
    """What divides the class input's size to give the node's output size in every call: 1, a
    stride argument, a number, or a number times a stride argument."""
    call, x, out = seen[0]
    ratio = x.height // out.height if out.height else 0
    candidates: list[Divisor] = [ONE, *((1, (p,)) for p in strides)]
    for p in strides:
        value = call.args.get(p)
        if isinstance(value, int) and value > 0 and ratio % value == 0 and ratio > value:
            candidates.append((ratio // value, (p,)))
    if ratio > 1:
        candidates.append((ratio, ()))
    return next((d for d in candidates if all(_fits(d, *s) for s in seen)), None)


def _stride_names(node: Node) -> list[str]:
    """The arguments a layer's stride, or a call's arguments, name: what can divide its size."""
    if isinstance(node, Layer):
        stride = node.op.args.get("stride")
        return [str(stride)] if isinstance(stride, Sym) else []
    if isinstance(node, Call):
        return [str(v) for v in node.args.values() if isinstance(v, Sym)]
    return []


def _fits(divisor: Divisor, call: Call, x, out) -> bool:
    number, params = divisor
    d = number
    for name in params:
        value = call.args.get(name)
        if not isinstance(value, int) or value < 1:
            return False
        d *= value
    return all(o in (i // d, math.ceil(i / d)) for i, o in ((x.height, out.height), (x.width, out.width)))
