"""The PyTorch backend: a network's IR to one standalone, readable ``model.py``.

The file reads like torchvision's ``googlenet.py``: small helper classes, one class per block template
(template parameters become constructor arguments), submodules declared in reading order, and a
straight-line ``forward`` with the shape after each stage.

The backend only reads the IR: every name comes from it (allocated by :mod:`incdsl.ir.symbols`), every
channel count is an expression the IR computed, every value an int, a float or a parameter's name.
Code is composed from pieces, each returned by a small function (``visit_<Kind>`` spells a layer
kind, ``merge_<Kind>`` a merge); nothing is edited after it is written, and the imports and helper
classes are those the pieces used. ``templates/model.py.j2`` only lays the pieces out.
"""

from __future__ import annotations

import linecache
import re
import sys
import textwrap
import types
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import jinja2

from incdsl.backends.pytorch.families import Family, families, family_of
from incdsl.backends.pytorch.shapes import input_comment, shape_comments
from incdsl.ir.symbolic import Atom, Expr, Sym
from incdsl.ir.tree import (
    BlockClass,
    Branch,
    Call,
    Channels,
    Fork,
    Layer,
    ModelClass,
    Network,
    Node,
    Seq,
    Visitor,
    walk,
)
from incdsl.kinds import layers as L
from incdsl.kinds.layers import Conv, Op
from incdsl.passes.annotate import is_lone
from incdsl.syntax.parser import header_comment


@cache
def _template() -> jinja2.Template:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    return env.get_template("model.py.j2")


def generate(
    net: Network, formatted: bool = True, optimize: bool = False, compiled: bool = False, plan=None
) -> str:
    """The model file's source text (formatted with black unless ``formatted`` is False). With
    ``optimize``, the inference build (see :class:`OptimizedWriter`) of the plan that
    :func:`incdsl.passes.optimize.optimize` makes, or of ``plan`` (some passes only); ``compiled`` makes
    its ``build()`` return the model through ``torch.compile`` by default."""
    if optimize:
        from incdsl.passes.optimize import optimize as passes

        writer = OptimizedWriter(net, plan if plan is not None else passes(net))
    else:
        writer = Writer(net)
    blocks = [writer.block_class(family) for family in families(net)]
    model = writer.model_class(net.model)
    text = _template().render(
        network=model,
        blocks=blocks,
        used=writer.used,
        bn_eps=repr(writer.bn_eps),
        conv_bias=writer.conv_bias,
        metadata=repr(_metadata(net)),
        source_name=_safe_file_name(net.spec.path),
        optimized=optimize,
        compiled=compiled,
        onednn=optimize and writer.plan.onednn,
    )
    return _format(text) if formatted else text


def instantiate(source: str, **overrides):
    """Execute generated source as a fresh module and return ``build(**overrides)``."""
    module = load_source(source)
    return module.build(**overrides)


def load_source(source: str, name: str = "incdsl_generated") -> types.ModuleType:
    """Execute generated source as a module registered under ``name`` (for pickling and export); its
    text is registered with ``linecache``, so ``inspect`` (and ``torch.jit.script``) can read it."""
    module = types.ModuleType(name)
    module.__file__ = f"<{name}>"
    linecache.cache[module.__file__] = (len(source), None, source.splitlines(True), module.__file__)
    sys.modules[name] = module
    # dont_inherit: this module's `from __future__ import annotations` must not turn the file's
    # annotations into strings (TorchScript reads the NamedTuple's field types)
    exec(compile(source, module.__file__, "exec", dont_inherit=True), module.__dict__)
    return module


def _format(text: str) -> str:
    try:
        import black
    except ImportError:  # formatting is cosmetic; the text is valid Python either way
        return text
    return black.format_str(text, mode=black.Mode(line_length=100))


def _safe_file_name(path: str) -> str:
    return re.sub(r"[^\w.\-]", "_", path.replace("\\", "/").rsplit("/", 1)[-1]) or "spec"


def _metadata(net: Network) -> dict:
    return {
        "network": net.name,
        "input": net.input.as_list(),
        "classes": net.classes,
        "aux": {a.name: a.weight for a in net.auxes},
    }


def literal(value) -> str:
    """A value as Python source: a parameter's name, an expression of parameters, or a number."""
    return str(value) if isinstance(value, (Sym, Atom, Expr)) else repr(value)


def _pair_src(value) -> str:
    """A kernel/stride/padding value as PyTorch source: 3, or (1, 7) when it is not square."""
    a, b = value if isinstance(value, tuple) else (value, value)
    return literal(a) if a == b else f"({literal(a)}, {literal(b)})"


@dataclass(frozen=True)
class Code:
    """A piece of a class: lines of ``__init__`` and lines of ``forward``."""

    init: tuple[str, ...] = ()
    forward: tuple[str, ...] = ()

    def __add__(self, other: Code) -> Code:
        return Code(self.init + other.init, self.forward + other.forward)


def join(pieces) -> Code:
    return sum(pieces, Code())


def conv_arguments(op: Op) -> list[str]:
    """A convolution's keyword arguments as nn.Conv2d takes them, defaults left out."""
    kw = [f"kernel_size={_pair_src(op['kernel'])}"]
    if op["stride"] != 1:
        kw.append(f"stride={op['stride']}")
    if op["pad"] != (0, 0):
        kw.append(f"padding={_pair_src(op['pad'])}")
    if op["groups"] != 1:
        kw.append(f"groups={literal(op['groups'])}")
    return kw


# A paper as spec headers cite one: "Title" (Authors, Year).
PAPER = re.compile(r'"[^"]+"\s*\([^()]*?\d{4}\)')

