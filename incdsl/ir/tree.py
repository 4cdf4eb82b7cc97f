"""The IR: a tree of typed nodes that keeps what the spec said, built from the AST once.

::

    Network
      stages   Stage(attr, node)              one per top-level row (after Nx repetition)
      auxes    AuxHead(name, after, node)     auxiliary classifiers, each fed by a stage's output
      blocks   BlockClass(name, body)         one per template the network uses: a class of model.py
      model    ModelClass(body)               the network's own class

    node  :=  Layer(op)                       a layer; op.kind is its LayerKind, op.args its arguments
           |  Seq(items)                      one after another
           |  Fork(branches, merge)           parallel Branch(body)es, combined by a typed Merge
           |  Call(cls, args, body)           a template call: which class, with which arguments

Nodes are frozen and compared by identity; each has ``children()``, and :class:`Visitor` and
:class:`Transformer` walk them (``visit_Layer``, ``visit_Fork``...). Every node of the network is
*concrete* (numbers everywhere); the passes (:mod:`incdsl.passes.annotate`) compute side tables keyed by node,
which the annotated Network carries: ``net.facts[node]`` (:class:`Facts`: input and output shape,
params, MACs). Each :class:`BlockClass` (and the :class:`ModelClass`) also has a *symbolic* body: the
same tree built once with the template's parameters as names (:class:`~incdsl.ir.symbolic.Sym`), from
which a backend writes one class whose constructor takes them; ``net.twins[layer]`` gives a body
layer's concrete twins and ``net.channels[node]`` its channels as expressions. Both bodies come from
one naming plan (:mod:`incdsl.ir.naming`), so they line up node for node.

Names: ``attr`` is a layer's attribute in its module, ``local`` its path in its class, ``key`` its
path in the network, which prefixes its state_dict keys (``inception3a.branch2.0``). Every name the
generated file defines is allocated here, through :mod:`incdsl.ir.symbols`, so a spec that builds can
never produce a file with a clash.

A dataflow graph (networkx; for drawing and for order) is derived from the tree by
:meth:`Network.dataflow`, never the other way round. Walking the IR::

    >>> import incdsl
    >>> net = incdsl.load("googlenet")
    >>> [(s.attr, net.facts[s.node].output.channels) for s in net.stages][7:9]
    [('inception3a', 256), ('inception3b', 480)]
    >>> call = net.stages[7].node
    >>> call.cls.name, dict(call.args)["n1x1"], [b.container for b in call.body.items[0].branches]
    ('Inception', 64, ['branch1', 'branch2', 'branch3', 'branch4'])
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from types import MappingProxyType

from incdsl.errors import IncdslError, Span, SpecArgumentError, SpecNameError, SpecSyntaxError, did_you_mean
from incdsl.ir.naming import BranchPlan, Member, ResidualPlan, plan_block, plan_sequential, stage_name
from incdsl.ir.symbolic import Expr, Num, Sym, Word, names, symbolic
from incdsl.ir.symbols import (
    Scope,
    attributes_scope,
    check_identifier,
    class_name,
    file_scope,
    locals_scope,
    parameters_scope,
)
from incdsl.kinds.layers import (
    ACT,
    KINDS,
    MERGES,
    Dropout,
    Op,
    Shape,
    Tensor,
    bind,
    check_defaults,
    known,
    resolve,
    value_of,
)
from incdsl.syntax import ast

# Templates calling templates, branches within branches: deeper than this is a mistake, not a design.
MAX_DEPTH = 64
# Layers after every repetition and template call (Inception-ResNet-v2 has about 450): repeats of
# templates of repeats multiply, and the IR of a network is built in memory.
MAX_LAYERS = 100_000
NUM_CLASSES, DROPOUT, IN_CHANNELS = Sym("num_classes"), Sym("dropout"), Sym("in_channels")


@dataclass(frozen=True)
class Facts:
    """What the passes know of a concrete node; for a composite node params and MACs are its sums."""

    input: Shape
    output: Shape
    params: int = 0
    macs: int = 0
    state: tuple[Tensor, ...] = ()  # a layer's tensors (see LayerKind.state)


@dataclass(frozen=True)
class Channels:
    """What the passes know of a node of a class body: its channels as expressions of the class's
    arguments, and (for a flattening layer) the feature-map size every instance flattens."""

    input: Expr
    output: Expr
    flat_input: bool = False
    spatial: tuple[int, int] = (1, 1)


@dataclass(frozen=True, eq=False)
class Node:
    """A node of the IR: frozen, compared by identity (a side table keys it), with its children."""

    span: Span

    def children(self) -> tuple[Node, ...]:
        """The nodes directly under this one, in execution order."""
        return ()


@dataclass(frozen=True, eq=False)
class Layer(Node):
    op: Op
    attr: str  # its attribute in its module ('' when it is its named branch itself)
    local: str  # its path in its class
    key: str  # its path in the network: state_dict keys start with it

    def state_key(self, tensor: Tensor) -> str:
        """A tensor's state_dict key: under the layer's key, or the key itself (a layer scale)."""
        return f"{self.key}.{tensor.key}" if tensor.key else self.key


@dataclass(frozen=True, eq=False)
class Seq(Node):
    items: tuple[Node, ...]

    def children(self) -> tuple[Node, ...]:
        return self.items


@dataclass(frozen=True, eq=False)
class Branch(Node):
    body: Seq
    container: str | None  # the attribute holding its layers (a named branch), None when flattened
    key: str = ""  # the container's path in the network (a named branch's)
    var: str = ""  # the forward's local variable for its output (allocated in a class body)
    var_hint: str = field(default="", repr=False)

    def children(self) -> tuple[Node, ...]:
        return (self.body,)


@dataclass(frozen=True, eq=False)
class Fork(Node):
    branches: tuple[Branch, ...]
    merge: Op  # merge.kind is a MergeKind (concat, add); merge.args its options
    key: str  # an id for the merge point (``inception3a.concat@9:5``), not an attribute
    # a class body's: option -> attribute holding it (a residual's ``scale`` given by an argument)
    stored: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    split: bool = False  # each branch takes an equal part of the input's channels (x.chunk)
    inputs: tuple[str, ...] = ()  # a class body's split: the forward's variables for the parts

    def children(self) -> tuple[Node, ...]:
        return self.branches


@dataclass(frozen=True, eq=False)
class Call(Node):
    cls: BlockClass
    args: Mapping[str, Num]
    body: Seq
    attr: str
    local: str
    key: str

    def children(self) -> tuple[Node, ...]:
        return (self.body,)


class Visitor:
    """Walks an IR tree, dispatching on the node's class (pycparser's ``NodeVisitor``):
    ``visit_Layer``, ``visit_Seq``, ``visit_Fork``, ``visit_Branch``, ``visit_Call``; a class without its
    method gets :meth:`generic_visit`, which visits the children and returns None.

    >>> import incdsl
    >>> class Convs(Visitor):
    ...     def __init__(self):
    ...         self.n = 0
    ...     def visit_Layer(self, layer):
    ...         self.n += layer.op.kind.name == "conv"
    >>> v = Convs(); v.visit(incdsl.load("googlenet").stages[7].node); v.n
    6
    """

    def visit(self, node: Node, *args):
        """Dispatch on the node's class; extra arguments (an input tensor, a context) pass through."""
        return getattr(self, "visit_" + type(node).__name__, self.generic_visit)(node, *args)

    def generic_visit(self, node: Node, *args):
        for child in node.children():
            self.visit(child, *args)


