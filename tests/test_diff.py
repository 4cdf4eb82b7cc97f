"""incdsl diff: stages matched by name, changed columns, deltas, added and removed stages, totals."""

from __future__ import annotations

import json

import incdsl
from incdsl.analysis import diff
from incdsl.tools import cli

BASE = """network Net
input 32x32x3
classes 10
budget 20M

stem: conv 3x3 32
3a: inception 16 16 32 8 8 8
pool: maxpool 3x3/2
3b: inception 32 16 32 8 8 8
fc: linear classes
"""


def stats(text: str):
    return incdsl.stats(incdsl.from_text(text, "net.inc"))


def test_identical_specs_have_no_changes():
    d = diff.compare(stats(BASE), stats(BASE))
    assert {s.status for s in d.stages} == {"same"}
    assert d.params_delta == d.macs_delta == 0


def test_changed_columns_shapes_and_counts():
    wider = BASE.replace("3a: inception 16 16 32 8 8 8", "3a: inception 24 16 32 8 8 8")
    d = diff.compare(stats(BASE), stats(wider))
    by_name = {s.name: s for s in d.stages}
    a3 = by_name["inception3a"]
    assert a3.status == "changed" and a3.changed["n1x1"] == (16, 24)
    assert a3.changed["output"] == ([64, 32, 32], [72, 32, 32])
    assert by_name["stem"].status == "same"
    assert by_name["pool"].changed == {
        "input": ([64, 32, 32], [72, 32, 32]),
        "output": ([64, 15, 15], [72, 15, 15]),
    }
    assert d.macs_delta == stats(wider).macs - stats(BASE).macs > 0
    cells = diff.cells(a3, diff.titles(d))
    assert cells[:2] == ["3a", "~"] and cells[3] == "32x32x64 → 32x32x72" and cells[4] == "#1x1 16→24"


def test_added_and_removed_stages_keep_their_place():
    other = BASE.replace("pool: maxpool 3x3/2\n", "").replace("fc:", "drop: dropout 0.5\nfc:")
    d = diff.compare(stats(BASE), stats(other))
    assert [(s.name, s.status) for s in d.stages] == [
        ("stem", "same"),
        ("inception3a", "same"),
        ("pool", "removed"),
        ("inception3b", "changed"),
        ("drop", "added"),
        ("fc", "changed"),
    ]


def test_totals_name_both_budget_verdicts():
    over = BASE.replace("budget 20M", "budget 1M")
    text = diff.totals(diff.compare(stats(BASE), stats(over)), ("base.inc", "over.inc"))
    assert "base.inc: Net:" in text and "budget: " in text and "budget exceeded" in text
    assert "change: +0 params (+0.0%), +0 multiply-adds (+0.0%)" in text


def test_diff_command_formats(capsys, tmp_path):
    a, b = tmp_path / "a.inc", tmp_path / "b.inc"
    a.write_text(BASE)
    b.write_text(BASE.replace("3b: inception 32", "3b: inception 48"))
    assert cli.main(["diff", str(a), str(b)]) == 0
    table = capsys.readouterr().out
    assert "#1x1 32→48" in table and "stages: 2 changed, 0 added, 0 removed" in table
    assert cli.main(["diff", str(a), str(b), "--format", "markdown"]) == 0
    markdown = capsys.readouterr().out
    assert "| 3b | ~ | inception (3b) |" in markdown
    assert cli.main(["diff", str(a), str(b), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["a"]["spec"] == str(a) and data["b"]["budget"]["within"] is True
    changed = {s["name"]: s["changed"] for s in data["stages"]}
    assert changed["inception3b"]["n1x1"] == [32, 48]
    assert data["delta"]["macs"] == data["b"]["macs"] - data["a"]["macs"]


def test_diff_of_shipped_specs(capsys):
    assert cli.main(["diff", "googlenet", "googlenet_tv"]) == 0
    out = capsys.readouterr().out
    assert "change: -373,648 params (-5.3%), -84,295,680 multiply-adds (-5.3%)" in out


def test_diff_of_a_broken_spec_is_an_error(capsys, tmp_path):
    bad = tmp_path / "bad.inc"
    bad.write_text("input 8x8x3\nconv 3x3\n")
    assert cli.main(["diff", "googlenet", str(bad)]) == 2
    assert "conv takes 2 arguments, got 1" in capsys.readouterr().err
