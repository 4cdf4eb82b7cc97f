"""The Graphviz backend: DOT structure at both levels, golden files, folding of ``Nx`` rows, rendering."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import xml.etree.ElementTree as ET
from functools import cache

import pytest
from golden import check_golden

import incdsl
from incdsl.analysis.report import compute, kilo, mega
from incdsl.backends.graphviz import OUTPUT, render, to_dot
from incdsl.errors import OutputError

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")

# 4b is written once with 3x, so the IR has 4b, 4c, 4d; the unnamed 2x conv gives conv1, conv2.
TINY = """
network Tiny
input 32x32x3
classes 10
stem: conv 3x3 16
3a: inception 8 8 16 4 8 8
4b: 3x inception 16 8 16 4 8 8
2x conv 1x1 8
global_avgpool
fc: linear classes
aux side after 4c weight=0.5: linear classes
"""


@cache
def googlenet() -> incdsl.Network:
    return incdsl.load("googlenet")


@cache
def tiny() -> incdsl.Network:
    return incdsl.from_text(TINY, "<tiny>")


# A reader for the line-per-statement DOT that to_dot writes --------------------------------------

NODE = re.compile(r'\s*"([^"]+)" \[(.*)\];$')
EDGE = re.compile(r'\s*"([^"]+)" -> "([^"]+)"(?: \[(.*)\])?;$')
CLUSTER = re.compile(r'\s*subgraph "(cluster_[^"]+)" \{$')


def parse(text: str):
    """Nodes as {id: (enclosing clusters, attribute text)}, edges as [(tail, head, attribute text)]."""
    nodes, edges, clusters = {}, [], []
    for line in text.splitlines():
        if match := CLUSTER.match(line):
            clusters.append(match[1])
        elif line.strip() == "}":
            clusters = clusters[:-1]
        elif match := EDGE.match(line):
            edges.append((match[1], match[2], match[3] or ""))
        elif (match := NODE.match(line)) and match[1] not in ("graph", "node", "edge"):
            nodes[match[1]] = (tuple(clusters), match[2])
    return nodes, edges


def edge_attrs(edges) -> dict[tuple[str, str], str]:
    return {(tail, head): attrs for tail, head, attrs in edges}


# network level ----------------------------------------------------------------------------------


def test_network_level_draws_every_stage_in_order():
    net = googlenet()
    nodes, edges = parse(to_dot(net))
    stages = [s.attr for s in net.stages]
    assert set(nodes) == {"input", OUTPUT, *stages, "aux1", "aux2"}
    chain = ["input", *stages, OUTPUT]
    assert [(t, h) for t, h, a in edges if "dashed" not in a] == list(zip(chain, chain[1:]))


def test_network_level_labels_follow_table_1():
    net = googlenet()
    nodes, edges = parse(to_dot(net))
    row = next(r for r in compute(net).rows if r.name == "inception3a")
    label = nodes["inception3a"][1]
    assert "<B>inception (3a)</B>" in label
    assert "".join(f"<TD>{v}</TD>" for v in (64, 96, 128, 16, 32, 32)) in label
    assert "#3x3 reduce" in label and "pool proj" in label
    assert f"{kilo(row.params)} params, {mega(row.macs)} ops" in label
    assert "<B>convolution 7x7/2</B>" in nodes["conv1"][1]
    assert 'label="28x28x256"' in edge_attrs(edges)["inception3a", "inception3b"]
    assert 'label="224x224x3"' in edge_attrs(edges)["input", "conv1"]


def test_network_level_hangs_aux_heads_off_their_stage():
    nodes, edges = parse(to_dot(googlenet()))
    attrs = edge_attrs(edges)
    assert 'style="dashed"' in attrs["inception4a", "aux1"]
    assert 'style="dashed"' in attrs["inception4d", "aux2"]
    assert "loss weight 0.3" in nodes["aux1"][1]


# block level ------------------------------------------------------------------------------------


def test_block_level_draws_every_layer_and_data_flow_edge():
    net = googlenet()
    nodes, edges = parse(to_dot(net, "block"))
    assert set(nodes) == {*net.graph.nodes, OUTPUT}
    drawn = {(t, h) for t, h, _ in edges}
    assert drawn == {*net.graph.edges, ("softmax", OUTPUT)}


def test_block_level_clusters_stages_and_named_branches():
    net = googlenet()
    nodes, edges = parse(to_dot(net, "block"))
    for stage in (s for s in net.stages if s.template):
        a = stage.attr
        concat = net.graph.graph["outputs"][a]
        assert nodes[f"{a}.branch1"][0] == (f"cluster_{a}",)
        assert nodes[concat][0] == (f"cluster_{a}",)
        for branch in ("branch2", "branch3", "branch4"):
            for layer in ("0", "1"):
                assert nodes[f"{a}.{branch}.{layer}"][0] == (f"cluster_{a}", f"cluster_{a}.{branch}")
        into_concat = {t for t, h, _ in edges if h == concat}
        assert into_concat == {f"{a}.branch1", f"{a}.branch2.1", f"{a}.branch3.1", f"{a}.branch4.1"}
    assert nodes["conv1"][0] == ()  # a plain layer row is a plain node
    assert nodes["aux1.conv"][0] == ("cluster_aux1",)


def test_block_level_fans_out_into_parallel_branches():
    nodes, edges = parse(to_dot(googlenet(), "block"))
    out_of_pool2 = [h for t, h, _ in edges if t == "pool2"]
    assert out_of_pool2 == [f"inception3a.{b}" for b in ("branch1", "branch2.0", "branch3.0", "branch4.0")]
    labelled = [h for t, h, a in edges if t == "pool2" and 'label="28x28x192"' in a]
    assert len(labelled) == 1  # the shape is written once per fan-out


def test_block_level_nests_an_inner_template_call():
    spec = """
