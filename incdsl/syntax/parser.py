"""Text to :class:`~incdsl.syntax.ast.Spec`. Lark's trees and exceptions never leave this module.

>>> spec = parse("network tiny\\ninput 32x32x3\\nclasses 10\\nconv 3x3 16\\n", "tiny.inc")
>>> spec.rows[0].kind
'conv'
"""

from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import replace
from functools import cache

from lark import Lark, Token, Transformer, v_args
from lark import __version__ as lark_version
from lark.exceptions import (
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
    VisitError,
)
from lark.grammar import Rule
from lark.lexer import TerminalDef

from incdsl import numbers, usercache
from incdsl.errors import Span, SpecArgumentError, SpecNameError, SpecSyntaxError, did_you_mean
from incdsl.ir.symbolic import FUNCTIONS
from incdsl.numbers import MAX_BUDGET, MAX_INT, MAX_REPEAT, NumberError
from incdsl.resources import grammar_text, prelude_path
from incdsl.syntax import ast

SEQUENTIAL = "sequential"  # the kind of a row that holds a nested sequential group

# The words that open a merge block, and the merge kind each asks for (layers.MERGES).
MERGE_WORDS = {"residual": "add", "gate": "mul"}

# Limits that keep the work per spec bounded (README, "Errors and limits"). The largest shipped spec is
# 7 KB and nests braces 3 deep; a template takes at most 6 arguments.
MAX_SPEC_BYTES = 256 * 1024  # 256 KiB: at most about 130,000 tokens, a few seconds of parsing
MAX_NESTING = 32  # '{' ... '}' blocks inside one another
MAX_ARGUMENTS = 64  # arguments and options of one row, defaults line or aux head; parameters of a template
MAX_WORDS = 4 * MAX_ARGUMENTS  # words of one statement, counted before parsing (so a huge row fails fast)

_COMMENT = re.compile(r'"[^"\n]*"|#[^\n]*')  # a '#' inside a title ("#1x1") starts no comment
_SCAN = re.compile(r"[{}\n;]|[^\s{};]+")

# How the parser's terminal names read in an error message.
_TERMINAL_WORDS = {
    "NAME": "a name",
    "LABEL": "a stage label",
    "INT": "an integer",
    "FLOAT": "a number",
    "SIZE": "a size like 3x3",
    "QUANTITY": "a quantity like 1.5G",
    "REPEAT": "a repetition like 3x",
    "_NL": "end of line",
    "LBRACE": "'{'",
    "RBRACE": "'}'",
    "LPAR": "'('",
    "RPAR": "')'",
    "COLON": "':'",
    "COMMA": "','",
    "EQUAL": "'='",
    "STRING": 'a title like "#1x1"',
    "$END": "end of file",
}


OPTIONS = {"parser": "lalr", "propagate_positions": True, "maybe_placeholders": True}


@cache
def _lark() -> Lark:
    """The parser. Building its LALR tables takes about 45 ms, a tenth of ``incdsl stats``'s start-up,
    so they are kept in incdsl's private cache (see :mod:`incdsl.usercache`: marshal data in a folder only
    the user can write), keyed by the grammar, the options and the Lark and Python versions. Not Lark's
    own ``cache=True``: that is a pickle at a predictable path in the shared temp directory, which
    anyone who can write there could plant."""
    text = grammar_text()
    key = hashlib.sha256(repr((text, OPTIONS, lark_version, sys.version)).encode()).hexdigest()[:32]
    name = f"parser-{key}"
    tables = usercache.load(name)
    if tables is not None:
        try:
            data, memo = tables
            return Lark._load_from_dict(data, memo, propagate_positions=OPTIONS["propagate_positions"])
        except Exception:  # tables from another Lark, or damaged: build them again
            pass
    parser = Lark(text, **OPTIONS)
    usercache.store(name, parser.memo_serialize([TerminalDef, Rule]))
    return parser


PRELUDE = "<prelude>"  # the path the prelude's spans carry (its file: resources.prelude_path())


