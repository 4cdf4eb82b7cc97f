"""The one table model and its renderings: tables fitted to a terminal, never a cell cut."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT
from test_runs import make_run

import incdsl
from incdsl import render
from incdsl.analysis import diff, report
from incdsl.render import Column, Document, Styled, Table
from incdsl.tools import runs

TABLE = Table(
    "t",
    (
        Column("name"),
        Column("kind", "text"),
        Column("size", "shape", 2, align="right"),
        Column("extra", priority=1),
    ),
    (("inception3a", "local response norm", "28x28x256", "x"), ("fc", "linear", "1x1x1000", "yy")),
    ("total: 2",),
)


def command(*argv: str, columns: int | None = 80, cwd=None) -> str:
    """``incdsl ARGV``'s stdout, run as a user runs it (stdout a pipe), with COLUMNS set."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    if columns is not None:
        env["COLUMNS"] = str(columns)
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "incdsl", *argv], capture_output=True, text=True, env=env, cwd=cwd
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def table_lines(out: str) -> list[str]:
    """The lines of a printed table, up to the note or the footer under it."""
    lines = out.splitlines()
    end = next((i for i, line in enumerate(lines) if line.startswith(("(not shown", "total"))), len(lines))
    return lines[:end]


def test_a_narrow_terminal_drops_the_least_important_column_first_and_says_so():
    text = render.to_text(TABLE, width=36)
    assert "size" not in text.splitlines()[1] and "extra" in text.splitlines()[1]
    note = " ".join(text.split("(not shown")[1].split())
    assert note.startswith("at 36 columns: size;") and "--format markdown" in note
    wide = render.to_text(TABLE)
    assert "28x28x256" in wide and "not shown" not in wide


def test_cells_wrap_at_spaces_and_names_are_never_cut():
    text = render.to_text(TABLE, width=22)
    lines = text.splitlines()
    assert "inception3a" in text and "1x1x1000" not in text  # the shape's column is dropped, not cut
    assert any(line.rstrip().endswith("local") for line in lines)  # "local response norm" wrapped
    assert all(len(line) <= 22 for line in table_lines(text)[1:])
    # nothing left to drop: the table is wider than asked rather than a name cut
    assert "inception3a" in render.to_text(TABLE, width=5)


def test_markdown_csv_json_show_every_column():
    markdown = render.to_markdown(TABLE)
    assert markdown.startswith("# t\n\n| name | kind | size | extra |\n|---|---|---|---|\n")
    assert "| fc | linear | 1x1x1000 | yy |" in markdown and markdown.endswith("\ntotal: 2\n")
    assert render.to_csv(TABLE).splitlines()[0] == "name,kind,size,extra"
    doc = Document((TABLE,), {"a": [1, 2]})
    assert json.loads(render.render(doc, "json")) == {"a": [1, 2]}
    with pytest.raises(ValueError):
        render.to_json(float("nan"))


def test_a_row_of_the_wrong_length_and_an_unknown_kind_are_refused():
    with pytest.raises(ValueError, match="2 cells in a table of 1 columns"):
        Table("t", (Column("a"),), (("x", "y"),))
    with pytest.raises(ValueError, match="not 'number'"):
        Column("a", "number")


def test_figures_align_right_and_the_rest_left():
    assert [Column("a", kind).align for kind in render.KINDS] == ["left", "left", "right", "left"]


def test_stats_fits_80_columns_and_names_what_it_left_out():
    out = command("stats", "googlenet")
    lines = table_lines(out)
    assert max(map(len, lines[1:])) <= 80
    for name in ("inception (3a)", "local", "28x28x256", "1,410.2K", "118.0M"):
        assert name in out
    assert "…" not in out
    note = next(line for line in out.splitlines() if line.startswith("(not shown at 80 columns: "))
    assert "input size" in note
    # every figure the table shows is the one the full table shows in that column
    full = command("stats", "googlenet", columns=None)
    assert "not shown" not in full and "224x224x3" in full


def test_stats_table_as_rich_prints_it_in_a_terminal():
    pytest.importorskip("rich")
    from rich.console import Console

    table = report.table(incdsl.stats("googlenet"))
    console = Console(file=io.StringIO(), width=80, force_terminal=False)
    console.print(render.to_rich(table, 80))
    out = console.file.getvalue()
    assert max(len(line.rstrip()) for line in out.splitlines()) <= 80
    assert "inception (3a)" in out and "…" not in out and "(not shown at 80 columns" in out


