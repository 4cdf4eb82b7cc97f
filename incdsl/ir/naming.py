"""The naming rules: where every row of a block lives as a module attribute.

Within one block (the network, or a template's body), whose attributes form one
:class:`~incdsl.ir.symbols.Scope`:

- a named row is the attribute of that name; a stage label (``3a``) is prefixed with the row's kind
  (``inception3a``), like the paper's "inception (3a)";
- an unnamed row is named after its kind, numbered when the kind occurs more than once (``maxpool1``);
- consecutive ``branch`` items form one parallel group;
- a named branch is one attribute: its single layer, or an ``nn.Sequential`` of its layers, keyed by
  their names or positions (``branch2.0``); an unnamed branch whose layers are all unnamed is named
  ``branch<i>`` by its position in the group;
- an unnamed branch with named layers is flattened: its layers are attributes of the enclosing block,
  as in torchvision's Inception-v3 (``Mixed_5b.branch5x5_1``), and it may fork again;
- a residual's body is flattened too (timm's ``Block35.branch0``, ``Block35.conv2d``); its shortcut is
  a named branch (``shortcut`` when unnamed);
- the rows of a top-level ``sequential NAME { ... }`` group are its positions (``features.0``, ...),
  as in timm's Inception-v4; their own names label them in tables and ``aux ... after``.

``Nx`` repeats a row: ``4b: 3x inception ...`` gives 4b, 4c, 4d; other names get ``_1``, ``_2``, ...

The plan is a pure function of the block's syntax, so every build of a template (its class, and each
call) names its layers alike.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, replace

from incdsl.errors import SpecArgumentError
from incdsl.ir.symbols import Scope, attributes_scope
from incdsl.syntax import ast

# nn.Sequential's own methods: a layer named so inside a named branch could not be added to it.
SEQUENTIAL_METHODS = {name: "a method of nn.Sequential" for name in ("append", "extend", "insert", "pop")}


@dataclass(frozen=True)
class Member:
    """One step of a block: a row at attribute ``attr``, a parallel group of branches, or a residual.
    A top-level row of a ``sequential`` group is at position ``attr`` (``features.3``) of it."""

    attr: str | None
    row: ast.Row | None = None
    group: tuple[BranchPlan, ...] = ()
    residual: ResidualPlan | None = None
    sequence: str | None = None
    split: bool = False  # the group's branches take equal parts of the input's channels


@dataclass(frozen=True)
class ResidualPlan:
    """A residual: its body's members (attributes of the enclosing block) and its shortcut, a named
    container, or None for the identity."""

    body: tuple[Member, ...]
    shortcut: BranchPlan | None
    residual: ast.Residual
    shortcut_last: bool = False  # written after the body: registered (and run) after it


@dataclass(frozen=True)
class BranchPlan:
    """One branch: a container attribute (``attr``) holding ``members``, or flattened (attr None).
    ``var`` is the name its output would like in the forward (allocated later, renamed on clash)."""

    attr: str | None
    members: tuple[Member, ...]
    branch: ast.Branch
    var: str


def attribute_name(row: ast.Row) -> str | None:
    if row.name is None:
        return None
    return f"{row.kind}{row.name.text}" if row.name.is_label else row.name.text


def expand_repeats(items: tuple[ast.Item, ...]) -> list[ast.Item]:
    """Replace each ``Nx`` row by N rows with derived names."""
    out: list[ast.Item] = []
    for item in items:
        if isinstance(item, ast.Row) and item.repeat > 1:
            out += [replace(item, repeat=1, name=_nth_name(item.name, i)) for i in range(item.repeat)]
        else:
            out.append(item)
    return out


def _nth_name(name: ast.Name | None, i: int) -> ast.Name | None:
    if name is None:
        return None
    match = re.fullmatch(r"(.*\d)([a-z])", name.text)
    if match and ord(match[2]) + i <= ord("z"):
        return replace(name, text=match[1] + chr(ord(match[2]) + i))
    return replace(name, text=f"{name.text}_{i + 1}")


def plan_block(items: tuple[ast.Item, ...], scope: Scope, positional: bool = False) -> tuple[Member, ...]:
    """Name every row of a block, claiming each attribute in ``scope``; see the module docstring. The
    block of a ``sequential`` template is positional: its rows are its positions 0, 1, ..."""
    if positional:
        return _container(list(items), positional=True)
    unnamed: list[ast.Row] = []
    skeleton = _plan(expand_repeats(items), unnamed)
    _claim_names(skeleton, scope)
    return _fill(skeleton, _auto_names(unnamed, scope))


def _plan(items: list[ast.Item], unnamed: list[ast.Row]) -> tuple[Member, ...]:
    members: list[Member] = []
    group: list[ast.Branch] = []
    positions: dict[str, int] = {}
    for item in [*items, None]:
        if isinstance(item, ast.Branch):
            group.append(item)
            continue
        if group:
            members.append(Member(None, group=_plan_group(group, unnamed)))
            group = []
        if isinstance(item, ast.Residual):
            members.append(Member(None, residual=_plan_residual(item, unnamed)))
        elif isinstance(item, ast.Split):
            members.append(Member(None, group=_plan_group(list(item.items), unnamed), split=True))
        elif isinstance(item, ast.Sequential):
            if item.name is None:
                raise SpecArgumentError(
                    "a sequential group in a block needs a name: its attribute",
                    item.span,
                    "sequential block { ... }",
                )
            members.append(Member(None, group=(plan_sequential(item),)))
        elif isinstance(item, ast.Shortcut):
            raise SpecArgumentError(
                "a shortcut belongs inside a residual", item.span, "residual { ...; shortcut: conv 1x1/2 C }"
            )
        elif isinstance(item, ast.Row) and item.sequence is not None:
            name = item.sequence.text
            position = positions.setdefault(name, 0)
            positions[name] += 1
            members.append(Member(f"{name}.{position}", item, sequence=name))
        elif isinstance(item, ast.Row):
            if item.name is None:
                unnamed.append(item)
            members.append(Member(attribute_name(item), item))
    return tuple(members)


def _plan_residual(residual: ast.Residual, unnamed: list[ast.Row]) -> ResidualPlan:
    shortcuts = [item for item in residual.items if isinstance(item, ast.Shortcut)]
    if len(shortcuts) > 1:
        raise SpecArgumentError("a residual has one shortcut", shortcuts[1].span)
    body = _plan(expand_repeats(tuple(i for i in residual.items if not isinstance(i, ast.Shortcut))), unnamed)
    if not body:
        raise SpecArgumentError("a residual needs a body: the layers whose output is added to its input",
                                residual.span)  # fmt: skip
    shortcut, last = None, False
    if shortcuts:
        item = shortcuts[0]
        attr = item.name.text if item.name else "shortcut"
        branch = ast.Branch(item.items, item.span, item.name)
        shortcut = BranchPlan(attr, _container(list(item.items)), branch, attr)
        last = residual.items.index(item) > 0
    return ResidualPlan(body, shortcut, residual, last)


def _check_key(name: ast.Name) -> None:
    """A quoted name keys an nn.Sequential's position (add_module): not empty, no '.'."""
    if not name.text or "." in name.text or not name.text.isprintable():
        raise SpecArgumentError(
            f"'{name.text}' cannot key a module: a quoted name is not empty and has no '.'", name.span
        )


