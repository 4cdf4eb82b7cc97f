"""Files that ship with incdsl: the grammar, the prelude and the specs.

In a wheel they live inside the package (``incdsl/grammars``, ``incdsl/specs``); in a source checkout
they are the top-level ``grammars/`` and ``specs/`` folders. Both layouts are looked up here, once.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _data_dir(name: str) -> Path:
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"incdsl is installed without its {name}/ folder")


@cache
def grammar_text() -> str:
    return (_data_dir("grammars") / "incdsl.lark").read_text()


@cache
def prelude_path() -> Path:
    return _data_dir("grammars") / "prelude.inc"


def specs_dir() -> Path:
    return _data_dir("specs")


def shipped_specs() -> dict[str, Path]:
    """Shipped spec names (``googlenet``) and their files."""
    return {p.stem: p for p in sorted(specs_dir().glob("*.inc"))}
