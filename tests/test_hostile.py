"""Hostile and careless input, one test per class of issue 9: whatever a spec, a file name or a number
says, incdsl answers with a clear error (exit 2) or a correct result, changes nothing it should not, and
never runs code from elsewhere."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest
from conftest import ROOT

from incdsl import cli

HEADER = "network net\ninput 32x32x3\nclasses 10\n"


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def python(*args, env=None, timeout=120):
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# -- security: Lark's parse-table cache --------------------------------------------------------------

LARK_WITH_CACHE = (
    "from lark import Lark; from incdsl.resources import grammar_text; "
    "Lark(grammar_text(), parser='lalr', propagate_positions=True, maybe_placeholders=True, cache=True)"
)


class Payload:
    """Unpickling this runs code: it writes the file named ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_a_pickle_planted_in_the_temp_directory_never_runs(tmp_path):
    temp = tmp_path / "shared-tmp"
    temp.mkdir()
    env = {"TMPDIR": str(temp)}
    assert python("-c", LARK_WITH_CACHE, env=env).returncode == 0  # the old code's cache file
    (cache,) = temp.glob(".lark_cache_*.tmp")
    marker = tmp_path / "pwned"
    first_line = cache.read_bytes().split(b"\n", 1)[0]  # the grammar's hash, which Lark checks

    def plant():
        cache.write_bytes(first_line + b"\n" + pickle.dumps(Payload(marker)))

    plant()
    assert python("-c", LARK_WITH_CACHE, env=env).returncode == 0
    assert marker.exists(), "the planted pickle should run under Lark's cache=True (the old code)"
    marker.unlink()

    plant()  # Lark rewrote its cache after the payload broke it
    result = python("-m", "incdsl", "check", "googlenet", env=env)
    assert result.returncode == 0, result.stderr
    assert not marker.exists(), "incdsl unpickled a file from the shared temp directory"
    assert {p.name for p in temp.iterdir()} == {cache.name}  # and wrote nothing there


# -- security: control characters in messages --------------------------------------------------------


@pytest.mark.parametrize(
    "raw, shown",
    [("\x1b[2J", "\\x1b[2J"), ("\x00", "\\x00"), ("\u202e", "\\u202e"), ("\x9b", "\\x9b"), ("\x7f", "\\x7f")],
    ids=["ESC", "NUL", "RLO", "CSI", "DEL"],
)
def test_control_characters_are_shown_escaped_and_the_caret_lines_up(capsys, tmp_path, raw, shown):
    path = tmp_path / "evil\x1b[31m.inc"
    path.write_text(HEADER + f"conv 3x3 4 \t{raw}@\n")
    code, _, err = run(capsys, "check", path)
    assert code == 2
    assert all(c == "\n" or c.isprintable() for c in err), repr(err)
    first, source, caret = err.splitlines()[:3]
    assert first.startswith(f"{tmp_path}/evil\\x1b[31m.inc:4:")
    column = int(first.split(":")[2]) - 1  # where the error is, in characters of the raw line
    shown_line = f"conv 3x3 4 \t{raw}@".expandtabs(8).replace(raw, shown)
    assert source == "    " + shown_line
    assert caret.index("^") - 4 == shown_line.index(shown if column == 12 else "@")


def test_a_tab_before_the_error_keeps_the_caret_under_it(capsys, tmp_path):
    path = tmp_path / "tab.inc"
    path.write_text(HEADER + "conv\t3x3\t@\n")
    err = run(capsys, "check", path)[2]
    source, caret = err.splitlines()[1:3]
    assert source[caret.index("^")] == "@"
