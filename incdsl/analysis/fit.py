"""Fit a spec to a multiply-add budget with a width multiplier, as architecture papers scale networks.

Every conv's output channels, every hidden linear layer's width and every channel argument of a template
call is multiplied by ``m`` and rounded to a multiple of ``multiple`` (at least ``multiple``); the
largest ``m`` whose network fits the budget is found by bracketing and bisection. Table 1's columns
stay consistent because they are the inception template's arguments, all six of them channel counts.

What is a channel count is read from the AST and the layer table: a layer's width (the argument its
kind's ``width`` names: a conv's or linear layer's output), and a template parameter used as one
inside its template (through nested template calls too). The classifier
(``linear classes``, or a linear as wide as the classes), kernel sizes, dropout rates and options stay.

Each trial is measured by building the IR from the scaled AST (no text: :class:`Meter`), each distinct
trial once; a per-stage search builds only the rows it has not fixed yet, from their input.

>>> import incdsl
>>> result = fit(incdsl.parse(*incdsl.read("googlenet")), 1_500_000_000)
>>> 0.97 <= result.macs / result.budget <= 1.0
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from incdsl.errors import IncdslError
from incdsl.ir.tree import template_table
from incdsl.kinds.layers import KINDS, Shape, width_argument
from incdsl.syntax import ast
from incdsl.syntax.formatter import format_spec

MIN_MULTIPLIER, MAX_MULTIPLIER = 1 / 64, 64.0
BISECTIONS = 30
STAGE_BISECTIONS, RATIO_BISECTIONS = 12, 6


@dataclass(frozen=True)
class Scaling:
    """Multipliers: one per top-level row (``stages``), per template body, and for the aux heads."""

    stages: tuple[float, ...]
    templates: dict[str, float] = field(default_factory=dict)
    aux: float = 1.0
    depth: float = 1.0  # repeat counts of ``Nx`` rows are multiplied by this
    grouped: tuple[bool, ...] = ()  # per stage: whether the stage has widths of its own to scale


@dataclass(frozen=True)
class Fitted:
    """A fitted spec: the scaled AST, its text (with a header comment), and what it costs."""

    spec: ast.Spec
    text: str
    scaling: Scaling
    macs: int
    params: int
    budget: int
    original_macs: int
    multiplier: float  # the uniform multiplier, or the MAC ratio each stage was fitted to (per stage)
    measurements: int = 0  # the costs the search asked for (each distinct trial built once)


def fit(
    spec: ast.Spec,
    budget: int,
    multiple: int = 8,
    per_stage: bool = False,
    depth: bool = False,
    command: str = "",
) -> Fitted:
    """The largest scaled copy of ``spec`` whose inference multiply-adds fit ``budget``.

    ``per_stage``: each stage (top-level row) gets its own multiplier, chosen so that every stage keeps
    its share of the original multiply-adds. ``depth``: the repeat counts of ``Nx`` rows scale too, by
    the square of the width multiplier (so depth and width change the cost about equally).
    """
    if multiple < 1:
        raise IncdslError(f"--multiple must be at least 1, not {multiple}")
    if per_stage and depth:
        raise IncdslError("fit scales per stage or with depth, not both", hint="drop --per-stage or --depth")
    measure = Meter()
    original = measure(spec, strict=True)  # the spec's own error, with its place in the text
    scaler = _Scaler(spec, _templates(spec), multiple)
    if per_stage:
        scaling, multiplier = _fit_per_stage(scaler, spec, budget, original.macs, measure)
    else:
        fits = lambda m: _fits(measure, scaler.apply(_uniform(spec, m, depth)), budget)  # noqa: E731
        multiplier = _largest(fits, budget)
        if multiplier is None:
            raise _too_small(budget)
        scaling = _uniform(spec, multiplier, depth)
    scaled = replace(scaler.apply(scaling), budget=budget)
    result = measure(scaled)
    header = _header(
        spec, command, scaling, multiplier, multiple, per_stage, result.macs, budget, original.macs
    )
    return Fitted(
        scaled, header + format_spec(scaled), scaling, result.macs, result.params, budget,
        original.macs, multiplier, measure.measurements,
    )  # fmt: skip


# what counts as a channel count ----------------------------------------------------------------


def _templates(spec: ast.Spec) -> dict[str, ast.Template]:
    """The templates a spec can call: the prelude's, shadowed by its own (the IR's table)."""
    from incdsl.syntax.parser import prelude

    return template_table(spec, prelude())


def channel_params(templates: dict[str, ast.Template]) -> dict[str, frozenset[str]]:
    """For each template, the parameters that are channel counts: used as a conv's or linear layer's
    output inside it, or passed on to a channel parameter of a template it calls.

    >>> import incdsl
    >>> sorted(channel_params(_templates(incdsl.parse("input 8x8x3")))["inception"])
    ['n1x1', 'n3x3', 'n3x3red', 'n5x5', 'n5x5red', 'pool_proj']
    """
    found: dict[str, frozenset[str]] = {name: frozenset() for name in templates}
    changed = True
    while changed:  # a fixed point: a parameter passed through nested calls is found in a few rounds
        changed = False
        for name, template in templates.items():
            used = {
                name
                for row in _rows(template.body)
                for value in _channel_values(row, templates, found)
                for name in _scaled_names(value)
                if name in template.params
            }
            if used - found[name]:
                found[name] = found[name] | used
                changed = True
    return found


def _scaled_names(value: ast.Value) -> set[str]:
    """The names a width scales with: ``c``, ``w*4``, ``c//2``, ``a+b`` (a name times or over a number,
    sums of them); not a product of two names (``in_channels*t``: t is a ratio) or a function."""
    if isinstance(value, ast.Ref):
        return {value.name}
    if isinstance(value, ast.Binary) and value.op in ("+", "-"):
        return _scaled_names(value.left) | _scaled_names(value.right)
    if isinstance(value, ast.Binary) and value.op in ("*", "//", "/"):
        numbers = [isinstance(side, int | float) for side in (value.left, value.right)]
        if numbers == [False, True] or (numbers == [True, False] and value.op == "*"):
            return _scaled_names(value.right if numbers[0] else value.left)
    return set()


def _rows(items) -> list[ast.Row]:
    """Every row of ``items``, those of nested groups and of groups nested in a row included."""
    rows = []
    for item in items:
        if isinstance(item, ast.Row):
            rows += [item] + (_rows(item.group.items) if item.group is not None else [])
        else:
            rows += _rows(item.items)
    return rows


def _channel_values(row: ast.Row, templates, params: dict[str, frozenset[str]]) -> list[ast.Value]:
    """The values of ``row`` that are channel counts (whatever they are written as)."""
    return [row.args[i].value for i in _channel_positions(row, templates, params)]


def _channel_positions(row: ast.Row, templates, params: dict[str, frozenset[str]]) -> list[int]:
    """Indices into ``row.args`` of the channel counts: a layer's width (a conv's or linear layer's
    output channels: the kinds whose table entry has a ``width``), or a template call's arguments
    bound to channel parameters."""
    template = templates.get(row.kind)
    if template is not None:
        positional = [i for i, a in enumerate(row.args) if a.key is None]
        bound = dict(zip(template.params, positional))
        bound.update({a.key: i for i, a in enumerate(row.args) if a.key is not None})
        return sorted(i for name, i in bound.items() if name in params.get(template.name, ()))
    width = width_argument(row)  # a layer's output channels, as the layer table names them
    return [] if width is None else [width]


def _dense(row: ast.Row) -> bool:
    """A row of a kind with a width that flattens its input: a fully connected layer (a classifier)."""
    kind = KINDS.get(row.kind)
    return kind is not None and kind.width is not None and kind.flattens


# applying multipliers to the AST ---------------------------------------------------------------


class _Scaler:
    """Rewrites a spec's channel counts under a :class:`Scaling`."""

    def __init__(self, spec: ast.Spec, templates: dict[str, ast.Template], multiple: int):
        self.spec, self.templates, self.multiple = spec, templates, multiple
        self.params = channel_params(templates)
        self.classifiers = _classifier_rows(spec)
        self.scaled: dict[tuple, object] = {}  # a row or template at a multiplier: searches ask again

    def width(self, value: int, m: float) -> int:
        return max(self.multiple, math.floor(value * m / self.multiple + 0.5) * self.multiple)

    def row(self, row: ast.Row, m: float, depth: float = 1.0) -> ast.Row:
        key = (id(row), m, depth)
        if key not in self.scaled:
            self.scaled[key] = self._row(row, m, depth)
        return self.scaled[key]

    def _row(self, row: ast.Row, m: float, depth: float) -> ast.Row:
        if id(row) in self.classifiers or (_dense(row) and self._is_classes(row)):
            return row
        args = list(row.args)
        for i in _channel_positions(row, self.templates, self.params):
            value = args[i].value
            if isinstance(value, int) and not isinstance(value, bool):
                args[i] = replace(args[i], value=self.width(value, m))
                # a depthwise convolution written with numbers (``conv 3x3 32 groups=32``): one group
                # per channel at any width; a grouped one (``groups=32`` of 64) keeps its groups
                args = [
                    replace(a, value=args[i].value) if a.key == "groups" and a.value == value else a
                    for a in args
                ]
        repeat = max(1, math.floor(row.repeat * depth + 0.5)) if row.repeat > 1 else 1
        group = row.group
        if group is not None:  # a sequential group nested in a top-level one: its rows scale with it
            group = replace(group, items=self.items(group.items, m))
        return replace(row, args=tuple(args), repeat=repeat, group=group)

    def scalable(self, row: ast.Row) -> bool:
        """Whether a top-level row has a width of its own to scale (not counting template bodies)."""
        return self.row(row, 2.0) != row

    def _is_classes(self, row: ast.Row) -> bool:
        values = _channel_values(row, self.templates, self.params)
        return any(v == ast.Ref("classes") or v == self.spec.classes for v in values)

    def items(self, items, m: float):
        return tuple(
            self.row(item, m) if isinstance(item, ast.Row) else replace(item, items=self.items(item.items, m))
            for item in items
        )

    def template(self, template: ast.Template, m: float) -> ast.Template:
        key = (id(template), m)
        if key not in self.scaled:
            self.scaled[key] = replace(template, body=self.items(template.body, m))
        return self.scaled[key]

    def apply(self, scaling: Scaling, part: slice | None = None) -> ast.Spec:
        """The spec scaled; with ``part``, only those top-level rows are (the rest, and the aux heads,
        as written: a measurement of those rows is then the same whatever the others' scaling)."""
        spec = self.spec
        kept = range(len(spec.rows))[part] if part is not None else range(len(spec.rows))
        rows = tuple(
            self.row(r, m, scaling.depth) if i in kept else r
            for i, (r, m) in enumerate(zip(spec.rows, scaling.stages))
        )
        templates = tuple(self.template(t, scaling.templates.get(t.name, 1.0)) for t in spec.templates)
        auxes = spec.auxes
        if part is None:
            auxes = tuple(replace(a, head=self.row(a.head, scaling.aux)) for a in spec.auxes)
        return replace(spec, rows=rows, templates=templates, auxes=auxes)