# Helper classes by (BatchNorm, ReLU): a convolution with neither is nn.Conv2d itself.
CONV_HELPERS = {(True, True): "BasicConv2d", (True, False): "ConvBN", (False, True): "ConvReLU"}


class Writer(Visitor):
    """Writes the classes of one file; records the imports and helper classes the pieces use."""

    def __init__(self, net: Network):
        self.net = net
        self.used: set[str] = {"nn", "Tensor"}
        self.bn_eps = _common_eps(net)
        self.conv_bias = any(
            layer.op["bias"] and layer.op["bn"] for layer in net.layers() if _is_conv(layer.op)
        )
        self.used |= {"make_divisible"} if _calls_make_divisible(net) else set()
        self.families = family_of(net)
        self.family: Family | None = None  # the block class being written (None: the model's)
        self.attrs = None  # its attributes: those the IR named, and those the writer adds
        self.shapes: dict[int, str] = {}  # its nodes' shape comments, by id

    # classes ---------------------------------------------------------------------------------
    def block_class(self, family: Family) -> dict:
        """One class of the file: a template's variants that one class can build (see
        :mod:`.families`), its ``when=`` decisions tested in ``__init__`` and ``forward``."""
        cls = family.base
        self.family, self.attrs = family, cls.attrs.copy()
        self.shapes = shape_comments(self.net, cls)
        signature = ["in_channels: int", *(f"{p}: {t}" for p, t in family.params)]
        if cls.uses_classes:
            signature.append("num_classes: int")
        if cls.template.sequential:
            return self.sequential_class(cls, signature)
        code, out = self.visit(cls.body, "x", "x")
        return {
            "doc": self.block_doc(cls),
            "class_name": cls.name,
            "base": "nn.Module",
            "signature": ", ".join(signature),
            "init": ("super().__init__()", *code.init),
            "forward": (input_comment(), *code.forward, f"return {out}"),
            "methods": (),
        }

    def sequential_class(self, cls: BlockClass, signature: list[str]) -> dict:
        """A ``sequential`` template: an nn.Sequential of its rows, as torchvision's
        Conv2dNormActivation is; no forward of its own."""
        parts = [(_position_name(node), self.position_module(node)) for node in cls.body.items]
        if all(name.isdigit() for name, _ in parts):
            lines = tuple(f"    {part}," for _, part in parts)
        else:  # named rows are keyed by their names, as torchvision's DenseNet features are
            self.used.add("OrderedDict")
            lines = ("    OrderedDict([", *(f"        ({name!r}, {part})," for name, part in parts), "    ])")
        return {
            "doc": self.block_doc(cls),
            "class_name": cls.name,
            "base": "nn.Sequential",
            "signature": ", ".join(signature),
            "init": ("super().__init__(", *lines, ")"),
            "forward": (),
            "methods": (),
        }

    def position_module(self, node: Node) -> str:
        """Source constructing one position of an nn.Sequential: a layer, a call, a nested group."""
        if isinstance(node, Fork):  # a nested sequential group: a one-branch group
            return self.container(node.branches[0])
        return "nn.Identity()" if _identity(node) else self.module(node)

    def model_class(self, model: ModelClass) -> dict:
        net = self.net
        self.family, self.attrs, self.shapes = None, model.attrs.copy(), {}
        signature = [] if net.classes is None else [f"num_classes: int = {net.classes}"]
        if model.auxes:
            signature.append("aux_logits: bool = True")
            self.used |= {"NamedTuple", "Optional"}
        if model.dropout is not None:
            signature.append(f"dropout: float = {model.dropout!r}")
        s = net.input
        pieces = [Code(forward=(f"# N x {s.channels} x {s.height} x {s.width}",))]
        for twin, stage in zip(model.stages, net.stages):
            if twin.sequence is None:
                code, _ = self.visit(twin.node, "x", "x")
            elif self.applied_whole(twin.sequence, model):
                group = [s for s in model.stages if s.sequence == twin.sequence]
                if twin is not group[-1]:
                    continue  # the group is declared and applied at its last position
                code = self.whole_group(twin.sequence, group)
            else:
                code = self.position(twin, model.stages)
            shape = () if _identity(twin.node) else (_shape_comment(net.facts[stage.node].output),)
            pieces.append(code + Code(forward=shape))
            pieces += [self.aux_head(aux) for aux in model.auxes if aux.after is twin]
        pieces.append(self.returns(model))
        code = join(pieces)
        return {
            "name": net.name,
            "doc": self.model_doc(model),
            "class_name": model.name,
            "outputs": model.outputs,
            "input": f"{s.height}x{s.width}x{s.channels}",
            "signature": ", ".join(signature),
            "aux": [aux.name for aux in model.auxes],
            "init": code.init,
            "forward": code.forward,
        }

    def block_doc(self, cls: BlockClass) -> tuple[str, ...]:
        """A block class's docstring: the comment above its template in the spec, then which
        template of which file and the paper the spec cites."""
        path = cls.template.span.path
        source = "incdsl's prelude" if path == "<prelude>" else _safe_file_name(path)
        where = f"Template `{cls.template.name}` of {source}"
        paper = _paper(self.net.spec)
        cited = _fill(f"{where}, after {paper}." if paper else f"{where}.")
        if not cls.template.comment:
            return docstring(cited)
        return docstring(f"{cls.template.comment}\n\n{cited}")

    def model_doc(self, model: ModelClass) -> tuple[str, ...]:
        """The network's docstring: what the spec says it is (its opening line), the paper it cites,
        its input, parameters and multiply-adds, and what it returns."""
        net = self.net
        header = header_comment(net.spec.source).split("\n\n")[0].strip()
        paper = _paper(net.spec)
        lines = [header or f"{net.name}."]
        if paper and paper not in " ".join(header.split()):
            lines.append(f"\n{_fill(paper)}.")
        main = sum(net.facts[s.node].params for s in net.stages)
        macs = sum(net.facts[s.node].macs for s in net.stages)
        total = main + sum(net.facts[a.node].params for a in net.auxes)
        s = net.input
        counts = f"{total:,} parameters" + (f" ({main:,} without the aux heads)" if net.auxes else "")
        about = f"{s.height}x{s.width}x{s.channels} input; {counts}; {macs:,} multiply-adds per image."
        if model.auxes:
            about += (
                f" In training mode it returns {model.outputs} (the aux heads' logits too); in eval "
                "mode the logits tensor only."
            )
        lines.append(f"\n{_fill(about)}")
        return docstring("\n".join(lines))

    def applied_whole(self, sequence: str, model: ModelClass) -> bool:
        """Whether a sequential group runs as one module (``x = self.layer1(x)``, as torchvision
        writes it): no aux head reads a position before its last, no position flattens its input."""
        group = [s for s in model.stages if s.sequence == sequence]
        inner = {id(s) for s in group[:-1]}
        if any(id(aux.after) in inner for aux in model.auxes):
            return False
        return not any(isinstance(s.node, Layer) and self.flattens(s.node) for s in group)

    def whole_group(self, sequence: str, group) -> Code:
        parts = ", ".join(self.position_module(s.node) for s in group)
        return Code((f"self.{sequence} = nn.Sequential({parts})",), (f"x = self.{sequence}(x)",))

    def position(self, stage, stages) -> Code:
        """A stage of a sequential group that does not run whole (see :meth:`applied_whole`): the
        group's nn.Sequential is declared with its first position; each position is applied in turn
        (``self.features[3](x)``), so aux heads can read between them and a linear layer's input be
        flattened."""
        group = [s for s in stages if s.sequence == stage.sequence]
        init = ()
        if stage is group[0]:
            parts = ", ".join(self.position_module(s.node) for s in group)
            init = (f"self.{stage.sequence} = nn.Sequential({parts})",)
        if _identity(stage.node):
            code, _ = self.visit_Layer(stage.node, "x", "x")
            return Code(init) + code
        index = stage.attr.rsplit(".", 1)[1]
        return Code(init, self.applied(stage.node, f"self.{stage.sequence}[{index}]", "x", "x"))

    def aux_head(self, aux) -> Code:
        source = "torch.flatten(x, 1)" if self.flattens(aux.node) else "x"
        self.used.add("torch") if source != "x" else None
        return Code(
            init=(f"self.{aux.name} = {self.module(aux.node)} if aux_logits else None",),
            forward=(
                f"{aux.var}: Optional[Tensor] = None",
                f"if self.{aux.name} is not None and self.training:",
                f"    {aux.var} = {self.call(aux.node, f'self.{aux.name}', source)}",
            ),
        )

    def returns(self, model: ModelClass) -> Code:
        if not model.auxes:
            return Code(forward=("return x",))
        names = ", ".join(aux.var for aux in model.auxes)
        return Code(
            forward=(
                "if self.training and self.aux_logits:",
                f"    return {model.outputs}(x, {names})",
                "return x",
            )
        )

    # nodes: each returns its Code and the variable holding its output -------------------------
    def visit_Seq(self, seq: Seq, src: str, dst: str) -> tuple[Code, str]:
        """Its items in turn; in a block class, a shape comment after each that changes the shape
        and after each merge."""
        pieces, current, shape = [], src, input_comment() if src == "x" else None
        for item in seq.items:
            code, current = self.visit(item, current, dst)
            comment = self.shapes.get(id(item))
            if comment and (comment != shape or isinstance(item, Fork)) and not _identity(item):
                code += Code(forward=(comment,))
            shape = comment or shape
            pieces.append(code)
        return join(pieces), current

    def visit_Layer(self, layer: Layer, src: str, dst: str) -> tuple[Code, str]:
        if layer.op.kind.identity:
            return Code(
                forward=(f"# {layer.op.kind.name}: left to the loss and to callers (logits out)",)
            ), src
        return self.attribute(layer, layer.attr, src, dst)

    def visit_Call(self, call: Call, src: str, dst: str) -> tuple[Code, str]:
        return self.attribute(call, call.attr, src, dst)

    def visit_Fork(self, fork: Fork, src: str, dst: str) -> tuple[Code, str]:
        if len(fork.branches) == 1 and fork.merge.kind.unary_identity:
            return self.visit(fork.branches[0], src, dst)
        stored = tuple(f"self.{attr} = {literal(fork.merge[key])}" for key, attr in fork.stored.items())
        pieces, outputs = [Code(init=stored, forward=self.split(fork, src))], []
        for branch, source in zip(fork.branches, fork.inputs or [src] * len(fork.branches)):
            code, out = self.visit(branch, source, branch.var)
            pieces.append(code + self.branch_shape(branch))
            outputs.append(out)
        return join(pieces) + self.merged(fork, outputs, dst), dst

    def branch_shape(self, branch: Branch) -> Code:
        """A named branch's output shape (a flattened one's steps have theirs)."""
        if branch.container is None or not branch.body.items or id(branch) not in self.shapes:
            return Code()
        return Code(forward=(self.shapes[id(branch)],))

    def merged(self, fork: Fork, outputs: list[str], dst: str) -> Code:
        """The merge of a fork's outputs into ``dst``; a residual a ``when=`` leaves out in some
        calls is tested (``self.use_residual``, torchvision's ``use_res_connect``), a ReLU a flag
        argument gives too (``if self.relu:``, timm's ``no_relu``)."""
        merge = getattr(self, f"merge_{type(fork.merge.kind).__name__}")(fork, outputs)
        init, forward = [], []
        relu = self.merge_flags(fork).get("relu")
        if relu is not None:
            attr = self.attrs.fresh(relu, f"the {relu} flag")
            init.append(f"self.{attr} = {relu}")
            self.used.add("F")
            forward += [f"if self.{attr}:", f"    {dst} = F.relu({dst}, inplace=True)"]
        condition = self.condition(fork)
        if condition is not None:
            flag = self.attrs.fresh(f"use_{_merge_part(fork)}", "a when= decision")
            stored = condition if id(fork) in self.family.booleans else f"bool({condition})"
            init.append(f"self.{flag} = {stored}")
            body = _split(fork, outputs)[1]
            if forward:  # the flagged ReLU belongs to the merge: under the decision too
                forward = [f"if self.{flag}:", f"    {dst} = {merge}", *(f"    {f}" for f in forward),
                           "else:", f"    {dst} = {body}"]  # fmt: skip
            else:
                forward = [f"{dst} = {merge} if self.{flag} else {body}"]
        else:
            forward.insert(0, f"{dst} = {merge}")
        return Code(tuple(init), tuple(forward))

    def condition(self, node: Node) -> str | None:
        """The ``when=`` condition a part of the class is built under (None: always built)."""
        return self.family.conditions.get(id(node)) if self.family else None

    def merge_flags(self, fork: Fork) -> dict[str, str]:
        """A merge's options given by flag arguments: option -> the argument's name."""
        return self.family.merge_flags.get(id(fork), {}) if self.family else {}

    @staticmethod
    def split(fork: Fork, src: str) -> tuple[str, ...]:
        """A split's parts: ``x1, x2 = x.chunk(2, 1)``, as torchvision's ShuffleNetV2 cuts its input."""
        if not fork.split:
            return ()
        return (f"{', '.join(fork.inputs)} = {src}.chunk({len(fork.inputs)}, 1)",)

    def visit_Branch(self, branch: Branch, src: str, dst: str) -> tuple[Code, str]:
        if branch.container is None:  # flattened: its layers are attributes of this class
            return self.visit(branch.body, src, dst)
        condition = self.condition(branch)
        if condition is not None:  # a shortcut a when= leaves out: the identity then
            return self.optional_branch(branch, condition, src, dst), dst
        if is_lone(branch):
            return self.attribute(branch.body.items[0], branch.container, src, dst)
        if any(self.condition(node) for node in branch.body.items):
            init = self.appended(branch)
        else:
            init = (f"self.{branch.container} = {self.container(branch)}",)
        return Code(init, (f"{dst} = self.{branch.container}({src})",)), dst

    def optional_branch(self, branch: Branch, condition: str, src: str, dst: str) -> Code:
        """``self.downsample = ... if COND else None``, applied where it is not None (torchvision's
        ResNet blocks)."""
        attr = f"self.{branch.container}"
        if is_lone(branch):
            node = branch.body.items[0]
            module, applied = self.module(node), self.applied(node, attr, src, dst)
        else:
            module, applied = self.container(branch), (f"{dst} = {attr}({src})",)
        init = (f"{attr} = {module} if {condition} else None",)
        forward = (f"{dst} = {src}", f"if {attr} is not None:", *(f"    {line}" for line in applied))
        return Code(init, forward)

    def appended(self, branch: Branch) -> tuple[str, ...]:
        """A named branch some of whose positions a ``when=`` leaves out: a list the kept modules
        are appended to, then an nn.Sequential of it (torchvision's InvertedResidual), so the
        positions renumber."""
        name = _free_local("layers", self.family)
        lines = [f"{name}: list[nn.Module] = []"]
        for node in branch.body.items:
            append = f"{name}.append({self.position_module(node)})"
            condition = self.condition(node)
            lines += [f"if {condition}:", f"    {append}"] if condition else [append]
        return (*lines, f"self.{branch.container} = nn.Sequential(*{name})")

    def container(self, branch: Branch) -> str:
        """Source constructing a named branch of several layers: an nn.Sequential keyed by position,
        or by the layers' names."""
        parts = [(_position_name(node), self.position_module(node)) for node in branch.body.items]
        if all(attr.isdigit() for attr, _ in parts):
            return f"nn.Sequential({', '.join(expr for _, expr in parts)})"
        self.used.add("OrderedDict")
        items = ", ".join(f"({attr!r}, {expr})" for attr, expr in parts)
        return f"nn.Sequential(OrderedDict([{items}]))"

    def attribute(self, node: Layer | Call, attr: str, src: str, dst: str) -> tuple[Code, str]:
        """A submodule at ``self.attr``, applied to ``src`` into ``dst``."""
        condition = self.condition(node)
        if condition is None:
            init = (f"self.{attr} = {self.module(node)}",)
            return Code(init, self.applied(node, f"self.{attr}", src, dst)), dst
        init = (f"self.{attr} = {self.module(node)} if {condition} else None",)
        applied = self.applied(node, f"self.{attr}", dst, dst)
        forward = (f"{dst} = {src}",) if src != dst else ()
        forward += (f"if self.{attr} is not None:", *(f"    {line}" for line in applied))
        return Code(init, forward), dst

    def applied(self, node: Layer | Call, module: str, src: str, dst: str) -> tuple[str, ...]:
        """Forward lines applying ``module`` to ``src`` into ``dst`` (flattening a feature map first
        for a linear layer)."""
        forward = []
        if self.flattens(node):
            self.used.add("torch")
            forward.append(f"{dst} = torch.flatten({src}, 1)")
            src = dst
        forward.append(f"{dst} = {self.call(node, module, src)}")
        return tuple(forward)

    def flattens(self, node: Layer | Call) -> bool:
        """Whether the node's input is flattened before it (a linear layer on a feature map)."""
        if not isinstance(node, Layer) or isinstance(node.op.kind, L.Flatten):
            return False
        return node.op.kind.flattens and not self.net.channels[node].flat_input

    def call(self, node: Layer | Call, module: str, source: str) -> str:
        """The forward expression applying ``module`` to ``source``."""
        expr = f"{module}({source})"
        if not isinstance(node, Layer):
            return expr
        applies = self._spelling("call", node.op)
        if applies:
            return applies(node.op, module, source)
        spell = self._spelling("apply", node.op)
        return spell(node.op, expr) if spell else expr

    def module(self, node: Layer | Call) -> str:
        """Source constructing the node's module."""
        if isinstance(node, Call):
            family = self.families[id(node.cls)]
            args = [str(self.net.channels[node].input)]
            args += [literal(node.args[p]) for p, _ in family.params if p not in family.flags]
            if node.cls.uses_classes:
                args.append("num_classes")
            args += [f"{p}={_flag(node.args[p])}" for p in family.flags]
            return f"{family.base.name}({', '.join(args)})"
        channels = self.net.channels[node]
        cin = channels.input.times(*channels.spatial) if node.op.kind.flattens else str(channels.input)
        return self._spelling("module", node.op)(node.op, cin)

    def _spelling(self, prefix: str, op: Op):
        for cls in type(op.kind).__mro__:
            method = getattr(self, f"{prefix}_{cls.__name__}", None)
            if method is not None:
                return method
        return None

    # how each layer kind is spelt: module_<Kind> constructs it, apply_<Kind> applies it ----
    def module_Conv(self, op: Op, cin: str, bare: str = "nn.Conv2d") -> str:
        """A convolution's helper module; ``bare`` is the class of a convolution with neither BN nor
        ReLU (nn.Conv2d, or the inference build's ConvFoldingBN)."""
        helper = CONV_HELPERS.get((op["bn"], op["act"] == "relu"), bare)
        self.used.add(helper if helper != "nn.Conv2d" else "nn")
        if helper in ("BasicConv2d", "ConvReLU"):
            self.used.add("F")
        kw = conv_arguments(op)
        if op["bias"] != (helper in (bare, "ConvReLU")):
            kw.append(f"bias={op['bias']}")
        if op["bn"] and op["eps"] != self.bn_eps:
            kw.append(f"eps={literal(op['eps'])}")
        return f"{helper}({cin}, {literal(op['out'])}, {', '.join(kw)})"

    def _pool(self, torch_class: str, op: Op) -> str:
        kw = [_pair_src(op["kernel"]), f"stride={op['stride']}"]
        if op["pad"] != (0, 0):
            kw.append(f"padding={_pair_src(op['pad'])}")
        if op["ceil"]:
            kw.append("ceil_mode=True")
        if op.args.get("exclude_pad"):
            kw.append("count_include_pad=False")
        return f"nn.{torch_class}({', '.join(kw)})"

    def module_MaxPool(self, op: Op, cin: str) -> str:
        return self._pool("MaxPool2d", op)

    def module_AvgPool(self, op: Op, cin: str) -> str:
        return self._pool("AvgPool2d", op)

    def module_AdaptiveAvgPool(self, op: Op, cin: str) -> str:
        return f"nn.AdaptiveAvgPool2d({tuple(op['size'])})"

    def module_LRN(self, op: Op, cin: str) -> str:
        k = op["k"] if isinstance(op["k"], Sym) else float(op["k"])
        return (
            f"nn.LocalResponseNorm({literal(op['size'])}, alpha={literal(op['alpha'])}, "
            f"beta={literal(op['beta'])}, k={literal(k)})"
        )

    def apply_Conv(self, op: Op, expr: str) -> str:
        """An activation other than ReLU (which the helper classes apply) is applied to the output."""
        return expr if op["act"] == "relu" else self.activate(op["act"], expr)

    def activate(self, name: str | None, expr: str) -> str:
        """``expr`` through the activation ``name`` (None: unchanged), in its functional form."""
        if name is None or not L.ACTIVATIONS[name].function:
            return expr
        kind = L.ACTIVATIONS[name]
        self.used.add(kind.function.split(".")[0])
        return f"{kind.function}({expr})"

    def module_Activation(self, op: Op, cin: str) -> str:
        """``nn.ReLU6()``, ``nn.LeakyReLU(negative_slope=0.2)``: not in place (the input may feed
        another branch or a shortcut)."""
        kind = op.kind
        kw = [f"{kind.keywords[k]}={literal(op[k])}" for k, v in kind.options.items() if op[k] != v]
        return f"nn.{kind.torch}({', '.join(kw)})"

    def apply_Activation(self, op: Op, expr: str) -> str:
        return expr

    def module_BatchNorm(self, op: Op, cin: str, cls: str = "nn.BatchNorm2d") -> str:
        kw = [cin]
        if op["eps"] != 1e-5:
            kw.append(f"eps={literal(op['eps'])}")
        if op["momentum"] != 0.1:
            kw.append(f"momentum={literal(op['momentum'])}")
        return f"{cls}({', '.join(kw)})"

    def module_LayerNorm(self, op: Op, cin: str) -> str:
        eps = "" if op["eps"] == 1e-5 else f", eps={literal(op['eps'])}"
        return f"nn.LayerNorm({cin}{eps})"

    def module_LayerNorm2d(self, op: Op, cin: str) -> str:
        self.used |= {"LayerNorm2d", "F"}
        eps = "" if op["eps"] == 1e-5 else f", eps={literal(op['eps'])}"
        return f"LayerNorm2d({cin}{eps})"

    def module_ChannelsLast(self, op: Op, cin: str) -> str:
        self.used.add("Permute")
        return f"Permute({list(op.kind.dims)})"

    module_ChannelsFirst = module_ChannelsLast

    def module_LayerScale(self, op: Op, cin: str) -> str:
        """A parameter of its block (ConvNeXt's ``layer_scale``), not a module."""
        self.used.add("torch")
        return f"nn.Parameter(torch.full(({cin}, 1, 1), {literal(op['init'])}))"

    def call_LayerScale(self, op: Op, module: str, source: str) -> str:
        return f"{module} * {source}"

    def module_StochasticDepth(self, op: Op, cin: str) -> str:
        self.used |= {"StochasticDepth", "torch"}
        return f"StochasticDepth({literal(op['p'])})"

    def module_Shuffle(self, op: Op, cin: str) -> str:
        return f"nn.ChannelShuffle({literal(op['groups'])})"

    def module_Flatten(self, op: Op, cin: str) -> str:
        return "nn.Flatten()"

    def module_Dropout(self, op: Op, cin: str) -> str:
        return f"nn.Dropout(p={literal(op['p'])})"

    def module_Linear(self, op: Op, cin: str) -> str:
        bias = "" if op["bias"] else ", bias=False"
        return f"nn.Linear({cin}, {literal(op['out'])}{bias})"

    def apply_Linear(self, op: Op, expr: str) -> str:
        if op["act"] == "relu":
            self.used.add("F")
            return f"F.relu({expr}, inplace=True)"
        return self.activate(op["act"], expr)

    # how each merge kind is spelt ----------------------------------------------------------------
    def merge_Concat(self, fork: Fork, outputs: list[str]) -> str:
        self.used.add("torch")
        return f"torch.cat([{', '.join(outputs)}], 1)"

    def merge_Mul(self, fork: Fork, outputs: list[str]) -> str:
        """``gate * x``: the body's output (N x C x 1 x 1) scales its input, as torchvision's
        SqueezeExcitation returns ``scale * input``."""
        shortcut, body = _split(fork, outputs)
        return f"{body} * {shortcut}"

    def merge_Add(self, fork: Fork, outputs: list[str]) -> str:
        """``out * scale + x``, then ReLU: the order timm's Inception-ResNet blocks compute in."""
        shortcut, body = _split(fork, outputs)
        scale = fork.merge["scale"]
        if "scale" in fork.stored:
            body = f"{body} * self.{fork.stored['scale']}"
        elif scale != 1:
            body = f"{body} * {literal(scale)}"
        if fork.merge["relu"] and "relu" not in self.merge_flags(fork):
            self.used.add("F")
            return f"F.relu({body} + {shortcut}, inplace=True)"
        return f"{body} + {shortcut}"