class Transformer(Visitor):
    """A visitor that returns a new tree (sqlglot's ``transform``): :meth:`generic_visit` rebuilds a node
    around its transformed children, and keeps the node itself when none changed."""

    def generic_visit(self, node: Node) -> Node:
        if isinstance(node, Seq):
            items = tuple(self.visit(item) for item in node.items)
            return node if items == node.items else replace(node, items=items)
        if isinstance(node, Fork):
            branches = tuple(self.visit(b) for b in node.branches)
            return node if branches == node.branches else replace(node, branches=branches)
        if isinstance(node, (Branch, Call)):
            body = self.visit(node.body)
            return node if body is node.body else replace(node, body=body)
        return node


@dataclass(eq=False)
class BlockClass:
    """A template as one class of the generated file: its symbolic body and its concrete calls."""

    template: ast.Template
    plan: tuple[Member, ...] = field(repr=False)
    fixed: Mapping[str, Num] = field(default_factory=dict)  # parameters this variant's structure fixes
    dropped: tuple[str, ...] = ()  # the parts its when= decisions leave out (it is named for them)
    decisions: dict = field(default_factory=dict, repr=False)  # its when= decisions, by place

    attrs: Scope | None = field(default=None, repr=False)
    body: Seq | None = field(default=None, repr=False)
    locals: Scope | None = field(default=None, repr=False)  # its forward's variables (allocated with name)
    name: str = ""  # the Python class name (allocated once the network is built)
    params: tuple[tuple[str, str], ...] = ()  # (name, 'int' | 'float'), the template's order, but fixed
    uses_classes: bool = False  # takes num_classes too
    calls: list[Call] = field(default_factory=list, repr=False)
    out: Expr | None = None  # output channels, in terms of in_channels and params (a pass sets it)


@dataclass(frozen=True)
class Stage:
    """A top-level row after repetition: one row of the paper's table."""

    attr: str  # its path in the network (``inception3a``, or ``features.3`` in a sequential group)
    node: Layer | Call
    row: ast.Row
    group: int  # the index of the written row (an Nx row gives several stages of one group)
    name: str = ""  # what tables and diagrams call it: its attribute, or its own name in a group
    sequence: str | None = None  # the sequential group it is a position of

    @property
    def label(self) -> str | None:
        """``3a`` for a row written ``3a: inception ...`` (after repetition: 4b, 4c, ...)."""
        if self.row.name is not None and self.row.name.is_label:
            return self.name[len(self.row.kind) :]
        return None

    @property
    def template(self) -> str | None:
        return self.node.cls.template.name if isinstance(self.node, Call) else None

    @property
    def args(self) -> Mapping[str, Num]:
        return self.node.args if isinstance(self.node, Call) else {}


@dataclass(frozen=True)
class AuxHead:
    """An auxiliary classifier: its head runs on the output of stage ``after``."""

    name: str
    after: Stage
    weight: float
    node: Layer | Call
    source: ast.Aux = field(repr=False)
    var: str = ""  # its local variable in the network's forward


@dataclass(eq=False)
class ModelClass:
    """The network's own class: a symbolic twin of the stages and aux heads, in which ``classes``
    is the constructor's ``num_classes`` and the classifier's dropout its ``dropout``."""

    name: str
    outputs: str | None  # the NamedTuple returned in training mode when there are aux heads
    stages: tuple[Stage, ...]
    auxes: tuple[AuxHead, ...]
    dropout: float | None  # the default of the ``dropout`` argument, when there is one
    attrs: Scope | None = field(default=None, repr=False)
    locals: Scope | None = field(default=None, repr=False)  # its forward's variables (the aux heads')


EMPTY: Mapping = MappingProxyType({})


@dataclass(frozen=True, eq=False)
class Network:
    """The IR of one spec; see the module docstring. The side tables are filled by who owns them:
    ``twins`` by :func:`build`, ``facts``, ``channels`` and ``outs`` by
    :func:`incdsl.passes.annotate.run`, which returns a new Network (empty tables mean the passes have
    not run)."""

    name: str
    input: Shape
    classes: int | None
    budget: int | None
    stages: tuple[Stage, ...]
    auxes: tuple[AuxHead, ...]
    blocks: tuple[BlockClass, ...]  # the classes to write, callees before callers
    model: ModelClass
    defaults: Mapping[str, tuple[ast.Arg, ...]] = field(repr=False)
    spec: ast.Spec = field(repr=False)  # the spec built (its header overridden, its rows those built)
    templates: Mapping[str, ast.Template] = field(default_factory=lambda: EMPTY, repr=False)  # by name
    # Side tables. A class body's (or the model's) layer -> the same layer in each concrete call; each
    # concrete node's facts; each class-body node's channels; each class's output channels.
    twins: Mapping[Layer, tuple[Layer, ...]] = field(default_factory=lambda: EMPTY, repr=False)
    facts: Mapping[Node, Facts] = field(default_factory=lambda: EMPTY, repr=False)
    channels: Mapping[Node, Channels] = field(default_factory=lambda: EMPTY, repr=False)
    outs: Mapping[BlockClass, Expr] = field(default_factory=lambda: EMPTY, repr=False)

    @cached_property
    def row_stages(self) -> Mapping[int, tuple[Stage, ...]]:
        """The stage-to-row map: for each written top-level row built (its index in the spec's rows,
        :attr:`Stage.group`), its stages in order: one, or N for an ``Nx`` row.

        >>> import incdsl
        >>> net = incdsl.load("inception_v3")
        >>> [s.attr for s in net.row_stages[11]]  # Mixed_6c: 2x InceptionC
        ['Mixed_6c', 'Mixed_6d']
        """
        rows: dict[int, list[Stage]] = {}
        for stage in self.stages:
            rows.setdefault(stage.group, []).append(stage)
        return MappingProxyType({i: tuple(stages) for i, stages in rows.items()})

    @cached_property
    def graph(self):
        """The dataflow graph (a networkx DiGraph), derived from the tree: see :func:`dataflow`."""
        return dataflow(self)

    def roots(self) -> Iterator[Node]:
        """The concrete trees: each stage's, then each aux head's."""
        yield from (stage.node for stage in self.stages)
        yield from (aux.node for aux in self.auxes)

    def walk(self) -> Iterator[Node]:
        """Every concrete node, in execution order (aux heads after the stages)."""
        for root in self.roots():
            yield from walk(root)

    def layers(self) -> Iterator[Layer]:
        """Every concrete layer, in execution order (aux heads' after the stages')."""
        return (n for n in self.walk() if isinstance(n, Layer))


