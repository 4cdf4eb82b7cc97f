"""Which block classes of the IR one Python class writes, as torchvision and timm write them.

The IR builds one :class:`~incdsl.ir.tree.BlockClass` per set of a template's ``when=`` decisions and flag
values (``Bottleneck`` and ``BottleneckNoDownsample``; ``Block8`` with ``relu=1`` and with
``relu=0``): each has its own body, so every pass sees plain structure. A *family* writes those
variants as ONE class: the body of the variant that keeps every part, where each part a ``when=``
leaves out somewhere is built under its condition (``self.downsample = ... if s != 1 ... else
None``, ``if t != 1: layers.append(...)``) and a flag is a constructor argument (``relu: bool``).

A family is formed only where that one class builds, for every call of every variant, exactly what
the variant builds: the same layers with the same arguments and channel counts, in the same order
(checked here, call by call, with the calls' own numbers). Where it would not (a part that changes
the channels of what follows it, a ``when=`` somewhere the writer cannot test it), the variants stay
classes of their own. Variants that fix an activation (``CnaRelu``) or a 0 that drops a branch stay
classes of their own too: they change which modules are built, not whether.

>>> import incdsl
>>> net = incdsl.load("resnet50")
>>> [(f.base.name, [m.name for m in f.members]) for f in families(net)]
[('Bottleneck', ['Bottleneck', 'BottleneckNoDownsample'])]
"""

from __future__ import annotations

from dataclasses import dataclass, field

from incdsl.errors import IncdslError
from incdsl.ir.symbolic import ArithmeticError_, Atom, Expr, Sym, substitute, symbolic
from incdsl.ir.tree import (
    IN_CHANNELS,
    BlockClass,
    Branch,
    Call,
    Fork,
    Layer,
    Network,
    Node,
    Seq,
    _condition,
    _items,
    _place,
    _when,
    walk,
)
from incdsl.kinds.layers import KINDS, MERGES
from incdsl.passes.annotate import is_lone
from incdsl.syntax import ast

COMPARISONS = {"==", "!=", "<", "<=", ">", ">="}


@dataclass(eq=False)
class Family:
    """The variants of one template written as one class: ``base`` (the variant that keeps every
    part) gives the body; ``conditions`` maps a part of that body (by id) to its ``when=``
    condition, as Python source over the constructor's arguments; ``flags`` are the flag
    parameters (0 or 1) that are constructor arguments again; ``merge_flags`` maps a merge (by
    id) to its options given by a flag (``relu`` -> the parameter ``relu``)."""

    base: BlockClass
    members: tuple[BlockClass, ...]
    flags: tuple[str, ...] = ()
    conditions: dict[int, str] = field(default_factory=dict)
    booleans: set[int] = field(default_factory=set)  # the conditions that are bools as written
    places: dict[int, tuple[int, int]] = field(default_factory=dict)  # a conditional part's when=
    merge_flags: dict[int, dict[str, str]] = field(default_factory=dict)

    @property
    def params(self) -> tuple[tuple[str, str], ...]:
        """The constructor's arguments after ``in_channels``: the template's order, then the flags
        (bools, passed by keyword)."""
        return (*self.base.params, *((p, "bool") for p in self.flags))


def families(net: Network) -> list[Family]:
    """One family per class of the generated file, callees before callers."""
    by_block = family_of(net)
    order: list[Family] = []

    def visit(family: Family) -> None:
        if family in order:
            return
        order.append(family)  # a placeholder against cycles (templates cannot recurse)
        for member in family.members:
            for node in walk(member.body):
                if isinstance(node, Call):
                    visit(by_block[id(node.cls)])
        order.remove(family)
        order.append(family)

    for cls in net.blocks:
        visit(by_block[id(cls)])
    return order


def family_of(net: Network) -> dict[int, Family]:
    """Each block class's family, by the block's id."""
    groups: dict[tuple, list[BlockClass]] = {}
    for cls in net.blocks:
        lifted = _liftable(cls.template)
        key = (cls.template.name, frozenset((p, v) for p, v in cls.fixed.items() if p not in lifted))
        groups.setdefault(key, []).append(cls)
    table: dict[int, Family] = {}
    for members in groups.values():
        for family in _group(members, net):
            table.update({id(m): family for m in family.members})
    return table