def plan_sequential(group: ast.Sequential) -> BranchPlan:
    """``sequential NAME { rows }`` in a block: one nn.Sequential attribute, its rows at positions
    0, 1, ... (a named row keyed by its name), run as one module."""
    branch = ast.Branch(group.items, group.span, group.name)
    name = group.name.text if group.name else "sequential"  # unnamed: a position of an outer group
    return BranchPlan(name, _container(list(group.items), positional=True), branch, name)


def _plan_group(branches: list[ast.Branch], unnamed: list[ast.Row]) -> tuple[BranchPlan, ...]:
    plans = []
    for i, branch in enumerate(branches, start=1):
        items = expand_repeats(branch.items)
        flattened = branch.name is None and any(
            isinstance(it, ast.Branch) or it.name is not None for it in items
        )
        if flattened:
            members = _plan(items, unnamed)
            plans.append(BranchPlan(None, members, branch, _flattened_var(members, i)))
            continue
        attr = branch.name.text if branch.name else f"branch{i}"
        plans.append(BranchPlan(attr, _container(items), branch, attr))
    return tuple(plans)


def _flattened_var(members: tuple[Member, ...], index: int) -> str:
    """``branch5x5`` for a branch of ``branch5x5_1``, ``branch5x5_2``, as torchvision writes it."""
    for member in members:
        if member.row is not None and member.row.name is not None:
            return re.sub(r"_\d+[a-z]?$", "", member.attr) or f"branch{index}"
    return f"branch{index}"