def walk(node: Node) -> Iterator[Node]:
    """``node`` and everything under it, in execution order (a node before its children)."""
    stack = [node]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(reversed(node.children()))


def layers(node: Node) -> Iterator[Layer]:
    """The layers under ``node``, in execution order."""
    return (n for n in walk(node) if isinstance(n, Layer))


INPUT = "input"


def dataflow(net: Network):
    """The network as a networkx DiGraph: one node per layer (its key) and per merge (its Fork's key),
    plus ``input``; edges carry data. Node attributes: ``node`` (the IR node; None for the input),
    ``stage`` (the stage or aux head it belongs to) and ``aux`` (the aux head's name, or None); an
    edge into a residual's add from its shortcut has ``shortcut=True``. The graph's ``outputs`` maps
    each stage and aux head to the id of the node that gives its output."""
    import networkx as nx  # only drawing needs the graph; stats and check never import networkx

    g = nx.DiGraph(outputs={})
    g.add_node(INPUT, node=None, stage=None, aux=None)
    source = INPUT
    for stage in net.stages:
        source = g.graph["outputs"][stage.attr] = _Flow(g, source, stage.attr, None).visit(stage.node)
    for aux in net.auxes:
        start = g.graph["outputs"][aux.after.attr]
        g.graph["outputs"][aux.name] = _Flow(g, start, aux.name, aux.name).visit(aux.node)
    return g


class _Flow(Visitor):
    """Adds a tree's layers and merges to the graph; each visit returns the id of the node giving the
    visited node's output."""

    def __init__(self, g, source: str, stage: str, aux: str | None):
        self.g, self.source, self.where = g, source, {"stage": stage, "aux": aux}

    def visit_Layer(self, node: Layer) -> str:
        self.g.add_node(node.key, node=node, **self.where)
        self.g.add_edge(self.source, node.key)
        self.source = node.key
        return node.key

    def visit_Fork(self, node: Fork) -> str:
        start, outputs = self.source, []
        for branch in node.branches:
            self.source = start
            outputs.append(self.visit(branch))
        self.g.add_node(node.key, node=node, **self.where)
        for i, output in enumerate(outputs):  # a residual's or a gate's input, or its projection
            self.g.add_edge(output, node.key, shortcut=i == node.merge.args.get("shortcut"))
        self.source = node.key
        return node.key

    def generic_visit(self, node: Node) -> str:  # a sequence, a branch, a call: through its children
        super().generic_visit(node)
        return self.source


# building ------------------------------------------------------------------------------------


def build(
    spec: ast.Spec,
    prelude: tuple[ast.Template, ...] | None = None,
    *,
    rows: int | slice | None = None,
    input: ast.Size | None = None,
    classes: int | None = None,
    budget: int | None = None,
) -> Network:
    """Build a spec's IR from its AST; raise a SpecError with the span of the offending text.

    ``prelude``: the templates a spec may call besides its own (None: the shipped prelude, loaded
    once). ``input``, ``classes``, ``budget``: the header's values replaced (a trainer's classes, an
    input size), without editing the spec. ``rows``: build only some of the top-level rows, without
    the aux heads and the budget: ``rows=n`` the rows before row ``n`` (:func:`prefix`), a slice those
    rows, the first taking the spec's input (or ``input``). Each stage's ``group`` is the index of its
    row in ``spec.rows`` whichever rows are built (see :attr:`Network.row_stages`).

    >>> import incdsl
    >>> spec = incdsl.parse(*incdsl.read("googlenet"))
    >>> net = build(spec, rows=3, classes=10)
    >>> [s.attr for s in net.stages], net.classes, sorted(net.templates)
    (['conv1', 'pool1', 'norm1'], 10, ['aux_classifier', 'inception'])
    """
    spec = with_header(spec, input=input, classes=classes, budget=budget)
    first = 0
    if rows is not None:
        part = rows if isinstance(rows, slice) else slice(0, rows)
        first = range(len(spec.rows))[part].start if spec.rows else 0
        spec = replace(spec, rows=spec.rows[part], auxes=(), budget=None)
    templates = template_table(spec, _prelude() if prelude is None else prelude)
    return _Builder(spec, templates, _defaults(spec.defaults), first).network()


def with_header(spec: ast.Spec, **values) -> ast.Spec:
    """``spec`` with header values replaced (``input``, ``classes``, ``budget``); None keeps one."""
    given = {key: value for key, value in values.items() if value is not None}
    return replace(spec, **given) if any(getattr(spec, k) != v for k, v in given.items()) else spec


def prefix(spec: ast.Spec, rows: int) -> ast.Spec:
    """The spec of the top-level rows before row ``rows``: no aux heads (they may follow a later
    stage) and no budget (a part of the network is not held to the whole's)."""
    return replace(spec, rows=spec.rows[:rows], auxes=(), budget=None)


def _prelude() -> tuple[ast.Template, ...]:
    from incdsl.syntax.parser import (
        prelude,  # the parser imports Lark: only a build of the shipped prelude needs it
    )

    return prelude()


def template_table(spec: ast.Spec, prelude: tuple[ast.Template, ...] = ()) -> dict[str, ast.Template]:
    """The templates a spec's rows may call, by name: the prelude's, shadowed by the spec's own
    (which are checked: names, parameters, no duplicates)."""
    return _templates(prelude, spec.templates)


