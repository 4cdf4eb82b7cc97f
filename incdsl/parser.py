"""Text to :class:`~incdsl.ast.Spec`. Lark's trees and exceptions never leave this module.

>>> spec = parse("network tiny\\ninput 32x32x3\\nclasses 10\\nconv 3x3 16\\n", "tiny.inc")
>>> spec.rows[0].kind
'conv'
"""

from __future__ import annotations

from functools import cache

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import (
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
    VisitError,
)

from . import ast
from .errors import Span, SpecArgumentError, SpecSyntaxError
from .resources import grammar_text

_SI = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}

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
    "$END": "end of file",
}


@cache
def _lark() -> Lark:
    # No cache=True: Lark's cache is a pickle at a predictable path in the shared temp directory, which
    # anyone who can write there could plant. Building the tables takes about 45 ms, once per process.
    return Lark(grammar_text(), parser="lalr", propagate_positions=True, maybe_placeholders=True)


def parse(text: str, path: str = "<spec>") -> ast.Spec:
    """Parse spec text into a :class:`~incdsl.ast.Spec`; raise SpecSyntaxError with a span."""
    try:
        tree = _lark().parse(text + "\n")
    except UnexpectedInput as exc:
        raise _syntax_error(exc, text, path) from None
    try:
        return _ToAst(path, text).transform(tree)
    except VisitError as exc:  # an IncdslError raised inside a Transformer method
        raise exc.orig_exc from None


def _syntax_error(exc: UnexpectedInput, text: str, path: str) -> SpecSyntaxError:
    line, column = max(exc.line, 1), max(exc.column, 1)
    if isinstance(exc, UnexpectedCharacters):
        char = exc.char if isinstance(exc.char, str) else "?"
        message = f"unexpected character {char!r}"
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


def _size(token: Token) -> ast.Size:
    text, _, stride = str(token).partition("/")
    return ast.Size(tuple(int(d) for d in text.split("x")), int(stride) if stride else None)


def quantity(text: str) -> int:
    """``1.5G`` -> 1500000000 (K, M, G, T are powers of 10^3); a plain count as is.
    Raises ValueError for anything else."""
    if text[-1:] in _SI:
        return round(float(text[:-1]) * _SI[text[-1]])
    return int(text)


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

    # values ---------------------------------------------------------------------------------
    def INT(self, token):
        return Token.new_borrow_pos("INT", int(token), token)

    def FLOAT(self, token):
        return Token.new_borrow_pos("FLOAT", float(token), token)

    def _value(self, token: Token) -> ast.Value:
        if token.type == "SIZE":
            return _size(token)
        if token.type == "NAME":
            return ast.Ref(str(token))
        return token.value

    @v_args(inline=True)
    def positional(self, token):
        return ast.Arg(self._value(token), self._span(token))

    @v_args(inline=True)
    def keyword(self, key, token):
        return ast.Arg(self._value(token), self._span(key), key=str(key))

    @v_args(inline=True)
    def name(self, token):
        return ast.Name(str(token), self._span(token))

    # rows and blocks ------------------------------------------------------------------------
    @v_args(meta=True)
    def row(self, meta, children):
        name, repeat, kind, *args = children
        count = int(str(repeat)[:-1]) if repeat is not None else 1
        if count < 1:
            raise SpecArgumentError("a repetition count must be at least 1", self._span(repeat))
        return ast.Row(str(kind), tuple(args), self._span(kind), name, count)

    def body(self, children):
        return tuple(children)

    @v_args(meta=True)
    def branch(self, meta, children):
        name, content = children
        items = content if isinstance(content, tuple) else (content,)
        return ast.Branch(items, self._span(meta), name)

    def params(self, children):
        return tuple(str(c) for c in children if c is not None)

    @v_args(meta=True)
    def template_def(self, meta, children):
        name, params, body = children
        return ast.Template(str(name), params or (), body, self._span(name))

    @v_args(meta=True)
    def aux_def(self, meta, children):
        name, after, *args, head = children
        return ast.Aux(ast.Name(str(name), self._span(name)), after, tuple(args), head, self._span(name))

    @v_args(meta=True)
    def defaults_decl(self, meta, children):
        kind, *args = children
        return ast.Defaults(str(kind), tuple(args), self._span(kind))

    # header ---------------------------------------------------------------------------------
    @v_args(inline=True)
    def network_decl(self, token):
        return ("network", str(token), self._span(token))

    @v_args(inline=True)
    def input_decl(self, token):
        return ("input", _size(token), self._span(token))

    @v_args(inline=True)
    def classes_decl(self, token):
        return ("classes", token.value, self._span(token))

    @v_args(inline=True)
    def budget_decl(self, token):
        return ("budget", quantity(str(token)), self._span(token))

    def start(self, statements):
        header: dict = {}
        spans: dict = {}
        groups: dict[type, list] = {ast.Defaults: [], ast.Template: [], ast.Row: [], ast.Aux: []}
        for statement in statements:
            if isinstance(statement, tuple):
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