def _classifier_rows(spec: ast.Spec) -> set[int]:
    """The main network's last fully connected row: the logits, never scaled even when written as a
    number."""
    linears = [row for row in spec.rows if _dense(row)]
    return {id(linears[-1])} if linears else set()


def _uniform(spec: ast.Spec, m: float, depth: bool) -> Scaling:
    return Scaling(
        tuple(m for _ in spec.rows), {t.name: m for t in spec.templates}, m, m * m if depth else 1.0
    )


# measuring and searching -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Cost:
    macs: int
    params: int
    stage_macs: Mapping[int, int]  # per top-level row of the AST built (a repeated row's stages summed)
    outputs: Mapping[int, Shape] = field(default_factory=dict)  # per top-level row: its last stage's


class Meter:
    """Measures scaled copies of a spec: each builds its IR from the AST (no text, no parsing), and
    each distinct copy is built once (a search asks for the same rounded widths many times).
    ``builds`` and ``measurements`` count what it did."""

    def __init__(self):
        self.costs: dict[tuple, _Cost | None] = {}
        self.builds = self.measurements = 0

    def __call__(
        self, spec: ast.Spec, rows: slice | None = None, input: ast.Size | None = None, strict: bool = False
    ) -> _Cost | None:
        """The cost of ``spec`` (of its top-level ``rows`` only, the first taking ``input``), or None
        when it does not compile (a scaled width can break a constraint); ``strict``: raise its error."""
        self.measurements += 1
        key = _key(spec, rows, input)
        if key not in self.costs or strict and self.costs[key] is None:
            self.costs[key] = self._build(spec, rows, input, strict)
        return self.costs[key]

    def _build(self, spec: ast.Spec, rows: slice | None, input, strict: bool) -> _Cost | None:
        import incdsl

        self.builds += 1
        try:
            net = incdsl.network(spec, rows=rows, input=input)
        except IncdslError:
            if strict:
                raise
            return None
        stats = incdsl.stats(net)
        stage_macs: dict[int, int] = {}
        outputs: dict[int, Shape] = {}
        for stage, row in zip(net.stages, stats.rows, strict=True):
            stage_macs[stage.group] = stage_macs.get(stage.group, 0) + row.macs
            outputs[stage.group] = net.facts[stage.node].output
        return _Cost(stats.macs, stats.params, MappingProxyType(stage_macs), MappingProxyType(outputs))


