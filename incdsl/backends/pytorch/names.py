"""The names the generated PyTorch file defines or imports at module level, read from its template.

A spec's template names become class names in the same file, so every name the template can define
(an import, a helper class, ``build``, ``SPEC``) is reserved: :func:`incdsl.ir.symbols.file_scope` asks
this module. The list is derived from ``templates/model.py.j2`` itself, every ``{% if %}`` taken, so
a helper added to the template is reserved the moment it exists; no list is kept by hand.

>>> names = defined_names()
>>> names["FoldedConv2d"], names["F"]
('a helper class of the generated file', 'import torch.nn.functional as F')
>>> names["build"]
"the generated file's build() function"
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

TEMPLATE = Path(__file__).parent / "templates" / "model.py.j2"
_FILLED = re.compile(r"\{\{.*?\}\}")
_HEADER = re.compile(r"(class|def)\s+([A-Za-z_]\w*)\b")


@cache
def defined_names() -> dict[str, str]:
    """Each module-level name the template binds, with what binds it."""
    names: dict[str, str] = {}
    for line in TEMPLATE.read_text(encoding="utf-8").splitlines():
        if not line[:1].isalpha() or "{%" in line:
            continue  # indented, or a jinja statement
        # a value filled in is a number here; a class named by the spec (``class {{ ... }}``) then
        # does not parse, and is left out: its name is claimed as the spec's
        for node in _statement(_FILLED.sub("0", line)):
            names.update(_bound(node, line))
    return names


def _statement(line: str) -> list[ast.stmt]:
    """One top-level line as Python: a ``class``/``def`` header (its signature may run on over several
    lines) becomes an empty definition of its name."""
    header = _HEADER.match(line)
    if header:
        line = f"{header.group(1)} {header.group(2)}(): pass"
    try:
        return ast.parse(line).body
    except SyntaxError:  # a docstring's continuation line
        return []


def _bound(node: ast.stmt, line: str) -> dict[str, str]:
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return {(alias.asname or alias.name).split(".")[0]: line.strip() for alias in node.names}
    if isinstance(node, ast.ClassDef):
        return {node.name: "a helper class of the generated file"}
    if isinstance(node, ast.FunctionDef):
        return {node.name: f"the generated file's {node.name}() function"}
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return {t.id: f"the generated file's {t.id}" for t in targets if isinstance(t, ast.Name)}
    return {}
