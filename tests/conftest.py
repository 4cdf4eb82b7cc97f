"""Shared fixtures. ``tests/`` is on sys.path so tests can ``from golden import check_golden``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
ROOT = TESTS.parent
sys.path.insert(0, str(TESTS))

SHIPPED = sorted(p.stem for p in (ROOT / "specs").glob("*.inc"))


@pytest.fixture
def spec_file(tmp_path):
    """Write spec text to a file and return its path."""

    def write(text: str, name: str = "net.inc") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """$INCDSL_CACHE (the parser's tables, the digits) in a temporary folder, not the user's home."""
    old = os.environ.get("INCDSL_CACHE")
    os.environ["INCDSL_CACHE"] = str(tmp_path_factory.mktemp("incdsl-cache"))
    yield
    if old is None:
        del os.environ["INCDSL_CACHE"]
    else:
        os.environ["INCDSL_CACHE"] = old


@pytest.fixture(scope="session", autouse=True)
def no_terminal_width():
    """Tables are printed whole, whatever the COLUMNS of the shell that runs the tests (a table fits
    it otherwise: incdsl.render); the tests that fit one set it themselves."""
    old = os.environ.pop("COLUMNS", None)
    yield
    if old is not None:
        os.environ["COLUMNS"] = old