def _key(spec: ast.Spec, rows: slice | None, input: ast.Size | None) -> tuple:
    """What a measurement depends on: the whole spec, or for some rows only those rows and what they
    read (the templates, defaults and header values a build of them uses)."""
    if rows is None:
        return (spec, input)
    header = (spec.path, spec.network, spec.input, spec.classes, spec.defaults, spec.templates)
    return (spec.rows[rows], header, rows.start, rows.stop, input)


def _fits(measure: Meter, spec: ast.Spec, budget: int) -> bool:
    cost = measure(spec)
    return cost is not None and cost.macs <= budget


def _largest(fits: Callable[[float], bool], budget: int, bisections: int = BISECTIONS) -> float | None:
    """The largest multiplier in [1/64, 64] for which ``fits`` holds (bracket, then bisect); None if
    even 1/64 does not fit."""
    lo = hi = 1.0
    if fits(1.0):
        while hi < MAX_MULTIPLIER and fits(hi * 2):
            hi *= 2
        lo, hi = hi, hi * 2
    else:
        while not fits(lo / 2):
            lo /= 2
            if lo / 2 < MIN_MULTIPLIER:
                return None
        lo, hi = lo / 2, lo
    for _ in range(bisections):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def _too_small(budget: int) -> IncdslError:
    return IncdslError(
        f"no width multiplier down to 1/64 brings the network within {budget:,} multiply-adds",
        hint="layers without channels to scale (or the minimum width) cost more than the budget",
    )


