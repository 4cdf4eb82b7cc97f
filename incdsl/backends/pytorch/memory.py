"""Activation memory: what a batch's tensors take, what autograd keeps for backward, and a step's peak.

A model over the IR, one walk of the tree (no torch): for a batch size, a mode (inference or training)
and a dtype (fp32, or bf16 or fp16 autocast), each layer's output bytes; in training, the bytes autograd saves
for the backward pass; in inference, the largest set of tensors alive at once. :data:`SAVES` says, for
each layer kind and merge kind, what the ops PyTorch 2.13 runs for it keep, as found by measuring the
generated modules with ``torch.autograd.graph.saved_tensors_hooks`` (``tests/test_activations.py``
holds the estimate to that measurement, layer by layer).

Conventions:

- A saved tensor is counted once, where it is made: a convolution's input is the output of the layer
  before it, so it is counted there (a tensor several branches save is counted once, as autograd keeps
  it once). Parameters and buffers are never activations, even when an op saves them (conv2d saves its
  weight): they are counted as parameters.
- What is modelled is the plain generated module (``incdsl compile`` without ``--optimize``) on
  contiguous (NCHW) tensors, as a CPU runs it. ``bf16`` is autocast to bfloat16, as the trainer's
  ``--amp`` runs on a CPU: the weights stay float32, convolutions and linear layers compute in bfloat16
  (and keep bfloat16 copies of their weights, and of an input that is still float32), other ops in the
  dtype they are given; LRN computes in float32. ``fp16`` (CUDA's ``--amp``) keeps as many bytes.

>>> import incdsl
>>> est = estimate(incdsl.load("googlenet_tv"), Setting(batch=32, training=True))
>>> human_bytes(est.saved), human_bytes(est.peak)
('1.4 GiB', '1.7 GiB')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property

from incdsl.ir.tree import Branch, Call, Fork, Layer, Network, Seq, Visitor, walk
from incdsl.kinds import layers as L
from incdsl.memory import FLOAT32_BYTES, human_bytes

__all__ = [
    "Setting", "Estimate", "LayerMemory", "StageMemory", "SAVES", "estimate", "largest_batch", "describe",
    "human_bytes",
]  # fmt: skip

# bytes per element of what a layer computes; bf16 and fp16 are autocast (a CPU's and CUDA's, under --amp)
DTYPES = {"fp32": 4, "bf16": 2, "fp16": 2}
INT64, BOOL = 8, 1
DEVICES = ("cpu", "cuda")

# Optimizer state per parameter, in float32 copies of the parameters, as the shipped recipes configure
# the optimizers (incdsl/train/recipes.py): AdamW keeps two moments, SGD its momentum (0.9), RMSProp
# its square average (no momentum). The default recipe (fast) uses AdamW.
OPTIMIZERS = {"adamw": "AdamW", "sgd": "SGD", "rmsprop": "RMSProp"}


def optimizer_slots(optimizer: str, momentum: bool = True) -> int:
    """Tensors of a parameter's size that PyTorch's optimizer keeps per parameter: AdamW's two moments;
    SGD's momentum buffer; RMSProp's square average and its momentum buffer."""
    return {"adamw": 2, "sgd": int(momentum), "rmsprop": 1 + int(momentum)}[optimizer]


@dataclass(frozen=True)
class Setting:
    """What the estimate is for: a batch size, training (train mode, with autograd) or inference (eval
    mode, no autograd), a dtype (``fp32``, or ``bf16`` autocast), and the device (only dropout's mask
    depends on it: float on a CPU, bool on CUDA)."""

    batch: int
    training: bool = False
    dtype: str = "fp32"
    device: str = "cpu"
    optimizer: str = "adamw"
    averaged: bool = False  # the trainer keeps an averaged copy of the weights (EMA)
    momentum: bool = True  # the optimizer keeps a momentum buffer (SGD, RMSProp)

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r}: one of {', '.join(DTYPES)}")
        if self.device not in DEVICES:
            raise ValueError(f"device {self.device!r}: one of {', '.join(DEVICES)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer {self.optimizer!r}: one of {', '.join(OPTIMIZERS)}")
        if self.batch < 1:
            raise ValueError(f"batch {self.batch}: at least 1")

    @property
    def autocast(self) -> bool:
        return self.dtype != "fp32"

    @property
    def slots(self) -> int:
        return optimizer_slots(self.optimizer, self.momentum)

    @property
    def width(self) -> int:
        """Bytes per element of what a convolution or a linear layer computes."""
        return DTYPES[self.dtype]


# what each kind saves ------------------------------------------------------------------------


@dataclass(frozen=True)
class Saves:
    """What the ops of one layer keep for backward (training), besides parameters and buffers.

    ``input``: the tensor it is given, kept as it is (``"kept"``), or, for an op autocast runs in
    bfloat16, kept as it is when it is bfloat16 already and as a bfloat16 copy the op makes otherwise
    (``"cast"``). ``output``: its output is kept (an in-place ReLU keeps its result). ``own``: tensors
    it makes and keeps, (what, bytes). ``width``: bytes per element of its output (None: its input's).
    ``work``: bytes it allocates while it runs besides its output and ``own``, freed when it returns.
    ``alias``: it returns its input (no new tensor, nothing kept)."""

    input: str | None = None
    output: bool = False
    own: tuple[tuple[str, int], ...] = ()
    width: int | None = None
    work: int = 0
    alias: bool = False


@dataclass(frozen=True)
class Context:
    """What a rule is told: the batch and setting, the input's bytes per element, sizes in bytes."""

    setting: Setting
    width: int  # bytes per element of the input

    def size(self, shape: L.Shape, width: int | None = None) -> int:
        return self.setting.batch * shape.numel * (self.width if width is None else width)


Rule = Callable[[L.Op, L.Shape, L.Shape, Context], Saves]


def _conv(op, x, y, c: Context) -> Saves:
    """conv2d: its input and weight (autocast: half-precision copies); batch_norm in training: its input (the
    conv's output), save_mean and save_invstd (float32, one per channel); relu(inplace=True): its result."""
    s, width = c.setting, c.setting.width
    out = c.size(y, width)
    own = []
    if s.autocast and s.training:
        own.append((f"{s.dtype} weight", _weights(op, x, y) * 2))
    if op["bn"] and s.training:
        own += [("conv output (batch_norm's input)", out), ("mean, invstd", 2 * y.channels * FLOAT32_BYTES)]
    kept, own = _activation_kept(op["act"], out, own, c)
    return Saves("cast", kept, tuple(own), width, _conv_work(op, x, y, c))


def _activation_kept(name: str | None, out: int, own: list, c: Context) -> tuple[bool, list]:
    """A conv's or linear layer's activation: ReLU (in place) keeps its result, the layer's output;
    an activation whose backward needs its input keeps the pre-activation tensor (training only)."""
    if name is None:
        return False, own
    saves = L.ACTIVATIONS[name].saves
    if saves == "input" and c.setting.training:
        own = [*own, (f"{name}'s input", out)]
    return saves == "output", own


def _conv_work(op, x, y, c: Context) -> int:
    """What a convolution allocates while it runs, on a CPU. In float32 oneDNN reorders an NCHW input
    and output into blocked copies (and the weight); in bfloat16 on a CPU without native bf16 (no
    AVX512-BF16), PyTorch unfolds the input (im2col) unless the kernel is 1x1/1 without padding.
    Under autocast, a float32 input is first copied to bfloat16."""
    s = c.setting
    if not s.autocast:
        return max(c.size(x), c.size(y)) + _weights(op, x, y) * FLOAT32_BYTES
    cast = c.size(x, s.width) if c.width != s.width else 0
    if op["kernel"] == (1, 1) and op["stride"] == 1 and op["pad"] == (0, 0):
        return cast
    return cast + s.batch * x.channels * _area(op["kernel"]) * y.height * y.width * s.width


def _weights(op, x, y) -> int:
    return y.channels * x.channels // op["groups"] * _area(op["kernel"])


def _area(size: tuple[int, int]) -> int:
    return size[0] * size[1]


def _max_pool(op, x, y, c: Context) -> Saves:
    """max_pool2d: its input and the int64 indices of the maxima (allocated also without autograd)."""
    indices = c.size(y, INT64)
    return Saves("kept", own=(("indices (int64)", indices),) if c.setting.training else (), work=indices)


def _avg_pool(op, x, y, c: Context) -> Saves:
    """avg_pool2d: its input."""
    return Saves("kept")


def _adaptive_avg_pool(op, x, y, c: Context) -> Saves:
    """adaptive_avg_pool2d: its input; to 1x1 it is a mean, which keeps nothing but sizes."""
    return Saves() if op["size"] == (1, 1) else Saves("kept")


def _lrn(op, x, y, c: Context) -> Saves:
    """local_response_norm, a composite: its input (x * x, input / div), the squares padded along the
    channels (avg_pool3d's input, C + size - 1 channels), and the scaled average and its power (pow's
    input and result). It computes in float32 (under autocast too: avg_pool3d is on CPU autocast's
    float32 list, pow on CUDA's); while it runs, three tensors of its output's size are alive."""
    padded = c.setting.batch * (x.channels + op["size"] - 1) * x.height * x.width * FLOAT32_BYTES
    out = c.size(y, FLOAT32_BYTES)
    own = (("padded squares", padded), ("scaled average", out), ("its power", out))
    return Saves("kept", own=own if c.setting.training else (), width=FLOAT32_BYTES, work=2 * out)


def _activation(op, x, y, c: Context) -> Saves:
    """An activation on its own row (out of place: its input may feed another branch): its result
    (relu, sigmoid, tanh), or its input (relu6, silu, gelu, hardswish, ...), as the layer table says;
    the identity returns its input."""
    saves = op.kind.saves
    if saves == "none":
        return IDENTITY
    return Saves("kept") if saves == "input" else Saves(output=True)


def _batch_norm(op, x, y, c: Context) -> Saves:
    """batch_norm in training: its input, save_mean and save_invstd (float32, one per channel); in
    eval mode it keeps nothing."""
    if not c.setting.training:
        return Saves()
    return Saves("kept", own=(("mean, invstd", 2 * x.channels * FLOAT32_BYTES),))


def _layer_norm(op, x, y, c: Context) -> Saves:
    """layer_norm in training: its input, mean and rstd (float32, one per position); ``layernorm2d``
    permutes first (views)."""
    if not c.setting.training:
        return Saves()
    positions = c.setting.batch * x.height * x.width
    return Saves("kept", own=(("mean, rstd", 2 * positions * FLOAT32_BYTES),))


def _permute(op, x, y, c: Context) -> Saves:
    """permute: a view of its input."""
    return IDENTITY


def _layer_scale(op, x, y, c: Context) -> Saves:
    """``scale * x``: mul keeps its input (the scale is a parameter)."""
    return Saves("kept")


def _stochastic_depth(op, x, y, c: Context) -> Saves:
    """In training: x * mask, keeping the mask (one value per example); the identity in evaluation."""
    if not c.setting.training or op["p"] == 0:
        return IDENTITY
    return Saves(own=(("mask", c.setting.batch * c.width),))


def _shuffle(op, x, y, c: Context) -> Saves:
    """channel_shuffle: a copy (reshape, transpose, contiguous); its backward keeps nothing."""
    return Saves()


def _flatten(op, x, y, c: Context) -> Saves:
    """flatten: a view of its input."""
    return IDENTITY


def _dropout(op, x, y, c: Context) -> Saves:
    """dropout in training: its mask, in the input's dtype on a CPU (input * mask), bool on CUDA (a
    fused kernel); nothing in eval mode, where it returns its input."""
    if not c.setting.training or op["p"] == 0:
        return IDENTITY
    mask = c.size(x, BOOL if c.setting.device == "cuda" else None)
    return Saves(own=(("mask", mask),), work=mask)


def _linear(op, x, y, c: Context) -> Saves:
    """linear (addmm): its input, flattened (a view), and its weight (autocast: half-precision copies); with
    relu (in place): its result."""
    s = c.setting
    own = [(f"{s.dtype} weight", y.channels * x.numel * 2)] if s.autocast and s.training else []
    kept, own = _activation_kept(op["act"], c.size(y, s.width), own, c)
    return Saves("cast", kept, tuple(own), s.width)


IDENTITY = Saves(alias=True)


def _identity(op, x, y, c: Context) -> Saves:
    """softmax: the model returns logits (the loss applies softmax), so nothing runs."""
    return IDENTITY


def _concat(op, shapes, y, c: Context) -> Saves:
    """torch.cat: nothing (its backward slices the gradient by sizes)."""
    return Saves()


def _mul(op, shapes, y, c: Context) -> Saves:
    """``gate * x``: mul keeps both operands (the gate, N x C x 1 x 1, and x), counted where they were
    made."""
    return Saves("kept")


def _add(op, shapes, y, c: Context) -> Saves:
    """``relu(body * scale + shortcut, inplace=True)``: mul by a Python number and add keep nothing;
    the ReLU keeps its result. ``body * scale`` is a temporary while the sum is made."""
    work = c.size(y) if op["scale"] != 1 else 0
    return Saves(output=bool(op["relu"]), work=work)


# What PyTorch keeps for each layer kind and merge kind, as the PyTorch backend spells them (the nearest
# base kind's entry applies: GlobalAvgPool is an AdaptiveAvgPool). Each rule's docstring names the ops.
SAVES: dict[type, Rule] = {
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
    L.ChannelsLast: _permute,
    L.ChannelsFirst: _permute,
    L.LayerScale: _layer_scale,
    L.StochasticDepth: _stochastic_depth,
    L.Dropout: _dropout,
    L.Linear: _linear,
    L.Softmax: _identity,
    L.Concat: _concat,
    L.Add: _add,
    L.Mul: _mul,
}


def rule(kind: L.Kind) -> Rule:
    for cls in type(kind).__mro__:
        if cls in SAVES:
            return SAVES[cls]
    raise NotImplementedError(f"no activation-memory rule for {kind.name} layers")


# the estimate --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerMemory:
    """One layer (or merge): its output's bytes, and the bytes of what it makes that autograd keeps
    (training): ``parts`` names them."""

    key: str
    stage: str  # the stage (or aux head) it belongs to; "" for the network's input
    kind: str
    output: int
    saved: int
    parts: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class StageMemory:
    """One row of the table: its output's bytes, what its layers keep for backward (training), and the
    bytes alive at once while it runs, besides the parameters (inference: every live activation)."""

    name: str
    output: int
    saved: int
    peak: int | None  # None in training


@dataclass(frozen=True)
class Estimate:
    """Memory of one forward (and backward) pass at :attr:`setting`'s batch, in bytes."""

    setting: Setting
    input: int  # the batch itself
    layers: tuple[LayerMemory, ...]
    stages: tuple[StageMemory, ...]  # the table's rows, then the aux heads (run in training only)
    weights: int  # parameters and buffers (float32), aux heads included in training
    params: int  # trainable parameters among them (elements)
    transient: int  # training's allowance: the most one layer holds beyond what autograd keeps
    live: int  # inference: the most activation bytes alive at once (the input batch included)

    @cached_property
    def activations(self) -> int:
        """Every layer's output: what one forward writes."""
        return sum(layer.output for layer in self.layers)

    @cached_property
    def saved(self) -> int:
        """Bytes autograd keeps for backward (training), parameters excluded."""
        return sum(layer.saved for layer in self.layers)

    @property
    def gradients(self) -> int:
        return self.params * FLOAT32_BYTES if self.setting.training else 0

    @property
    def optimizer(self) -> int:
        if not self.setting.training:
            return 0
        return self.setting.slots * self.params * FLOAT32_BYTES

    @property
    def averaged(self) -> int:
        return self.weights if self.setting.training and self.setting.averaged else 0

    @property
    def peak(self) -> int:
        """Training: weights, gradients, optimizer state and averaged copy, the saved activations (and
        the batch) and the transient allowance (the trainer's forward ends with all of them alive:
        last step's gradients are freed after it). Inference: weights and the live activations' peak."""
        if self.setting.training:
            state = self.weights + self.gradients + self.optimizer + self.averaged
            batch = self.input - self.layers[0].saved  # the batch, when autograd does not keep it
            return state + self.saved + batch + self.transient
        return self.weights + self.live


def estimate(net: Network, setting: Setting) -> Estimate:
    """Memory of ``net`` run at ``setting`` (a network whose passes have run; one walk of the tree).

    >>> import incdsl
    >>> est = estimate(incdsl.load("mini_googlenet"), Setting(batch=64))
    >>> est.input, human_bytes(est.live)
    (786432, '90.8 MiB')
    """
    return _Walk(net, setting).run()


def largest_batch(net: Network, setting: Setting, available: int, limit: int = 2**31 - 1) -> int:
    """The largest batch size whose :attr:`Estimate.peak` fits in ``available`` bytes (0 if none).

    >>> import incdsl
    >>> net, step = incdsl.load("mini_googlenet"), Setting(1, training=True)
    >>> batch = largest_batch(net, step, 2**30)
    >>> def peak(b):
    ...     return estimate(net, replace(step, batch=b)).peak
    >>> batch, peak(batch) <= 2**30 < peak(batch + 1)
    (141, True)
    """

    def fits(batch: int) -> bool:
        return estimate(net, replace(setting, batch=batch)).peak <= available

    low, high = 0, limit  # the peak grows with the batch: search for the last one that fits
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    return low


@dataclass(eq=False)
class _Entry:
    """A layer, merge or the input while the walk runs: the tensors it makes and which are kept."""

    key: str
    stage: str
    kind: str
    output: int
    width: int
    kept: bool = False  # some op keeps its output for backward
    own: list[tuple[str, int]] = field(default_factory=list)
    work: int = 0  # what it allocates while it runs and frees when it returns

    @property
    def transient(self) -> int:
        """What it holds while it runs beyond what autograd keeps: its work, its output if unkept."""
        return self.work + (0 if self.kept else self.output)

    def memory(self) -> LayerMemory:
        parts = ([("output", self.output)] if self.kept else []) + self.own
        saved = sum(size for _, size in parts)
        return LayerMemory(self.key, self.stage, self.kind, self.output, saved, tuple(parts))


@dataclass(frozen=True)
class _Value:
    """A tensor flowing between layers: who made it (its bytes are theirs) and its dtype's width."""

    entry: _Entry

    @property
    def bytes(self) -> int:
        return self.entry.output

    @property
    def width(self) -> int:
        return self.entry.width


class _Walk(Visitor):
    """The one walk: each node gives its output and the most bytes it has alive at once (``work``),
    beyond its input, which its caller holds while it runs (``x = self.stage(x)``)."""

    def __init__(self, net: Network, setting: Setting):
        self.net, self.setting = net, setting
        self.entries: list[_Entry] = []
        self.stage = ""

    def run(self) -> Estimate:
        net, s = self.net, self.setting
        source = _Value(self._entry("input", "input", net.input, FLOAT32_BYTES))
        stages, outputs, held = [], {}, source
        for stage in net.stages:
            self.stage = stage.attr
            start = len(self.entries)
            out, work, _ = self.visit(stage.node, held)
            # the caller holds the batch, the stage's input and its working set
            peak = held.bytes + work + (source.bytes if held is not source else 0)
            stages.append((stage.name, out, start, peak))
            outputs[stage.attr], held = out, out
        heads = net.auxes if s.training else ()
        for aux in heads:
            self.stage = aux.name
            start = len(self.entries)
            out, work, _ = self.visit(aux.node, outputs[aux.after.attr])
            stages.append((aux.name, out, start, work))
        layers = tuple(e.memory() for e in self.entries)
        return Estimate(
            setting=s,
            input=source.bytes,
            layers=layers,
            stages=self._stages(stages, layers),
            weights=self._weights(heads),
            params=self._params(heads),
            transient=max((e.transient for e in self.entries[1:]), default=0) if s.training else 0,
            live=max((peak for *_, peak in stages[: len(net.stages)]), default=source.bytes),
        )

    def _stages(self, stages, layers) -> tuple[StageMemory, ...]:
        training = self.setting.training
        bounds = [start for _, _, start, _ in stages] + [len(layers)]
        return tuple(
            StageMemory(name, out.bytes, sum(m.saved for m in layers[a:b]), None if training else peak)
            for (name, out, _, peak), a, b in zip(stages, bounds, bounds[1:])
        )

    def _entry(self, key: str, kind: str, shape: L.Shape, width: int) -> _Entry:
        entry = _Entry(key, self.stage, kind, self.setting.batch * shape.numel * width, width)
        self.entries.append(entry)
        return entry

    # nodes: each returns its output, the most bytes it has alive at once beyond its input, and the
    # bytes it leaves alive until its class's forward returns (its branches' outputs, held in locals)
    def visit_Layer(self, node: Layer, x: _Value) -> tuple[_Value, int, int]:
        return self.layer(node, x)

    def visit_Seq(self, node: Seq, x: _Value) -> tuple[_Value, int, int]:
        return self.seq(node.items, x)

    def visit_Fork(self, node: Fork, x: _Value) -> tuple[_Value, int, int]:
        return self.fork(node, x)

    def visit_Call(self, node: Call, x: _Value) -> tuple[_Value, int, int]:
        out, work, _ = self.visit(node.body, x)  # its forward returns: its locals are dropped
        return out, work, 0

    def visit_Branch(self, node: Branch, x: _Value) -> tuple[_Value, int, int]:
        return self.visit(node.body, x)

    def seq(self, items, x: _Value) -> tuple[_Value, int, int]:
        """Each item's input is held while it runs; the one before it is dropped when it returns."""
        current, work, pinned = x, 0, 0
        for item in items:
            held = current.bytes if current is not x else 0
            current, inner, more = self.visit(item, current)
            work = max(work, held + pinned + inner)
            pinned += more
        return current, work, pinned

    def layer(self, layer: Layer, x: _Value) -> tuple[_Value, int]:
        op, facts = layer.op, self.net.facts[layer]
        saves = rule(op.kind)(op, facts.input, facts.output, Context(self.setting, x.width))
        if saves.alias:
            return x, 0, 0
        entry = self._entry(layer.key, op.kind.name, facts.output, saves.width or x.width)
        self._keep(saves, x, entry, facts.input)
        own = sum(b for _, b in entry.own)
        entry.work = saves.work
        return _Value(entry), entry.output + own + saves.work, 0

    def _keep(self, saves: Saves, x: _Value, entry: _Entry, shape: L.Shape) -> None:
        """Mark what a layer keeps, in training: its input (or the copy autocast makes of it), its
        output, and what it makes."""
        if not self.setting.training:
            return
        s = self.setting
        if saves.input == "cast" and s.autocast and x.width != s.width:
            entry.own.append((f"{s.dtype} copy of its input", s.batch * shape.numel * s.width))
        elif saves.input:
            x.entry.kept = True
        entry.kept = entry.kept or saves.output
        entry.own += saves.own

    def fork(self, fork: Fork, x: _Value) -> tuple[_Value, int, int]:
        """Branches run one after another, each one's output held in a local until the forward returns."""
        if len(fork.branches) == 1 and fork.merge.kind.unary_identity:
            return self.visit(fork.branches[0], x)
        held, work, outs = 0, 0, []
        for branch in fork.branches:
            out, inner, pinned = self.visit(branch, x)
            work = max(work, held + inner)
            held += pinned + (out.bytes if out is not x else 0)
            outs.append(out)
        facts = self.net.facts
        shapes = [facts[b].output for b in fork.branches]
        context = Context(self.setting, outs[0].width)
        saves = rule(fork.merge.kind)(fork.merge, shapes, facts[fork].output, context)
        entry = self._entry(fork.key, fork.merge.kind.name, facts[fork].output, max(o.width for o in outs))
        entry.kept = self.setting.training and saves.output
        for out in outs if self.setting.training and saves.input else ():
            out.entry.kept = True
        entry.work = saves.work
        return _Value(entry), max(work, held + entry.output + saves.work), held

    # parameters ------------------------------------------------------------------------------
    def _tensors(self, heads) -> list[L.Tensor]:
        roots = [stage.node for stage in self.net.stages] + [aux.node for aux in heads]
        layers = [n for root in roots for n in walk(root) if isinstance(n, Layer)]
        return [t for layer in layers for t in self.net.facts[layer].state]

    def _weights(self, heads) -> int:
        return sum(_state_bytes(t) for t in self._tensors(heads))

    def _params(self, heads) -> int:
        tensors = self._tensors(heads)
        return sum(t.numel for t in tensors if t.role in L.TRAINABLE)


def _state_bytes(tensor: L.Tensor) -> int:
    return tensor.numel * (INT64 if tensor.role == L.BATCHES else FLOAT32_BYTES)


def describe(est: Estimate) -> list[str]:
    """The estimate in words, for ``incdsl stats --batch`` and the trainer: what is counted, the peak."""
    s, b = est.setting, human_bytes
    mode = f"{'training' if s.training else 'inference'}, {s.dtype}"
    if not s.training:
        where = max(est.stages, key=lambda m: m.peak or 0).name if est.stages else "input"
        return [
            f"memory at batch {s.batch} ({mode}): input {b(est.input)}, every layer's output "
            f"{b(est.activations)}, at most {b(est.live)} of activations alive at once (in {where})",
            f"  peak {b(est.peak)} = weights {b(est.weights)} + live activations {b(est.live)}",
        ]
    slots = s.slots
    averaged = f" + averaged weights {b(est.averaged)}" if s.averaged else ""
    return [
        f"memory at batch {s.batch} ({mode}, {OPTIMIZERS[s.optimizer]}, aux heads included):",
        f"  peak {b(est.peak)} = weights {b(est.weights)} + gradients {b(est.gradients)} + optimizer state "
        f"{b(est.optimizer)} ({slots} per parameter){averaged}",
        f"    + saved for backward {b(est.saved)} + largest transient {b(est.transient)}",
    ]