def test_stats_reference_marks_misprints_in_every_rendering():
    tsv = ROOT / "tests" / "fixtures" / "googlenet_table1.tsv"
    stats = incdsl.stats("googlenet")
    from incdsl.analysis import reference

    table = report.table(stats, reference.compare(stats, reference.load(tsv)))
    marked = [cell for row in table.rows for cell in row if isinstance(cell, Styled)]
    assert [c.text for c in marked][:2] == ["2.7K ✗", "34M ✗"] and marked[0].style == "bold red"
    assert "| 2.7K ✗ | 34M ✗ |" in render.to_markdown(table)


def test_runs_fits_80_columns_with_paths_whole(tmp_path):
    folder = "experiments_2026/mini_googlenet"  # as `incdsl runs` is typed, relative to the directory
    make_run(tmp_path / folder / "fast")
    make_run(tmp_path / folder / "googlenet_recipe", recipe="googlenet")
    out = command("runs", f"{folder}/fast", f"{folder}/googlenet_recipe", cwd=tmp_path)
    assert f"{folder}/fast " in out and f"{folder}/googlenet_recipe " in out  # not "runs/…"
    assert "60.00% (epoch 2)" in out and "(not shown at 80 columns:" in out
    assert all(len(line) <= 80 for line in table_lines(out))
    assert "top-5" in out.split("(not shown")[1]  # the least important column goes first


def test_runs_markdown_keeps_every_column(tmp_path):
    a = make_run(tmp_path / "a")
    table = render.to_markdown(runs.table([runs.read_run(a)]), heading=False)
    assert table.splitlines()[0] == "| " + " | ".join(runs.HEADERS) + " |"


def test_diff_rows_are_styled_by_status():
    d = diff.compare(incdsl.stats("googlenet"), incdsl.stats("googlenet_tv"))
    table = diff.table(d)
    assert set(table.styles) >= {"red", "dim"} and len(table.styles) == len(table.rows)
    assert table.footer[-1].startswith("stages: ") or "aux head" in table.footer[-1]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_emit_in_a_terminal_is_rich_fitted_to_its_width(monkeypatch):
    pytest.importorskip("rich")
    monkeypatch.setenv("COLUMNS", "80")
    stream = Terminal()
    render.emit(report.document(incdsl.stats("googlenet")), "table", stream)
    out = re.sub(r"\x1b\[[0-9;]*m", "", stream.getvalue())  # without rich's colours
    assert "inception (3a)" in out and "─" in out  # rich's rule under the header
    assert max(len(line.rstrip()) for line in out.splitlines()) <= 80
    assert "(not shown at 80 columns:" in out and "conventions: " in out and "…" not in out


def test_emit_json_is_the_documents_data_and_a_pipe_gets_every_column(monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    doc = report.document(incdsl.stats("googlenet"))
    stream = io.StringIO()
    render.emit(doc, "json", stream)
    assert json.loads(stream.getvalue()) == report.to_dict(incdsl.stats("googlenet"))
    stream = io.StringIO()
    render.emit(doc, "table", stream)
    assert "pool proj" in stream.getvalue() and "not shown" not in stream.getvalue()


def test_bench_fits_80_columns_ratios_wrapped_before_their_spread():
    from incdsl.tools import bench

    M = bench.Measurement
    measured = (
        M("eval", 32, "plain", (1234.5, 1200.0), (1.0, 1.0)),
        M("eval", 32, "optimized", (2469.0, 2600.0), (2.0, 2.1667)),
        M("eval", 32, "compiled", (3000.0, 3100.0), (2.43, 2.58), compile_seconds=41.0),
    )
    result = bench.BenchResult("googlenet_tv", "GoogLeNet", (3, 224, 224), 6_624_904, 1_498_000_000, measured,
                               bench.Spread(0.5, 0.4, 0.6), 2, 1.0, 0, 1, False, "2.13", "a machine",
                               (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), "2026-01-01T00:00:00+00:00")  # fmt: skip
    text = render.to_text(bench.table(result), width=80)
    lines = table_lines(text)
    assert all(len(line) <= 80 for line in lines) and "not shown" not in text
    assert "2.08x" in text and "(2.00-2.17)" in text and "1,217.2" in text  # wrapped, whole
    assert render.to_markdown(bench.table(result)).count("2.08x (2.00-2.17)") == 1