def _container(items: list[ast.Item], positional: bool = False) -> tuple[Member, ...]:
    """Members of a named branch (or a ``sequential`` group): one unnamed row stands alone, else an
    nn.Sequential keyed by position or by the rows' names; a group nested in it is a position too."""
    items = expand_repeats(tuple(items))
    for item in items:
        if isinstance(item, (ast.Branch, ast.Residual)):
            raise SpecArgumentError(
                "a named branch cannot fork again" if isinstance(item, ast.Branch) else
                "a named branch or sequential group holds rows, not residuals",
                item.span,
                "leave the outer branch unnamed and name its layers instead (they become attributes), or "
                "write the block as a template and call it as a row",
            )  # fmt: skip
    if len(items) == 1 and isinstance(items[0], ast.Row) and items[0].name is None and not positional:
        return (Member("", items[0]),)
    scope = attributes_scope(SEQUENTIAL_METHODS)
    members = []
    for i, item in enumerate(items):
        if isinstance(item, ast.Sequential):
            plan = plan_sequential(item)
            members.append(Member(None, group=(replace(plan, attr=str(i), var=plan.var),)))
            continue
        attr = attribute_name(item)
        if attr is not None and item.name.quoted:
            _check_key(item.name)
            scope.claim_key(attr, f"position '{attr}' of this group", item.name.span)
        elif attr is not None:
            scope.claim(attr, f"layer '{attr}' of this branch", item.name.span)
        members.append(Member(attr or str(i), item))
    return tuple(members)


def _claim_names(members: tuple[Member, ...], scope: Scope) -> None:
    sequences: set[str] = set()
    for member in members:
        if member.sequence is not None:
            _claim_sequence(member, scope, sequences)
        elif member.row is not None and member.attr is not None:
            scope.claim(member.attr, f"row '{member.row.name.text}'", member.row.name.span)
        for plan in member.group:
            _claim_branch(plan, scope)
        if member.residual is not None:
            _claim_names(member.residual.body, scope)
            if member.residual.shortcut is not None:
                _claim_branch(member.residual.shortcut, scope)


def _claim_branch(plan: BranchPlan, scope: Scope) -> None:
    if plan.attr is None:
        _claim_names(plan.members, scope)
    elif plan.branch.name is not None:
        scope.claim(plan.attr, f"branch '{plan.attr}'", plan.branch.name.span, "branch name")
    else:
        scope.claim(plan.attr, f"the unnamed branch '{plan.attr}'", plan.branch.span)


def _claim_sequence(member: Member, scope: Scope, seen: set[str]) -> None:
    """A sequential group's name is one attribute; its rows' names label them (and must be unique)."""
    row = member.row
    if member.sequence not in seen:
        seen.add(member.sequence)
        what = f"sequential group '{member.sequence}'"
        scope.claim(member.sequence, what, row.sequence.span, "group name")
    if row.name is not None:
        scope.claim(stage_name(member), f"row '{row.name.text}'", row.name.span)


def stage_name(member: Member) -> str:
    """What a top-level row is called in tables, diagrams and ``aux ... after``: its attribute, or
    for a row of a sequential group its own name when it has one (``features.3`` otherwise)."""
    if member.sequence is not None and member.row.name is not None:
        return attribute_name(member.row)
    return member.attr


def _auto_names(rows: list[ast.Row], scope: Scope) -> dict[int, str]:
    """Names for unnamed rows and branches, after every written name is taken."""
    counts = Counter(row.kind for row in rows)
    seen: Counter = Counter()
    names: dict[int, str] = {}
    for row in rows:
        seen[row.kind] += 1
        name = row.kind if counts[row.kind] == 1 else f"{row.kind}{seen[row.kind]}"
        while name in scope:
            name += "_"
        names[id(row)] = scope.claim(name, f"the unnamed {row.kind} row", row.span)
    return names


def _fill(members: tuple[Member, ...], auto: dict[int, str]) -> tuple[Member, ...]:
    out = []
    for member in members:
        if member.group:
            group = tuple(
                replace(p, members=_fill(p.members, auto)) if p.attr is None else p for p in member.group
            )
            out.append(replace(member, group=group))
        elif member.residual is not None:
            body = _fill(member.residual.body, auto)
            out.append(replace(member, residual=replace(member.residual, body=body)))
        elif member.attr is None:
            out.append(replace(member, attr=auto[id(member.row)]))
        else:
            out.append(member)
    return tuple(out)
