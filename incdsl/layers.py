"""Layer kinds: one table says, for each kind, its arguments, its output shape, its parameter count,
its multiply-adds and the PyTorch module that implements it. Adding a kind touches only this file.

Counting conventions (the same as ``torch.utils.flop_counter.FlopCounterMode`` / 2 and ``numel()``):
MACs count convolutions and linear layers only (no bias adds, pooling, norms or activations); params
count weights, biases and BatchNorm's scale and shift, not its running statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from . import ast
from .errors import ShapeError, Span, SpecArgumentError, SpecNameError, did_you_mean


class Sym(str):
    """A value known only by name: a template parameter, as the PyTorch backend emits it."""


Num = int | float | Sym


@dataclass(frozen=True)
class Shape:
    """(C, H, W) of one example; ``flat`` once a linear layer has flattened it."""

    channels: int
    height: int
    width: int
    flat: bool = False

    def __str__(self) -> str:
        return f"{self.height}x{self.width}x{self.channels}"

    def as_list(self) -> list[int]:
        return [self.channels, self.height, self.width]


@dataclass(frozen=True)
class Layer:
    """A row with every argument and option resolved: what the IR stores and backends read."""

    kind: str
    args: Mapping[str, Any]
    span: Span = field(compare=False)

    def __getitem__(self, key: str) -> Any:
        return self.args[key]


@dataclass(frozen=True)
class FileDefaults:
    """Defaults of the helper classes in one generated file (BasicConv2d's BatchNorm eps), so rows
    that use them need not repeat them."""

    bn_eps: float = 1e-5


@dataclass(frozen=True)
class Param:
    """A positional argument of a layer kind."""

    name: str
    type: str  # 'size' (HxW[/s]), 'int', 'float'


class LayerKind:
    """Base of the table's entries. Subclasses set the class attributes and override what differs."""

    name: str = ""
    title: str = ""  # the "type" column of the paper's table
    positional: tuple[Param, ...] = ()
    options: Mapping[str, Any] = MappingProxyType({})
    has_module = True  # False: nothing to emit (softmax is applied by the loss)

    def flags(self) -> frozenset[str]:
        """Options written as bare words: ``relu`` sets, ``norelu`` clears."""
        return frozenset(k for k, v in self.options.items() if isinstance(v, bool))

    def finish(self, args: dict, span: Span) -> dict:
        """Fill derived arguments and check values; ``args`` holds positionals and options."""
        return args

    def out_shape(self, layer: Layer, x: Shape) -> Shape:
        return x

    def params(self, layer: Layer, x: Shape, y: Shape) -> int:
        return 0

    def macs(self, layer: Layer, x: Shape, y: Shape) -> int:
        return 0

    def module(self, layer: Layer, in_channels: str, file: FileDefaults = None) -> str:
        """Python source constructing the module, given the source text of its input channels and
        the defaults the generated file's helper classes were written with."""
        raise NotImplementedError

    def helpers(self, layer: Layer) -> tuple[str, ...]:
        """Names of helper classes (see backends/templates) that :meth:`module` uses."""
        return ()

    def call(self, layer: Layer, expr: str) -> str:
        """Python source applying the module expression ``expr`` in forward."""
        return expr

    def patch(self, layer: Layer) -> str:
        return ""

    def depth(self, layer: Layer) -> int:
        return 0


KINDS: dict[str, LayerKind] = {}


def register(cls: type[LayerKind]) -> type[LayerKind]:
    """Class decorator adding a kind to :data:`KINDS`; refuses a second kind of the same name."""
    if cls.name in KINDS:
        raise ValueError(f"layer kind {cls.name!r} is registered twice")
    KINDS[cls.name] = cls()
    return cls


# helpers ------------------------------------------------------------------------------------


def _pair(value) -> tuple:
    return tuple(value) if isinstance(value, tuple) else (value, value)


def _src(value) -> str:
    """A kernel/stride/padding value as PyTorch source: 3, or (1, 7) when it is not square."""
    a, b = _pair(value)
    return str(a) if a == b else f"({a}, {b})"


def _patch(layer: Layer) -> str:
    kh, kw = layer["kernel"]
    return f"{kh}x{kw}/{layer['stride']}"


def _window(size: int, kernel: int, stride: int, pad: int, ceil: bool) -> int:
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


def _spatial(layer: Layer, x: Shape, ceil: bool = False) -> tuple[int, int]:
    if x.flat:
        raise ShapeError(f"{layer.kind} needs a spatial input, but the input was flattened", layer.span)
    (kh, kw), (ph, pw), s = layer["kernel"], layer["pad"], layer["stride"]
    h, w = _window(x.height, kh, s, ph, ceil), _window(x.width, kw, s, pw, ceil)
    if h < 1 or w < 1:
        raise ShapeError(
            f"{layer.kind} {kh}x{kw}/{s} (pad {ph}x{pw}) does not fit its {x.height}x{x.width} input",
            layer.span,
            "use a smaller kernel or stride, more padding, or a larger input",
        )
    return h, w


def _kernel_and_stride(args: dict, span: Span) -> None:
    size = args["kernel"]
    if len(size.dims) != 2 or min(size.dims) < 1:
        raise SpecArgumentError(f"a kernel is written HxW, like 3x3 or 1x7, not {size}", span)
    args["kernel"], args["stride"] = size.dims, 1 if size.stride is None else size.stride
    if args["stride"] < 1:
        raise SpecArgumentError("a stride must be at least 1", span)


def _padding(args: dict, default: tuple[int, int], span: Span) -> None:
    pad = args.get("pad")
    if pad is None:
        args["pad"] = default
    elif isinstance(pad, ast.Size) and len(pad.dims) == 2 and pad.stride is None:
        args["pad"] = pad.dims
    elif isinstance(pad, int) and pad >= 0:
        args["pad"] = (pad, pad)
    else:
        raise SpecArgumentError(f"pad is a count (1) or HxW (0x3), not {pad}", span)


def _positive(args: dict, key: str, span: Span) -> None:
    value = args[key]
    if not isinstance(value, Sym) and (not isinstance(value, int) or value < 1):
        raise SpecArgumentError(f"{key} must be a positive integer, not {value}", span)


# kinds --------------------------------------------------------------------------------------


@register
class Conv(LayerKind):
    """``conv KxK[/s] C``: convolution, with the network's conv defaults (bias/ReLU or BN+ReLU)."""

    name, title = "conv", "convolution"
    positional = (Param("kernel", "size"), Param("out", "int"))
    options = MappingProxyType(
        {"pad": None, "bias": None, "bn": False, "eps": 1e-5, "relu": True, "groups": 1}
    )

    def flags(self):
        return super().flags() | {"bias"}  # bias defaults to "unless bn"

    def finish(self, args, span):
        _kernel_and_stride(args, span)
        kh, kw = args["kernel"]
        _padding(args, ((kh - 1) // 2, (kw - 1) // 2), span)
        _positive(args, "out", span)
        _positive(args, "groups", span)
        if not args["eps"] > 0:
            raise SpecArgumentError(f"eps must be positive, not {args['eps']}", span)
        if args["bias"] is None:
            args["bias"] = not args["bn"]
        return args

    def out_shape(self, layer, x):
        if not isinstance(layer["out"], int):
            raise TypeError("shapes need concrete channel counts")
        if x.channels % layer["groups"] or layer["out"] % layer["groups"]:
            raise ShapeError(
                f"groups={layer['groups']} does not divide {x.channels} -> {layer['out']}",
                layer.span,
            )
        return Shape(layer["out"], *_spatial(layer, x))

    def params(self, layer, x, y):
        kh, kw = layer["kernel"]
        weights = y.channels * x.channels // layer["groups"] * kh * kw
        return weights + y.channels * (int(layer["bias"]) + 2 * int(layer["bn"]))

    def macs(self, layer, x, y):
        kh, kw = layer["kernel"]
        return y.channels * y.height * y.width * x.channels // layer["groups"] * kh * kw

    def helpers(self, layer):
        return (self._class(layer),) if self._class(layer) != "nn.Conv2d" else ()

    @staticmethod
    def _class(layer) -> str:
        return {
            (True, True): "BasicConv2d",
            (False, True): "ConvReLU",
            (True, False): "ConvBN",
        }.get((layer["bn"], layer["relu"]), "nn.Conv2d")

    def module(self, layer, in_channels, file=None):
        kw = [f"kernel_size={_src(layer['kernel'])}"]
        if layer["stride"] != 1:
            kw.append(f"stride={layer['stride']}")
        if layer["pad"] != (0, 0):
            kw.append(f"padding={_src(layer['pad'])}")
        if layer["groups"] != 1:
            kw.append(f"groups={layer['groups']}")
        cls = self._class(layer)
        if layer["bias"] != (cls in ("nn.Conv2d", "ConvReLU")):
            kw.append(f"bias={layer['bias']}")
        if layer["bn"] and layer["eps"] != (file or FileDefaults()).bn_eps:
            kw.append(f"eps={layer['eps']!r}")
        return f"{cls}({in_channels}, {layer['out']}, {', '.join(kw)})"

    def patch(self, layer):
        return _patch(layer)

    def depth(self, layer):
        return 1


class _Pool(LayerKind):
    positional = (Param("kernel", "size"),)
    options = MappingProxyType({"pad": 0, "ceil": False})
    torch_class = ""

    def finish(self, args, span):
        _kernel_and_stride(args, span)
        _padding(args, (0, 0), span)
        if any(2 * p > k for p, k in zip(args["pad"], args["kernel"])):
            raise SpecArgumentError("pad must be at most half the kernel size", span)
        return args

    def out_shape(self, layer, x):
        return Shape(x.channels, *_spatial(layer, x, layer["ceil"]))

    def module(self, layer, in_channels, file=None):
        kw = [_src(layer["kernel"]), f"stride={layer['stride']}"]
        if layer["pad"] != (0, 0):
            kw.append(f"padding={_src(layer['pad'])}")
        if layer["ceil"]:
            kw.append("ceil_mode=True")
        return f"nn.{self.torch_class}({', '.join(kw)})"

    def patch(self, layer):
        return _patch(layer)


@register
class MaxPool(_Pool):
    """``maxpool KxK[/s] [pad=P] [ceil]``."""

    name, title, torch_class = "maxpool", "max pool", "MaxPool2d"


@register
class AvgPool(_Pool):
    """``avgpool KxK[/s] [pad=P] [ceil]`` (padding counts toward the average, as in PyTorch)."""

    name, title, torch_class = "avgpool", "avg pool", "AvgPool2d"


@register
class AdaptiveAvgPool(LayerKind):
    """``adaptive_avgpool HxW``: average pooling to a fixed output size."""

    name, title = "adaptive_avgpool", "avg pool"
    positional = (Param("size", "size"),)

    def finish(self, args, span):
        size = args["size"]
        if len(size.dims) != 2 or size.stride is not None or min(size.dims) < 1:
            raise SpecArgumentError(f"an output size is written HxW, like 4x4, not {size}", span)
        args["size"] = size.dims
        return args

    def out_shape(self, layer, x):
        if x.flat:
            raise ShapeError("adaptive_avgpool needs a spatial input", layer.span)
        return Shape(x.channels, *layer["size"])

    def module(self, layer, in_channels, file=None):
        return f"nn.AdaptiveAvgPool2d({tuple(layer['size'])})"

    def patch(self, layer):
        return "adaptive {}x{}".format(*layer["size"])


@register
class GlobalAvgPool(AdaptiveAvgPool):
    """``global_avgpool``: average over the whole feature map (1x1 output)."""

    name, title = "global_avgpool", "avg pool"
    positional = ()

    def finish(self, args, span):
        args["size"] = (1, 1)
        return args

    def patch(self, layer):
        return "global"


@register
class LRN(LayerKind):
    """``lrn N [alpha=] [beta=] [k=]``: local response normalisation across channels (Caffe's)."""

    name, title = "lrn", "local response norm"
    positional = (Param("size", "int"),)
    options = MappingProxyType({"alpha": 1e-4, "beta": 0.75, "k": 1.0})

    def finish(self, args, span):
        _positive(args, "size", span)
        return args

    def module(self, layer, in_channels, file=None):
        return (
            f"nn.LocalResponseNorm({layer['size']}, alpha={layer['alpha']!r}, "
            f"beta={layer['beta']!r}, k={float(layer['k'])!r})"
        )


@register
class Dropout(LayerKind):
    """``dropout P``: dropout with drop probability P."""

    name, title = "dropout", "dropout"
    positional = (Param("p", "float"),)

    def finish(self, args, span):
        p = args["p"]
        if not isinstance(p, Sym) and not 0 <= p < 1:
            raise SpecArgumentError(f"a dropout probability is in [0, 1), not {p}", span)
        return args

    def module(self, layer, in_channels, file=None):
        return f"nn.Dropout(p={layer['p']})"


@register
class Linear(LayerKind):
    """``linear N [relu] [nobias]``: fully connected; flattens a spatial input first."""

    name, title = "linear", "linear"
    positional = (Param("out", "int"),)
    options = MappingProxyType({"bias": True, "relu": False})

    def finish(self, args, span):
        _positive(args, "out", span)
        return args

    def out_shape(self, layer, x):
        return Shape(layer["out"], 1, 1, flat=True)

    def params(self, layer, x, y):
        return y.channels * (x.channels * x.height * x.width + int(layer["bias"]))

    def macs(self, layer, x, y):
        return y.channels * x.channels * x.height * x.width

    def module(self, layer, in_channels, file=None):
        bias = "" if layer["bias"] else ", bias=False"
        return f"nn.Linear({in_channels}, {layer['out']}{bias})"

    def call(self, layer, expr):
        return f"F.relu({expr}, inplace=True)" if layer["relu"] else expr

    def depth(self, layer):
        return 1


@register
class Softmax(LayerKind):
    """``softmax``: the classifier's output; the generated model returns logits (the loss applies it)."""

    name, title = "softmax", "softmax"
    has_module = False


# resolving a row into a Layer ------------------------------------------------------------------


def resolve(row: ast.Row, env: Mapping[str, Num], defaults: Mapping[str, tuple[ast.Arg, ...]]) -> Layer:
    """Turn a row of a known kind into a :class:`Layer`, binding names through ``env``."""
    kind = KINDS[row.kind]
    args = dict(kind.options)
    positionals = []
    for arg in defaults.get(row.kind, ()) + row.args:
        value = _bind(arg, env, kind)
        if arg.key is not None:
            _check_option(kind, arg.key, value, arg.span)
            args[arg.key] = value
        elif isinstance(value, tuple):  # a flag: ("relu", True)
            args[value[0]] = value[1]
        else:
            positionals.append((value, arg.span))
    _take_positionals(kind, row, positionals, args)
    return Layer(row.kind, MappingProxyType(kind.finish(args, row.span)), row.span)


def _bind(arg: ast.Arg, env: Mapping[str, Num], kind: LayerKind):
    """A value with names bound; a bare unbound name becomes a flag ``(option, bool)``."""
    if arg.key is not None and arg.key not in kind.options:
        raise SpecArgumentError(
            f"{kind.name} has no option '{arg.key}'", arg.span, _options_hint(arg.key, kind)
        )
    if not isinstance(arg.value, ast.Ref):
        return arg.value
    name = arg.value.name
    if name in env:
        return env[name]
    flag = _flag(name, kind) if arg.key is None else None
    if flag:
        return flag
    candidates = list(env) + list(kind.flags())
    raise SpecNameError(f"unknown name '{name}'", arg.span, did_you_mean(name, candidates))


def _flag(name: str, kind: LayerKind) -> tuple[str, bool] | None:
    """``relu`` -> ("relu", True); ``norelu`` -> ("relu", False); None if not a flag of the kind."""
    flags = kind.flags()
    if name in flags:
        return (name, True)
    if name.startswith("no") and name[2:] in flags:
        return (name[2:], False)
    return None


def _check_option(kind: LayerKind, key: str, value, span: Span) -> None:
    """An option takes a value of its default's type; a flag is written bare (bn, nobn)."""
    default = kind.options[key]
    if isinstance(default, bool) or key in kind.flags():
        raise SpecArgumentError(f"{key} is a flag: write '{key}' or 'no{key}', not {key}={value}", span)
    if isinstance(default, (int, float)) and not isinstance(value, (int, float, Sym)):
        raise SpecArgumentError(f"{kind.name}'s {key} must be a number, not {value}", span)
    if isinstance(default, int) and not isinstance(default, bool) and isinstance(value, float):
        raise SpecArgumentError(f"{kind.name}'s {key} must be an integer, not {value}", span)


def _options_hint(key: str, kind: LayerKind) -> str:
    hint = did_you_mean(key, kind.options)
    return hint or "options: " + (", ".join(kind.options) or "none")


def _take_positionals(kind: LayerKind, row: ast.Row, values: list, args: dict) -> None:
    wanted = kind.positional
    if len(values) != len(wanted):
        expected = " ".join(p.name.upper() for p in wanted) or "no arguments"
        raise SpecArgumentError(
            f"{kind.name} takes {len(wanted)} argument{'s' * (len(wanted) != 1)}, got {len(values)}",
            row.span,
            f"write: {kind.name} {expected}",
        )
    for param, (value, span) in zip(wanted, values):
        _check_type(param, value, span, kind)
        args[param.name] = value


_TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "size": lambda v: isinstance(v, ast.Size),
    "int": lambda v: isinstance(v, (int, Sym)) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float, Sym)) and not isinstance(v, bool),
}

_TYPE_WORDS = {"size": "a size like 3x3", "int": "an integer", "float": "a number"}


def _check_type(param: Param, value, span: Span, kind: LayerKind) -> None:
    if not _TYPE_CHECKS[param.type](value):
        raise SpecArgumentError(
            f"{kind.name}'s {param.name} must be {_TYPE_WORDS[param.type]}, not {value}", span
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
