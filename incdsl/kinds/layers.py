"""What each layer kind and merge kind means: one table, semantics only.

For a layer kind: its arguments and options, how its output channels and shape follow from its input,
the tensors it owns (its weights and running statistics, keyed as in a state_dict), its multiply-adds
and its depth (the paper's column). How a kind is spelt in PyTorch, drawn by Graphviz or titled in
the stats table belongs to each backend (a ``visit_<Kind>`` method or a table of its own), never here.

Adding a layer kind is one class here, decorated with :func:`register`, plus one spelling in each
backend that emits it (PyTorch, the interpreter, the stats table's titles).

Counting conventions (the same as ``torch.utils.flop_counter.FlopCounterMode`` / 2 and ``numel()``):
MACs count convolutions and linear layers only (no bias adds, pooling, norms or activations); params
count the trainable tensors: weights, biases and BatchNorm's scale and shift, not running statistics.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from incdsl.errors import ShapeError, Span, SpecArgumentError, SpecNameError, did_you_mean
from incdsl.ir.symbolic import ArithmeticError_, Expr, Num, Sym, Word, apply, symbolic
from incdsl.numbers import MAX_INT
from incdsl.syntax import ast

__all__ = [
    "ACTIVATIONS", "KINDS", "MERGES", "Activation", "Expr", "Kind", "LayerKind", "MergeKind", "Num", "Op",
    "Shape", "Sym", "Tensor",
]  # fmt: skip


@dataclass(frozen=True)
class Shape:
    """(C, H, W) of one example; ``flat`` once a linear layer has flattened it."""

    channels: int
    height: int
    width: int
    flat: bool = False
    last: bool = False  # channels-last layout (N x H x W x C), after a channels_last row

    def __str__(self) -> str:
        return f"{self.height}x{self.width}x{self.channels}" + " (channels last)" * self.last

    def as_list(self) -> list[int]:
        return [self.channels, self.height, self.width]

    @property
    def numel(self) -> int:
        return self.channels * self.height * self.width


@dataclass(frozen=True)
class Op:
    """A row of a known kind (or a merge) with every argument and option resolved.

    ``spans`` says where each argument's value was written (for a value passed into a template, the
    call's argument), so a bad value is reported where the user can change it."""

    kind: Kind
    args: Mapping[str, Any]
    span: Span = field(compare=False)
    spans: Mapping[str, Span] = field(default_factory=dict, compare=False, repr=False)

    def __getitem__(self, key: str) -> Any:
        return self.args[key]

    def at(self, key: str) -> Span:
        return self.spans.get(key, self.span)


# The roles a layer's tensors play; optimizing passes and port-weights match tensors by role.
WEIGHT, BIAS, NORM_WEIGHT, NORM_BIAS = "weight", "bias", "norm_weight", "norm_bias"
RUNNING_MEAN, RUNNING_VAR, BATCHES = "running_mean", "running_var", "num_batches_tracked"
TRAINABLE = frozenset({WEIGHT, BIAS, NORM_WEIGHT, NORM_BIAS})


@dataclass(frozen=True)
class Tensor:
    """One tensor a layer owns: its key under the layer's attribute, its shape and its role."""

    key: str
    shape: tuple[int, ...]
    role: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Param:
    """A positional argument of a layer kind."""

    name: str
    type: str  # 'size' (HxW[/s]), 'int', 'float'


class Kind:
    """What layer kinds and merge kinds share: positional arguments and options, resolved from a row
    (or a ``residual`` line) into an :class:`Op`."""

    name: str = ""
    positional: tuple[Param, ...] = ()
    options: Mapping[str, Any] = MappingProxyType({})

    def flags(self) -> frozenset[str]:
        """Options written as bare words: ``relu`` sets, ``norelu`` clears."""
        return frozenset(k for k, v in self.options.items() if isinstance(v, bool))

    def arg_type(self, key: str) -> str:
        """'int', 'float', 'size' or 'flag': what a value of argument ``key`` must be."""
        for param in self.positional:
            if param.name == key:
                return param.type
        default = self.options.get(key)
        if key in self.flags():
            return "flag"
        return "int" if isinstance(default, int) else "float" if isinstance(default, float) else "size"

    def finish(self, args: dict, op_span: Span, spans: Mapping[str, Span]) -> dict:
        """Fill derived arguments and check values; ``args`` holds positionals and options."""
        return args


class LayerKind(Kind):
    """Base of the layer table's entries. Subclasses set the class attributes and override what
    differs."""

    identity = False  # True: computes nothing (softmax: the model returns logits, the loss applies it)
    flattens = False  # True: the output is flat (N x C), whatever the input
    width: str | None = None  # the positional argument that is its output channels (what fit scales)

    def out_channels(self, op: Op, channels: int | Expr, spatial: tuple[int, int] = (1, 1)) -> int | Expr:
        """Output channels from input channels (an expression inside a class); ``spatial`` is the
        feature map a flattening kind flattens."""
        return channels

    def out_shape(self, op: Op, x: Shape) -> Shape:
        return x

    def state(self, op: Op, x: Shape, y: Shape) -> tuple[Tensor, ...]:
        """The tensors the layer owns (parameters and buffers), in state_dict order."""
        return ()

    def macs(self, op: Op, x: Shape, y: Shape) -> int:
        return 0

    def depth(self, op: Op) -> int:
        """1 for a layer with weights (a convolution, a linear layer), as the paper's depth column."""
        return 0


