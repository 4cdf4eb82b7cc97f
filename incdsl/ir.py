"""AST to IR: a networkx DiGraph with one node per layer, block templates expanded.

Node ids are the layers' attribute paths in the generated module (``inception3a.branch2.0``), so the
graph, the stats and the state_dict keys all name a layer the same way. Each node carries:

``kind``   a layer kind, ``"input"`` or ``"concat"``
``layer``  the resolved :class:`~incdsl.layers.Layer` (None for input and concat)
``stage``  the top-level row (or aux head) it belongs to
``aux``    the aux head's name, or None for the main network
``span``   where in the spec it was written

Passes (:mod:`incdsl.passes`) add ``in_shape``, ``shape``, ``params`` and ``macs``. The graph's own
``calls`` attribute maps each template call's path to the template's name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import networkx as nx

from . import ast
from .errors import Span, SpecArgumentError, SpecNameError, SpecSyntaxError, did_you_mean
from .layers import KINDS, Layer, Num, Shape, check_defaults, resolve
from .naming import BranchPlan, Member, check_identifier, plan_block


@dataclass(frozen=True)
class Stage:
    """A top-level row after repetition: one row of the paper's table."""

    attr: str
    row: ast.Row
    output: str
    template: str | None = None
    args: Mapping[str, Num] = field(default_factory=dict)
    aux: str | None = None

    @property
    def label(self) -> str | None:
        """``3a`` for a row written ``3a: inception ...`` (after repetition: 4b, 4c, ...)."""
        if self.row.name is not None and self.row.name.is_label:
            return self.attr[len(self.row.kind) :]
        return None


@dataclass(frozen=True)
class AuxHead:
    """An auxiliary classifier: its head row runs on the output of stage ``after``."""

    name: str
    after: str
    weight: float
    stage: Stage


@dataclass(frozen=True)
class Network:
    """The IR of one spec; see the module docstring for the graph's attributes."""

    name: str
    input: Shape
    classes: int | None
    budget: int | None
    graph: nx.DiGraph = field(repr=False)
    stages: tuple[Stage, ...]
    auxes: tuple[AuxHead, ...]
    templates: Mapping[str, ast.Template] = field(repr=False)
    defaults: Mapping[str, tuple[ast.Arg, ...]] = field(repr=False)
    spec: ast.Spec = field(repr=False)

    def nodes(self, stage: str | None = None) -> list[str]:
        """Layer nodes in topological order, optionally only those of one stage."""
        return [
            n
            for n in nx.topological_sort(self.graph)
            if self.graph.nodes[n]["kind"] != "input"
            and (stage is None or self.graph.nodes[n]["stage"] == stage)
        ]


def build(spec: ast.Spec, prelude: tuple[ast.Template, ...] = ()) -> Network:
    """Expand a spec into its IR; raise a SpecError with the span of the offending text."""
    templates = _templates(prelude, spec.templates)
    defaults = _defaults(spec.defaults)
    builder = _Builder(templates, defaults, spec)
    return builder.network()


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


