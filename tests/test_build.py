"""ir.build from the AST: header overrides, a part of the rows, the template table, the stage-to-row map,
each checked against what the written text (or the whole network's build) gives."""

from __future__ import annotations

import re

import pytest

import incdsl
from incdsl.ir import tree as ir
from incdsl.kinds.layers import KINDS, resolve, width_argument
from incdsl.resources import shipped_specs
from incdsl.syntax import ast, parser

SHIPPED = sorted(shipped_specs())


def spec_of(name: str) -> ast.Spec:
    return incdsl.parse(*incdsl.read(name))


def edited(name: str, pattern: str, replacement: str) -> incdsl.Network:
    """The network of a shipped spec with its text edited: what an override must equal."""
    text, path = incdsl.read(name)
    changed, count = re.subn(pattern, replacement, text, count=1, flags=re.MULTILINE)
    assert count == 1
    return incdsl.from_text(changed, path)


def counts(net: incdsl.Network) -> list[tuple]:
    stats = incdsl.stats(net)
    return [(r.name, r.output, r.params, r.macs) for r in stats.rows] + [(stats.params, stats.macs)]


def test_header_overrides_equal_the_edited_text():
    spec = spec_of("googlenet")
    assert counts(incdsl.network(spec, classes=10)) == counts(
        edited("googlenet", r"^classes .*$", "classes 10")
    )
    small = ast.Size((256, 256, 3))
    assert counts(incdsl.network(spec, input=small)) == counts(
        edited("googlenet", r"^input .*$", "input 256x256x3")
    )
    net = incdsl.network(spec, budget=1_500_000_000)
    assert (
        net.budget == incdsl.stats(edited("googlenet", r"^budget .*$", "budget 1.5G")).budget == 1_500_000_000
    )


def test_a_prefix_is_the_whole_networks_first_rows_without_aux_heads_or_budget():
    spec = spec_of("googlenet")
    whole = incdsl.network(spec)
    for rows in (1, 7, 12, len(spec.rows)):
        part = incdsl.network(spec, rows=rows)
        assert part.auxes == () and part.budget is None
        assert [s.attr for s in part.stages] == [s.attr for s in whole.stages[: len(part.stages)]]
        assert counts(part)[:-1] == counts(whole)[: len(part.stages)]
        assert incdsl.network(ir.prefix(spec, rows)).stages[-1].attr == part.stages[-1].attr


@pytest.mark.parametrize("name", ["googlenet", "inception_v3", "resnet50", "mobilenet_v2", "densenet121"])
def test_rows_built_from_a_given_input_cost_what_they_cost_in_the_whole_network(name):
    spec = spec_of(name)
    whole = incdsl.network(spec)
    for cut in range(1, len(spec.rows), 3):
        before = whole.facts[whole.row_stages[cut - 1][-1].node].output
        if before.flat or before.last:
            continue
        size = ast.Size((before.height, before.width, before.channels))
        part = incdsl.network(spec, rows=slice(cut, None), input=size)
        expected = [s for s in whole.stages if s.group >= cut]
        assert [s.group for s in part.stages] == [s.group for s in expected]  # the written rows' indices
        assert [part.facts[s.node] for s in part.stages] == [whole.facts[s.node] for s in expected]


@pytest.mark.parametrize("name", SHIPPED)
def test_the_stage_to_row_map_gives_each_written_row_its_repetitions(name):
    spec = spec_of(name)
    net = incdsl.network(spec)
    assert sorted(net.row_stages) == list(range(len(spec.rows)))
    assert [len(net.row_stages[i]) for i in range(len(spec.rows))] == [row.repeat for row in spec.rows]
    assert [s for i in range(len(spec.rows)) for s in net.row_stages[i]] == list(net.stages)
    assert all(
        stage.row.span == spec.rows[i].span for i, stages in net.row_stages.items() for stage in stages
    )


def test_the_template_table_is_the_preludes_shadowed_by_the_specs_own():
    own = incdsl.parse(
        "input 32x32x3\ntemplate inception(c) {\n    conv 1x1 c\n}\ntemplate mine(c) {\n    conv 3x3 c\n}\n"
    )
    net = incdsl.network(replace_rows(own, "inception 16"))
    prelude = {t.name for t in parser.prelude()}
    assert set(net.templates) == prelude | {"mine"}
    assert net.templates["inception"] is own.templates[0]  # the spec's own, not the prelude's
    assert net.facts[net.stages[0].node].output.channels == 16


def replace_rows(spec: ast.Spec, row_text: str) -> ast.Spec:
    from dataclasses import replace

    return replace(spec, rows=incdsl.parse(f"input 8x8x3\n{row_text}\n").rows)


def test_the_prelude_is_parsed_once_and_shared():
    assert incdsl.prelude is parser.prelude and parser.prelude() is parser.prelude()
    assert parser.prelude()[0].span.path == parser.PRELUDE


def test_a_build_parses_nothing(monkeypatch):
    spec = spec_of("googlenet")
    parser.prelude()
    calls = []
    monkeypatch.setattr(parser, "parse", lambda *a: calls.append(a))
    incdsl.network(spec, rows=5, classes=10)
    assert calls == []


def test_the_layer_tables_width_is_the_argument_that_sets_a_layers_output_channels():
    """width_argument (what fit scales) against the binder: the value there is the op's output."""
    checked = 0
    for name in SHIPPED:
        spec = spec_of(name)
        env = {"classes": spec.classes or 1000}
        for row in spec.rows:
            kind, index = KINDS.get(row.kind), width_argument(row)
            if kind is None or kind.width is None:
                assert index is None
                continue
            value = ir.value_of(row.args[index].value, env, row.span)
            assert resolve(row, env, {})[kind.width] == value, (name, row)
            checked += 1
    assert checked > 50
