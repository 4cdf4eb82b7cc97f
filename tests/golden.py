"""Golden files: expected outputs kept in tests/fixtures/golden and reviewed as diffs.

Regenerate them all with::

    INCDSL_UPDATE_GOLDEN=1 python -m pytest

then read ``git diff tests/fixtures/golden`` before committing.

>>> check_golden("googlenet.network.dot", to_dot(net))  # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

GOLDEN_DIR = Path(__file__).parent / "fixtures" / "golden"
UPDATE_VARIABLE = "INCDSL_UPDATE_GOLDEN"
MAX_DIFF_LINES = 60


def updating() -> bool:
    """Whether this run rewrites golden files instead of comparing against them."""
    return os.environ.get(UPDATE_VARIABLE) == "1"


def check_golden(name: str, text: str) -> None:
    """Compare ``text`` with ``tests/fixtures/golden/<name>`` exactly (or rewrite the file when
    ``INCDSL_UPDATE_GOLDEN=1``); on a mismatch, fail with a unified diff."""
    path = GOLDEN_DIR / name
    if updating():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8", newline="\n")
        return
    if not path.exists():
        pytest.fail(f"no golden file {path}; create it with {UPDATE_VARIABLE}=1 python -m pytest")
    expected = path.read_text(encoding="utf-8")
    if text != expected:
        pytest.fail(
            f"{name} differs from its golden file ({UPDATE_VARIABLE}=1 rewrites it):\n"
            + _diff(expected, text, name)
        )


def _diff(expected: str, actual: str, name: str) -> str:
    lines = list(
        difflib.unified_diff(
            expected.splitlines(keepends=True), actual.splitlines(keepends=True), f"golden/{name}", "actual"
        )
    )
    shown = "".join(lines[:MAX_DIFF_LINES])
    more = len(lines) - MAX_DIFF_LINES
    return shown + (f"\n... {more} more diff lines" if more > 0 else "")