class _Builder:
    """Walks the naming plan of each block, adding one node per layer."""

    def __init__(self, templates, defaults, spec: ast.Spec):
        self.templates, self.defaults, self.spec = templates, defaults, spec
        self.graph = nx.DiGraph()
        self.stage: str | None = None
        self.aux: str | None = None
        self.calls: list[str] = []  # templates being expanded, to catch recursion

    def network(self) -> Network:
        spec = self.spec
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
        shape = Shape(c, h, w)
        self.graph.add_node("input", kind="input", layer=None, stage=None, aux=None, span=None)
        env: dict[str, Num] = {} if spec.classes is None else {"classes": spec.classes}
        stages = self._stages(plan_block(spec.rows), env)
        auxes = tuple(self._aux(aux, stages, env) for aux in spec.auxes)
        name = spec.network or _stem(spec.path)
        check_identifier(name, spec.header_spans.get("network"), "network name")
        return Network(
            name, shape, spec.classes, spec.budget, self.graph, stages, auxes,
            MappingProxyType(self.templates), MappingProxyType(self.defaults), spec,
        )  # fmt: skip

    def _stages(self, members: tuple[Member, ...], env) -> tuple[Stage, ...]:
        stages, source = [], "input"
        for member in members:
            if member.row is None:
                raise SpecSyntaxError(
                    "branches belong inside a template", member.group[0].branch.span,
                    "define a template with the branches and call it as a row",
                )  # fmt: skip
            self.stage = member.attr
            source = self._member(member, "", source, env)
            stages.append(self._stage_record(member, source, env))
        return tuple(stages)

    def _stage_record(self, member: Member, output: str, env, aux=None) -> Stage:
        row = member.row
        template = self.templates.get(row.kind)
        args = bind_arguments(template, row, env) if template else {}
        return Stage(member.attr, row, output, template and template.name, MappingProxyType(args), aux)

    def _aux(self, aux: ast.Aux, stages: tuple[Stage, ...], env) -> AuxHead:
        check_identifier(aux.name, what="aux head name")
        after = _find_stage(aux.after, stages)
        weight = _aux_weight(aux)
        self.stage, self.aux = aux.name.text, aux.name.text
        member = Member(aux.name.text, aux.head)
        output = self._member(member, "", after.output, env)
        self.aux = None
        return AuxHead(
            aux.name.text, after.attr, weight, self._stage_record(member, output, env, aux.name.text)
        )

    # expansion ------------------------------------------------------------------------------
    def _members(self, members: tuple[Member, ...], scope: str, source: str, env) -> str:
        for member in members:
            source = self._member(member, scope, source, env)
        return source

    def _member(self, member: Member, scope: str, source: str, env) -> str:
        if member.group:
            return self._group(member.group, scope, source, env)
        path = _join(scope, member.attr)
        template = self.templates.get(member.row.kind)
        if template is not None:
            return self._call(template, member.row, path, source, env)
        if member.row.kind not in KINDS:
            raise SpecNameError(
                f"unknown layer kind or template '{member.row.kind}'",
                member.row.span,
                did_you_mean(member.row.kind, [*KINDS, *self.templates]),
            )
        layer = resolve(member.row, env, self.defaults)
        return self._add(path, layer.kind, layer, layer.span, source)

    def _group(self, group: tuple[BranchPlan, ...], scope: str, source: str, env) -> str:
        outputs = []
        for plan in group:
            if plan.attr is None:
                outputs.append(self._members(plan.members, scope, source, env))
            else:
                outputs.append(self._members(plan.members, _join(scope, plan.attr), source, env))
        concat = _join(scope, f"concat@{group[0].branch.span.line}:{group[0].branch.span.column}")
        self._add(concat, "concat", None, group[0].branch.span, None)
        for output in outputs:
            self.graph.add_edge(output, concat)
        return concat

    def _call(self, template: ast.Template, row: ast.Row, path: str, source: str, env) -> str:
        if template.name in self.calls:
            raise SpecNameError(f"template '{template.name}' calls itself", row.span)
        inner = bind_arguments(template, row, env)
        if "classes" in env:
            inner.setdefault("classes", env["classes"])
        self.graph.graph.setdefault("calls", {})[path] = template.name
        self.calls.append(template.name)
        try:
            return self._members(plan_block(template.body), path, source, inner)
        finally:
            self.calls.pop()

    def _add(self, node: str, kind: str, layer: Layer | None, span, source: str | None) -> str:
        self.graph.add_node(node, kind=kind, layer=layer, stage=self.stage, aux=self.aux, span=span)
        if source is not None:
            self.graph.add_edge(source, node)
        return node


def bind_arguments(template: ast.Template, row: ast.Row, env) -> dict[str, Num]:
    """Template arguments, positional then key=value, bound to the template's parameters through
    ``env`` (concrete values in the IR, parameter names in the PyTorch backend)."""
    bound: dict[str, Num] = {}
    positional = [a for a in row.args if a.key is None]
    if len(positional) > len(template.params):
        raise _arity(template, row, len(positional))
    for param, arg in zip(template.params, positional):
        bound[param] = _value(arg, env)
    for arg in (a for a in row.args if a.key is not None):
        if arg.key not in template.params:
            raise SpecArgumentError(
                f"template '{template.name}' has no parameter '{arg.key}'",
                arg.span,
                did_you_mean(arg.key, template.params),
            )
        if arg.key in bound:
            raise SpecArgumentError(f"'{arg.key}' is given twice", arg.span)
        bound[arg.key] = _value(arg, env)
    if len(bound) != len(template.params):
        raise _arity(template, row, len(bound))
    return bound


def _join(scope: str, attr: str) -> str:
    return f"{scope}.{attr}" if scope and attr else scope or attr


def _stem(path: str) -> str:
    """A network name from a file name, when the spec declares none."""
    stem = path.replace("\\", "/").rsplit("/", 1)[-1].split(".", 1)[0]
    return stem if stem.isidentifier() else "network"


def _value(arg: ast.Arg, env) -> Num:
    value = arg.value
    if isinstance(value, ast.Ref):
        if value.name not in env:
            raise SpecNameError(f"unknown name '{value.name}'", arg.span, did_you_mean(value.name, env))
        return env[value.name]
    if isinstance(value, ast.Size):
        raise SpecArgumentError("template arguments are numbers, not sizes", arg.span)
    return value


def _arity(template: ast.Template, row: ast.Row, got: int) -> SpecArgumentError:
    n = len(template.params)
    return SpecArgumentError(
        f"template '{template.name}' takes {n} argument{'s' * (n != 1)}, got {got}",
        row.span,
        f"parameters: {', '.join(template.params) or 'none'}",
    )


def _find_stage(name: ast.Name, stages: tuple[Stage, ...]) -> Stage:
    for stage in stages:
        if name.text in (stage.attr, stage.label):
            return stage
    names = [s.attr for s in stages] + [s.label for s in stages if s.label]
    raise SpecNameError(f"no stage named '{name.text}'", name.span, did_you_mean(name.text, names))


def _aux_weight(aux: ast.Aux) -> float:
    keys = {a.key: a for a in aux.args}
    if set(keys) - {"weight"} or "weight" not in keys or not isinstance(keys["weight"].value, (int, float)):
        raise SpecArgumentError(
            "an aux head takes one option, its loss weight: aux NAME after STAGE weight=0.3: ROW",
            aux.span,
        )
    return float(keys["weight"].value)
