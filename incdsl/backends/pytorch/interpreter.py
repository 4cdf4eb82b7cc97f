"""Run a network's IR directly with torch's functional ops: no code generated, no module built.

Useful on its own (try a spec without writing a file), and the oracle the generated modules are
tested against: it reads nothing the PyTorch backend writes, only the IR, and it keeps its weights
under the same state_dict keys (the layer table's :meth:`~incdsl.kinds.layers.LayerKind.state`), so the two
can be given the same weights and must then compute the same outputs and gradients.

>>> import torch, incdsl
>>> run = Interpreter(incdsl.load("mini_googlenet"))
>>> run(torch.randn(2, 3, 32, 32)).shape
torch.Size([2, 10])
>>> list(run.state)[:2]
['conv1.conv.weight', 'conv1.bn.weight']
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from incdsl.ir.tree import Fork, Layer, Network, Node, Visitor
from incdsl.kinds import layers as L
from incdsl.kinds.layers import BATCHES, BIAS, NORM_BIAS, NORM_WEIGHT, RUNNING_MEAN, RUNNING_VAR, WEIGHT

BN_MOMENTUM = 0.1  # nn.BatchNorm2d's default


class Interpreter(Visitor):
    """A network's IR, executable: ``Interpreter(net)(x)``. ``state`` maps state_dict keys to the
    tensors (parameters with ``requires_grad``, and buffers); give it a module's ``state_dict()`` to
    run the same weights."""

    def __init__(self, net: Network, state: dict[str, Tensor] | None = None, seed: int = 0):
        self.net = net
        self.state = dict(state) if state is not None else initial_state(net, seed)
        self.training = False

    def train(self, mode: bool = True) -> Interpreter:
        self.training = mode
        return self

    def eval(self) -> Interpreter:
        return self.train(False)

    def parameters(self) -> dict[str, Tensor]:
        return {key: t for key, t in self.state.items() if t.requires_grad}

    def __call__(self, x: Tensor) -> Tensor | tuple[Tensor, ...]:
        """The logits; in training mode with aux heads, (logits, aux logits...) as the model returns."""
        heads = self.net.auxes if self.training else ()
        aux_outputs = {}
        for stage in self.net.stages:
            x = self.visit(stage.node, x)
            for aux in heads:  # right after its stage, as the generated forward runs it
                if aux.after is stage:
                    aux_outputs[aux.name] = self.visit(aux.node, x)
        return (x, *(aux_outputs[aux.name] for aux in heads)) if heads else x

    def visit_Layer(self, node: Layer, x: Tensor) -> Tensor:
        return self.layer(node, x)

    def visit_Fork(self, node: Fork, x: Tensor) -> Tensor:
        parts = x.chunk(len(node.branches), 1) if node.split else [x] * len(node.branches)
        outputs = [self.visit(branch, part) for branch, part in zip(node.branches, parts)]
        return _MERGES[type(node.merge.kind)](node.merge, outputs)

    def generic_visit(self, node: Node, x: Tensor) -> Tensor:  # a sequence, a branch, a call
        for child in node.children():
            x = self.visit(child, x)
        return x

    def layer(self, layer: Layer, x: Tensor) -> Tensor:
        facts = self.net.facts[layer]
        tensors = {t.role: self.state[layer.state_key(t)] for t in facts.state}
        if isinstance(layer.op.kind, L.Linear) and facts.input.last:  # at every position
            return activate(layer.op["act"], F.linear(x, tensors[WEIGHT], tensors.get(BIAS)))
        for cls in type(layer.op.kind).__mro__:
            if cls in _OPS:
                return _OPS[cls](self, layer.op, x, tensors)
        raise NotImplementedError(f"the interpreter cannot run {layer.op.kind.name} layers")


def initial_state(net: Network, seed: int = 0) -> dict[str, Tensor]:
    """Weights for every layer, drawn as PyTorch's default initialisation draws them (uniform in
    +-1/sqrt(fan_in)); BatchNorm's scale 1, shift 0, running statistics 0 and 1."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for node in net.layers():
        tensors = net.facts[node].state
        fan_in = next((math.prod(t.shape[1:]) for t in tensors if t.role == WEIGHT), 1)
        for t in tensors:
            state[node.state_key(t)] = _initial(t, fan_in, generator)
    return state


def _initial(t: L.Tensor, fan_in: int, generator: torch.Generator) -> Tensor:
    if t.role in (WEIGHT, BIAS):
        bound = 1 / math.sqrt(fan_in)
        value = (torch.rand(t.shape, generator=generator) * 2 - 1) * bound
        return value.requires_grad_()
    if t.role == NORM_WEIGHT:
        return torch.ones(t.shape, requires_grad=True)  # a layer scale's too (the tests load weights)
    if t.role == NORM_BIAS:
        return torch.zeros(t.shape, requires_grad=True)
    if t.role == RUNNING_VAR:
        return torch.ones(t.shape)
    if t.role == BATCHES:
        return torch.zeros(t.shape, dtype=torch.long)
    return torch.zeros(t.shape)  # RUNNING_MEAN