@cache
def prelude() -> tuple[ast.Template, ...]:
    """The built-in templates (``grammars/prelude.inc``), parsed once per process: the one loader
    that the compiler, ``fit`` and the language server share."""
    return parse(prelude_path().read_text(encoding="utf-8"), PRELUDE).templates


def parse(text: str, path: str = "<spec>") -> ast.Spec:
    """Parse spec text into a :class:`~incdsl.syntax.ast.Spec`; raise SpecSyntaxError with a span.

    A leading byte-order mark is dropped (editors on Windows write one). Texts over MAX_SPEC_BYTES
    characters, and blocks nested deeper than MAX_NESTING, are refused before Lark sees them.
    """
    text = text.removeprefix("\ufeff")
    if len(text) > MAX_SPEC_BYTES:
        raise SpecSyntaxError(f"{path}: the spec is larger than {MAX_SPEC_BYTES // 1024} KiB")
    # Comments become spaces: Lark then sees the same tokens at the same lines and columns, and the
    # line-end terminal matches a run of blank lines in constant memory.
    blanked = _COMMENT.sub(_blank_comment, text)
    _check_sizes(blanked, text, path)
    try:
        tree = _lark().parse(blanked + "\n")
    except UnexpectedInput as exc:
        raise _syntax_error(exc, text, path) from None
    try:
        return _ToAst(path, text).transform(tree)
    except VisitError as exc:  # an IncdslError raised inside a Transformer method
        raise exc.orig_exc from None


def comment_above(text: str, line: int, path: str = "<spec>") -> tuple[str, Span | None]:
    r"""The comment on the lines right above line ``line`` (1-based; no blank line between), without
    its '#' marks, and its span: what a template's class has for a docstring.

    >>> comment_above("# A block.\n#   two convs\ntemplate b { conv 3x3 8 }\n", 3)[0]
    'A block.\n  two convs'
    """
    lines = [x.rstrip("\r") for x in text.split("\n")]  # as Lark counts lines
    first = line - 1
    while first > 0 and lines[first - 1].lstrip().startswith("#"):
        first -= 1
    block = [lines[i].lstrip()[1:] for i in range(first, line - 1)]
    if not block:
        return "", None
    strip = min((len(b) - len(b.lstrip()) for b in block if b.strip()), default=0)
    comment = "\n".join(b[strip:].rstrip() for b in block).strip("\n")
    return comment, Span(path, first + 1, 1, text, len(lines[first]))


def header_comment(text: str) -> str:
    """The comment a spec opens with (its '#' lines before anything else), without the '#' marks."""
    lines = text.removeprefix("\ufeff").split("\n")
    count = next((i for i, x in enumerate(lines) if not x.lstrip().startswith("#")), len(lines))
    return comment_above(text, count + 1)[0] if count else ""


def _blank_comment(match: re.Match) -> str:
    comment = match.group()
    return " " * len(comment) if comment.startswith("#") else comment


def _check_sizes(blanked: str, text: str, path: str) -> None:
    """A SpecSyntaxError at the first '{' nested deeper than MAX_NESTING, or at the first word past
    MAX_WORDS in one statement: both found in one linear scan, before Lark builds anything."""
    depth = words = 0
    for match in _SCAN.finditer(blanked):
        token = match.group()
        if token == "{":
            depth, words = depth + 1, 0
            if depth > MAX_NESTING:
                raise SpecSyntaxError(
                    f"blocks are nested more than {MAX_NESTING} deep",
                    _offset_span(blanked, match.start(), path, text),
                    hint="a network needs a few levels; use templates to name the inner blocks",
                )
        elif token in ("}", "\n", ";"):
            depth, words = depth - (token == "}"), 0
        else:
            words += 1
            if words > MAX_WORDS:
                raise SpecSyntaxError(
                    f"a statement has more than {MAX_WORDS} words",
                    _offset_span(blanked, match.start(), path, text),
                    hint=f"a row takes at most {MAX_ARGUMENTS} arguments",
                )


