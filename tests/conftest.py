"""Shared fixtures. ``tests/`` is on sys.path so tests can ``from golden import check_golden``."""

from __future__ import annotations

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
