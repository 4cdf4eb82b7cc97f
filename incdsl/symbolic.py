"""Values known only by name, and channel counts as expressions of them.

A template becomes one class of the generated file, its parameters constructor arguments. Inside the
class a layer's channels are not numbers but expressions of those arguments (``in_channels``,
``n1x1 + n3x3 + n5x5 + pool_proj``): :class:`Expr` is that expression, a sum of parameters with integer
coefficients plus a constant, which is all that convolutions, concatenation, residual adds and
flattening ever produce.

>>> e = Expr.of(Sym("n1x1")) + Expr.of(Sym("n3x3")) + 32
>>> str(e), e.times(4, 4), e.substitute({"n1x1": Expr.of(64), "n3x3": Expr.of(Sym("k"))})
('n1x1 + n3x3 + 32', '(n1x1 + n3x3 + 32) * 4 * 4', Expr(terms=(('k', 1),), const=96))
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


class Sym(str):
    """A value known only by name: a template parameter inside its class, ``num_classes``, ..."""


Num = int | float | Sym


@dataclass(frozen=True)
class Expr:
    """``sum(coefficient * name) + const``; terms keep the order in which names first appear."""

    terms: tuple[tuple[str, int], ...] = ()
    const: int = 0

    @staticmethod
    def of(value: int | Sym | Expr) -> Expr:
        if isinstance(value, Expr):
            return value
        if isinstance(value, Sym):
            return Expr(((str(value), 1),))
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

    def substitute(self, values: Mapping[str, Expr]) -> Expr:
        """Replace names by expressions (a callee's parameters by the caller's arguments)."""
        out = Expr((), self.const)
        for name, k in self.terms:
            out = out + values.get(name, Expr.of(Sym(name))) * k
        return out

    def __str__(self) -> str:
        parts = [name if k == 1 else f"{k} * {name}" for name, k in self.terms]
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
        head = str(self) if len(self.terms) + bool(self.const) == 1 and self.terms[0][1] == 1 else f"({self})"
        return " * ".join([head, *map(str, factors)])