def _offset_span(blanked: str, offset: int, path: str, text: str) -> Span:
    line = blanked.count("\n", 0, offset) + 1
    return Span(path, line, offset - blanked.rfind("\n", 0, offset), text)


def _syntax_error(exc: UnexpectedInput, text: str, path: str) -> SpecSyntaxError:
    line, column = max(exc.line, 1), max(exc.column, 1)
    if isinstance(exc, UnexpectedCharacters):
        char = exc.char if isinstance(exc.char, str) else "?"
        message = f"unexpected character {char!r}"
        if char.isdigit() and not char.isascii():
            return SpecSyntaxError(
                message, Span(path, line, column, text), "numbers are written in ASCII digits 0-9"
            )
    elif isinstance(exc, UnexpectedToken):
        message = f"unexpected {_describe(exc.token)}"
    elif isinstance(exc, UnexpectedEOF):
        message = "unexpected end of file"
    else:  # pragma: no cover - Lark's other UnexpectedInput kinds do not occur with LALR
        message = "syntax error"
    expected = sorted({_TERMINAL_WORDS.get(t, _keyword(t)) for t in getattr(exc, "expected", ())})
    hint = "expected " + ", ".join(expected) if expected else None
    width = len(exc.token) if isinstance(exc, UnexpectedToken) and exc.token.type != "$END" else 1
    return SpecSyntaxError(message, Span(path, line, column, text, max(width, 1)), hint)


def _describe(token: Token) -> str:
    if token.type == "$END":
        return "end of file"
    if token.type == "_NL":
        return "end of line"
    return f"{token.value!r}"


def _keyword(terminal: str) -> str:
    return f"'{terminal.lower()}'" if terminal.isupper() else terminal


def quantity(text: str) -> int:
    """``1.5G`` -> 1500000000 (K, M, G, T are powers of 10^3); a plain count as is.
    Raises ValueError (a :class:`~incdsl.numbers.NumberError`) for anything else."""
    return numbers.read_quantity(text)


def _positions_only(items: tuple, what: str) -> None:
    """A sequential group's items are its positions: rows and nested groups, no branches."""
    for item in items:
        if not isinstance(item, (ast.Row, ast.Sequential)):
            raise SpecSyntaxError(
                f"{what} holds rows (and sequential groups), one per position",
                item.span,
                "write the branches in a template and call it as a row of the group",
            )


def _top_level_rows(group: ast.Sequential) -> list[ast.Row]:
    """The rows of a top-level ``sequential NAME { }``: stages of the network, positions of the group."""
    rows = []
    for item in group.items:
        if isinstance(item, ast.Sequential):  # one position: an nn.Sequential of its own
            item = ast.Row(SEQUENTIAL, (), item.span, name=item.name, group=item)
        rows.append(replace(item, sequence=group.name))
    return rows