def _fit_per_stage(
    scaler: _Scaler, spec: ast.Spec, budget: int, original: int, measure: Meter
) -> tuple[Scaling, float]:
    """One multiplier per stage (stages sharing a template with fixed widths share one), each the
    largest that keeps the stage within ``ratio`` x its original multiply-adds; ``ratio`` is the largest
    for which the whole network fits."""
    groups = _join_tied(_stage_groups(spec, scaler), scaler, spec, measure)
    base = measure(spec).stage_macs

    def scaling_for(ratio: float) -> Scaling:
        stages = [1.0] * len(spec.rows)
        templates: dict[str, float] = {}
        done, x = 0, None  # the rows before row `done` are final; x: their output (None: the input)
        for k, (group, names) in enumerate(groups):
            target = ratio * sum(base[i] for i in group)
            rows = slice(done, max(group) + 1)  # a group's rows and those before it not yet final

            def fits(m, group=group, names=names, target=target, rows=rows, x=x):
                trial = _with(stages, templates, group, names, m, ratio)
                cost = measure(scaler.apply(trial, rows), rows, x)
                return cost is not None and sum(cost.stage_macs[i] for i in group) <= target

            m = _largest(fits, budget, STAGE_BISECTIONS) if target else 1.0
            m = MIN_MULTIPLIER if m is None else m  # as small as it gets; later stages make up for it
            for i in group:
                stages[i] = m
            templates.update(dict.fromkeys(names, m))
            final = min([rows.stop, *(min(later) for later, _ in groups[k + 1 :])])
            done, x = _advance(
                measure, scaler.apply(_with(stages, templates, [], [], 1.0, ratio), rows), rows, x, final
            )
        scaling = _with(stages, templates, [], [], 1.0, ratio)
        return replace(scaling, grouped=tuple(i in scaled for i in range(len(spec.rows))))

    scaled = {i for group, _ in groups for i in group}

    def fits(ratio: float) -> bool:
        return _fits(measure, scaler.apply(scaling_for(ratio)), budget)

    lo = budget / original
    while not fits(lo):  # stages that cannot shrink (a classifier) take more than their share
        lo *= 0.9
        if lo < MIN_MULTIPLIER**2:
            raise _too_small(budget)
    hi = lo * 1.25
    while fits(hi) and hi < 1 / MIN_MULTIPLIER:  # rounding, or stages tied together, left more room
        lo, hi = hi, hi * 1.25
    for _ in range(RATIO_BISECTIONS):  # rounding leaves slack under the budget: use it
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return scaling_for(lo), lo