network Nest
input 16x16x3
template pair(a) {
    first: inception a 8 16 4 8 8
    branch {
        left: conv 1x1 8
    }
    branch {
        right: conv 3x3 8
    }
}
p: pair 8
"""
    nodes, edges = parse(to_dot(incdsl.from_text(spec, "nest.inc"), "block"))
    assert nodes["p.first.branch2.0"][0] == ("cluster_p", "cluster_p.first", "cluster_p.first.branch2")
    assert nodes["p.first.branch1"][0] == ("cluster_p", "cluster_p.first")
    assert nodes["p.left"][0] == nodes["p.right"][0] == ("cluster_p",)  # a flattened branch's layers


def test_unknown_level_is_an_output_error():
    with pytest.raises(OutputError, match="unknown diagram level 'blocks'") as info:
        to_dot(googlenet(), "blocks")
    assert "did you mean 'block'" in info.value.hint


# golden files and determinism -------------------------------------------------------------------


@pytest.mark.parametrize("level", ["network", "block"])
def test_googlenet_matches_golden_dot(level):
    check_golden(f"googlenet.{level}.dot", to_dot(googlenet(), level))


def test_output_does_not_depend_on_the_run():
    fresh = incdsl.load("googlenet")
    assert to_dot(fresh, "block") == to_dot(googlenet(), "block")


# folding of repeated rows -----------------------------------------------------------------------


def test_network_level_folds_a_repeated_row():
    net = tiny()
    assert [s.attr for s in net.stages][2:5] == ["inception4b", "inception4c", "inception4d"]
    nodes, edges = parse(to_dot(net))
    assert not {"inception4c", "inception4d", "conv2"} & set(nodes)
    assert "<B>3x inception (4b-4d)</B>" in nodes["inception4b"][1]
    assert "<B>2x convolution 1x1/1</B>" in nodes["conv1"][1]
    rows = [r for r in compute(net).rows if r.name in ("inception4b", "inception4c", "inception4d")]
    total = f"{kilo(sum(r.params for r in rows))} params, {mega(sum(r.macs for r in rows))} ops"
    assert total in nodes["inception4b"][1]
    attrs = edge_attrs(edges)
    last = str(net.facts[net.graph.nodes["inception4d.concat@10:5"]["node"]].output)
    assert f'label="{last}"' in attrs["inception4b", "conv1"]
    assert ("inception3a", "inception4b") in attrs
    assert 'style="dashed"' in attrs["inception4b", "side"]  # side hangs off 4c, folded into 4b


def test_block_level_shows_the_first_instance_of_a_repeated_row():
    net = tiny()
    text = to_dot(net, "block")
    nodes, edges = parse(text)
    assert not [n for n in nodes if n.startswith(("inception4c", "inception4d")) or n == "conv2"]
    assert nodes["inception4b.branch2.1"][0] == ("cluster_inception4b", "cluster_inception4b.branch2")
    assert 'subgraph "cluster_inception4b" {\n    graph [label=<<B>inception (4b-4d) x3</B>' in text
    assert "<B>conv 1x1/1 x2</B>" in nodes["conv1"][1]
    attrs = edge_attrs(edges)
    last = str(net.facts[net.graph.nodes["inception4d.concat@10:5"]["node"]].output)
    assert f'label="{last}"' in attrs["inception4b.concat@10:5", "conv1"]
    assert 'style="dashed"' in attrs["inception4b.concat@10:5", "side"]
    assert all(t != h for t, h, _ in edges)
    assert all(t in nodes and h in nodes for t, h, _ in edges)


# validity: dot itself reads what we write -------------------------------------------------------


@needs_dot
@pytest.mark.parametrize("level", ["network", "block"])
@pytest.mark.parametrize("network", [googlenet, tiny], ids=["googlenet", "tiny"])
def test_dot_accepts_the_text_without_warnings(network, level):
    text = to_dot(network(), level)
    done = subprocess.run(["dot", "-Tcanon"], input=text, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no warnings either (a malformed HTML label would give one)
    assert done.stdout.startswith(f"digraph {network().name} {{")
    assert done.stdout.count(" -> ") == text.count(" -> ")  # every edge read as one edge


# rendering --------------------------------------------------------------------------------------


@needs_dot
def test_render_svg_writes_a_valid_svg_and_nothing_else(tmp_path):
    out = tmp_path / "tiny.svg"
    render(to_dot(tiny()), str(out))
    assert ET.parse(out).getroot().tag.endswith("svg")
    assert os.listdir(tmp_path) == ["tiny.svg"]


def test_render_dot_writes_the_text_itself(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)  # .dot never needs Graphviz
    text = to_dot(tiny())
    render(text, tmp_path / "tiny.dot")
    assert (tmp_path / "tiny.dot").read_text() == text
    assert os.listdir(tmp_path) == ["tiny.dot"]


def test_missing_dot_is_an_output_error_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(OutputError, match=r"apt-get install graphviz\) or write \.dot"):
        render(to_dot(tiny()), str(tmp_path / "tiny.svg"))
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.name == "nt", reason="the stand-in dot is a shell script")
def test_failing_dot_leaves_no_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "dot"
    fake.parent.mkdir()
    # Prints half an SVG, then fails, as a crashing dot might.
    fake.write_text('#!/bin/sh\necho "<svg"\necho "syntax error" >&2\nexit 3\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(shutil, "which", lambda name: str(fake))
    monkeypatch.chdir(tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "old.svg").write_text("old")
    with pytest.raises(OutputError, match="dot failed: syntax error"):
        render(to_dot(tiny()), out_dir / "new.svg")
    with pytest.raises(OutputError):
        render(to_dot(tiny()), out_dir / "old.svg")
    assert os.listdir(out_dir) == ["old.svg"]
    assert (out_dir / "old.svg").read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["bin", "out"]


@needs_dot
def test_dot_rejecting_the_text_leaves_no_file(tmp_path):
    with pytest.raises(OutputError, match="dot failed"):
        render("digraph { a -> }", tmp_path / "broken.png")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["tiny.jpg", "tiny"])
def test_unknown_extension_is_an_output_error(tmp_path, name):
    with pytest.raises(OutputError, match="unknown extension"):
        render(to_dot(tiny()), tmp_path / name)
    assert os.listdir(tmp_path) == []


def test_missing_directory_is_an_output_error(tmp_path):
    with pytest.raises(OutputError, match="cannot write"):
        render("digraph {}", tmp_path / "nowhere" / "tiny.dot")


@pytest.mark.parametrize(
    "spec, shows",
    [
        ("mobilenet_v3_large", ["<B>mul</B>", "<B>hardsigmoid</B>"]),  # squeeze-and-excitation: a gate
        ("shufflenet_v2_x1_0", ["<B>split, concat</B>", "<B>shuffle</B>"]),  # a split's parts, shuffled
        ("convnext_tiny", ["<B>layer_scale</B>", "<B>add</B>"]),  # a nested sequential group per stage
        ("resnet50", ["<B>add, relu</B>", "shortcut"]),
    ],
)
def test_block_level_draws_the_zoo_merges(spec, shows):
    dot = to_dot(incdsl.load(spec), level="block")
    for text in shows:
        assert text in dot, text


@pytest.mark.parametrize("level", ["network", "block"])
def test_the_title_prints_the_counts_as_stats_does_and_states_the_layers_units(level):
    """The header once read "6,834.5K params" (K = 1024) beside `incdsl stats`'s 6,998,552."""
    title = to_dot(googlenet(), level).splitlines()[1]
    stats = compute(googlenet())
    assert f"{stats.params:,} params, {stats.macs:,} multiply-adds" in title
    assert "6,998,552 params" in title and "K = 1024" in title and "M = 10^6" in title