KINDS: dict[str, LayerKind] = {}


def register(cls: type[LayerKind]) -> type[LayerKind]:
    """Class decorator adding a kind to :data:`KINDS`; refuses a second kind of the same name."""
    if cls.name in KINDS:
        raise ValueError(f"layer kind {cls.name!r} is registered twice")
    KINDS[cls.name] = cls()
    return cls


# checks and shape rules ----------------------------------------------------------------------


def known(value) -> bool:
    """Whether a value is a number here, not a parameter (or an expression of parameters) known only
    by name."""
    return not symbolic(value)


def _pair(value) -> tuple:
    return tuple(value) if isinstance(value, tuple) else (value, value)


def window(size: int, kernel: int, stride: int, pad: int, ceil: bool) -> int:
    """Output length of a sliding window, with PyTorch's (and Caffe's) ceil-mode rule."""
    span = size + 2 * pad - kernel
    if span < 0:
        return 0
    if not ceil:
        return span // stride + 1
    out = -(-span // stride) + 1
    if (out - 1) * stride >= size + pad:  # the last window would start inside the padding
        out -= 1
    return out


def _spatial(op: Op, x: Shape, ceil: bool = False) -> tuple[int, int]:
    if x.flat:
        raise ShapeError(f"{op.kind.name} needs a spatial input, but the input was flattened", op.span)
    _channels_first(op, x)
    (kh, kw), (ph, pw), s = op["kernel"], op["pad"], op["stride"]
    h, w = window(x.height, kh, s, ph, ceil), window(x.width, kw, s, pw, ceil)
    if h < 1 or w < 1:
        raise ShapeError(
            f"{op.kind.name} {kh}x{kw}/{s} (pad {ph}x{pw}) does not fit its {x.height}x{x.width} input",
            op.span,
            "use a smaller kernel or stride, more padding, or a larger input",
        )
    return h, w


def _kernel_and_stride(args: dict, span: Span) -> None:
    size = args["kernel"]
    if len(size.dims) != 2 or any(known(d) and not (isinstance(d, int) and d >= 1) for d in size.dims):
        raise SpecArgumentError(f"a kernel is written HxW, like 3x3 or 1x7, not {size}", span)
    args["kernel"], args["stride"] = size.dims, 1 if size.stride is None else size.stride
    stride = args["stride"]
    if known(stride) and not (isinstance(stride, int) and stride >= 1):
        raise SpecArgumentError(f"a stride is a whole number, at least 1, not {stride}", span)


def _padding(args: dict, default: tuple[int, int], span: Span) -> None:
    pad = args.get("pad")
    if pad is None:
        args["pad"] = default
    elif isinstance(pad, ast.Size) and len(pad.dims) == 2 and pad.stride is None:
        args["pad"] = pad.dims
    elif not known(pad) or isinstance(pad, int) and not isinstance(pad, bool) and pad >= 0:
        args["pad"] = (pad, pad)
    else:
        raise SpecArgumentError(f"pad is a count (1) or HxW (0x3), not {pad}", span)


def _channels_first(op: Op, x: Shape) -> None:
    if x.last:
        raise ShapeError(
            f"{op.kind.name} needs a channels-first input (N x C x H x W); this one is channels-last",
            op.span,
            "write channels_first before it",
        )


def _require(ok: bool, message: str, span: Span, hint: str | None = None) -> None:
    if not ok:
        raise SpecArgumentError(message, span, hint)


def _positive(args: dict, key: str, spans: Mapping[str, Span], span: Span) -> None:
    value = args[key]
    ok = not known(value) or (isinstance(value, int) and value >= 1)
    hint = "a 0 passed to a template drops the branch it sizes; this row is in none" if value == 0 else None
    _require(ok, f"{key} must be a positive integer, not {value}", spans.get(key, span), hint)


# kinds --------------------------------------------------------------------------------------


@register
class Conv(LayerKind):
    """``conv KxK[/s] C``: convolution, with the network's conv defaults (bias/ReLU or BN+ReLU). ``act=``
    names its activation (``relu``, the default, or ``relu6``, ``silu``, ..., ``none``); ``relu`` and
    ``norelu`` are short for ``act=relu`` and ``act=none``."""

    name = "conv"
    positional = (Param("kernel", "size"), Param("out", "int"))
    width = "out"
    options = MappingProxyType(
        {"pad": None, "bias": None, "bn": False, "eps": 1e-5, "relu": True, "act": None, "groups": 1}
    )

    def flags(self):
        return super().flags() | {"bias"}  # bias defaults to "unless bn"

    def arg_type(self, key):
        return "int" if key == "pad" else "activation" if key == "act" else super().arg_type(key)

    def finish(self, args, op_span, spans):
        _kernel_and_stride(args, spans.get("kernel", op_span))
        kh, kw = args["kernel"]
        _padding(args, (_half(kh), _half(kw)), spans.get("pad", op_span))
        _positive(args, "out", spans, op_span)
        _positive(args, "groups", spans, op_span)
        eps = args["eps"]
        _require(not known(eps) or eps > 0, f"eps must be positive, not {eps}", spans.get("eps", op_span))
        if args["bias"] is None:
            args["bias"] = not args["bn"]
        _activation_option(args, spans, op_span)
        return args

    def out_channels(self, op, channels, spatial=(1, 1)):
        return op["out"]

    def out_shape(self, op, x):
        if x.channels % op["groups"] or op["out"] % op["groups"]:
            raise ShapeError(f"groups={op['groups']} does not divide {x.channels} -> {op['out']}", op.span)
        return Shape(op["out"], *_spatial(op, x))

    def state(self, op, x, y):
        """A convolution followed by BN or a ReLU is a small module (``conv``, ``bn``); a bare
        convolution (another activation is applied to its output) is ``nn.Conv2d`` itself, as
        torchvision lays them out."""
        kh, kw = op["kernel"]
        out = y.channels
        wrapped = op["bn"] or op["act"] == "relu"
        conv = "conv." if wrapped else ""
        tensors = [Tensor(conv + "weight", (out, x.channels // op["groups"], kh, kw), WEIGHT)]
        if op["bias"]:
            tensors.append(Tensor(conv + "bias", (out,), BIAS))
        if op["bn"]:
            tensors += _norm("bn.", out)
        return tuple(tensors)

    def macs(self, op, x, y):
        kh, kw = op["kernel"]
        return y.channels * y.height * y.width * x.channels // op["groups"] * kh * kw

    def depth(self, op):
        return 1


def _half(k):
    """The padding that keeps a size at stride 1: (k - 1) // 2 per side (an expression inside a class)."""
    return apply("//", apply("-", k, 1), 2)


def _activation_option(args: dict, spans: Mapping[str, Span], span: Span) -> None:
    """``act=NAME`` (or the ``relu``/``norelu`` flags) as ``args["act"]``: an activation's name, or None."""
    act, relu = args.pop("act"), args.pop("relu")
    if act is not None and "relu" in spans and "act" in spans:
        raise SpecArgumentError("write act=NAME or relu/norelu, not both", spans["act"])
    if act is None:
        act = "relu" if relu else None
    elif not isinstance(act, Word):
        raise SpecArgumentError(
            f"an activation is a name (act=relu6), not {act}", spans.get("act", span),
            "options: " + ", ".join([*ACTIVATIONS, "none"]),
        )  # fmt: skip
    args["act"] = None if act in NO_ACTIVATION else act if act is None else str(act)


def _norm(prefix: str, channels: int) -> list[Tensor]:
    return [
        Tensor(prefix + "weight", (channels,), NORM_WEIGHT),
        Tensor(prefix + "bias", (channels,), NORM_BIAS),
        Tensor(prefix + "running_mean", (channels,), RUNNING_MEAN),
        Tensor(prefix + "running_var", (channels,), RUNNING_VAR),
        Tensor(prefix + "num_batches_tracked", (), BATCHES),
    ]


class _Pool(LayerKind):
    positional = (Param("kernel", "size"),)
    options = MappingProxyType({"pad": 0, "ceil": False})

    def finish(self, args, op_span, spans):
        _kernel_and_stride(args, spans.get("kernel", op_span))
        _padding(args, (0, 0), spans.get("pad", op_span))
        if any(2 * p > k for p, k in zip(args["pad"], args["kernel"])):
            raise SpecArgumentError("pad must be at most half the kernel size", spans.get("pad", op_span))
        return args

    def out_shape(self, op, x):
        return Shape(x.channels, *_spatial(op, x, op["ceil"]))


@register
class MaxPool(_Pool):
    """``maxpool KxK[/s] [pad=P] [ceil]``."""

    name = "maxpool"


@register
class AvgPool(_Pool):
    """``avgpool KxK[/s] [pad=P] [ceil] [exclude_pad]``: padding counts toward the average, as in
    PyTorch and Caffe, unless ``exclude_pad`` (TF-slim's and timm's Inception-v4 and -ResNet-v2)."""

    name = "avgpool"
    options = MappingProxyType({"pad": 0, "ceil": False, "exclude_pad": False})


@register
class AdaptiveAvgPool(LayerKind):
    """``adaptive_avgpool HxW``: average pooling to a fixed output size."""

    name = "adaptive_avgpool"
    positional = (Param("size", "size"),)

    def finish(self, args, op_span, spans):
        size = args["size"]
        if len(size.dims) != 2 or size.stride is not None or min(size.dims) < 1:
            raise SpecArgumentError(
                f"an output size is written HxW, like 4x4, not {size}", spans.get("size", op_span)
            )
        args["size"] = size.dims
        return args

    def out_shape(self, op, x):
        if x.flat:
            raise ShapeError(f"{op.kind.name} needs a spatial input", op.span)
        return Shape(x.channels, *op["size"])


@register
class GlobalAvgPool(AdaptiveAvgPool):
    """``global_avgpool``: average over the whole feature map (1x1 output)."""

    name = "global_avgpool"
    positional = ()

    def finish(self, args, op_span, spans):
        args["size"] = (1, 1)
        return args


@register
class LRN(LayerKind):
    """``lrn N [alpha=] [beta=] [k=]``: local response normalisation across channels (Caffe's)."""

    name = "lrn"
    positional = (Param("size", "int"),)
    options = MappingProxyType({"alpha": 1e-4, "beta": 0.75, "k": 1.0})

    def finish(self, args, op_span, spans):
        _positive(args, "size", spans, op_span)
        return args


@register
class Dropout(LayerKind):
    """``dropout P``: dropout with drop probability P."""

    name = "dropout"
    positional = (Param("p", "float"),)

    def finish(self, args, op_span, spans):
        p = args["p"]
        ok = not known(p) or 0 <= p < 1
        _require(ok, f"a {self.name} probability is in [0, 1), not {p}", spans.get("p", op_span))
        return args


@register
class Linear(LayerKind):
    """``linear N [act=NAME | relu] [nobias]``: fully connected; flattens a spatial input first. On a
    channels-last input it is applied at every position (ConvNeXt's pointwise layers, a 1x1
    convolution's arithmetic with nn.Linear's weights)."""

    name = "linear"
    positional = (Param("out", "int"),)
    width = "out"
    options = MappingProxyType({"bias": True, "relu": False, "act": None})
    flattens = True

    def arg_type(self, key):
        return "activation" if key == "act" else super().arg_type(key)

    def finish(self, args, op_span, spans):
        _positive(args, "out", spans, op_span)
        _activation_option(args, spans, op_span)
        return args

    def out_channels(self, op, channels, spatial=(1, 1)):
        return op["out"]

    def out_shape(self, op, x):
        if x.last:
            return replace(x, channels=op["out"])
        return Shape(op["out"], 1, 1, flat=True)

    def state(self, op, x, y):
        tensors = [Tensor("weight", (y.channels, _features(x)), WEIGHT)]
        if op["bias"]:
            tensors.append(Tensor("bias", (y.channels,), BIAS))
        return tuple(tensors)

    def macs(self, op, x, y):
        return y.numel * _features(x)

    def depth(self, op):
        return 1


def _features(x: Shape) -> int:
    """What a linear layer takes: the channels at each position of a channels-last map, else all."""
    return x.channels if x.last else x.numel


@register
class Flatten(LayerKind):
    """``flatten``: a feature map to a vector (C x H x W values), as ``torch.flatten(x, 1)``."""

    name = "flatten"
    flattens = True

    def out_channels(self, op, channels, spatial=(1, 1)):
        return Expr.of(channels) * (spatial[0] * spatial[1])

    def out_shape(self, op, x):
        _channels_first(op, x)
        return Shape(x.channels if x.flat else x.numel, 1, 1, flat=True)


@register
class BatchNorm(LayerKind):
    """``batchnorm [eps=] [momentum=]``: batch normalisation on its own row (``nn.BatchNorm2d``, or
    ``BatchNorm1d`` after a linear layer), as torchvision's ResNets and pre-activation networks write it."""

    name = "batchnorm"
    options = MappingProxyType({"eps": 1e-5, "momentum": 0.1})

    def finish(self, args, op_span, spans):
        eps, momentum = args["eps"], args["momentum"]
        _require(not known(eps) or eps > 0, f"eps must be positive, not {eps}", spans.get("eps", op_span))
        ok = not known(momentum) or 0 <= momentum <= 1
        _require(ok, f"momentum is in [0, 1], not {momentum}", spans.get("momentum", op_span))
        return args

    def out_shape(self, op, x):
        _channels_first(op, x)
        if x.flat:
            raise ShapeError("batchnorm normalises a feature map's channels; this input is flat", op.span)
        return x

    def state(self, op, x, y):
        return tuple(_norm("", x.channels))


@register
class LayerNorm(LayerKind):
    """``layernorm [eps=]``: layer normalisation over the channels at each position of a channels-last
    map (``nn.LayerNorm(C)``, as in ConvNeXt's blocks); ``layernorm2d`` is the same on a channels-first
    map (torchvision's ``LayerNorm2d``)."""

    name = "layernorm"
    options = MappingProxyType({"eps": 1e-5})
    channels_last = True

    def finish(self, args, op_span, spans):
        eps = args["eps"]
        _require(not known(eps) or eps > 0, f"eps must be positive, not {eps}", spans.get("eps", op_span))
        return args

    def out_shape(self, op, x):
        if x.flat or x.last != self.channels_last:
            layout = (
                "a channels-last map (after channels_last)" if self.channels_last else "a channels-first map"
            )
            other = "layernorm2d" if self.channels_last else "layernorm"
            raise ShapeError(
                f"{self.name} normalises {layout}, not {_shape_text(x)}", op.span, f"use {other}"
            )
        return x

    def state(self, op, x, y):
        return (Tensor("weight", (x.channels,), NORM_WEIGHT), Tensor("bias", (x.channels,), NORM_BIAS))


@register
class LayerNorm2d(LayerNorm):
    """``layernorm2d [eps=]``: layer normalisation over the channels at each position of a
    channels-first map (torchvision's ``LayerNorm2d``: ConvNeXt's stem, downsampling and head)."""

    name = "layernorm2d"
    channels_last = False


@register
class ChannelsLast(LayerKind):
    """``channels_last``: N x C x H x W to N x H x W x C (a permute), so linear layers and layer norms
    act on each position's channels; ``channels_first`` turns it back."""

    name = "channels_last"
    dims = (0, 2, 3, 1)

    def out_shape(self, op, x):
        if x.flat or x.last:
            raise ShapeError(
                f"channels_last needs a channels-first feature map, not {_shape_text(x)}", op.span
            )
        return replace(x, last=True)


@register
class ChannelsFirst(LayerKind):
    """``channels_first``: N x H x W x C back to N x C x H x W."""

    name = "channels_first"
    dims = (0, 3, 1, 2)

    def out_shape(self, op, x):
        if not x.last:
            raise ShapeError("channels_first needs a channels-last input (after channels_last)", op.span)
        return replace(x, last=False)


@register
class LayerScale(LayerKind):
    """``layer_scale INIT``: a learned scale per channel, initialised to INIT, multiplying its input
    (ConvNeXt's ``layer_scale``, C x 1 x 1): a parameter of its block, keyed by its own name."""

    name = "layer_scale"
    positional = (Param("init", "float"),)

    def out_shape(self, op, x):
        _channels_first(op, x)
        return x

    def state(self, op, x, y):
        return (Tensor("", (x.channels, 1, 1), NORM_WEIGHT),)


@register
class StochasticDepth(LayerKind):
    """``stochastic_depth P``: in training, each example's input is dropped (zeroed) with probability P
    and kept ones are scaled by 1 / (1 - P) (Huang et al. 2016; torchvision's ``StochasticDepth`` in
    row mode, EfficientNet's and ConvNeXt's residual branches); the identity in evaluation."""

    name = "stochastic_depth"
    positional = (Param("p", "float"),)

    finish = Dropout.finish


class Activation(LayerKind):
    """An elementwise nonlinearity: a row of its own (``relu6``), or a conv's or linear layer's
    ``act=``. Each is one :func:`activation` line below: its name, PyTorch's module and function for
    it, its options (and their PyTorch keywords), and what autograd keeps for its backward (its
    ``output`` or its ``input``). Every backend spells an activation from these fields alone."""

    torch = ""  # the nn module: nn.<torch>(...)
    function = ""  # the functional form: F.relu6, torch.sigmoid ("" for the identity)
    keywords: Mapping[str, str] = MappingProxyType({})  # option -> the PyTorch keyword it is given as
    saves = "output"  # what its backward needs: "output", "input" or "none"
    title = ""


ACTIVATIONS: dict[str, Activation] = {}
NO_ACTIVATION = ("none", "identity")  # act=none (or identity): no activation


def activation(name: str, torch: str, function: str, saves: str = "output", title: str = "", **options):
    """Register an activation kind (see :class:`Activation`); options are ``spec_name=(default,
    "pytorch_keyword")``."""
    kind = type(
        torch,
        (Activation,),
        {
            "__doc__": f"``{name}``: {title or name} (``nn.{torch}``).",
            "name": name,
            "torch": torch,
            "function": function,
            "saves": saves,
            "title": title or name,
            "options": MappingProxyType({k: default for k, (default, _) in options.items()}),
            "keywords": MappingProxyType({k: keyword for k, (_, keyword) in options.items()}),
        },
    )
    register(kind)
    ACTIVATIONS[name] = KINDS[name]
    return kind


ReLU = activation("relu", "ReLU", "F.relu")
activation("relu6", "ReLU6", "F.relu6", saves="input", title="ReLU6")
activation("silu", "SiLU", "F.silu", saves="input", title="SiLU")
activation("sigmoid", "Sigmoid", "torch.sigmoid")
activation("hardswish", "Hardswish", "F.hardswish", saves="input", title="hard swish")
activation("hardsigmoid", "Hardsigmoid", "F.hardsigmoid", saves="input", title="hard sigmoid")
activation("gelu", "GELU", "F.gelu", saves="input", title="GELU")
activation("tanh", "Tanh", "torch.tanh")
activation(
    "leaky_relu",
    "LeakyReLU",
    "F.leaky_relu",
    saves="input",
    title="leaky ReLU",
    slope=(0.01, "negative_slope"),
)
Identity = activation("identity", "Identity", "", saves="none", title="identity")


@register
class Shuffle(LayerKind):
    """``shuffle G``: channel shuffle in G groups (ShuffleNet): channel ``g * C/G + i`` moves to
    ``i * G + g``, so the next convolution mixes what separate groups (or a split's parts) computed."""

    name = "shuffle"
    positional = (Param("groups", "int"),)

    def finish(self, args, op_span, spans):
        _positive(args, "groups", spans, op_span)
        return args

    def out_shape(self, op, x):
        if x.flat or x.channels % op["groups"]:
            raise ShapeError(
                f"shuffle {op['groups']} needs a feature map whose channels it divides, not {_shape_text(x)}",
                op.span,
            )
        return x


# ``act NAME``: the row of the activation NAME names (``act relu6`` is ``relu6``); in a template,
# ``act a`` takes the activation from a parameter. Not a kind: resolved when the row is bound.
ACT = "act"


@register
class Softmax(LayerKind):
    """``softmax``: the classifier's output, as the paper's table ends; the model returns logits and
    the loss applies softmax, so it computes nothing here."""

    name = "softmax"
    identity = True


# merges: how the branches of a parallel group become one output --------------------------------


class MergeKind(Kind):
    """Base of the merge table: how the outputs of a parallel group's branches combine."""

    unary_identity = False  # True: merging a single branch gives that branch's output unchanged

    def out_channels(self, merge: Op, channels: list) -> int | Expr:
        raise NotImplementedError

    def out_shape(self, merge: Op, shapes: list[Shape], span: Span, sources: list[Source] = ()) -> Shape:
        """The merged output; ``sources`` says what gives each branch's output, for errors."""
        raise NotImplementedError


@dataclass(frozen=True)
class Source:
    """What gives a branch's output, for a merge's error: ``"conv3 (line 12)"``, with the place to point
    at (the row, or the argument that sets its width); ``span`` None for the block's input itself."""

    what: str
    span: Span | None = None  # where its channels are set
    projected: bool = False  # a residual's shortcut projection (not its input as it is)
    stride_span: Span | None = None  # where its size is set: its strided row (else its first kernel)
    strided: bool = False  # a row of it has a stride other than 1


def _source(sources, i: int) -> Source:
    return sources[i] if sources else Source(f"branch {i + 1}")


MERGES: dict[str, MergeKind] = {}


def register_merge(cls: type[MergeKind]) -> type[MergeKind]:
    if cls.name in MERGES:
        raise ValueError(f"merge kind {cls.name!r} is registered twice")
    MERGES[cls.name] = cls()
    return cls


@register_merge
class Concat(MergeKind):
    """Concatenation along channels (an inception module's filter concatenation)."""

    name = "concat"
    unary_identity = True

    def out_channels(self, merge, channels):
        return sum(channels[1:], Expr.of(channels[0])) if len(channels) > 1 else channels[0]

    def out_shape(self, merge, shapes, span, sources=()):
        if len(shapes) == 1:
            return shapes[0]
        if any(s.last for s in shapes):
            raise ShapeError("channels-last maps cannot be concatenated along channels", span)
        if any(s.flat for s in shapes):
            raise ShapeError(
                "flattened outputs (of a linear layer) cannot be concatenated as feature maps",
                span,
                "concatenate before the linear layers, or use one linear layer",
            )
        sizes = [(s.height, s.width) for s in shapes]
        if len(set(sizes)) > 1:
            listed = "; ".join(f"{_source(sources, i).what} gives {h}x{w}" for i, (h, w) in enumerate(sizes))
            # the branch that differs: the rarest size, then a strided branch, then the first
            odd = min(
                range(len(sizes)), key=lambda i: (sizes.count(sizes[i]), not _source(sources, i).strided, i)
            )
            raise ShapeError(
                f"branches must agree on height and width to be concatenated: {listed}",
                _source(sources, odd).stride_span or span,
                "check the strides and padding of the branch that differs",
            )
        return Shape(sum(s.channels for s in shapes), shapes[0].height, shapes[0].width)


class _WithShortcut(MergeKind):
    """A merge of a block's body with its input, or with a projection of it (the ``shortcut``):
    ``branches[shortcut]`` is that input."""

    def out_channels(self, merge, channels):
        return channels[merge["shortcut"]]

    def _shapes(self, merge: Op, shapes: list[Shape]) -> tuple[Shape, list[Shape]]:
        i = merge["shortcut"]
        return shapes[i], shapes[:i] + shapes[i + 1 :]


@register_merge
class Add(_WithShortcut):
    """A residual connection: ``relu(shortcut + scale * body)``, Inception-ResNet's (with the scale
    that keeps its sums small) and ResNet's (scale 1)."""

    name = "add"
    options = MappingProxyType({"scale": 1.0, "relu": True})

    def finish(self, args, op_span, spans):
        scale = args["scale"]
        ok = not known(scale) or scale > 0
        _require(ok, f"a residual's scale must be positive, not {scale}", spans.get("scale", op_span))
        return args

    def out_shape(self, merge, shapes, span, sources=()):
        shortcut, body = self._shapes(merge, shapes)
        i = merge["shortcut"]
        for shape in body:
            if shape == shortcut:
                continue
            into, out = _source(sources, i), _source(sources, 1 - i)
            spatial = (shape.height, shape.width) != (shortcut.height, shortcut.width)
            if into.projected:
                added = f"its shortcut's output ({_shape_text(shortcut)}, from {into.what})"
                hint = (
                    "give the shortcut the body's stride"
                    if spatial
                    else "give the shortcut the body's channels"
                )
                at = into.stride_span if spatial else into.span
            else:
                added = f"its input ({_shape_text(shortcut)})"
                hint = (
                    "end the block with a 1x1 conv back to the input's channels, or project the input with "
                    "a shortcut: shortcut NAME { conv 1x1/S C; batchnorm }"
                )
                at = out.stride_span if spatial else out.span
            raise ShapeError(
                f"a residual adds its body's output ({_shape_text(shape)}, from {out.what}) to {added}: "
                "they must agree",
                at or span,
                hint,
            )
        return shortcut


@register_merge
class Mul(_WithShortcut):
    """A gate: ``x * body(x)``, the body's output (one value per channel, broadcast over height and
    width, or a map of x's size) scaling its input: squeeze-and-excitation's channel attention."""

    name = "mul"

    def out_shape(self, merge, shapes, span, sources=()):
        x, body = self._shapes(merge, shapes)
        for shape in body:
            spatial = (shape.height, shape.width) in ((1, 1), (x.height, x.width))
            if shape.flat or x.flat or shape.channels != x.channels or not spatial:
                out = _source(sources, 1 - merge["shortcut"])
                raise ShapeError(
                    f"a gate multiplies its input ({_shape_text(x)}) by its body's output "
                    f"({_shape_text(shape)}, from {out.what}): it must have the input's {x.channels} "
                    f"channels, at 1x1 or {x.height}x{x.width}",
                    out.span or span,
                    f"end the gate's body with a 1x1 conv to {x.channels} channels and an activation",
                )
        return x


def _shape_text(shape: Shape) -> str:
    return f"{shape.channels} (flat)" if shape.flat else str(shape)


# resolving a row into an Op -------------------------------------------------------------------


def resolve(
    row: ast.Row,
    env: Mapping[str, Num],
    defaults: Mapping[str, tuple[ast.Arg, ...]],
    origins: Mapping[str, Span] | None = None,
) -> Op:
    """Turn a row of a known kind into an :class:`Op`, binding names through ``env``. ``origins``
    says where a name's value was written (a template argument at its call), for error spans. A row
    ``act NAME`` is the activation it names (``act a``, in a template given ``a``)."""
    if row.kind == ACT:
        kind, args = _named_activation(row, env, origins)
    else:
        kind, args = KINDS[row.kind], row.args
    return bind(kind, defaults.get(kind.name, ()), args, env, origins, row.span)


def _named_activation(row: ast.Row, env, origins) -> tuple[Activation, tuple[ast.Arg, ...]]:
    positional = [a for a in row.args if a.key is None]
    if not positional:
        raise SpecArgumentError("act names an activation: act relu6", row.span)
    first = positional[0]
    value = value_of(first.value, env, first.span)
    if isinstance(value, Word) and value in NO_ACTIVATION:
        value = Word("identity")
    if not isinstance(value, Word):
        raise SpecArgumentError(
            f"act names an activation ({', '.join(ACTIVATIONS)}), not {value}", _origin(first, origins)
        )
    return ACTIVATIONS[value], tuple(a for a in row.args if a is not first)


def bind(
    kind: Kind,
    inherited: tuple[ast.Arg, ...],
    given: tuple[ast.Arg, ...],
    env: Mapping[str, Num],
    origins: Mapping[str, Span] | None,
    span: Span,
) -> Op:
    """An :class:`Op` of ``kind`` from the ``defaults`` it inherits and the arguments ``given``."""
    args, spans = dict(kind.options), {}
    positionals = []
    own: dict[str, ast.Arg] = {}
    for i, arg in enumerate(inherited + given):
        value = _bind(arg, env, kind)
        where = _origin(arg, origins)
        key = arg.key if arg.key is not None else value[0] if isinstance(value, tuple) else None
        if key is not None and i >= len(inherited):
            _once(key, arg, own)
        if arg.key is not None:
            _check_option(kind, arg.key, value, where)
            flag = arg.key in kind.flags() and not symbolic(value)
            args[arg.key], spans[arg.key] = bool(value) if flag else value, where
        elif isinstance(value, tuple):  # a flag: ("relu", True)
            args[value[0]], spans[value[0]] = value[1], where
        else:
            positionals.append((value, where))
    _take_positionals(kind, span, positionals, args, spans)
    return Op(kind, MappingProxyType(kind.finish(args, span, spans)), span, MappingProxyType(spans))


def _origin(arg: ast.Arg, origins: Mapping[str, Span] | None) -> Span:
    if origins and isinstance(arg.value, ast.Ref) and arg.value.name in origins:
        return origins[arg.value.name]
    return arg.span


def _once(key: str, arg: ast.Arg, seen: dict[str, ast.Arg]) -> None:
    """A row sets each option once: ``norelu relu`` or ``pad=1 pad=2`` is a mistake, not an override."""
    if key in seen:
        raise SpecArgumentError(
            f"'{key}' is set twice in this row", arg.span, f"first set at column {seen[key].span.column}"
        )
    seen[key] = arg


def _bind(arg: ast.Arg, env: Mapping[str, Num], kind: Kind):
    """A value with names bound and arithmetic done; a bare unbound name becomes a flag ``(option,
    bool)`` when the kind has that flag."""
    if arg.key is not None and arg.key not in kind.options:
        raise SpecArgumentError(
            f"{kind.name} has no option '{arg.key}'", arg.span, _options_hint(arg.key, kind)
        )
    if isinstance(arg.value, ast.Ref) and arg.value.name not in env and arg.key is None:
        flag = _flag(arg.value.name, kind)
        if flag:
            return flag
    if arg.key is not None and kind.arg_type(arg.key) == "activation" and isinstance(arg.value, ast.Ref):
        name = arg.value.name
        if name not in env and name not in ACTIVATIONS and name not in NO_ACTIVATION:
            hint = did_you_mean(name, [*ACTIVATIONS, *NO_ACTIVATION])
            raise SpecNameError(f"unknown activation '{name}'", arg.span, hint)
    return value_of(arg.value, env, arg.span, kind.flags())


def value_of(value: ast.Value, env: Mapping[str, Num], span: Span, flags=frozenset()):
    """An argument's value: numbers as written, names bound through ``env`` (``kxk`` is a size of
    two names), arithmetic computed (symbolic inside a class), an activation's name a :class:`Word`."""
    if isinstance(value, ast.Ref):
        return _name_value(value.name, env, span, flags)
    if isinstance(value, ast.Binary):
        left, right = value_of(value.left, env, span), value_of(value.right, env, span)
        if isinstance(left, ast.Size) and value.op == "/" and left.stride is None:
            return ast.Size(left.dims, _number(right, "a stride", span))
        return _compute(value.op, (left, right), span)
    if isinstance(value, ast.Apply):
        return _compute(value.fn, tuple(value_of(a, env, span) for a in value.args), span)
    return value


def _name_value(name: str, env: Mapping[str, Num], span: Span, flags) -> Num | ast.Size | Word:
    if name in env:
        return env[name]
    if name in ACTIVATIONS or name in NO_ACTIVATION:
        return Word(name)
    parts = name.split("x")
    if len(parts) in (2, 3) and all(p in env or p.isdigit() for p in parts):  # kxk, 1xk
        return ast.Size(tuple(env[p] if p in env else int(p) for p in parts))
    candidates = list(env) + list(flags)
    raise SpecNameError(f"unknown name '{name}'", span, did_you_mean(name, candidates))


def _number(value, what: str, span: Span) -> Num:
    if isinstance(value, (ast.Size, Word)) or isinstance(value, bool):
        raise SpecArgumentError(f"{what} is a number, not {value}", span)
    return value


def _compute(fn: str, values: tuple, span: Span):
    for value in values:
        _number(value, f"an operand of {fn}", span)
    try:
        result = apply(fn, *values)
        if isinstance(result, (int, float)) and not (math.isfinite(result) and abs(result) <= MAX_INT):
            raise ArithmeticError_(f"the result is out of range (at most {MAX_INT:,} in size)")
        return result
    except ArithmeticError_ as error:
        raise SpecArgumentError(f"{fn} of {', '.join(map(str, values))}: {error}", span) from None
    except TypeError as error:
        raise SpecArgumentError(f"{fn} of {', '.join(map(str, values))}: {error}", span) from None


def width_argument(row: ast.Row) -> int | None:
    """The index in ``row.args`` of the row's width (its output channels, as its kind's ``width``
    names it: ``conv 3x3 64 relu`` -> 1), or None for a kind without one or a row that omits it."""
    kind = KINDS.get(row.kind)
    if kind is None or kind.width is None:
        return None
    wanted = [param.name for param in kind.positional].index(kind.width)
    positional = [
        i
        for i, arg in enumerate(row.args)
        if arg.key is None and not (isinstance(arg.value, ast.Ref) and _flag(arg.value.name, kind))
    ]
    return positional[wanted] if wanted < len(positional) else None


def _flag(name: str, kind: Kind) -> tuple[str, bool] | None:
    """``relu`` -> ("relu", True); ``norelu`` -> ("relu", False); None if not a flag of the kind."""
    flags = kind.flags()
    if name in flags:
        return (name, True)
    if name.startswith("no") and name[2:] in flags:
        return (name[2:], False)
    return None


def _check_option(kind: Kind, key: str, value, span: Span) -> None:
    """An option takes a value of its default's type; a flag is written bare (bn, nobn)."""
    default = kind.options[key]
    if isinstance(default, bool) or key in kind.flags():
        if value in (0, 1) and not isinstance(value, float) or symbolic(value):
            return  # relu=1, relu=0, or relu=act for a template's flag parameter
        raise SpecArgumentError(
            f"{key} is a flag: write '{key}' or 'no{key}' (or {key}=0, {key}=1), not {key}={value}", span
        )
    if kind.arg_type(key) == "activation":
        if not isinstance(value, Word) and not symbolic(value):
            raise SpecArgumentError(
                f"{key} names an activation ({', '.join([*ACTIVATIONS, 'none'])}), not {value}", span
            )
        return
    if isinstance(default, (int, float)) and not (isinstance(value, (int, float)) or symbolic(value)):
        raise SpecArgumentError(f"{kind.name}'s {key} must be a number, not {value}", span)
    if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float):
        raise SpecArgumentError(f"{kind.name}'s {key} must be an integer, not {value}", span)


def _options_hint(key: str, kind: Kind) -> str:
    hint = did_you_mean(key, kind.options)
    return hint or "options: " + (", ".join(kind.options) or "none")


def _take_positionals(kind: Kind, span: Span, values: list, args: dict, spans: dict) -> None:
    wanted = kind.positional
    if len(values) != len(wanted):
        expected = " ".join(p.name.upper() for p in wanted) or "no arguments"
        raise SpecArgumentError(
            f"{kind.name} takes {len(wanted)} argument{'s' * (len(wanted) != 1)}, got {len(values)}",
            span,
            f"write: {kind.name} {expected}",
        )
    for param, (value, span) in zip(wanted, values):
        _check_type(param, value, span, kind)
        args[param.name], spans[param.name] = value, span


_TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "size": lambda v: isinstance(v, ast.Size),
    "int": lambda v: (isinstance(v, int) or symbolic(v)) and not isinstance(v, bool),
    "float": lambda v: (isinstance(v, (int, float)) or symbolic(v)) and not isinstance(v, bool),
}

_TYPE_CHECKS["activation"] = lambda v: isinstance(v, Word) or symbolic(v)

_TYPE_WORDS = {
    "size": "a size like 3x3",
    "int": "an integer",
    "float": "a number",
    "activation": "an activation",
}


def _check_type(param: Param, value, span: Span, kind: Kind) -> None:
    if not _TYPE_CHECKS[param.type](value):
        hint = "// divides to a whole number" if param.type == "int" and isinstance(value, float) else None
        raise SpecArgumentError(
            f"{kind.name}'s {param.name} must be {_TYPE_WORDS[param.type]}, not {value}", span, hint
        )


def check_defaults(kind_name: str, args: tuple[ast.Arg, ...], span: Span) -> None:
    """Check a ``defaults KIND: ...`` line: a known kind, and only its options."""
    if kind_name not in KINDS:
        raise SpecNameError(f"unknown layer kind '{kind_name}'", span, did_you_mean(kind_name, KINDS))
    kind = KINDS[kind_name]
    for arg in args:
        value = _bind(arg, {}, kind)
        if arg.key is None and not isinstance(value, tuple):
            raise SpecArgumentError("defaults set options only, like bn or eps=0.001", arg.span)