def _templates(prelude, own) -> dict[str, ast.Template]:
    table = {t.name: t for t in prelude}
    seen: set[str] = set()
    for template in own:
        check_identifier(template.name, template.span, "template name")
        if template.name in seen:
            raise SpecNameError(f"template '{template.name}' is defined twice", template.span)
        if template.name in KINDS:
            raise SpecNameError(
                f"'{template.name}' is a layer kind; name the template otherwise", template.span
            )
        for param in template.params:
            check_identifier(param, template.span, "template parameter")
        if len(set(template.params)) != len(template.params):
            raise SpecNameError(f"template '{template.name}' repeats a parameter name", template.span)
        seen.add(template.name)
        table[template.name] = template  # a spec's own template shadows the prelude's
    return table


def _defaults(lines: tuple[ast.Defaults, ...]) -> dict[str, tuple[ast.Arg, ...]]:
    table: dict[str, tuple[ast.Arg, ...]] = {}
    for line in lines:
        check_defaults(line.kind, line.args, line.span)
        table[line.kind] = table.get(line.kind, ()) + line.args
    return table


@dataclass(frozen=True)
class _Frame:
    """Where a build is: the values names have, where they came from, the enclosing paths."""

    env: Mapping[str, Num]
    origins: Mapping[str, Span]
    key: str
    local: str
    symbolic: bool
    shape: Shape | None = None  # the input of what is built next (a concrete build's), for in_channels
    decisions: Mapping[tuple[int, int], bool] = field(default_factory=dict)  # when=, by the item's place

    def inside(self, attr: str) -> _Frame:
        return replace(self, key=_join(self.key, attr), local=_join(self.local, attr))