class _ToAst(Transformer):
    """One method per grammar rule, each building one AST node."""

    def __init__(self, path: str, source: str):
        super().__init__()
        self.path, self.source = path, source

    def _span(self, item) -> Span:
        if isinstance(item, Token):
            return Span(self.path, item.line, item.column, self.source, len(str(item)))
        meta = item
        return Span(self.path, meta.line, meta.column, self.source, 1)

    # values: every number goes through incdsl.numbers, its error placed at the token ------------
    def _number(self, read, token: Token, *bounds):
        try:
            return read(str(token), *bounds)
        except NumberError as error:
            raise SpecArgumentError(str(error), self._span(token)) from None

    def INT(self, token):
        return Token.new_borrow_pos("INT", self._number(numbers.read_int, token, 0, MAX_BUDGET), token)

    def FLOAT(self, token):
        return Token.new_borrow_pos("FLOAT", self._number(numbers.read_float, token), token)

    def _int(self, token: Token, low: int = 0, high: int = MAX_INT) -> int:
        """An INT token's value (read by INT) within [low, high]."""
        try:
            return numbers.check_range(token.value, str(token), low, high)
        except NumberError as error:
            raise SpecArgumentError(str(error), self._span(token)) from None

    def _size(self, token: Token) -> ast.Size:
        text, _, stride = str(token).partition("/")
        dims = tuple(self._size_part(token, d) for d in text.split("x"))
        return ast.Size(dims, self._size_part(token, stride) if stride else None)

    def _size_part(self, token: Token, digits: str) -> int:
        try:
            return numbers.read_int(digits, 0, MAX_INT)
        except NumberError as error:
            raise SpecArgumentError(f"in the size {str(token)!r}: {error}", self._span(token)) from None

    def _value(self, token: Token) -> ast.Value:
        if token.type == "SIZE":
            return self._size(token)
        if token.type == "NAME":
            return ast.Ref(str(token))
        if token.type == "INT":
            return self._int(token)
        return token.value

    def _arguments(self, args: list, span: Span, what: str) -> tuple:
        if len(args) > MAX_ARGUMENTS:
            raise SpecArgumentError(
                f"{what} has {len(args):,} arguments; at most {MAX_ARGUMENTS} are allowed", span
            )
        return tuple(args)

    def _operand(self, item) -> ast.Value:
        return self._value(item) if isinstance(item, Token) else item

    def _expression_span(self, meta, item) -> Span:
        if isinstance(item, Token):
            return self._span(item)
        return Span(self.path, meta.line, meta.column, self.source, max(1, meta.end_pos - meta.start_pos))

    @v_args(meta=True)
    def positional(self, meta, children):
        (value,) = children
        return ast.Arg(self._operand(value), self._expression_span(meta, value))

    @v_args(inline=True)
    def keyword(self, key, value):
        return ast.Arg(self._operand(value), self._span(key), key=str(key))

    shortcut_option = keyword

    # arithmetic: w*4, (k-1)//2, make_divisible(c*t, 8), 3x3/s ---------------------------------
    def _binary(op: str):  # noqa: N805 (a method factory, called in the class body)
        @v_args(inline=True)
        def build(self, left, right):
            return ast.Binary(op, self._operand(left), self._operand(right))

        return build

    add, sub, mul, div, floordiv, mod = map(_binary, ("+", "-", "*", "/", "//", "%"))
    eq, ne, lt, le, gt, ge = map(_binary, ("==", "!=", "<", "<=", ">", ">="))
    and_, or_ = map(_binary, ("and", "or"))

    @v_args(inline=True)
    def apply(self, fn, *args):
        name = str(fn)
        if name not in FUNCTIONS:
            raise SpecNameError(f"unknown function '{name}'", self._span(fn), did_you_mean(name, FUNCTIONS))
        _, fewest, most = FUNCTIONS[name]
        if not fewest <= len(args) <= most:
            count = f"{fewest}" if fewest == most else f"{fewest} to {most}"
            raise SpecArgumentError(f"{name} takes {count} arguments, got {len(args)}", self._span(fn))
        return ast.Apply(name, tuple(self._operand(a) for a in args))

    @v_args(inline=True)
    def name(self, token):
        if token.type == "STRING":
            return ast.Name(str(token)[1:-1], self._span(token), quoted=True)
        return ast.Name(str(token), self._span(token))

    # rows and blocks ------------------------------------------------------------------------
    @v_args(meta=True)
    def row(self, meta, children):
        name, repeat, kind, *args = children
        count = 1
        if repeat is not None:
            try:
                count = numbers.read_int(str(repeat)[:-1], 1, MAX_REPEAT)
            except NumberError as error:
                raise SpecArgumentError(f"repetition count: {error}", self._span(repeat)) from None
        span = self._span(kind)
        return ast.Row(str(kind), self._arguments(args, span, "a row"), span, name, count)

    def body(self, children):
        return tuple(children)

    @v_args(meta=True)
    def branch(self, meta, children):
        name, content = children
        items = content if isinstance(content, tuple) else (content,)
        return ast.Branch(items, self._span(meta), name)

    @v_args(meta=True)
    def residual(self, meta, children):
        word, *args, body = children
        return ast.Residual(body, tuple(args), self._span(meta), MERGE_WORDS[str(word)])

    @v_args(meta=True)
    def split(self, meta, children):
        (body,) = children
        for item in body:
            if not isinstance(item, ast.Branch):
                raise SpecSyntaxError("a split holds branches, one per part of its input", item.span)
        if len(body) < 2:
            raise SpecSyntaxError("a split needs two branches or more", self._span(meta))
        return ast.Split(body, self._span(meta))

    @v_args(meta=True)
    def shortcut(self, meta, children):
        name, *args, content = children
        items = content if isinstance(content, tuple) else (content,)
        for item in items:
            if not isinstance(item, ast.Row):
                raise SpecSyntaxError("a shortcut holds rows only (its projection)", item.span)
        return ast.Shortcut(items, self._span(meta), name, tuple(args))

    @v_args(inline=True)
    def param(self, name, title):
        return str(name), None if title is None else str(title)[1:-1]

    def params(self, children):
        return tuple(c for c in children if c is not None)

    def sequential_mark(self, children):
        return True

    @v_args(meta=True)
    def template_def(self, meta, children):
        name, params, sequential, body = children
        params = params or ()
        span = self._span(name)
        names = self._arguments([p for p, _ in params], span, "a template")
        if sequential:
            _positions_only(body, "a sequential template")
        titles = tuple(t for _, t in params)
        comment, where = comment_above(self.source, meta.line, self.path)
        return ast.Template(
            str(name), names, body, span, titles, sequential=bool(sequential), comment=comment,
            comment_span=where,
        )  # fmt: skip

    @v_args(meta=True)
    def sequential_def(self, meta, children):
        name, body = children
        group = None if name is None else ast.Name(str(name), self._span(name))
        _positions_only(body, "a sequential group")
        return ast.Sequential(group, body, group.span if group else self._span(meta))

    @v_args(meta=True)
    def aux_def(self, meta, children):
        name, after, *args, head = children
        span = self._span(name)
        return ast.Aux(
            ast.Name(str(name), span), after, self._arguments(args, span, "an aux head"), head, span
        )

    @v_args(meta=True)
    def defaults_decl(self, meta, children):
        kind, *args = children
        span = self._span(kind)
        return ast.Defaults(str(kind), self._arguments(args, span, "a defaults line"), span)

    # header ---------------------------------------------------------------------------------
    @v_args(inline=True)
    def network_decl(self, token):
        return ("network", str(token), self._span(token))

    @v_args(inline=True)
    def input_decl(self, token):
        return ("input", self._size(token), self._span(token))

    @v_args(inline=True)
    def classes_decl(self, token):
        return ("classes", self._int(token, 1), self._span(token))

    @v_args(inline=True)
    def budget_decl(self, token):
        if token.type == "INT":
            return ("budget", self._int(token, 1, MAX_BUDGET), self._span(token))
        return ("budget", self._number(numbers.read_quantity, token, 1, MAX_BUDGET), self._span(token))

    def start(self, statements):
        header: dict = {}
        spans: dict = {}
        groups: dict[type, list] = {ast.Defaults: [], ast.Template: [], ast.Row: [], ast.Aux: []}
        for statement in statements:
            if isinstance(statement, ast.Sequential):
                if statement.name is None:
                    raise SpecSyntaxError(
                        "a top-level sequential group needs a name: its attribute in the model",
                        statement.span,
                        "sequential features { ... }",
                    )
                groups[ast.Row] += _top_level_rows(statement)
            elif isinstance(statement, tuple):
                key, value, span = statement
                if key in header:
                    raise SpecSyntaxError(f"'{key}' is declared twice", span)
                header[key], spans[key] = value, span
            else:
                groups[type(statement)].append(statement)
        return ast.Spec(
            path=self.path,
            source=self.source,
            network=header.get("network"),
            input=header.get("input"),
            classes=header.get("classes"),
            budget=header.get("budget"),
            defaults=tuple(groups[ast.Defaults]),
            templates=tuple(groups[ast.Template]),
            rows=tuple(groups[ast.Row]),
            auxes=tuple(groups[ast.Aux]),
            header_spans=spans,
        )
