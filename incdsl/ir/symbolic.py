"""Values known only by name, and arithmetic over them.

A template becomes one class of the generated file, its parameters constructor arguments. Inside the
class a layer's channels (and a kernel, a stride, a group count) are not numbers but expressions of
those arguments: ``in_channels``, ``n1x1 + n3x3 + n5x5 + pool_proj``, ``w * 4``,
``make_divisible(c * t, 8)``. :class:`Expr` is such an expression: a sum of *atoms* with integer
coefficients plus a constant. An atom is a parameter's name (:class:`Sym`) or, for what is not a sum
(a product of two parameters, a quotient, a function), an :class:`Atom` whose text is its Python source.
Concatenation, residual adds and flattening only ever add and scale, so channel counts stay sums.

:func:`apply` is the one arithmetic of the language: on numbers it computes (the spec's rows, the
network's calls), on names it builds the expression a generated class computes with.

>>> e = Expr.of(Sym("n1x1")) + Expr.of(Sym("n3x3")) + 32
>>> str(e), e.times(4, 4), e.substitute({"n1x1": Expr.of(64), "n3x3": Expr.of(Sym("k"))})
('n1x1 + n3x3 + 32', '(n1x1 + n3x3 + 32) * 4 * 4', Expr(terms=(('k', 1),), const=96))
>>> str(apply("//", apply("-", Sym("k"), 1), 2)), apply("make_divisible", 6 * 32, 8)
('(k - 1) // 2', 192)
>>> apply("*", apply("make_divisible", apply("*", Sym("c"), Sym("t")), 8), 2)
Expr(terms=(('make_divisible(c * t, 8)', 2),), const=0)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass


class Sym(str):
    """A value known only by name: a template parameter inside its class, ``num_classes``, ..."""


class Word(str):
    """A bare word passed as a value that is not a number: an activation's name (``act=relu6``)."""


class ArithmeticError_(ValueError):
    """A computation the spec asks for has no value (a division by zero, a negative size)."""


