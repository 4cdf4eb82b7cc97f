"""AST back to spec text, in a canonical layout: ``parse(format(spec))`` equals ``spec``.

>>> from incdsl.syntax.parser import parse
>>> print(format_spec(parse("input 32x32x3\\nconv 3x3/1 16 relu\\n")), end="")
input 32x32x3
<BLANKLINE>
conv 3x3/1 16 relu
"""

from __future__ import annotations

from incdsl.numbers import MAX_BUDGET, NumberError, read_quantity
from incdsl.syntax import ast, parser

INDENT = "    "


def format_spec(spec: ast.Spec) -> str:
    """The spec as text: header, defaults, templates, rows, aux heads (comments are not kept)."""
    header = [
        f"network {spec.network}" if spec.network else None,
        f"input {spec.input}" if spec.input else None,
        f"classes {spec.classes}" if spec.classes is not None else None,
        f"budget {_budget(spec)}" if spec.budget is not None else None,
    ]
    sections = [
        [line for line in header if line],
        [f"defaults {d.kind}: {_args(d.args)}".rstrip() for d in spec.defaults],
        *[_template(t) for t in spec.templates],
        _rows(spec.rows),
        [_aux(a) for a in spec.auxes],
    ]
    return "\n\n".join("\n".join(s) for s in sections if s) + "\n"


def _budget(spec: ast.Spec) -> str:
    """The budget as the spec wrote it (``60M``, ``1.5G``) while it still says the same number; a
    changed budget (``incdsl fit``'s) as digits."""
    span = spec.header_spans.get("budget")
    if span is not None and span.source:
        written = span.source_line()[span.column - 1 : span.column - 1 + span.width]
        try:
            if read_quantity(written, 1, MAX_BUDGET) == spec.budget:
                return written
        except NumberError:
            pass
    return str(spec.budget)


def _name(name: ast.Name) -> str:
    return f'"{name.text}"' if name.quoted else name.text


_PRECEDENCE = {"or": -2, "and": -1, "==": 0, "!=": 0, "<": 0, "<=": 0, ">": 0, ">=": 0}
_PRECEDENCE |= {"+": 1, "-": 1, "*": 2, "/": 2, "//": 2, "%": 2}
MERGE_WORDS = {merge: word for word, merge in parser.MERGE_WORDS.items()}  # add -> residual


def _value(value: ast.Value) -> str:
    """A value as written, arithmetic without blanks (``w*4``), parenthesised only where needed."""
    if isinstance(value, ast.Ref):
        return value.name
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, ast.Binary):
        level = _PRECEDENCE[value.op]
        op = f" {value.op} " if value.op in ("and", "or") else value.op
        return f"{_operand(value.left, level)}{op}{_operand(value.right, level + 1)}"
    if isinstance(value, ast.Apply):
        return f"{value.fn}({', '.join(_value(a) for a in value.args)})"
    if isinstance(value, ast.Size):
        dims = "x".join(_value(d) for d in value.dims)
        return dims if value.stride is None else f"{dims}/{_operand(value.stride, 3)}"
    return str(value)


def _operand(value: ast.Value, level: int) -> str:
    inner = _PRECEDENCE.get(value.op, 3) if isinstance(value, ast.Binary) else 3
    negative = isinstance(value, (int, float)) and value < 0
    return f"({_value(value)})" if inner < level or negative else _value(value)


def _args(args: tuple[ast.Arg, ...]) -> str:
    return " ".join(_value(a.value) if a.key is None else f"{a.key}={_value(a.value)}" for a in args)


def _row(row: ast.Row) -> str:
    name = f"{_name(row.name)}: " if row.name else ""
    repeat = f"{row.repeat}x " if row.repeat > 1 else ""
    return f"{name}{repeat}{row.kind} {_args(row.args)}".rstrip()


def _rows(rows: tuple[ast.Row, ...]) -> list[str]:
    """Top-level rows; consecutive rows of one sequential group inside its braces."""
    lines: list[str] = []
    group: ast.Name | None = None
    for row in rows:
        if group is not None and (row.sequence is None or row.sequence.text != group.text):
            lines.append("}")
            group = None
        if row.sequence is not None and group is None:
            group = row.sequence
            lines.append(f"sequential {group.text} {{")
        if row.group is not None:
            lines += _items((row.group,), 1)
        else:
            lines.append(INDENT * (group is not None) + _row(row))
    return lines + ["}"] * (group is not None)


def _items(items: tuple[ast.Item, ...], depth: int) -> list[str]:
    lines = []
    for item in items:
        pad = INDENT * depth
        if isinstance(item, ast.Row):
            lines.append(pad + _row(item))
            continue
        if isinstance(item, ast.Residual):
            head = f"{MERGE_WORDS[item.merge]} {_args(item.args)}".rstrip()
            lines += [f"{pad}{head} {{", *_items(item.items, depth + 1), pad + "}"]
            continue
        if isinstance(item, ast.Split):
            lines += [f"{pad}split {{", *_items(item.items, depth + 1), pad + "}"]
            continue
        if isinstance(item, ast.Sequential):
            name = f" {item.name.text}" if item.name else ""
            lines += [f"{pad}sequential{name} {{", *_items(item.items, depth + 1), pad + "}"]
            continue
        word = "shortcut" if isinstance(item, ast.Shortcut) else "branch"
        name = f" {item.name.text}" if item.name else ""
        if isinstance(item, ast.Shortcut) and item.args:
            name += " " + _args(item.args)
        if len(item.items) == 1 and isinstance(item.items[0], ast.Row):
            lines.append(f"{pad}{word}{name}: {_row(item.items[0])}")
            continue
        lines.append(f"{pad}{word}{name} {{")
        lines += _items(item.items, depth + 1)
        lines.append(pad + "}")
    return lines


def _template(template: ast.Template) -> list[str]:
    params = [p if t is None else f'{p} "{t}"' for p, t in zip(template.params, _titles(template))]
    head = f"({', '.join(params)})" if params else ""
    sequential = " sequential" if template.sequential else ""
    return [f"template {template.name}{head}{sequential} {{", *_items(template.body, 1), "}"]


def _titles(template: ast.Template) -> tuple:
    return template.titles or (None,) * len(template.params)


def _aux(aux: ast.Aux) -> str:
    return f"aux {aux.name.text} after {aux.after.text} {_args(aux.args)}: {_row(aux.head)}"
