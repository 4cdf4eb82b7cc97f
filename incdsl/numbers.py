"""One validation for every number a user writes: in a spec, on the command line, in a config file.

Each reader takes the text as written and returns the value, or raises :class:`NumberError` whose
message says what is wrong with the text (not where it came from: the caller adds that, a span in a
spec, ``argument --budget`` on the command line, the key of a config file). Numbers are written in ASCII
digits only (no ``1_000``, no full-width digits), are finite (no ``inf``, ``nan``, nor ``1e400``, which a
float turns into ``inf``), and lie in the range the caller gives.

>>> read_quantity("1.5G")
1500000000
>>> read_float("1e400")
Traceback (most recent call last):
...
incdsl.numbers.NumberError: '1e400' is too large for a 64-bit float
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

MAX_INT = 2**31 - 1  # the largest integer a spec's arguments, sizes and classes may hold
MAX_REPEAT = 10_000  # the largest repetition count (``Nx``) of one row
MAX_BUDGET = 10**18  # the largest multiply-add budget (a million T)
MAX_DIGITS = 40  # longer digit strings are refused before Python converts them

SI = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}

_INT = re.compile(r"[+-]?[0-9]+\Z")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\Z")
_QUANTITY = re.compile(r"([0-9]+(\.[0-9]+)?)([KMGT]?)\Z", re.IGNORECASE)


class NumberError(ValueError):
    """The text is not a number of the kind asked for, or is out of range."""


def read_int(text: str, low: int | None = None, high: int | None = None) -> int:
    """An integer written in ASCII digits (an optional sign), within ``[low, high]``.

    >>> read_int("12", 1, 100)
    12
    """
    if not _INT.match(text):
        raise NumberError(f"{_show(text)} is not an integer{_why(text)}")
    if len(text.lstrip("+-")) > MAX_DIGITS:
        raise NumberError(f"{_show(text)} is too large" + (f": at most {high:,}" if high is not None else ""))
    return check_range(int(text), text, low, high)


def read_float(text: str, low: float | None = None, high: float | None = None) -> float:
    """A finite float written as ``0.5``, ``.5``, ``5e-4`` (ASCII, an optional sign), within range.

    >>> read_float("2e-3")
    0.002
    """
    if not _FLOAT.match(text):
        raise NumberError(f"{_show(text)} is not a number{_why(text)}")
    value = float(text)
    if not math.isfinite(value):
        raise NumberError(f"{_show(text)} is too large for a 64-bit float")
    if value == 0 and any(c in "123456789" for c in text.lower().partition("e")[0]):
        raise NumberError(f"{_show(text)} is too small for a 64-bit float (it would be 0)")
    return check_range(value, text, low, high)


def read_quantity(text: str, low: int | None = 1, high: int | None = MAX_BUDGET) -> int:
    """A count written plainly or with an SI suffix: ``1.5G`` = 1,500,000,000 (K, M, G, T = 10^3 ... 10^12).

    >>> read_quantity("25m")
    25000000
    """
    match = _QUANTITY.match(text)
    if not match:
        raise NumberError(f"{_show(text)} is not a count like 1.5G or 1500000000{_why(text)}")
    digits, suffix = match.group(1), match.group(3).upper()
    if len(digits) > MAX_DIGITS:
        raise NumberError(f"{_show(text)} is too large" + (f": at most {high:,}" if high is not None else ""))
    value = Fraction(digits) * SI.get(suffix, 1)
    if value.denominator != 1 and not suffix:
        raise NumberError(f"{_show(text)} is not a whole count")
    return check_range(round(value), text, low, high)


def check_range(value, text: str, low=None, high=None):
    """``value`` when it lies in ``[low, high]``; a NumberError naming the bound otherwise."""
    if low is not None and value < low:
        raise NumberError(f"{_show(text)} is too small: it must be at least {_bound(low)}")
    if high is not None and value > high:
        raise NumberError(f"{_show(text)} is too large: it must be at most {_bound(high)}")
    return value


def _bound(value) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def _show(text: str) -> str:
    shown = text if len(text) <= 40 else text[:37] + "..."
    return repr(shown)


def _why(text: str) -> str:
    """A hint for the usual near-misses: separators, non-ASCII digits, inf and nan."""
    if "_" in text or "," in text:
        return " (write it without separators)"
    if any(c.isdigit() and not c.isascii() for c in text):
        return " (write it in ASCII digits 0-9)"
    if text.strip().lower().lstrip("+-").startswith(("inf", "nan")):
        return " (it must be finite)"
    if not text:
        return " (it is empty)"
    return ""