def _group(members: list[BlockClass], net: Network) -> list[Family]:
    """The family of a group of variants, or one family per variant where one class cannot write them."""
    alone = [Family(m, (m,)) for m in members]
    if len(members) == 1:
        return alone
    base = next((m for m in members if not m.dropped), None)
    if base is None:
        return alone
    lifted = _liftable(base.template)
    flags = tuple(p for p in base.template.params if p in lifted and p not in dict(base.params))
    family = Family(base, tuple(members), flags)
    try:
        _conditions(family)
        if not all(_same(family, member, call, net) for member in members for call in member.calls):
            return alone
    except (_Unwritable, IncdslError, ArithmeticError_):
        return alone
    return [family]


class _Unwritable(Exception):
    """A ``when=`` the writer cannot test where it stands."""

    def __repr__(self) -> str:
        return "_Unwritable()"


def _position_name(node: Node) -> str:
    """A position's key in its nn.Sequential: ``0``, ``1``, ... or a named row's name."""
    return node.branches[0].container if isinstance(node, Fork) else node.attr


def _liftable(template: ast.Template) -> set[str]:
    """The parameters read only by ``when=`` conditions and as merge flags (``relu=relu``): a call's
    value for them decides parts, not sizes, so one class can take them as arguments."""
    used_elsewhere: set[str] = set()
    deciding: set[str] = set()
    for item in _items(template.body):
        for arg in getattr(item, "args", ()):
            refs = ast.refs(arg.value)
            if arg.key == "when" or isinstance(item, ast.Residual) and arg.key in MERGES[item.merge].flags():
                deciding |= refs
            else:
                used_elsewhere |= refs
    return {p for p in template.params if p in deciding and p not in used_elsewhere}


def _env(family: Family) -> dict:
    """The base's parameters as names (the lifted flags too), its other fixed values as numbers."""
    env = {p: Sym(p) for p in family.base.template.params}
    env.update({p: v for p, v in family.base.fixed.items() if p not in family.flags})
    env.setdefault("classes", Sym("num_classes"))
    env[IN_CHANNELS] = IN_CHANNELS
    return env


def _conditions(family: Family) -> None:
    """Fill the family's conditions and merge flags from the template's ``when=`` and flags."""
    base, env = family.base, _env(family)
    by_span: dict[tuple, list[Node]] = {}
    for node in walk(base.body):
        by_span.setdefault((node.span.line, node.span.column, type(node).__name__), []).append(node)
    for item in _items(base.template.body):
        when = _when(item)
        if isinstance(item, ast.Residual):
            flags = {
                a.key: a.value.name
                for a in item.args
                if isinstance(a.value, ast.Ref) and a.value.name in family.flags
            }
            for fork in by_span.get((item.span.line, item.span.column, "Fork"), []):
                family.merge_flags[id(fork)] = flags
        if when is None:
            continue
        decided = {m.decisions.get(_place(item), True) for m in family.members}
        if decided == {True}:
            continue  # every variant keeps it
        value = _condition(when, env)
        if not symbolic(value):
            raise _Unwritable(item)
        nodes = by_span.get((item.span.line, item.span.column, _node_kind(item)), [])
        if not nodes:
            raise _Unwritable(item)
        for node in nodes:
            family.conditions[id(node)] = str(value)
            if _boolean(value):
                family.booleans.add(id(node))
            family.places[id(node)] = _place(item)
    _check_places(family)


def _node_kind(item) -> str:
    """The IR node a row, residual or shortcut becomes (its class's name)."""
    if isinstance(item, ast.Residual):
        return "Fork"
    if isinstance(item, ast.Shortcut):
        return "Branch"
    return "Layer" if item.kind in KINDS else "Call"


def _boolean(value) -> bool:
    """Whether a condition's value is a bool (a comparison, or comparisons joined by and/or), not a
    number: a decision kept as an attribute must be one (TorchScript tests bools only)."""
    if not isinstance(value, Atom):
        return False
    if value.fn in COMPARISONS:
        return True
    return value.fn in ("and", "or") and all(_boolean(a) for a in value.args)