def _position_name(node: Node) -> str:
    """A position's key in its nn.Sequential: ``0``, ``1``, ... or a named row's name."""
    return node.branches[0].container if isinstance(node, Fork) else node.attr


def docstring(text: str) -> tuple[str, ...]:
    """A docstring's lines: the text in triple quotes, the closing ones on a line of their own
    unless the text is one line."""
    text = text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    text = "".join(c if c.isprintable() or c == "\n" else c.encode("unicode_escape").decode() for c in text)
    lines = text.split("\n")
    if len(lines) == 1 and not text.endswith('"'):
        return (f'"""{text}"""',)
    return (f'"""{lines[0]}', *lines[1:], '"""')


def _fill(text: str) -> str:
    """Generated prose wrapped to the file's line length (the docstring is indented 4)."""
    return textwrap.fill(text, width=96, break_long_words=False, break_on_hyphens=False)


def _paper(spec) -> str | None:
    """The paper a spec's opening comment cites: ``"Title" (Authors, Year)``."""
    found = PAPER.search(" ".join(header_comment(spec.source).split()))
    return found.group(0) if found else None


def _merge_part(fork: Fork) -> str:
    return {"add": "residual", "mul": "gate"}.get(fork.merge.kind.name, fork.merge.kind.name)


def _flag(value) -> str:
    """A flag argument's value as Python: True, False, or the caller's own flag argument."""
    return str(value) if isinstance(value, Sym) else repr(bool(value))