def _advance(measure: Meter, spec: ast.Spec, rows: slice, x, final: int) -> tuple[int, ast.Size | None]:
    """Where the next group's measurements start: after the rows now final (those before ``final``)
    and their output as the next rows' input, taken from measuring ``rows`` of ``spec``. They stay
    where they were when that output is not a plain feature map (flattened, channels-last) or the
    rows do not build."""
    cost = measure(spec, rows, x)
    output = cost.outputs.get(final - 1) if cost is not None and final > rows.start else None
    if output is None or output.flat or output.last:
        return rows.start, x
    return final, ast.Size((output.height, output.width, output.channels))


def _with(stages, templates, group, names, m, ratio) -> Scaling:
    stages = [m if i in group else s for i, s in enumerate(stages)]
    templates = {**templates, **dict.fromkeys(names, m)}
    return Scaling(tuple(stages), templates, aux=math.sqrt(ratio))


def _stage_groups(spec: ast.Spec, scaler: _Scaler) -> list[tuple[list[int], list[str]]]:
    """Top-level rows that must share a multiplier: those calling (directly or not) the same template
    of the spec that has fixed widths in its body. Each group with those templates' names, in order."""
    fixed = {t.name for t in spec.templates if _has_fixed_widths(t, scaler)}
    owner: dict[str, int] = {}
    groups: list[tuple[list[int], set[str]]] = []
    for i, row in enumerate(spec.rows):
        names = _called(row.kind, scaler.templates) & fixed
        joined = {owner[n] for n in names if n in owner}
        if joined:
            g = min(joined)
            for other in sorted(joined - {g}, reverse=True):
                groups[g][0].extend(groups[other][0])
                groups[g][1].update(groups[other][1])
                groups[other] = ([], set())
        else:
            g = len(groups)
            groups.append(([], set()))
        groups[g][0].append(i)
        groups[g][1].update(names)
        owner.update(dict.fromkeys(groups[g][1], g))
    return [
        (sorted(rows), sorted(names))
        for rows, names in groups
        if names or any(scaler.scalable(spec.rows[i]) for i in rows)
    ]