class _Builder:
    """Builds the concrete network, a symbolic body per template class and the model's twin."""

    def __init__(self, spec: ast.Spec, templates, defaults, first_row: int = 0):
        self.spec, self.templates, self.defaults = spec, templates, defaults
        self.first_row = first_row  # the index in the whole spec of spec.rows[0] (a build of some rows)
        self.classes: dict[tuple, BlockClass] = {}  # by (template name, fixed), in first-use order
        self.flag_params: dict[str, frozenset[str]] = {}
        self.stack: list[ast.Template] = []  # templates being built, to catch recursion
        self.depth = 0
        self.layers = 0
        self.owners: list[BlockClass | None] = [None]  # the class whose body is being built (None: the model)
        self.decided: dict[tuple, dict] = {}  # (owner, place in it) -> a call's when= decisions
        self.checking = False  # building uncalled templates: when= undecided keeps every part
        self.facts: dict[Node, Facts] = {}  # the shapes of what is built so far (a call's in_channels)

    def network(self) -> Network:
        spec = self.spec
        shape = _input_shape(spec)
        name = spec.network or _stem(spec.path)
        name_span = spec.header_spans.get("network")
        check_identifier(name, name_span, _network_noun(spec))
        attrs = attributes_scope({"aux_logits": "the network's aux_logits switch"})
        members = plan_block(spec.rows, attrs)
        concrete = {} if spec.classes is None else {"classes": spec.classes}
        stages = self._stages(members, _Frame(concrete, {}, "", "", False, shape))
        auxes = tuple(self._aux(aux, stages, concrete, attrs) for aux in spec.auxes)
        model = self._model(name, members, stages, auxes)
        model.attrs = attrs
        self._check_uncalled_templates()
        blocks = _callees_first([c for c in self.classes.values() if c.calls])
        _Names(name, name_span, blocks, model).allocate()
        return Network(
            name, shape, spec.classes, spec.budget, stages, auxes, tuple(blocks), model,
            MappingProxyType(self.defaults), spec, MappingProxyType(self.templates),
            _twins(blocks, model, stages, auxes),
        )  # fmt: skip

    def _stages(self, members: tuple[Member, ...], frame: _Frame) -> tuple[Stage, ...]:
        stages, groups = [], _row_groups(self.spec.rows, self.first_row)
        x = frame.shape
        for member in members:
            if member.row is None:
                raise SpecSyntaxError(
                    "branches belong inside a template", member.group[0].branch.span,
                    "define a template with the branches and call it as a row",
                )  # fmt: skip
            _refuse_when(member.row, "a top-level row")
            node = self._row(member.row, member.attr, replace(frame, shape=x))
            x = self._shape_of(node, x)
            group = groups[member.row.span]
            stages.append(Stage(member.attr, node, member.row, group, stage_name(member), member.sequence))
        return tuple(stages)

    def _aux(self, aux: ast.Aux, stages: tuple[Stage, ...], env, attrs: Scope) -> AuxHead:
        attrs.claim(aux.name.text, f"aux head '{aux.name.text}'", aux.name.span, "aux head name")
        after = _find_stage(aux.after, stages)
        _refuse_when(aux.head, "an aux head")
        frame = _Frame(env, {}, "", "", False, self.facts[after.node].output)
        node = self._row(aux.head, aux.name.text, frame)
        return AuxHead(aux.name.text, after, _aux_weight(aux), node, aux)

    def _model(self, name, members, stages, auxes) -> ModelClass:
        """The network's class: the stages and aux heads again, with ``classes`` as num_classes."""
        env = {} if self.spec.classes is None else {"classes": NUM_CLASSES}
        frame = _Frame(env, {}, "", "", True)
        dropouts = [s for s in stages if isinstance(s.node, Layer) and isinstance(s.node.op.kind, Dropout)]
        twins = []
        for stage in stages:
            node = self._row(stage.row, stage.attr, frame)
            if len(dropouts) == 1 and stage is dropouts[0]:
                args = MappingProxyType({**node.op.args, "p": DROPOUT})  # the constructor's dropout
                node = replace(node, op=replace(node.op, args=args))
            twins.append(replace(stage, node=node))
        twin_stages = tuple(twins)
        by_attr = {s.attr: s for s in twin_stages}
        twin_auxes = tuple(
            replace(a, after=by_attr[a.after.attr], node=self._row(aux.head, a.name, frame))
            for a, aux in zip(auxes, self.spec.auxes)
        )
        outputs = f"{class_name(name)}Outputs" if auxes else None
        dropout = dropouts[0].node.op["p"] if len(dropouts) == 1 else None
        return ModelClass(class_name(name), outputs, twin_stages, twin_auxes, dropout)

    def _shape_of(self, node: Node, x: Shape | None) -> Shape | None:
        """A concrete node's output, computed now (a call's in_channels needs it); None where shapes
        are not tracked (a class body)."""
        if x is None:
            return None
        from incdsl.passes.annotate import shape  # passes imports this module

        return shape(node, x, self.facts)

    # rows, groups, calls --------------------------------------------------------------------
    def _seq(self, members: tuple[Member, ...], frame: _Frame, span: Span) -> Seq:
        """Members one after another, those a ``when=`` leaves out dropped (the positions of an
        nn.Sequential renumbered, as a list torchvision appends to would be)."""
        kept = [m for m in members if self._keeps(_item_of(m), frame)]
        if len(kept) < len(members) and members and all(_positional(m) for m in members):
            kept = [_at_position(m, i) for i, m in enumerate(kept)]
        items, x = [], frame.shape
        for member in kept:
            node = self._member(member, replace(frame, shape=x))
            x = self._shape_of(node, x)
            items.append(node)
        return Seq(span, tuple(items))

    def _keeps(self, item, frame: _Frame) -> bool:
        """Whether a row, residual or shortcut is in force: its ``when=``, decided for the call."""
        when = _when(item)
        if when is None:
            return True
        place = (when.span.line, when.span.column)
        if place not in frame.decisions:
            value = _condition(when, frame.env)
            if not known(value):  # an uncalled template, checked: every part in force
                return True
            frame.decisions[place] = bool(value)
        return frame.decisions[place]

    def _decide(self, template: ast.Template, env: Mapping[str, Num]) -> dict:
        """The ``when=`` of every row and block of a template's body, for one call: they choose the
        call's class (one class per set of decisions, named for what it leaves out)."""
        decisions = {}
        for item in _items(template.body):
            when = _when(item)
            if when is None:
                continue
            value = _condition(when, env)
            if not known(value) and self.checking:
                continue  # an uncalled template, checked: every part in force
            if not known(value):
                raise SpecArgumentError(
                    f"when= must be decided by the call's arguments; here it depends on "
                    f"{', '.join(sorted(names(value)))}, which a class passes on",
                    when.span,
                    "decide it in the calling template (call a template with the part, or one without)",
                )
            decisions[(when.span.line, when.span.column)] = bool(value)
        return decisions

    def _member(self, member: Member, frame: _Frame) -> Node:
        if member.group:
            return self._fork(member.group, frame, member.split)
        if member.residual is not None:
            return self._residual(member.residual, frame)
        return self._row(member.row, member.attr, frame)

    def _row(self, row: ast.Row, attr: str, frame: _Frame) -> Layer | Call | Fork:
        if row.group is not None:  # a sequential group at one position of a top-level one
            return self._fork((replace(plan_sequential(row.group), attr=attr),), frame)
        row = _without_when(row)
        template = self.templates.get(row.kind)
        if template is not None:
            return self._call(template, row, attr, frame)
        if row.kind not in KINDS and row.kind != ACT:
            raise SpecNameError(
                f"unknown layer kind or template '{row.kind}'",
                row.span,
                did_you_mean(row.kind, [*KINDS, *self.templates]),
            )
        self.layers += 1
        if self.layers > MAX_LAYERS:
            raise SpecArgumentError(
                f"the network has more than {MAX_LAYERS:,} layers once its repeats and templates are "
                "expanded",
                row.span,
                "repeats of templates that repeat multiply; write fewer",
            )
        op = resolve(row, frame.env, self.defaults, frame.origins)
        return Layer(row.span, op, attr, _join(frame.local, attr), _join(frame.key, attr))

    def _fork(self, group: tuple[BranchPlan, ...], frame: _Frame, split: bool = False) -> Fork:
        """A parallel group, concatenated; a branch a 0 in a template column empties is dropped (not
        in a split, whose parts are as many as its branches)."""
        first = group[0].branch.span
        kept = [plan for plan in group if split or not _zero_width(plan, frame.env)]
        if not kept:
            raise SpecArgumentError("every branch of this group has 0 channels", first)
        inner = frame
        if split and frame.shape is not None:
            inner = replace(frame, shape=replace(frame.shape, channels=frame.shape.channels // len(kept)))
        with self._deeper(first):
            branches = tuple(self._branch(plan, inner) for plan in kept)
        merge = bind(MERGES["concat"], (), (), frame.env, None, first)
        key = _join(frame.key, f"concat@{first.line}:{first.column}")
        return Fork(first, branches, merge, key, split=split)

    def _residual(self, plan: ResidualPlan, frame: _Frame) -> Node:
        """A merge of the block's input with its body as a Fork: ``act(shortcut(x) + scale * body(x))``
        (a residual), ``x * body(x)`` (a gate). Its branches are in the order written, so modules are
        registered (and state_dict keys listed) as the spec reads: an identity shortcut first, a
        projection where it is written. With ``when=0`` the block is its body alone."""
        residual = plan.residual
        span = residual.span
        args = tuple(a for a in residual.args if a.key != WHEN)
        merge = bind(MERGES[residual.merge], (), args, frame.env, frame.origins, span)
        if not self._keeps(residual, frame):
            return self._seq(plan.body, frame, span)
        shortcut_item = next((i for i in residual.items if isinstance(i, ast.Shortcut)), None)
        projected = plan.shortcut is not None and self._keeps(shortcut_item, frame)
        with self._deeper(span):
            if not projected:
                shortcut = Branch(span, Seq(span, ()), None, var_hint="identity")
            else:
                shortcut = self._branch(plan.shortcut, frame)
            body = Branch(span, self._seq(plan.body, frame, span), None, var_hint="out")
        branches = (body, shortcut) if projected and plan.shortcut_last else (shortcut, body)
        merge = replace(merge, args=MappingProxyType({**merge.args, "shortcut": branches.index(shortcut)}))
        key = _join(frame.key, f"{residual.merge}@{span.line}:{span.column}")
        return Fork(span, branches, merge, key)

    def _branch(self, plan: BranchPlan, frame: _Frame) -> Branch:
        inner = frame if plan.attr is None else frame.inside(plan.attr)
        body = self._seq(plan.members, inner, plan.branch.span)
        key = inner.key if plan.attr is not None else ""
        return Branch(plan.branch.span, body, plan.attr, key, var_hint=plan.var)

    def _call(self, template: ast.Template, row: ast.Row, attr: str, frame: _Frame) -> Call:
        if template in self.stack:
            raise SpecNameError(f"template '{template.name}' calls itself", row.span)
        args, origins = bind_arguments(template, row, frame.env, frame.origins)
        env = dict(args)
        if "classes" in frame.env:
            env.setdefault("classes", frame.env["classes"])
        known_input = frame.shape is not None and not frame.symbolic
        env.setdefault(IN_CHANNELS, frame.shape.channels if known_input else IN_CHANNELS)
        place = (id(self.owners[-1]), _join(frame.local, attr))
        with self._inside(template, row):
            decisions = self._decisions(template, env, place, frame.symbolic)
            fixed = self._fixed(template, args, origins)
            cls = self._shell(template, fixed, decisions)
            inner = _Frame(env, origins, _join(frame.key, attr), "", frame.symbolic, frame.shape, decisions)
            self.owners.append(cls)
            try:  # a concrete body first: the decisions of the calls in it are the class body's
                body = self._seq(cls.plan, inner, template.span)
            finally:
                self.owners.pop()
            self._body(cls, origins)
        call = Call(row.span, cls, MappingProxyType(args), body, attr, _join(frame.local, attr), inner.key)
        if not frame.symbolic:
            cls.calls.append(call)
        return call

    def _fixed(self, template: ast.Template, args: dict, origins: dict) -> dict[str, Num]:
        """The arguments that shape a call's class rather than parametrise it: a 0 (which drops the
        branches that ask for 0 channels) and a value for a flag (``residual relu=act``, 0 or 1)."""
        flags = self._flag_params(template)
        fixed = {}
        for param, value in args.items():
            if param in flags and value not in (0, 1) and not symbolic(value):
                raise SpecArgumentError(
                    f"'{param}' is a flag of template '{template.name}': 0 or 1, not {value}", origins[param]
                )
            if param in flags or isinstance(value, Word) or (value == 0 and not isinstance(value, float)):
                fixed[param] = value
        return fixed

    def _flag_params(self, template: ast.Template) -> frozenset[str]:
        """Parameters used where a flag goes (``relu=act``), also through calls of other templates."""
        if template.name not in self.flag_params:
            self.flag_params[template.name] = frozenset()  # a recursive template is refused later
            used = set()
            for item in _items(template.body):
                if isinstance(item, ast.Shortcut):
                    continue
                kind = MERGES[item.merge] if isinstance(item, ast.Residual) else KINDS.get(item.kind)
                callee = self.templates.get(item.kind) if isinstance(item, ast.Row) else None
                if callee:  # through a chain of calls: bounded as the build is, not by Python's stack
                    with self._deeper(item.span):
                        flags = self._flag_params(callee)
                else:
                    flags = kind.flags() if kind else frozenset()
                named = dict(zip(callee.params, (a for a in item.args if a.key is None))) if callee else {}
                for key, arg in [*named.items(), *((a.key, a) for a in item.args if a.key is not None)]:
                    if key in flags and isinstance(arg.value, ast.Ref) and arg.value.name in template.params:
                        used.add(arg.value.name)
            self.flag_params[template.name] = frozenset(used)
        return self.flag_params[template.name]

    def _decisions(self, template: ast.Template, env, place, symbolic: bool) -> dict:
        """A call's when= decisions: decided by its arguments, or, for a call in a class body (whose
        arguments are names), those its concrete twins made at the same place."""
        if symbolic and place in self.decided:
            return self.decided[place]
        decisions = self._decide(template, env)
        if not symbolic:
            earlier = self.decided.setdefault(place, decisions)
            if earlier != decisions:
                raise SpecArgumentError(
                    f"the calls of one class need different variants of template '{template.name}' here",
                    template.span,
                    "call another template where the parts differ",
                )
        return decisions

    def _shell(self, template: ast.Template, fixed: Mapping[str, Num], decisions: Mapping) -> BlockClass:
        """The template's class (one per set of fixed arguments, see :meth:`_fixed`, and of ``when=``
        decisions), its body not built yet."""
        key = (template.name, frozenset(fixed.items()), frozenset(decisions.items()))
        if key not in self.classes:
            attrs = attributes_scope()
            plan = plan_block(template.body, attrs, positional=template.sequential)
            left_out = [i for i in _items(template.body) if _when(i) and not decisions.get(_place(i), True)]
            dropped = tuple(map(_part_name, left_out))
            self.classes[key] = BlockClass(
                template, plan, MappingProxyType(dict(fixed)), dropped, dict(decisions), attrs=attrs
            )
        return self.classes[key]

    def _class(self, template: ast.Template) -> BlockClass:
        """An uncalled template's class, built to check its body."""
        cls = self._shell(template, {}, {})
        self._body(cls, {})
        return cls

    def _body(self, cls: BlockClass, origins: Mapping) -> None:
        """Build a class's symbolic body, once: its parameters as names (``in_channels`` the
        constructor's); ``origins`` says where the first call wrote the fixed values."""
        if cls.body is not None:
            return
        template, fixed, decisions = cls.template, cls.fixed, cls.decisions
        flags = self._flag_params(template)
        env = {p: fixed.get(p, Sym(p)) for p in template.params}
        unfixed = [p for p in template.params if p in flags and p not in fixed]
        env.update({p: 1 for p in unfixed})  # an uncalled template's flags, to check its body
        env.setdefault("classes", NUM_CLASSES)
        env.setdefault(IN_CHANNELS, IN_CHANNELS)
        where = {p: span for p, span in origins.items() if p in fixed}
        self.owners.append(cls)
        try:
            cls.body = self._seq(
                cls.plan, _Frame(env, where, "", "", True, None, dict(decisions)), template.span
            )
        finally:
            self.owners.pop()
        cls.params = tuple((p, _param_type(cls.body, p)) for p in template.params if p not in fixed)
        cls.uses_classes = _mentions(cls.body, NUM_CLASSES)

    def _check_uncalled_templates(self) -> None:
        """A spec's own templates are checked even when no row calls them yet."""
        for template in self.spec.templates:
            if not any(name == template.name for name, *_ in self.classes):
                self.checking = True
                with self._inside(template, None):
                    self._class(template)

    @contextlib.contextmanager
    def _inside(self, template: ast.Template, row: ast.Row | None):
        """Build inside a template: errors say which call led there, and depth is bounded."""
        self.stack.append(template)
        try:
            with self._deeper(row.span if row else template.span):
                yield
        except IncdslError as exc:
            where = f"called at {row.span}" if row else "which no row calls yet"
            exc.notes.append(f"in template '{template.name}', {where}")
            raise
        finally:
            self.stack.pop()

    @contextlib.contextmanager
    def _deeper(self, span: Span):
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise SpecArgumentError(
                    f"the network nests deeper than {MAX_DEPTH} levels (templates calling templates, "
                    "branches within branches)",
                    span,
                )
            yield
        finally:
            self.depth -= 1


def bind_arguments(
    template: ast.Template, row: ast.Row, env: Mapping[str, Num], origins: Mapping[str, Span] = {}
) -> tuple[dict[str, Num], dict[str, Span]]:
    """A call's arguments, positional then key=value, bound to the template's parameters through
    ``env``; and where each value was written (for errors about it inside the template)."""
    bound: dict[str, Num] = {}
    spans: dict[str, Span] = {}
    positional = [a for a in row.args if a.key is None]
    if len(positional) > len(template.params):
        raise _arity(template, row, len(positional))
    keyword = [(a.key, a) for a in row.args if a.key is not None]
    for param, arg in [*zip(template.params, positional), *keyword]:
        if param not in template.params:
            raise SpecArgumentError(
                f"template '{template.name}' has no parameter '{param}'",
                arg.span,
                did_you_mean(param, template.params),
            )
        if param in bound:
            raise SpecArgumentError(f"'{param}' is given twice", arg.span)
        bound[param], spans[param] = _value(arg, env), _origin(arg, origins)
    if len(bound) != len(template.params):
        raise _arity(template, row, len(bound))
    return bound, spans


def _origin(arg: ast.Arg, origins: Mapping[str, Span]) -> Span:
    if isinstance(arg.value, ast.Ref) and arg.value.name in origins:
        return origins[arg.value.name]
    return arg.span


def _join(scope: str, attr: str) -> str:
    return f"{scope}.{attr}" if scope and attr else scope or attr


def _input_shape(spec: ast.Spec) -> Shape:
    if (
        spec.input is None
        or len(spec.input.dims) != 3
        or spec.input.stride is not None
        or min(spec.input.dims) < 1
    ):
        raise SpecSyntaxError(
            "the network needs an input size, like 'input 224x224x3' (height x width x channels)",
            spec.header_spans.get("input") or Span(spec.path, 1, 1, spec.source),
        )
    h, w, c = spec.input.dims
    return Shape(c, h, w)


def _stem(path: str) -> str:
    """A network name from a file name, when the spec declares none."""
    stem = path.replace("\\", "/").rsplit("/", 1)[-1].split(".", 1)[0]
    return stem if stem.isidentifier() else "network"


def _network_noun(spec: ast.Spec) -> str:
    if spec.network:
        return "network name"
    return f"network name (taken from the file name {spec.path}; declare one with 'network NAME')"


def _row_groups(rows: tuple[ast.Row, ...], first: int) -> dict[Span, int]:
    return {row.span: first + i for i, row in enumerate(rows)}


def _value(arg: ast.Arg, env) -> Num:
    value = value_of(arg.value, env, arg.span)
    if isinstance(value, ast.Size):
        raise SpecArgumentError("template arguments are numbers (or activations), not sizes", arg.span)
    return value


def _zero_width(plan: BranchPlan, env: Mapping[str, Num]) -> bool:
    """Whether a row of the branch (not of a group nested in it) asks for 0 output channels: a 0 in a
    template column drops the branch, as the BN paper's table writes "#1x1: 0"."""
    for member in plan.members:
        row = member.row
        if row is None or row.kind not in KINDS:
            continue
        params = [p.name for p in KINDS[row.kind].positional]
        values = [a for a in row.args if a.key is None]
        if "out" in params and len(values) > params.index("out"):
            arg = values[params.index("out")]
            try:
                value = value_of(arg.value, env, arg.span)
            except IncdslError:
                continue  # reported where the row is built
            if value == 0 and not isinstance(value, float):
                return True
    return False


def _arity(template: ast.Template, row: ast.Row, got: int) -> SpecArgumentError:
    n = len(template.params)
    return SpecArgumentError(
        f"template '{template.name}' takes {n} argument{'s' * (n != 1)}, got {got}",
        row.span,
        f"parameters: {', '.join(template.params) or 'none'}",
    )


def _find_stage(name: ast.Name, stages: tuple[Stage, ...]) -> Stage:
    for stage in stages:
        if name.text in (stage.name, stage.attr, stage.label):
            return stage
    names = [s.name for s in stages] + [s.label for s in stages if s.label]
    raise SpecNameError(f"no stage named '{name.text}'", name.span, did_you_mean(name.text, names))


def _aux_weight(aux: ast.Aux) -> float:
    keys = {a.key: a for a in aux.args}
    if set(keys) - {"weight"} or "weight" not in keys or not isinstance(keys["weight"].value, (int, float)):
        raise SpecArgumentError(
            "an aux head takes one option, its loss weight: aux NAME after STAGE weight=0.3: ROW",
            aux.span,
        )
    return float(keys["weight"].value)


def _param_type(body: Seq, param: str) -> str:
    """'float' for a parameter only ever used where a real number goes (a dropout probability, an
    eps), else 'int' (a channel count, a size)."""
    uses = set()
    for node in walk(body):
        if isinstance(node, (Layer, Fork)):
            op = node.op if isinstance(node, Layer) else node.merge
            uses |= {op.kind.arg_type(k) for k, v in op.args.items() if param in names(v)}
        elif isinstance(node, Call):
            types = dict(node.cls.params)
            uses |= {
                types[k] if v == Sym(param) else "int" for k, v in node.args.items() if param in names(v)
            }
    return "float" if uses == {"float"} else "int"


def _mentions(body: Seq, name: Sym) -> bool:
    for node in walk(body):
        if isinstance(node, Layer) and any(name in names(v) for v in node.op.args.values()):
            return True
        if isinstance(node, Call) and (
            node.cls.uses_classes or any(name in names(v) for v in node.args.values())
        ):
            return True
    return False


def _callees_first(classes: list[BlockClass]) -> list[BlockClass]:
    """Classes in first-use order, each after the classes it calls."""
    done: list[BlockClass] = []

    def visit(cls: BlockClass) -> None:
        if cls in done:
            return
        for node in walk(cls.body):
            if isinstance(node, Call):
                visit(node.cls)
        done.append(cls)

    for cls in classes:
        visit(cls)
    return done


def _twins(blocks, model: ModelClass, stages, auxes) -> Mapping[Layer, tuple[Layer, ...]]:
    """Each layer of a class body (and of the model's twin) with its concrete twins: the same layer
    in every call."""
    pairs = [(cls.body, call.body) for cls in blocks for call in cls.calls]
    pairs += [(twin.node, stage.node) for twin, stage in zip(model.stages, stages)]
    pairs += [(twin.node, aux.node) for twin, aux in zip(model.auxes, auxes)]
    twins: dict[Layer, list[Layer]] = {}
    for symbolic_root, concrete_root in pairs:
        for a, b in zip(walk(symbolic_root), walk(concrete_root), strict=True):
            assert type(a) is type(b), (a, b)
            if isinstance(a, Layer):
                twins.setdefault(a, []).append(b)
    return MappingProxyType({layer: tuple(found) for layer, found in twins.items()})


class _Names:
    """Allocates what the generated file defines once the tree is built: class names, constructor
    arguments, forward locals and the aux heads' output fields."""

    def __init__(self, name: str, span: Span | None, blocks, model: ModelClass):
        self.network, self.span, self.blocks, self.model = name, span, blocks, model
        self.file = file_scope()

    def allocate(self) -> None:
        network = f"network '{self.network}'" + ("" if self.span else " (named after the spec's file)")
        self.file.claim(self.model.name, f"the class of {network}", self.span)
        if self.model.outputs:
            self.file.claim(self.model.outputs, f"the outputs class of {network}", self.span)
        for cls in self.blocks:
            what = f"the class of template '{cls.template.name}'" + _variant(cls)
            cls.name = self.file.claim(class_name(_class_stem(cls, self.blocks)), what, cls.template.span)
        for cls in self.blocks:
            self._parameters(cls)
            cls.locals = locals_scope()
            cls.body = _Locals(cls.locals, cls.attrs).visit(cls.body)
        self._auxes()

    def _parameters(self, cls: BlockClass) -> None:
        scope = parameters_scope(self.file)
        scope.claim("num_classes", "the classes argument") if cls.uses_classes else None
        for param, _ in cls.params:
            scope.claim(param, f"parameter '{param}' of template '{cls.template.name}'", cls.template.span)

    def _auxes(self) -> None:
        fields = Scope("output fields", {"logits": "the main output"})
        local = self.model.locals = locals_scope()
        auxes = []
        for aux in self.model.auxes:
            span = aux.source.name.span
            if aux.name.startswith("_"):
                raise SpecNameError(
                    f"an aux head's name becomes an output field, which cannot start with '_': '{aux.name}'",
                    span,
                )
            fields.claim(aux.name, f"aux head '{aux.name}'", span)
            auxes.append(replace(aux, var=local.fresh(aux.name)))
        self.model.auxes = tuple(auxes)


class _Locals(Transformer):
    """A class body with its forward's variables allocated (a branch's output, a split's parts) and
    the attributes that keep a merge option given by a class argument (a residual's ``scale``)."""

    def __init__(self, scope: Scope, attrs: Scope):
        self.scope, self.attrs = scope, attrs

    def visit_Branch(self, node: Branch) -> Branch:
        var = self.scope.fresh(node.var_hint)  # allocated before the branch's own (reading order)
        return replace(self.generic_visit(node), var=var)

    def visit_Fork(self, node: Fork) -> Fork:
        parts = range(1, len(node.branches) + 1) if node.split else ()
        inputs = tuple(self.scope.fresh(f"x{i}") for i in parts)
        stored = {
            key: self.attrs.fresh(key, f"the stored {key} of a {node.merge.kind.name}")
            for key, value in node.merge.args.items()
            if symbolic(value)
        }
        return replace(self.generic_visit(node), inputs=inputs, stored=MappingProxyType(stored))


def _class_stem(cls: BlockClass, blocks) -> str:
    """A template's name for its class; a variant other than the template's plain one (or its first)
    is named for what it fixes: ``inception_no_n1x1`` (a 0), ``block8_no_relu``, ``block_act_1``."""
    variants = [c for c in blocks if c.template is cls.template]
    plain = next((c for c in variants if not c.fixed and not c.dropped), variants[0])
    if cls is plain and not cls.dropped:
        return cls.template.name
    deciding = set().union(*(ast.refs(w.value) for w in map(_when, _items(cls.template.body)) if w))
    parts = [_fixed_part(p, v) for p, v in cls.fixed.items() if p not in deciding]
    return "_".join([cls.template.name, *parts, *(f"no_{part}" for part in cls.dropped)])


def _fixed_part(param: str, value) -> str:
    """What a fixed argument adds to a class's name: ``no_n1x1`` (a 0), ``relu6`` (an activation),
    ``relu_0`` (a flag)."""
    if isinstance(value, Word):
        return str(value)
    return f"no_{param}" if value == 0 else f"{param}_{value}"


def _variant(cls: BlockClass) -> str:
    said = [f"{p} = {v}" for p, v in cls.fixed.items()] + [f"no {part}" for part in cls.dropped]
    return f" with {', '.join(said)}" if said else ""


WHEN = "when"


def _when(item) -> ast.Arg | None:
    """A row's, residual's or shortcut's ``when=`` argument, if it has one."""
    args = getattr(item, "args", ())
    return next((a for a in args if a.key == WHEN), None)


def _place(item) -> tuple[int, int]:
    when = _when(item)
    return (when.span.line, when.span.column)


def _part_name(item) -> str:
    """What a left-out part is called in its class's name: a row's name or kind, ``residual``, a
    shortcut's name."""
    if isinstance(item, ast.Row):
        return item.name.text if item.name and not item.name.is_label else item.kind
    if isinstance(item, ast.Shortcut):
        return item.name.text if item.name else "shortcut"
    return {"add": "residual", "mul": "gate"}[item.merge]


def _condition(when: ast.Arg, env) -> Num:
    """A ``when=`` value: a number (0 leaves the part out) or a condition (``s==1 and t!=1``)."""
    value = value_of(when.value, env, when.span)
    if isinstance(value, (Word, ast.Size, str)) and not symbolic(value) or isinstance(value, float):
        raise SpecArgumentError(
            f"when= takes a condition or a whole number, not {value}", when.span, "like when=s==1"
        )
    return value


def _without_when(row: ast.Row) -> ast.Row:
    if _when(row) is None:
        return row
    return replace(row, args=tuple(a for a in row.args if a.key != WHEN))


def _refuse_when(row: ast.Row, what: str) -> None:
    when = _when(row)
    if when is not None:
        raise SpecArgumentError(f"when= belongs to the rows of a template, not to {what}", when.span)


def _item_of(member: Member):
    """The item whose when= keeps or drops a member (a residual's decides in _residual: its body stays)."""
    return member.row


def _positional(member: Member) -> bool:
    attr = member.attr if member.row is not None else member.group[0].attr if member.group else None
    return attr is not None and attr.isdigit()


def _at_position(member: Member, i: int) -> Member:
    if member.row is not None:
        return replace(member, attr=str(i))
    return replace(member, group=(replace(member.group[0], attr=str(i)),))


def _items(items) -> Iterator:
    """Every row and residual of a template body, nested ones too (the AST's)."""
    for item in items:
        if isinstance(item, (ast.Row, ast.Residual, ast.Shortcut)):
            yield item
        if isinstance(item, (ast.Branch, ast.Residual, ast.Shortcut, ast.Sequential)):
            yield from _items(item.items)
