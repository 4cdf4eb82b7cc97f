"""The grammar and the AST: what parses to what, spans, and format -> parse round trips."""

from dataclasses import replace

import pytest
from conftest import ROOT
from hypothesis import given, settings
from test_differential import specs

from incdsl.errors import SpecSyntaxError
from incdsl.syntax import ast
from incdsl.syntax.formatter import format_spec
from incdsl.syntax.parser import parse
from incdsl.tools import cli

ALL_SPECS = sorted((ROOT / "specs").glob("*.inc")) + [ROOT / "grammars" / "prelude.inc"]


def same(a: ast.Spec, b: ast.Spec) -> bool:
    """Equal ASTs: spans, paths and source text aside."""
    return replace(a, path="", source="") == replace(b, path="", source="")


def test_rows_labels_repeats_and_options():
    spec = parse("input 32x32x3\n3a: 2x inception 1 2 3 4 5 6\nconv1: conv 7x7/2 64 nobias eps=1e-3\n")
    first, second = spec.rows
    assert (first.name.text, first.name.is_label, first.repeat, first.kind) == ("3a", True, 2, "inception")
    assert [a.value for a in first.args] == [1, 2, 3, 4, 5, 6]
    assert second.args[0].value == ast.Size((7, 7), 2)
    assert second.args[2].value == ast.Ref("nobias")
    assert (second.args[3].key, second.args[3].value) == ("eps", 0.001)


def test_header_and_si_budget():
    spec = parse("network n\ninput 299x299x3\nclasses 1000\nbudget 5.8G\n")
    assert (spec.network, spec.input.dims, spec.classes, spec.budget) == (
        "n",
        (299, 299, 3),
        1000,
        5_800_000_000,
    )


def test_semicolons_comments_and_blank_lines():
    text = "# head\n\ninput 8x8x3   # size\n\n\nconv 1x1 4; conv 3x3 4  # two rows\n# tail"
    assert [r.kind for r in parse(text).rows] == ["conv", "conv"]


def test_nested_branches_and_template_params():
    spec = parse(
        "template t(a, b) {\n branch x: conv 1x1 a\n branch { y: conv 1x1 b; branch: conv 1x3 b; branch: conv 3x1 b }\n}\n"
    )
    (template,) = spec.templates
    assert template.params == ("a", "b")
    outer = template.body[1]
    assert outer.name is None and isinstance(outer.items[1], ast.Branch)


def test_spans_point_at_the_source():
    spec = parse("input 8x8x3\n  fc: linear 10\n", "x.inc")
    row = spec.rows[0]
    assert (row.span.line, row.span.column, row.name.span.column) == (2, 7, 3)
    assert row.span.source_line() == "  fc: linear 10"


def test_header_twice_is_an_error():
    with pytest.raises(SpecSyntaxError, match="'input' is declared twice"):
        parse("input 8x8x3\ninput 8x8x3\n")


@pytest.mark.parametrize("path", ALL_SPECS, ids=lambda p: p.name)
def test_format_round_trip_of_shipped_specs(path):
    spec = parse(path.read_text(), str(path))
    text = format_spec(spec)
    assert same(parse(text), spec)
    assert format_spec(parse(text)) == text  # the layout is a fixed point


@settings(max_examples=50, deadline=None)
@given(specs())
def test_format_round_trip_of_random_specs(text):
    spec = parse(text)
    assert same(parse(format_spec(spec)), spec)


def test_format_command(capsys):
    assert cli.main(["format", "googlenet"]) == 0
    out = capsys.readouterr().out
    assert (
        out.startswith("network GoogLeNet\ninput 224x224x3\n") and "3a: inception 64 96 128 16 32 32" in out
    )


@pytest.mark.parametrize("written", ["60M", "1.5G", "60000000", "2.5T", "100K"])
def test_format_keeps_the_budget_as_written(written):
    text = f"network N\ninput 8x8x3\nclasses 2\nbudget {written}\n\nconv 3x3/1 4\nlinear classes\n"
    spec = parse(text)
    formatted = format_spec(spec)
    assert f"\nbudget {written}\n" in formatted and formatted == text
    assert parse(formatted).budget == spec.budget  # the same number, round trip


def test_format_writes_a_changed_budget_as_digits():
    spec = parse("input 8x8x3\nbudget 60M\nconv 3x3/1 4\n")
    assert "budget 45000000\n" in format_spec(replace(spec, budget=45_000_000))
