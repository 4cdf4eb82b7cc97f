"""The editor files under editors/: they know every layer kind, and their patterns compile."""

from __future__ import annotations

import json
import re
import sys

from conftest import ROOT

from incdsl.kinds.layers import ACT, KINDS

EDITORS = ROOT / "editors"


def _patterns(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "match":
                yield value
            yield from _patterns(value)
    elif isinstance(node, list):
        for value in node:
            yield from _patterns(value)


def test_textmate_grammar_patterns_compile_and_name_every_kind():
    grammar = json.loads((EDITORS / "vscode" / "syntaxes" / "incdsl.tmLanguage.json").read_text())
    for pattern in _patterns(grammar):
        re.compile(pattern)  # Python's re stands in for Oniguruma: the patterns use the common subset
    kinds = re.search(r"\((conv\|[^)]*)\)", grammar["repository"]["kind"]["match"]).group(1).split("|")
    assert set(kinds) == set(KINDS) | {ACT, "inception"}, "run: python editors/sync.py"
    package = json.loads((EDITORS / "vscode" / "package.json").read_text())
    assert package["contributes"]["grammars"][0]["scopeName"] == grammar["scopeName"]


def test_vim_syntax_names_every_kind():
    syntax = (EDITORS / "nvim" / "syntax" / "incdsl.vim").read_text()
    line = next(line for line in syntax.splitlines() if line.startswith("syn keyword incdslKind"))
    assert set(line.split()[3:]) == set(KINDS) | {ACT, "inception"}, "run: python editors/sync.py"


def test_lsp_without_pygls_says_how_to_get_it(capsys, monkeypatch):
    import incdsl.tools
    from incdsl.tools import cli

    monkeypatch.delitem(sys.modules, "incdsl.tools.lsp", raising=False)
    monkeypatch.delattr(incdsl.tools, "lsp", raising=False)  # set when another test imported it
    monkeypatch.setitem(sys.modules, "lsprotocol", None)
    monkeypatch.setitem(sys.modules, "pygls", None)
    assert cli.main(["lsp"]) == 2
    assert "pip install 'incdsl[lsp]'" in capsys.readouterr().err