def _free_local(base: str, family: Family | None) -> str:
    """A local variable of ``__init__`` that no constructor argument is called."""
    taken = {"in_channels", "num_classes"} | {p for p, _ in family.params} if family else set()
    name, i = base, 2
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    return name


def _split(fork: Fork, outputs: list[str]) -> tuple[str, str]:
    """(the shortcut's output, the body's) of a residual or a gate."""
    i = fork.merge["shortcut"]
    return outputs[i], outputs[1 - i]


def _calls_make_divisible(net: Network) -> bool:
    """Whether a class's expressions call make_divisible (the file then defines it)."""
    values = (v for cls in net.blocks for node in walk(cls.body) for v in _values(node, net.channels))
    return any("make_divisible" in str(v) for v in values if isinstance(v, (Atom, Expr)))


def _values(node: Node, channels: Mapping[Node, Channels]):
    if isinstance(node, Layer):
        yield from node.op.args.values()
        yield from (v for value in node.op.args.values() if isinstance(value, tuple) for v in value)
    elif isinstance(node, Call):
        yield from node.args.values()
    if node in channels:
        yield channels[node].input


def _identity(node: Node) -> bool:
    return isinstance(node, Layer) and node.op.kind.identity


def _shape_comment(shape) -> str:
    return f"# N x {shape.channels}" + ("" if shape.flat else f" x {shape.height} x {shape.width}")


