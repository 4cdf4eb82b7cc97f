"""The README's commands run as printed: each parses with the real argument parser, writes only where
git ignores, and the quick ones run in a temporary directory with the exit status they promise; every
verb and option of the command line has help text."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from functools import cache

import pytest
from conftest import ROOT

from incdsl.tools import cli

README = ROOT / "README.md"
OUTPUT_OPTIONS = ("-o", "--output", "--out")
# Quick, and needing neither torch nor data: run in a temporary directory, in the README's order.
QUICK = {"stats", "check", "specs", "format", "fit", "diff"}
QUICK_COMPILE = re.compile(r"\.(py|dot)$")  # compile to Python, draw to DOT: no torch, no Graphviz


@cache
def commands() -> list[tuple[int, str]]:
    """Each ``$ incdsl ...`` and ``$ mkdir ...`` line of the README's console blocks, with its line."""
    found, inside = [], False
    for number, line in enumerate(README.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("```"):
            inside = line.strip() == "```console"
        elif inside and line.startswith(("$ incdsl ", "$ mkdir ")):
            found.append((number, line[2:]))
    return found


def words(command: str) -> list[str]:
    """A command's words without its trailing ``# comment``."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=False)
    lexer.whitespace_split, lexer.commenters = True, "#"
    return list(lexer)


def expected_status(command: str) -> int:
    match = re.search(r"#\s*exit (\d+)", command)
    return int(match.group(1)) if match else 0


def parse(argv: list[str]) -> argparse.Namespace:
    parser = cli.training_parser() if argv[0] in cli.TRAINING else cli._parser()
    try:
        return parser.parse_args(argv)
    except SystemExit:
        pytest.fail(f"the README's `incdsl {shlex.join(argv)}` does not parse (see the usage above)")


def test_the_readme_has_commands():
    verbs = {words(c)[1] for _, c in commands() if c.startswith("incdsl")}
    assert {"stats", "compile", "draw", "train", "eval", "fit", "diff", "runs", "plot", "bench"} <= verbs


@pytest.mark.parametrize(("line", "command"), commands(), ids=[f"line{n}" for n, _ in commands()])
def test_every_readme_command_parses_and_writes_where_git_ignores(line, command):
    argv = words(command)
    if argv[0] == "mkdir":
        return
    args = parse(argv[1:])
    outputs = [argv[i + 1] for i, word in enumerate(argv[:-1]) if word in OUTPUT_OPTIONS]
    for output in outputs:
        assert not (ROOT / output).exists() or ignored(output), f"README:{line} overwrites {output}"
        assert ignored(output), f"README:{line} writes {output}, which git would list as new"
    assert args.command == argv[1]


def ignored(path: str) -> bool:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("no git checkout to ask what is ignored")
    done = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT, capture_output=True)
    return done.returncode == 0


def quick(argv: list[str]) -> bool:
    if argv[0] == "mkdir":
        return True
    verb = argv[1]
    if verb in ("compile", "draw"):
        output = argv[argv.index("-o") + 1]
        return bool(QUICK_COMPILE.search(output)) and "--optimize" not in argv
    return verb in QUICK


def test_the_quick_readme_commands_run_as_printed(tmp_path):
    """In a directory holding what the README refers to (specs/, tests/fixtures/), the README's quick
    commands run in its order (fit writes what diff reads) and exit as they say."""
    for name in ("specs", "tests"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"}
    ran = 0
    for line, command in commands():
        argv = words(command)
        if not quick(argv):
            continue
        if argv[0] == "mkdir":
            (tmp_path / argv[-1]).mkdir(parents=True, exist_ok=True)
            continue
        done = subprocess.run(
            [sys.executable, "-m", "incdsl", *argv[1:]], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert done.returncode == expected_status(command), f"README:{line}: {command}\n{done.stderr}"
        ran += 1
    assert ran >= 10


def test_draw_in_the_readme_runs_with_graphviz(tmp_path):
    if shutil.which("dot") is None:
        pytest.skip("Graphviz's dot is not installed")
    draws = [words(c) for _, c in commands() if c.startswith("incdsl draw")]
    assert any("--level" in argv for argv in draws)
    for argv in draws:
        out = tmp_path / argv[argv.index("-o") + 1]
        out.parent.mkdir(parents=True, exist_ok=True)
        argv[argv.index("-o") + 1] = str(out)
        assert cli.main(argv[1:]) == 0 and out.stat().st_size > 0


def walk(parser: argparse.ArgumentParser, path: str):
    """(where, what) for every verb and option of a parser and its sub-parsers, and its help text."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                yield f"{path} {name}", helps.get(name)
                yield from walk(sub, f"{path} {name}")
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield f"{path} {'/'.join(action.option_strings) or action.dest}", action.help


def test_every_verb_and_option_has_help_text():
    missing = [
        where
        for parser in (cli._parser(), cli.training_parser())
        for where, text in walk(parser, "incdsl")
        if not text or text == argparse.SUPPRESS
    ]
    assert missing == []


def test_help_opens_with_what_the_tool_does(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    description = out.split("\n\n")[1]
    assert description.startswith("Describe a convolutional network")
    assert "argument parsing" not in out  # once the module docstring's first line


def test_no_section_is_written_twice():
    """A merge once left four Performance subsections in the README twice, the older figures in the
    second copy: every heading (outside code blocks) is unique."""
    headings, inside = [], False
    for line in README.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            inside = not inside
        elif not inside and line.startswith("#"):
            headings.append(line)
    assert [h for h in headings if headings.count(h) > 1] == []
