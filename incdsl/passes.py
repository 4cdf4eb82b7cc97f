"""Passes over the IR, run in order: each reads what earlier ones attached and adds its own records.

Like sqlglot's optimizer RULES or torch.fx's ShapeProp: plain functions, an ordered tuple.
"""

from __future__ import annotations

from .errors import ShapeError
from .ir import Network
from .layers import KINDS, Shape


def infer_shapes(net: Network) -> None:
    """Attach ``in_shape`` and ``shape`` (the output) to every node, in data-flow order."""
    g = net.graph
    g.nodes["input"]["shape"] = net.input
    for node in net.nodes():
        data = g.nodes[node]
        inputs = [g.nodes[p]["shape"] for p in g.predecessors(node)]
        if data["kind"] == "concat":
            data["in_shape"] = inputs[0]
            data["shape"] = _concat(inputs, data["span"])
        else:
            data["in_shape"] = inputs[0]
            data["shape"] = KINDS[data["kind"]].out_shape(data["layer"], inputs[0])


def _concat(shapes: list[Shape], span) -> Shape:
    sizes = {(s.height, s.width) for s in shapes}
    if len(sizes) > 1 or any(s.flat for s in shapes):
        listed = ", ".join(f"{s.height}x{s.width}" for s in shapes)
        raise ShapeError(
            f"branches must agree on height and width to be concatenated; they give {listed}",
            span,
            "check strides and padding in each branch",
        )
    return Shape(sum(s.channels for s in shapes), shapes[0].height, shapes[0].width)


def count(net: Network) -> None:
    """Attach ``params`` and ``macs`` to every node (0 for input and concat)."""
    g = net.graph
    for node in net.nodes():
        data = g.nodes[node]
        if data["kind"] == "concat":
            data["params"] = data["macs"] = 0
            continue
        kind, layer = KINDS[data["kind"]], data["layer"]
        data["params"] = kind.params(layer, data["in_shape"], data["shape"])
        data["macs"] = kind.macs(layer, data["in_shape"], data["shape"])


PASSES = (infer_shapes, count)


def run(net: Network) -> Network:
    for fn in PASSES:
        fn(net)
    return net