def _is_conv(op: Op) -> bool:
    return isinstance(op.kind, Conv)


def _common_eps(net: Network) -> float:
    """The BatchNorm eps most convolutions use becomes the helper classes' default."""
    eps = Counter(layer.op["eps"] for layer in net.layers() if _is_conv(layer.op) and layer.op["bn"])
    return eps.most_common(1)[0][0] if eps else 1e-5


class OptimizedWriter(Writer):
    """The inference build: the same classes, attributes and state_dict keys as the plain build (so
    ``load_state_dict(plain.state_dict())`` works), but each class also keeps weights derived from
    those it loads, recomputed by ``prepare()`` whenever a state_dict is loaded: BatchNorm folded into
    its convolution (``FoldedConv2d``), the 1x1 convolutions a group's branches start with
    concatenated into one, all in channels_last. What to derive is decided by the passes of
    :mod:`incdsl.passes.optimize`; this class only spells their plan."""

    def __init__(self, net: Network, plan):
        super().__init__(net)
        self.plan = plan
        self.fused_heads = {b: g for groups in plan.fused.values() for g in groups for b in g.branches}
        self.prepare: list[str] = []  # the current class's prepare() lines
        self.adds: dict[Layer, str] = {}  # a residual's last conv -> the shortcut's variable it adds
        self.residual_of = {conv: fork for fork, conv in plan.residuals.items()}  # the residual it ends

    def block_class(self, family: Family) -> dict:
        self.prepare = []
        view = super().block_class(family)
        if self.prepare:
            self.used.add("prepared")
            view["init"] = (*view["init"], "prepared(self)")
            view["methods"] = _prepare_method(self.prepare)
        return view

    def model_class(self, model: ModelClass) -> dict:
        view = super().model_class(model)
        if self.plan.channels_last:
            view["forward"] = ("x = x.contiguous(memory_format=torch.channels_last)", *view["forward"])
            view["init"] = (*view["init"], "self.to(memory_format=torch.channels_last)")
        view["init"] = (*view["init"], "self.eval()", "prepared(self)")
        self.used.add("prepared")
        view["aux"] = []  # an inference build computes the logits only
        self.used.add("torch")
        return view

    def aux_head(self, aux) -> Code:
        """Declared, so that the plain build's state_dict loads; never run."""
        return Code(init=(f"self.{aux.name} = {self.module(aux.node)} if aux_logits else None",))

    def returns(self, model: ModelClass) -> Code:
        return Code(forward=("return x",))

    def module(self, node: Layer | Call) -> str:
        if isinstance(node, Layer) and node in self.plan.folded:
            return self.folded_conv(node)
        if isinstance(node, Layer) and node in self.plan.folds_next:
            self.used |= {"ConvFoldingBN", "conv2d", "F", "torch"}
            conv = self.module_Conv(node.op, str(self.net.channels[node].input), bare="ConvFoldingBN")
            act = self.plan.folds_act.get(node) or self.residual_act(node)
            return f'{conv[:-1]}, act="{act}")' if act else conv
        if isinstance(node, Layer) and node in self.plan.folded_acts:
            self.used.add("FoldedActivation")
            return f'FoldedActivation("{node.op.kind.name}")'
        if isinstance(node, Layer) and node in self.plan.max_pools:
            self.used |= {"SeparableMaxPool2d", "torch"}
            return self._pool("MaxPool2d", node.op).replace("nn.MaxPool2d", "SeparableMaxPool2d")
        if isinstance(node, Layer) and node in self.plan.folded_norms:
            self.used.add("FoldedBatchNorm2d")
            return self.module_BatchNorm(node.op, str(self.net.channels[node].input), cls="FoldedBatchNorm2d")
        return super().module(node)

    def folded_conv(self, layer: Layer) -> str:
        """``FoldedConv2d``: a convolution's, its BatchNorm's and its ReLU's state, run as one conv."""
        op = layer.op
        self.used |= {"FoldedConv2d", "conv2d", "prepared", "F", "torch"}  # derives its weights: prepared()
        kw = conv_arguments(op)
        if op["bias"]:
            kw.append("bias=True")
        if not op["bn"]:
            kw.append("bn=False")
        elif op["eps"] != self.bn_eps:
            kw.append(f"eps={literal(op['eps'])}")
        if op["act"] != "relu" and self.residual_act(layer) != "relu":
            kw.append("relu=False")
        return f"FoldedConv2d({self.net.channels[layer].input}, {literal(op['out'])}, {', '.join(kw)})"

    def residual_act(self, conv: Layer) -> str | None:
        """The ReLU of the residual whose add ``conv`` applies (None: no such residual, or no ReLU)."""
        fork = self.residual_of.get(conv)
        return "relu" if fork is not None and self.adds_shortcut(fork) and fork.merge["relu"] else None

    def adds_shortcut(self, fork: Fork) -> bool:
        """Whether the body's last conv adds the shortcut (fold_residuals' plan), in this class: not
        where a ``when=`` keeps the merge or the conv out in some calls, or a flag argument its ReLU."""
        conv = self.plan.residuals.get(fork)
        return (
            conv is not None
            and self.condition(fork) is None
            and self.condition(conv) is None
            and not self.merge_flags(fork)
        )

    def call(self, node: Layer | Call, module: str, source: str) -> str:
        if node in self.adds:
            return f"{module}({source}, add={self.adds[node]})"
        return super().call(node, module, source)

    def visit_Fork(self, fork: Fork, src: str, dst: str) -> tuple[Code, str]:
        if self.adds_shortcut(fork):
            return self.residual(fork, src, dst)
        groups = self.plan.fused.get(fork)
        if not groups:
            return super().visit_Fork(fork, src, dst)
        stored = tuple(f"self.{attr} = {literal(fork.merge[key])}" for key, attr in fork.stored.items())
        pieces = [Code(init=stored), *(self.fused_group(group, src) for group in groups)]
        outputs = []
        for branch in fork.branches:
            code, out = (
                self.rest(branch) if branch in self.fused_heads else self.visit(branch, src, branch.var)
            )
            pieces.append(code)
            outputs.append(out)
        return join(pieces) + self.merged(fork, outputs, dst), dst

    def residual(self, fork: Fork, src: str, dst: str) -> tuple[Code, str]:
        """The shortcut first, then the body, whose last convolution adds it (and applies the ReLU)."""
        i = fork.merge["shortcut"]
        shortcut, body = fork.branches[i], fork.branches[1 - i]
        first, other = self.visit(shortcut, src, shortcut.var)
        first += self.branch_shape(shortcut)
        self.adds[self.plan.residuals[fork]] = other
        then, out = self.visit(body, src, body.var)
        note = f"  # {other} added by the convolution before"
        note += ", the ReLU applied" if fork.merge["relu"] else ""
        merged = (f"{dst} = {out}{note}",) if out != dst else ()
        # the modules declared in the branches' order (the plain build's), the shortcut computed first
        inits = (first.init + then.init) if i == 0 else (then.init + first.init)
        return Code(inits, first.forward + then.forward + merged), dst

    def fused_group(self, group, src: str) -> Code:
        """One 1x1 convolution for the group's heads, its output split into their branches' variables."""
        name, tmp = group.name, group.var
        sizes = ", ".join(literal(h.op["out"]) for h in group.heads)
        heads = [self.head_module(b) for b in group.branches]
        layout = ".contiguous(memory_format=torch.channels_last)" if self.plan.channels_last else ""
        self.prepare += [
            f"self.{name}_weight = torch.cat([{', '.join(f'{h}.weight' for h in heads)}]){layout}",
            f"self.{name}_bias = torch.cat([{', '.join(f'{h}.bias' for h in heads)}])",
        ]
        act = ', act="relu"' if group.heads[0].op["act"] == "relu" else ""
        conv = f"conv2d({src}, self.{name}_weight, self.{name}_bias{act})"
        self.used |= {"conv2d", "F", "torch"}
        names = ", ".join(b.var for b in group.branches)
        return Code(
            init=(
                f"self.{name}_sizes = [{sizes}]  # {', '.join(h[5:] for h in heads)} as one",
                f'self.register_buffer("{name}_weight", torch.empty(0), persistent=False)',
                f'self.register_buffer("{name}_bias", torch.empty(0), persistent=False)',
            ),
            forward=(f"{tmp} = {conv}", f"{names} = {tmp}.split(self.{name}_sizes, 1)"),
        )

    @staticmethod
    def head_module(branch: Branch) -> str:
        head = branch.body.items[0]
        if branch.container is None:
            return f"self.{head.attr}"
        return f"self.{branch.container}" if is_lone(branch) else f"self.{branch.container}[0]"

    def rest(self, branch: Branch) -> tuple[Code, str]:
        """A branch whose head runs in a fused group: the head is declared (its state), the rest
        applied to the branch's slice of the group's output."""
        var, head = branch.var, branch.body.items[0]
        if branch.container is None:
            code, out = self.visit(Seq(branch.body.span, branch.body.items[1:]), var, var)
            return Code((f"self.{head.attr} = {self.module(head)}",)) + code, out
        if is_lone(branch):
            return Code((f"self.{branch.container} = {self.module(head)}",)), var
        forward = []
        for i, node in enumerate(branch.body.items[1:], start=1):
            if not _identity(node):
                forward += self.applied(node, f"self.{branch.container}[{i}]", var, var)
        return Code((f"self.{branch.container} = {self.container(branch)}",), tuple(forward)), var

    def merge_Add(self, fork: Fork, outputs: list[str]) -> str:
        """``torch.add(x, out, alpha=scale)``: the scale and the add in one operation."""
        shortcut, body = _split(fork, outputs)
        scale = fork.merge["scale"]
        alpha = f"self.{fork.stored['scale']}" if "scale" in fork.stored else literal(scale)
        expr = (
            f"torch.add({shortcut}, {body}, alpha={alpha})"
            if "scale" in fork.stored or scale != 1
            else f"{body} + {shortcut}"
        )
        self.used.add("torch")
        if fork.merge["relu"] and "relu" not in self.merge_flags(fork):
            self.used.add("F")
            return f"F.relu({expr}, inplace=True)"
        return expr


def _prepare_method(lines: list[str]) -> tuple[str, ...]:
    return (
        "@torch.no_grad()",
        "def prepare(self) -> None:",
        '    """The weights derived from those loaded: fused 1x1 convolutions."""',
        *(f"    {line}" for line in lines),
    )