# one function per layer kind and merge kind: how it computes ----------------------------------


def _conv(run: Interpreter, op: L.Op, x: Tensor, t: dict) -> Tensor:
    y = F.conv2d(x, t[WEIGHT], t.get(BIAS), op["stride"], op["pad"], 1, op["groups"])
    if op["bn"]:
        if run.training:
            t[BATCHES].add_(1)
        y = F.batch_norm(
            y,
            t[RUNNING_MEAN],
            t[RUNNING_VAR],
            t[NORM_WEIGHT],
            t[NORM_BIAS],
            run.training,
            BN_MOMENTUM,
            op["eps"],
        )
    return activate(op["act"], y)


def activate(name: str | None, x: Tensor, op: L.Op | None = None) -> Tensor:
    """``x`` through the activation ``name`` (None: unchanged), from the layer table's entry."""
    if name is None:
        return x
    kind = L.ACTIVATIONS[name]
    if not kind.function:
        return x
    module, function = kind.function.split(".")
    options = {kind.keywords[k]: (op[k] if op is not None else v) for k, v in kind.options.items()}
    return getattr(_NAMESPACES[module], function)(x, **options)


_NAMESPACES = {"F": F, "torch": torch}


def _activation(run, op, x, t):
    return activate(op.kind.name, x, op)


def _batch_norm(run, op, x, t):
    if run.training:
        t[BATCHES].add_(1)
    return F.batch_norm(
        x,
        t[RUNNING_MEAN],
        t[RUNNING_VAR],
        t[NORM_WEIGHT],
        t[NORM_BIAS],
        run.training,
        op["momentum"],
        op["eps"],
    )


def _layer_norm(run, op, x, t):
    return F.layer_norm(x, (x.shape[-1],), t[NORM_WEIGHT], t[NORM_BIAS], op["eps"])


def _layer_norm_2d(run, op, x, t):
    y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), t[NORM_WEIGHT], t[NORM_BIAS], op["eps"])
    return y.permute(0, 3, 1, 2)


def _permute(run, op, x, t):
    return x.permute(op.kind.dims)


def _layer_scale(run, op, x, t):
    return t[NORM_WEIGHT] * x


def _stochastic_depth(run, op, x, t):
    if not run.training or op["p"] == 0:
        return x
    keep = 1 - op["p"]
    mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype).bernoulli_(keep)
    return x * mask.div_(keep)  # the generated module's order of rounding


def _shuffle(run, op, x, t):
    n, c, h, w = x.shape
    g = op["groups"]
    return x.reshape(n, g, c // g, h, w).transpose(1, 2).reshape(n, c, h, w)


def _flatten(run, op, x, t):
    return x.flatten(1)


def _max_pool(run, op, x, t):
    return F.max_pool2d(x, op["kernel"], op["stride"], op["pad"], ceil_mode=op["ceil"])


def _avg_pool(run, op, x, t):
    include_pad = not op["exclude_pad"]
    return F.avg_pool2d(x, op["kernel"], op["stride"], op["pad"], op["ceil"], include_pad)


def _adaptive_avg_pool(run, op, x, t):
    return F.adaptive_avg_pool2d(x, op["size"])


def _lrn(run, op, x, t):
    return F.local_response_norm(x, op["size"], op["alpha"], op["beta"], op["k"])


def _dropout(run, op, x, t):
    return F.dropout(x, op["p"], run.training)


def _linear(run, op, x, t):
    y = F.linear(x.flatten(1), t[WEIGHT], t.get(BIAS))
    return activate(op["act"], y)


def _identity(run, op, x, t):
    return x


_OPS = {
    L.Conv: _conv,
    L.MaxPool: _max_pool,
    L.AvgPool: _avg_pool,
    L.AdaptiveAvgPool: _adaptive_avg_pool,
    L.LRN: _lrn,
    L.Activation: _activation,
    L.BatchNorm: _batch_norm,
    L.Flatten: _flatten,
    L.Shuffle: _shuffle,
    L.LayerNorm: _layer_norm,
    L.LayerNorm2d: _layer_norm_2d,
    L.ChannelsLast: _permute,
    L.ChannelsFirst: _permute,
    L.LayerScale: _layer_scale,
    L.StochasticDepth: _stochastic_depth,
    L.Dropout: _dropout,
    L.Linear: _linear,
    L.Softmax: _identity,
}


def _shortcut_and_body(merge: L.Op, outputs: list[Tensor]) -> tuple[Tensor, Tensor]:
    i = merge["shortcut"]
    return outputs[i], outputs[1 - i]


def _add(merge: L.Op, outputs: list[Tensor]) -> Tensor:
    shortcut, body = _shortcut_and_body(merge, outputs)
    y = body * merge["scale"] + shortcut
    return F.relu(y) if merge["relu"] else y


def _mul(merge: L.Op, outputs: list[Tensor]) -> Tensor:
    shortcut, body = _shortcut_and_body(merge, outputs)
    return body * shortcut


_MERGES = {
    L.Concat: lambda merge, outputs: torch.cat(outputs, 1),
    L.Add: _add,
    L.Mul: _mul,
}
