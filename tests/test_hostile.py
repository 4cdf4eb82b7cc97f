"""Hostile and careless input, one test per class of issue 9: whatever a spec, a file name or a number
says, incdsl answers with a clear error (exit 2) or a correct result, changes nothing it should not, and
never runs code from elsewhere."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT

from incdsl.tools import cli

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


def test_the_parse_tables_are_cached_privately_and_used_again(tmp_path):
    cache = tmp_path / "cache"
    env = {"INCDSL_CACHE": str(cache)}
    assert python("-m", "incdsl", "check", "googlenet", env=env).returncode == 0
    (tables,) = (cache / "tables").iterdir()
    assert oct((cache / "tables").stat().st_mode & 0o777) == "0o700"
    assert oct(tables.stat().st_mode & 0o777) == "0o600" and tables.suffix == ".marshal"
    before = tables.stat().st_mtime_ns
    # a second process loads the tables: building them would call Lark(...), which is made to fail
    loads = (
        "from incdsl.syntax import parser\n"
        "class Refused:\n"
        "    _load_from_dict = parser.Lark._load_from_dict\n"
        "    def __init__(self, *args, **kwargs):\n"
        "        raise SystemExit('the tables were built again')\n"
        "parser.Lark = Refused\n"
        "parser._lark()\n"
        "print('loaded')\n"
    )
    result = python("-c", loads, env=env)
    assert result.stdout.strip() == "loaded", result.stderr
    assert tables.stat().st_mtime_ns == before


@pytest.fixture
def usercache(tmp_path, monkeypatch):
    from incdsl import usercache

    monkeypatch.setenv("INCDSL_CACHE", str(tmp_path / "cache"))
    usercache.store("value", {"tables": (1, 2)})
    assert usercache.load("value") == {"tables": (1, 2)}
    return usercache, tmp_path / "cache" / "tables"


def test_the_cache_is_ignored_when_others_could_write_it(usercache):
    cache, folder = usercache
    folder.chmod(0o770)
    assert cache.load("value") is None
    folder.chmod(0o700)
    folder.parent.chmod(0o777)
    assert cache.load("value") is None
    folder.parent.chmod(0o700)
    (folder / "value.marshal").chmod(0o622)
    assert cache.load("value") is None


def test_the_cache_never_follows_a_symlink_or_trusts_another_owner(usercache, tmp_path):
    cache, folder = usercache
    entry = folder / "value.marshal"
    elsewhere = tmp_path / "elsewhere.marshal"
    entry.rename(elsewhere)
    entry.symlink_to(elsewhere)
    assert cache.load("value") is None
    entry.unlink()
    elsewhere.rename(entry)
    if os.getuid() == 0:  # only root can give a file away
        os.chown(entry, 12345, 12345)
        assert cache.load("value") is None


def test_damaged_tables_are_rebuilt(usercache, monkeypatch):
    from incdsl.syntax import parser

    cache, folder = usercache
    parser._lark.cache_clear()
    try:
        assert parser.parse(HEADER + "conv 3x3 4\n").rows[0].kind == "conv"  # builds and stores
        (stored,) = folder.glob("parser-*.marshal")
        stored.write_bytes(b"\x00garbage")
        parser._lark.cache_clear()
        assert parser.parse(HEADER + "conv 3x3 4\n").rows[0].kind == "conv"
        stored.write_bytes(__import__("marshal").dumps(({"not": "tables"}, {})))
        parser._lark.cache_clear()
        assert parser.parse(HEADER + "conv 3x3 4\n").rows[0].kind == "conv"
    finally:
        parser._lark.cache_clear()


# -- security: output files ---------------------------------------------------------------------------


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "net.inc"
    path.write_text((ROOT / "specs" / "mini_googlenet.inc").read_text())
    return path


@pytest.mark.parametrize("command", ["compile", "draw", "format"])
@pytest.mark.parametrize("alias", ["same", "symlink", "hardlink"])
def test_the_input_spec_is_never_an_output(capsys, tmp_path, spec, command, alias):
    before = spec.read_bytes()
    out = {"same": spec, "symlink": tmp_path / "link.inc", "hardlink": tmp_path / "hard.inc"}[alias]
    if alias == "symlink":
        out.symlink_to(spec)
    elif alias == "hardlink":
        os.link(spec, out)
    code, _, err = run(capsys, command, spec, "-o", out)
    assert code == 2 and "is the input file" in err, err
    assert spec.read_bytes() == before


def special_files(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    folder = tmp_path / "folder"
    folder.mkdir()
    import socket

    sock_path = tmp_path / "sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    return {"a FIFO": fifo, "a directory": folder, "a socket": sock_path}, sock


@pytest.mark.parametrize("command", ["compile", "draw", "format"])
def test_special_files_are_refused(capsys, tmp_path, spec, command):
    files, sock = special_files(tmp_path)
    with sock:
        for kind, path in files.items():
            code, _, err = run(capsys, command, spec, "-o", path)
            assert code == 2 and f"it is {kind}" in err, err
            assert not path.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "folder", "net.inc", "sock"]


def test_a_device_node_is_refused_without_touching_it(capsys, spec):
    from incdsl.errors import OutputError
    from incdsl.files import check_output

    with pytest.raises(OutputError, match="it is a character device"):
        check_output("/dev/null")  # check_output never writes, so this is safe even as root
    assert os.path.exists("/dev/null") and not os.path.isfile("/dev/null")


def test_an_empty_output_name_is_explained(capsys, spec):
    code, _, err = run(capsys, "compile", spec, "-o", "")
    assert code == 2 and "the output file name is empty" in err


def test_a_symlink_is_written_through_and_stays_a_link(capsys, tmp_path, spec):
    target = tmp_path / "real.py"
    target.write_text("old")
    link = tmp_path / "model.py"
    link.symlink_to(target)
    assert run(capsys, "compile", spec, "-o", link)[0] == 0
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert "class MiniGoogLeNet" in target.read_text() or "def build" in target.read_text()


def test_a_replaced_file_keeps_its_mode(capsys, tmp_path, spec):
    out = tmp_path / "model.py"
    out.write_text("old")
    out.chmod(0o600)
    assert run(capsys, "compile", spec, "-o", out)[0] == 0
    assert out.stat().st_mode & 0o777 == 0o600 and "def build" in out.read_text()


def test_a_hard_link_keeps_the_old_content_as_gcc_and_git_do(capsys, tmp_path, spec):
    out, other = tmp_path / "model.py", tmp_path / "other.py"
    out.write_text("old")
    os.link(out, other)
    assert run(capsys, "compile", spec, "-o", out)[0] == 0
    assert "def build" in out.read_text() and other.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_the_onnx_extension_is_case_insensitive(capsys, tmp_path, spec, monkeypatch):
    from incdsl.backends import onnx

    written = []
    monkeypatch.setattr(onnx, "export", lambda net, path, optimize=False, progress=None: written.append(path))
    assert run(capsys, "compile", spec, "-o", tmp_path / "m.ONNX")[0] == 0
    assert written == [str(tmp_path / "m.ONNX")]


def test_a_closed_pipe_ends_quietly():
    process = subprocess.Popen(
        [sys.executable, "-m", "incdsl", "stats", "googlenet"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    process.stdout.close()  # the reader is gone before the first write
    _, err = process.communicate(timeout=60)
    assert process.returncode == 141 and b"Traceback" not in err, err


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


# -- numbers: one validation, in specs and on the command line ---------------------------------------

# (spec body after the header, message fragment): each is exit 2 with the span at the number.
BAD_NUMBERS = [
    ("conv 3x3 4 bn eps=1e400\n", "'1e400' is too large for a 64-bit float"),
    ("lrn 5 alpha=1e400\n", "'1e400' is too large for a 64-bit float"),
    ("lrn 5 alpha=1e-400\n", "'1e-400' is too small for a 64-bit float"),
    ("conv 3x3 4\nfc: linear 10\naux a after conv weight=1e400: linear 10\n", "'1e400' is too large"),
    ("budget 0\n", "'0' is too small: it must be at least 1"),
    ("budget 0.0K\n", "'0.0K' is too small: it must be at least 1"),
    ("budget 99999999999999999999999T\n", "it must be at most 1,000,000,000,000,000,000"),
    ("conv 3x3 99999999999\n", "'99999999999' is too large: it must be at most 2,147,483,647"),
    ("conv 3x3 " + "9" * 5000 + "\n", "is too large"),  # Python refuses int() of 4300+ digits
    ("conv 99999999999x3 4\n", "in the size '99999999999x3'"),
    (
        "c: 99999999999999999999x conv 1x1 3\n",
        "repetition count: '99999999999999999999' is too large: it must be at most 10,000",
    ),
    ("c: 10001x conv 1x1 3\n", "it must be at most 10,000"),
    ("c: 0x conv 1x1 3\n", "it must be at least 1"),
    ("conv 3x3 １６\n", "unexpected character '１'"),
    ("conv 3x3 1_000\n", "unknown name '_000'"),
]


@pytest.mark.parametrize("body, message", BAD_NUMBERS, ids=[m[:30] for _, m in BAD_NUMBERS])
def test_every_number_in_a_spec_is_validated(capsys, tmp_path, body, message):
    path = tmp_path / "n.inc"
    text = HEADER.replace("classes 10\n", "") + "classes 10\n" + body
    path.write_text(text)
    code, _, err = run(capsys, "check", path)
    assert code == 2 and message in err, err
    assert err.startswith(f"{path}:") and "Traceback" not in err


def test_classes_zero_is_refused(capsys, tmp_path):
    path = tmp_path / "n.inc"
    path.write_text("network n\ninput 8x8x3\nclasses 0\nconv 1x1 4\n")
    code, _, err = run(capsys, "check", path)
    assert code == 2 and "n.inc:3:9: error: '0' is too small: it must be at least 1" in err


@pytest.mark.parametrize(
    "value, message",
    [
        ("0", "'0' is too small: it must be at least 1"),
        ("infG", "'infG' is not a count like 1.5G"),
        ("1e400G", "'1e400G' is not a count like 1.5G"),
        ("-infK", "'-infK' is not a count"),
        ("-1", "'-1' is not a count"),
        ("", "'' is not a count like 1.5G or 1500000000 (it is empty)"),
        ("1_000", "(write it without separators)"),
        ("１０００", "(write it in ASCII digits 0-9)"),
        ("1.5", "'1.5' is not a whole count"),
        ("2000000T", "it must be at most 1,000,000,000,000,000,000"),
    ],
)
def test_budget_on_the_command_line(capsys, value, message):
    code, out, err = run(capsys, "check", "googlenet", f"--budget={value}")
    assert code == 2 and "argument --budget: " in err and message in err, err
    assert out == ""


def test_budget_suffixes_are_exact_and_case_insensitive(capsys):
    assert run(capsys, "check", "googlenet", "--budget", "1.6g")[0] == 0
    code, _, err = run(capsys, "check", "googlenet", "--budget", "1582671871")
    assert code == 1 and "over by 1," in err


def test_json_output_is_strict_json(capsys, tmp_path):
    import json

    path = tmp_path / "n.inc"
    path.write_text(HEADER + "budget 1\nconv 3x3 4\nlrn 5 alpha=1e300 beta=1e-300\n")
    code, out, _ = run(capsys, "stats", path, "--format", "json")

    def refuse(constant):
        raise AssertionError(f"{constant} in JSON output")

    assert code == 0 and json.loads(out, parse_constant=refuse)["budget"]["within"] is False


def test_format_writes_numbers_that_parse_again(capsys, tmp_path):
    from incdsl.syntax.formatter import format_spec
    from incdsl.syntax.parser import parse

    text = HEADER + "lrn 5 alpha=1e300 beta=1e-300 k=0.1\n"
    spec = parse(text)
    assert parse(format_spec(spec)).rows == spec.rows


# -- sizes and bytes: bounded work per input byte ----------------------------------------------------

# Peak memory from VmHWM, which belongs to the process image: ru_maxrss would count pytest's own
# (Linux keeps it across fork and exec).
MEASURE = textwrap.dedent(
    """
    import re, sys, time
    from incdsl.tools import cli
    start = time.perf_counter()
    code = cli.main(sys.argv[1:])
    seconds = time.perf_counter() - start
    peak = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) // 1024
    print(code, seconds, peak)
    """
)


def measured(path):
    """Exit code, seconds and peak memory (MiB) of ``incdsl check path`` in a fresh process."""
    result = python("-c", MEASURE, "check", str(path))
    code, seconds, mib = result.stdout.splitlines()[-1].split()
    return int(code), float(seconds), int(mib), result.stderr


@pytest.mark.parametrize(
    "unit", ["\n", ";", "# comment\n", " \t\n"], ids=["blank", "semicolon", "comment", "space"]
)
def test_blank_lines_take_constant_memory(tmp_path, unit):
    from incdsl.syntax.parser import MAX_SPEC_BYTES

    path = tmp_path / "blank.inc"
    filler = unit * ((MAX_SPEC_BYTES - 200) // len(unit))
    path.write_text(HEADER + filler + "conv 3x3 4\n")
    code, seconds, mib, err = measured(path)
    assert code == 0, err
    assert seconds < 10 and mib < 100, (seconds, mib)  # the old line-end regex: ~200 MB here


def test_a_huge_file_is_refused_before_it_is_read(tmp_path, capsys):
    path = tmp_path / "huge.inc"
    with open(path, "wb") as file:
        file.truncate(10 * 2**20)  # 10 MB of NUL bytes, sparse on disk
    code, _, err = run(capsys, "check", path)
    assert code == 2 and "larger than 256 KiB, the limit for a spec" in err
    text_code, _, text_err = run(capsys, "check", "/dev/zero")
    assert text_code == 2 and "larger than 256 KiB" in text_err


def test_a_row_with_a_million_arguments_fails_fast(tmp_path):
    path = tmp_path / "wide.inc"
    path.write_text(HEADER + "conv 3x3 4 " + "1 " * 100_000 + "\n")
    code, seconds, mib, err = measured(path)
    assert code == 2 and "a statement has more than 256 words" in err and "at most 64 arguments" in err
    assert seconds < 2, seconds


def test_argument_counts_are_limited(capsys, tmp_path):
    path = tmp_path / "args.inc"
    path.write_text(HEADER + "conv 3x3 4 " + "relu " * 70 + "\n")
    code, _, err = run(capsys, "check", path)
    assert code == 2 and "a row has 72 arguments; at most 64 are allowed" in err


def test_deep_nesting_is_a_spec_error(capsys, tmp_path):
    path = tmp_path / "deep.inc"
    depth = 300
    body = "template t {\n" + "branch {\n" * depth + "conv 1x1 4\n" + "}\n" * (depth + 1) + "t\n"
    path.write_text(HEADER + body)
    code, _, err = run(capsys, "check", path)
    assert code == 2 and "blocks are nested more than 32 deep" in err
    assert f"{path}:36:8:" in err  # the 33rd '{': line 4 opens the template


def test_nesting_up_to_the_limit_parses():
    from incdsl.syntax.parser import MAX_NESTING, parse

    body = "template t {\n" + "branch {\n" * (MAX_NESTING - 1) + "conv 1x1 4\n" + "}\n" * MAX_NESTING
    assert parse(HEADER + body).templates[0].name == "t"


# -- encodings ----------------------------------------------------------------------------------------


def test_latin1_is_reported_where_it_is(capsys, tmp_path):
    path = tmp_path / "latin1.inc"
    path.write_bytes((HEADER + "# café\nconv 3x3 4\n").encode("latin-1"))
    code, _, err = run(capsys, "check", path)
    assert code == 2
    assert err.startswith(f"{path}:4:6: error: a spec is not UTF-8 text (byte 0xE9 cannot be decoded)")
    assert "hint: save it as UTF-8" in err


def test_random_bytes_are_a_clear_error(capsys, tmp_path):
    import random

    path = tmp_path / "noise.inc"
    path.write_bytes(random.Random(9).randbytes(4000))
    code, _, err = run(capsys, "check", path)
    assert code == 2 and "not UTF-8 text" in err and len(err) < 2000


def test_a_byte_order_mark_is_accepted(capsys, tmp_path):
    path = tmp_path / "bom.inc"
    path.write_bytes(b"\xef\xbb\xbf" + (ROOT / "specs" / "googlenet.inc").read_bytes())
    code, out, _ = run(capsys, "check", path)
    assert code == 0 and "1,582,671,872 multiply-adds" in out
    from incdsl import parse

    assert parse("\ufeff" + HEADER).network == "net"


def test_a_spec_named_by_an_empty_string(capsys):
    code, _, err = run(capsys, "stats", "")
    assert code == 2 and "empty" in err


# -- the --reference table ----------------------------------------------------------------------------

TABLE = ROOT / "tests" / "fixtures" / "googlenet_table1.tsv"


@pytest.mark.parametrize(
    "cell, message",
    [
        ("abc", "'abc' is not a number"),
        ("inf", "'inf' is not a number (it must be finite)"),
        ("-3", "'-3' is too small: it must be at least 0"),
    ],
)
def test_a_reference_table_with_a_bad_cell(capsys, tmp_path, cell, message):
    table = tmp_path / "t.tsv"
    table.write_text(TABLE.read_text().replace("\t2.7\t", f"\t{cell}\t"))
    code, _, err = run(capsys, "stats", "googlenet", "--reference", table)
    assert code == 2 and f"t.tsv:6: column params_K: {message}" in err, err


def test_a_reference_table_that_is_not_utf8(capsys, tmp_path):
    table = tmp_path / "t.tsv"
    table.write_bytes(TABLE.read_bytes() + "café\n".encode("latin-1"))
    code, _, err = run(capsys, "stats", "googlenet", "--reference", table)
    assert code == 2 and "a reference table is not UTF-8 text (byte 0xE9 cannot be decoded)" in err


# -- parameters: how much memory, and refusing what cannot fit ---------------------------------------

BIG = HEADER + "conv 3x3 1000000\nconv 3x3 1000000\nglobal_avgpool\nfc: linear classes\n"


def test_check_says_how_much_memory_the_parameters_need(capsys, tmp_path):
    code, out, _ = run(capsys, "check", "googlenet")
    assert code == 0 and "parameters: 26.7 MiB as float32 (51.0 MiB with the aux heads, for training)" in out
    path = tmp_path / "big.inc"
    path.write_text(BIG)
    code, out, _ = run(capsys, "check", path)
    assert code == 0 and "9,000,039,000,010 params" in out
    assert "parameters: 32.7 TiB as float32; more than this machine's" in out


def test_build_module_refuses_a_model_that_cannot_fit_before_allocating(tmp_path):
    pytest.importorskip("torch")
    import incdsl
    from incdsl.memory import OutOfMemory

    path = tmp_path / "big.inc"
    path.write_text(BIG)
    with pytest.raises(OutOfMemory, match=r"need 32.7 TiB, more than the .* available on cpu"):
        incdsl.build_module(path)  # 36 TB would be a MemoryError or the OOM killer, not this error


def test_build_module_compares_with_the_memory_available(monkeypatch):
    pytest.importorskip("torch")
    import incdsl
    from incdsl import memory

    monkeypatch.setattr(memory, "available_ram", lambda: 10 * 2**20)  # 10 MiB free
    with pytest.raises(memory.OutOfMemory, match="51.0 MiB, more than the 10.0 MiB available"):
        incdsl.build_module("googlenet")
    monkeypatch.setattr(memory, "available_ram", lambda: 60 * 2**20)
    assert sum(p.numel() for p in incdsl.build_module("googlenet").parameters()) == 13_378_280


def test_compile_warns_about_a_model_this_machine_cannot_hold(capsys, tmp_path):
    path = tmp_path / "big.inc"
    path.write_text(BIG)
    code, _, err = run(capsys, "compile", path, "-o", tmp_path / "big.py")
    assert code == 0 and "warning: parameters: 32.7 TiB as float32; more than this machine's" in err
    assert "warning" not in run(capsys, "compile", "mini_googlenet", "-o", tmp_path / "mini.py")[2]