def _check_places(family: Family) -> None:
    """Each conditional part stands where the writer can test it: a module at an attribute of the
    class, a position of a named branch's nn.Sequential, a residual or gate, a named shortcut."""
    allowed: set[int] = set()
    parallel: set[int] = set()  # the branches of a concatenation (walked before their Fork's children)
    containers = {id(b.body) for b in walk(family.base.body) if isinstance(b, Branch) and b.container}
    if family.base.template.sequential:
        containers.add(id(family.base.body))
    for node in walk(family.base.body):
        if isinstance(node, Seq) and id(node) not in containers:  # its layers are attributes
            allowed |= {id(i) for i in node.items if isinstance(i, (Layer, Call)) and i.attr}
        if isinstance(node, Fork) and node.merge.kind.name == "concat" and len(node.branches) > 1:
            parallel |= {id(b) for b in node.branches}  # the inference build may index their positions
        if isinstance(node, Branch) and node.container is not None and not is_lone(node):
            if id(node) in parallel:
                continue
            positions = node.body.items
            if all(_position_name(i).isdigit() for i in positions):
                allowed |= {id(i) for i in positions if isinstance(i, (Layer, Call))}
        if isinstance(node, Fork) and node.merge.kind.name in ("add", "mul"):
            allowed.add(id(node))
            allowed |= {id(b) for b in node.branches if b.container is not None}
    if set(family.conditions) - allowed:
        raise _Unwritable(family)


# is the family's class, called as this call is, the variant the call built? -----------------------


def _same(family: Family, member: BlockClass, call: Call, net: Network) -> bool:
    """Whether the base's body, with the parts ``member`` leaves out removed, builds for ``call``
    the layers ``member``'s body builds, with the same arguments and channels."""
    values = {**{str(k): v for k, v in call.args.items()}, IN_CHANNELS: net.facts[call].input.channels}
    values["num_classes"] = net.classes
    kept = _Signature(net, family, values, member)
    own = _Signature(net, None, values, member)
    kept.sign(family.base.body)
    own.sign(member.body)
    return kept.out == own.out


class _Signature:
    """What a body builds for one call, as comparable tuples: each layer's kind, arguments and
    channels, each call's template and arguments, each merge's options, each named branch."""

    def __init__(self, net: Network, family: Family | None, values: dict, member: BlockClass):
        self.net, self.family, self.values, self.member = net, family, values, member
        self.out: list = []

    def sign(self, node: Node) -> None:
        _sign(self, node, self.values, self.member, self.out)


def _sign(sig: _Signature, node: Node, values: dict, member: BlockClass, out: list) -> None:
    family, channels = sig.family, sig.net.channels
    if family is not None and id(node) in family.conditions and not _kept(family, node, member):
        if isinstance(node, Fork):  # a residual left out: its body alone
            body = next(b for i, b in enumerate(node.branches) if i != node.merge["shortcut"])
            _sign(sig, body.body, values, member, out)
        return
    if isinstance(node, Layer):
        args = tuple(sorted((k, _value(v, values)) for k, v in node.op.args.items()))
        ch = channels[node]
        out.append(("layer", node.op.kind.name, args, _value(ch.input, values), _value(ch.output, values)))
        if not node.attr.isdigit():
            out.append(("attr", node.attr))
    elif isinstance(node, Call):
        args = tuple(_value(node.args[p], values) for p in node.cls.template.params)
        out.append(("call", node.cls.template.name, args, _value(channels[node].input, values)))
        if not node.attr.isdigit():  # positions renumber where a part is left out
            out.append(("attr", node.attr))
    elif isinstance(node, Fork):
        options = dict(node.merge.args)
        for key, param in (family.merge_flags.get(id(node), {}) if family else {}).items():
            options[key] = bool(values[param])
        options.pop("shortcut", None)
        args = tuple(sorted((k, _value(v, values)) for k, v in options.items()))
        out.append(("fork", node.merge.kind.name, args, len(node.branches), node.split))
        for branch in sorted(node.branches, key=lambda b: not b.body.items):
            _sign(sig, branch, values, member, out)
    elif isinstance(node, Branch):
        if not node.body.items:
            return  # an identity shortcut
        out.append(("branch", "#" if (node.container or "").isdigit() else node.container))
        _sign(sig, node.body, values, member, out)
    elif isinstance(node, Seq):
        for item in node.items:
            _sign(sig, item, values, member, out)


def _kept(family: Family, node: Node, member: BlockClass) -> bool:
    return member.decisions.get(family.places[id(node)], True)


def _value(value, values: dict):
    if isinstance(value, tuple):
        return tuple(_value(v, values) for v in value)
    if isinstance(value, (Sym, Atom, Expr)):
        return substitute(value, values)
    return value