def make_divisible(value: float, divisor: int, min_value: int | None = None) -> int:
    """The nearest multiple of ``divisor`` to ``value``, at least ``min_value`` (``divisor``) and not
    more than 10% below ``value``: MobileNet's and EfficientNet's channel rounding (torchvision's
    ``_make_divisible``)."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _div(a, b):
    if b == 0:
        raise ArithmeticError_("division by zero")
    return a / b


def _floordiv(a, b):
    if b == 0:
        raise ArithmeticError_("division by zero")
    return a // b


def _mod(a, b):
    if b == 0:
        raise ArithmeticError_("division by zero")
    return a % b


def _make_divisible(value, divisor, *min_value):
    if divisor <= 0 or not isinstance(divisor, int):
        raise ArithmeticError_(f"make_divisible's divisor must be a positive integer, not {divisor}")
    return make_divisible(value, divisor, *min_value)


def _round(value, digits=None):
    return round(value) if digits is None else round(value, digits)


# What each operator and function computes on numbers, and how many arguments a function takes.
OPERATORS: dict[str, Callable] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": _div,
    "//": _floordiv,
    "%": _mod,
    "==": lambda a, b: int(a == b),
    "!=": lambda a, b: int(a != b),
    "<": lambda a, b: int(a < b),
    "<=": lambda a, b: int(a <= b),
    ">": lambda a, b: int(a > b),
    ">=": lambda a, b: int(a >= b),
    "and": lambda a, b: int(bool(a) and bool(b)),
    "or": lambda a, b: int(bool(a) or bool(b)),
}
FUNCTIONS: dict[str, tuple[Callable, int, int]] = {  # name: (function, fewest, most arguments)
    "make_divisible": (_make_divisible, 2, 3),
    "max": (max, 2, 8),
    "min": (min, 2, 8),
    "int": (int, 1, 1),
    "round": (_round, 1, 2),
}
# Python source of a generated file for each function (make_divisible is a helper the file defines).
PRECEDENCE = {"or": -2, "and": -1, "==": 0, "!=": 0, "<": 0, "<=": 0, ">": 0, ">=": 0}
PRECEDENCE |= {"+": 1, "-": 1, "*": 2, "/": 2, "//": 2, "%": 2}


class Atom(str):
    """What a sum cannot say: ``fn`` (an operator or a function) of ``args``; the string is its source."""

    fn: str
    args: tuple

    def __new__(cls, fn: str, args: tuple) -> Atom:
        atom = super().__new__(cls, _source(fn, args))
        atom.fn, atom.args = fn, args
        return atom

    def __reduce__(self):
        return (Atom, (self.fn, self.args))

    def substitute(self, values: Mapping[str, Expr | int | float]):
        return substitute(self, values)

    def names(self) -> set[str]:
        return set().union(*(names(a) for a in self.args))


Num = int | float | Sym


@dataclass(frozen=True)
class Expr:
    """``sum(coefficient * atom) + const``; terms keep the order in which atoms first appear."""

    terms: tuple[tuple[str, int], ...] = ()
    const: int = 0

    @staticmethod
    def of(value: int | Sym | Expr) -> Expr:
        if isinstance(value, Expr):
            return value
        if isinstance(value, str):  # a Sym or an Atom
            return Expr(((value, 1),))
        return Expr((), int(value))

    def __add__(self, other: int | Sym | Expr) -> Expr:
        other = Expr.of(other)
        terms = dict(self.terms)
        for name, k in other.terms:
            terms[name] = terms.get(name, 0) + k
        return Expr(tuple((n, k) for n, k in terms.items() if k), self.const + other.const)

    __radd__ = __add__

    def __mul__(self, factor: int) -> Expr:
        return Expr(tuple((n, k * factor) for n, k in self.terms if k * factor), self.const * factor)

    @property
    def value(self) -> int | None:
        """The number, when the expression names nothing."""
        return None if self.terms else self.const

    def substitute(self, values: Mapping[str, Expr | int | float]) -> Expr:
        """Replace names by values (a callee's parameters by the caller's arguments)."""
        out = substitute(self, values)
        if isinstance(out, float):
            if not out.is_integer():
                raise ArithmeticError_(f"{self} is {out:g} here, not a whole number")
            out = int(out)
        return Expr.of(out)

    def names(self) -> set[str]:
        return set().union(
            *(name.names() if isinstance(name, Atom) else {str(name)} for name, _ in self.terms)
        )

    def __str__(self) -> str:
        parts = [str(name) if k == 1 else f"{k} * {_wrap(name, 3)}" for name, k in self.terms]  # k * (a // b)
        if self.const or not parts:
            parts.append(str(self.const))
        text = " + ".join(parts)
        return text.replace("+ -", "- ")

    def times(self, *factors: int) -> str:
        """Source text of the expression multiplied by ``factors`` (a flattened feature map's size),
        parenthesised when it is a sum: ``(a + 32) * 4 * 4``."""
        factors = tuple(f for f in factors if f != 1)
        if not factors:
            return str(self)
        if self.value is not None:
            return " * ".join(map(str, (self.value, *factors)))
        return " * ".join([_wrap(self, 2), *map(str, factors)])


Value = int | float | Sym | Expr


def symbolic(value) -> bool:
    """Whether a value is known only by name (a parameter, or an expression of parameters)."""
    return isinstance(value, (Sym, Atom, Expr))


def names(value) -> set[str]:
    """The parameters a value mentions."""
    if isinstance(value, Expr):
        return value.names()
    if isinstance(value, Atom):
        return value.names()
    if isinstance(value, Sym):
        return {str(value)}
    if isinstance(value, tuple):
        return set().union(*(names(v) for v in value))
    return set()


def apply(fn: str, *args):
    """``fn`` (an operator of :data:`OPERATORS` or a function of :data:`FUNCTIONS`) of ``args``: a number
    when every argument is one, else the expression (a sum where it is one, an :class:`Atom` otherwise).
    Raises :class:`ArithmeticError_` for what has no value."""
    if not any(symbolic(a) for a in args):
        compute = OPERATORS[fn] if fn in OPERATORS else FUNCTIONS[fn][0]
        try:
            return compute(*args)
        except (OverflowError, ValueError) as error:
            raise ArithmeticError_(str(error)) from None
    a, b = (args + (None,))[:2]
    exact = all(isinstance(x, int) or symbolic(x) for x in args)
    if fn in ("+", "-") and exact:
        return simplest(Expr.of(a) + Expr.of(b) * (1 if fn == "+" else -1))
    if fn == "*" and exact and (isinstance(a, int) or isinstance(b, int)):
        number, other = (a, b) if isinstance(a, int) else (b, a)
        return simplest(Expr.of(other) * number)
    if fn == "//" and isinstance(b, int) and b > 0 and exact:
        e = Expr.of(a)
        if all(k % b == 0 for _, k in e.terms) and e.const % b == 0:
            return simplest(Expr(tuple((n, k // b) for n, k in e.terms), e.const // b))
    return Atom(fn, tuple(simplest(x) if isinstance(x, Expr) else x for x in args))


def simplest(e: Expr):
    """A number for a constant expression, the name itself for a lone name, else the expression."""
    if e.value is not None:
        return e.value
    if len(e.terms) == 1 and e.terms[0][1] == 1 and not e.const:
        return e.terms[0][0]
    return e


def substitute(value, values: Mapping[str, Expr | int | float]):
    """``value`` with the names ``values`` gives replaced, computed as far as the numbers allow."""
    if isinstance(value, Expr):
        total = value.const
        for name, k in value.terms:
            total = apply("+", total, apply("*", substitute(name, values), k))
        return total
    if isinstance(value, Atom):
        return apply(value.fn, *(substitute(a, values) for a in value.args))
    if isinstance(value, Sym) and value in values:
        given = values[value]
        return simplest(given) if isinstance(given, Expr) else given
    return value


def _source(fn: str, args: tuple) -> str:
    if fn in FUNCTIONS:
        return f"{fn}({', '.join(_text(a) for a in args)})"
    a, b = args
    level = PRECEDENCE[fn]
    return f"{_wrap(a, level)} {fn} {_wrap(b, level + 1)}"


def _text(value) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _wrap(value, level: int) -> str:
    """Source of ``value`` as an operand at precedence ``level``: parenthesised when it binds less."""
    return f"({_text(value)})" if _precedence(value) < level else _text(value)


def _precedence(value) -> int:
    if isinstance(value, Expr):
        parts = len(value.terms) + bool(value.const)
        if parts > 1:
            return 1
        if value.terms and value.terms[0][1] != 1:
            return 2
        return _precedence(value.terms[0][0]) if value.terms else 3
    if isinstance(value, Atom):
        return PRECEDENCE.get(value.fn, 3)
    if isinstance(value, (int, float)) and value < 0:
        return 1
    return 3


__all__ = [
    "ArithmeticError_", "Atom", "Expr", "FUNCTIONS", "Num", "OPERATORS", "Sym", "Word", "apply",
    "make_divisible", "names", "substitute", "symbolic",
]  # fmt: skip
