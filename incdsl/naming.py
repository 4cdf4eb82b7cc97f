"""Where every row of a block lives as a module attribute: the naming rules, shared by the IR builder
and the PyTorch backend so that graph node names and state_dict keys always agree.

Within one block (the network, or a template's body):

- a named row is the attribute of that name; a stage label (``3a``) is prefixed with the row's kind
  (``inception3a``), like the paper's "inception (3a)";
- an unnamed row is named after its kind, numbered when the kind occurs more than once (``maxpool1``);
- consecutive ``branch`` items form one parallel group, concatenated along channels;
- a named branch is one attribute: its single layer, or an ``nn.Sequential`` of its layers, keyed by
  their names or positions (``branch2.0``); an unnamed branch whose layers are all unnamed is named
  ``branch<i>`` by its position in the group;
- an unnamed branch with named layers is flattened: its layers are attributes of the enclosing block,
  as in torchvision's Inception-v3 (``Mixed_5b.branch5x5_1``), and it may fork again.

``Nx`` repeats a row: ``4b: 3x inception ...`` gives 4b, 4c, 4d; other names get ``_1``, ``_2``, ...
"""

from __future__ import annotations

import keyword
import re
from collections import Counter
from dataclasses import dataclass, replace

from . import ast
from .errors import SpecArgumentError, SpecNameError

# Attributes an nn.Module already has (dir(torch.nn.Module), checked by a test), plus names the
# generated code itself uses; a spec name must not shadow them.
MODULE_ATTRIBUTES = frozenset(
    """T_destination add_module apply bfloat16 buffers call_super_init children compile cpu cuda double
    dump_patches eval extra_repr float forward get_buffer get_extra_state get_parameter get_submodule
    half ipu load_state_dict modules mtia named_buffers named_children named_modules named_parameters
    parameters register_backward_hook register_buffer register_forward_hook register_forward_pre_hook
    register_full_backward_hook register_full_backward_pre_hook register_load_state_dict_post_hook
    register_load_state_dict_pre_hook register_module register_parameter register_state_dict_post_hook
    register_state_dict_pre_hook requires_grad_ set_extra_state set_submodule share_memory smart_apply
    state_dict to to_empty train training type xpu zero_grad""".split()
)
RESERVED = MODULE_ATTRIBUTES | {"self", "x", "in_channels", "num_classes", "aux_logits", "torch", "nn", "F"}
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True)
class Member:
    """One step of a block: a row at attribute ``attr``, or a parallel group of branches."""

    attr: str | None
    row: ast.Row | None = None
    group: tuple[BranchPlan, ...] = ()


@dataclass(frozen=True)
class BranchPlan:
    """One branch: a container attribute (``attr``) holding ``members``, or flattened (attr None)."""

    attr: str | None
    members: tuple[Member, ...]
    branch: ast.Branch


def check_identifier(name: ast.Name | str, span=None, what: str = "name") -> None:
    """Refuse anything that could not be a plain Python attribute of a generated module."""
    text = name.text if isinstance(name, ast.Name) else name
    span = name.span if isinstance(name, ast.Name) else span
    if not _IDENTIFIER.match(text) or keyword.iskeyword(text) or text.startswith("__"):
        raise SpecNameError(f"'{text}' is not a valid {what}: use letters, digits and '_'", span)
    if text in RESERVED:
        raise SpecNameError(f"'{text}' is reserved in generated code; choose another {what}", span)


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


def plan_block(items: tuple[ast.Item, ...]) -> tuple[Member, ...]:
    """Name every row of a block; see the module docstring for the rules."""
    unnamed: list[ast.Row] = []
    skeleton = _plan(expand_repeats(items), unnamed)
    taken: dict[str, ast.Row | ast.Branch] = {}
    _collect_names(skeleton, taken)
    auto = _auto_names(unnamed, taken)
    return _fill(skeleton, auto)


def _plan(items: list[ast.Item], unnamed: list[ast.Row]) -> tuple[Member, ...]:
    members: list[Member] = []
    group: list[ast.Branch] = []
    for item in [*items, None]:
        if isinstance(item, ast.Branch):
            group.append(item)
            continue
        if group:
            members.append(Member(None, group=_plan_group(group, unnamed)))
            group = []
        if isinstance(item, ast.Row):
            if item.name is None:
                unnamed.append(item)
            members.append(Member(attribute_name(item), item))
    return tuple(members)


def _plan_group(branches: list[ast.Branch], unnamed: list[ast.Row]) -> tuple[BranchPlan, ...]:
    plans = []
    for i, branch in enumerate(branches, start=1):
        items = expand_repeats(branch.items)
        flattened = branch.name is None and any(
            isinstance(it, ast.Branch) or it.name is not None for it in items
        )
        if flattened:
            plans.append(BranchPlan(None, _plan(items, unnamed), branch))
            continue
        attr = branch.name.text if branch.name else f"branch{i}"
        if branch.name:
            check_identifier(branch.name, what="branch name")
        plans.append(BranchPlan(attr, _container(items, branch), branch))
    return tuple(plans)


def _container(items: list[ast.Item], branch: ast.Branch) -> tuple[Member, ...]:
    """Members of a named branch: one unnamed row stands alone, else an nn.Sequential."""
    for item in items:
        if isinstance(item, ast.Branch):
            raise SpecArgumentError(
                "a named branch cannot fork again",
                item.span,
                "leave the outer branch unnamed and name its layers instead (they become attributes)",
            )
    if len(items) == 1 and items[0].name is None:
        return (Member("", items[0]),)
    members = [Member(attribute_name(row) or str(i), row) for i, row in enumerate(items)]
    _check_unique(members)
    return tuple(members)


def _check_unique(members: list[Member]) -> None:
    seen: dict[str, ast.Row] = {}
    for member in members:
        if member.row.name is not None:
            check_identifier(member.attr, member.row.name.span)
        if member.attr in seen:
            raise SpecNameError(f"'{member.attr}' is used twice in this branch", member.row.span)
        seen[member.attr] = member.row


def _collect_names(members: tuple[Member, ...], taken: dict) -> None:
    for member in members:
        if member.row is not None and member.attr is not None:
            _take(member.attr, member.row.name, taken)
        for plan in member.group:
            if plan.attr is None:
                _collect_names(plan.members, taken)
            else:
                _take(plan.attr, plan.branch.name, taken, plan.branch)


def _take(attr: str, name: ast.Name | None, taken: dict, owner=None) -> None:
    span = name.span if name else owner.span
    check_identifier(attr, span)
    if attr in taken:
        raise SpecNameError(f"'{attr}' is already used in this block", span)
    taken[attr] = owner


def _auto_names(rows: list[ast.Row], taken: dict) -> dict[int, str]:
    counts = Counter(row.kind for row in rows)
    seen: Counter = Counter()
    names: dict[int, str] = {}
    for row in rows:
        seen[row.kind] += 1
        name = row.kind if counts[row.kind] == 1 else f"{row.kind}{seen[row.kind]}"
        while name in taken:
            name += "_"
        taken[name] = row
        names[id(row)] = name
    return names


def _fill(members: tuple[Member, ...], auto: dict[int, str]) -> tuple[Member, ...]:
    out = []
    for member in members:
        if member.group:
            group = tuple(
                replace(p, members=_fill(p.members, auto)) if p.attr is None else p for p in member.group
            )
            out.append(replace(member, group=group))
        elif member.attr is None:
            out.append(replace(member, attr=auto[id(member.row)]))
        else:
            out.append(member)
    return tuple(out)