def _join_tied(
    groups: list[tuple[list[int], list[str]]], scaler: _Scaler, spec: ast.Spec, measure: Meter
) -> list[tuple[list[int], list[str]]]:
    """Groups whose widths are tied together share a multiplier. A stage of residual blocks without a
    projection adds its input to its output, so its width is that of what feeds it (ConvNeXt's first
    stage and its stem); a reduction that concatenates its input onto its branches passes its width on
    to the stage after it (Inception-ResNet's). A group that does not build when scaled alone (x0.5,
    the rest as written) joins the group before it, if together they build, or else the groups after
    it, as far as it takes to build; one that builds with neither stays alone."""
    joined: list[tuple[list[int], list[str]]] = []
    i = 0
    while i < len(groups):
        group, i = groups[i], i + 1
        if not _builds(scaler, spec, measure, *group):
            if joined and _builds(scaler, spec, measure, *_union(joined[-1], group)):
                joined[-1] = _union(joined[-1], group)
                continue
            for j in range(i, len(groups)):
                run = _union(group, *groups[i : j + 1])
                if _builds(scaler, spec, measure, *run):
                    group, i = run, j + 1
                    break
        joined.append(group)
    return joined


def _union(*groups: tuple[list[int], list[str]]) -> tuple[list[int], list[str]]:
    return sorted(r for rows, _ in groups for r in rows), sorted({n for _, names in groups for n in names})


def _builds(scaler: _Scaler, spec: ast.Spec, measure: Meter, rows: list[int], names: list[str]) -> bool:
    trial = _with([1.0] * len(spec.rows), {}, rows, names, 0.5, 1.0)
    return measure(scaler.apply(trial)) is not None


def _has_fixed_widths(template: ast.Template, scaler: _Scaler) -> bool:
    return any(
        isinstance(v, int)
        for row in _rows(template.body)
        for v in _channel_values(row, scaler.templates, scaler.params)
    )


def _called(kind: str, templates: dict[str, ast.Template], seen: frozenset[str] = frozenset()) -> set[str]:
    """The template ``kind`` and every template it calls, transitively."""
    if kind not in templates or kind in seen:
        return set()
    called = {kind}
    for row in _rows(templates[kind].body):
        called |= _called(row.kind, templates, seen | {kind})
    return called


# the header comment -----------------------------------------------------------------------------


def _header(spec, command, scaling, multiplier, multiple, per_stage, macs, budget, original) -> str:
    lines = [f"Fitted by `{command}`." if command else "Fitted by incdsl fit."]
    if per_stage:
        scaled = [
            f"{row.name.text if row.name else row.kind} {m:.3f}"
            for row, m, group in zip(spec.rows, scaling.stages, scaling.grouped)
            if group
        ]
        lines.append(
            f"Each stage's widths scaled to keep {multiplier:.4f} x its multiply-adds (multipliers: "
            + ", ".join(scaled)
            + ("); aux heads' by the square root of that." if spec.auxes else ").")
        )
    else:
        lines.append(
            f"Width multiplier {multiplier:.4f} on every conv's output channels, every hidden linear layer "
            "and every channel argument of a template call (Table 1's columns)."
        )
    if scaling.depth != 1.0:
        lines.append(f"Repeat counts of Nx rows x {scaling.depth:.4f} (the width multiplier squared).")
    lines += [
        f"Widths rounded to a multiple of {multiple} (at least {multiple}); the classifier, kernel sizes, "
        "dropout rates and options are unchanged.",
        f"Multiply-adds: {macs:,} = {macs / budget:.1%} of the budget {budget:,} (was {original:,}).",
        "Comments of the original spec are not kept.",
    ]
    return "".join(f"# {line}\n" for line in _wrap(lines)) + "\n"


def _wrap(lines: list[str], width: int = 100) -> list[str]:
    import textwrap

    return [part for line in lines for part in textwrap.wrap(line, width)]
