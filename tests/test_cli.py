"""The command line: formats, the JSON contract, budgets and exit codes, atomic outputs."""

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from golden import check_golden

from incdsl.tools import cli

REFERENCE = ROOT / "tests" / "fixtures" / "googlenet_table1.tsv"


def run(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_stats_json_contract(capsys):
    code, out, _ = run(capsys, "stats", "googlenet", "--format", "json")
    data = json.loads(out)
    assert code == 0
    assert set(data) >= {"network", "input", "layers", "aux", "total", "budget"}
    assert data["network"] == "GoogLeNet" and data["input"] == [3, 224, 224]
    assert data["total"] == {"params": 6_998_552, "macs": 1_582_671_872}
    assert data["budget"] == {"macs": 1_600_000_000, "within": True}
    layer = {row["name"]: row for row in data["layers"]}["inception3a"]
    assert layer["label"] == "3a" and layer["output"] == [256, 28, 28]
    assert layer["columns"] == {
        "n1x1": 64,
        "n3x3red": 96,
        "n3x3": 128,
        "n5x5red": 16,
        "n5x5": 32,
        "pool_proj": 32,
    }
    assert {a["name"] for a in data["aux"]} == {"aux1", "aux2"}
    assert sum(r["params"] for r in data["layers"]) == data["total"]["params"]
    check_golden("googlenet.stats.json", out)


def test_stats_table_and_markdown_golden(capsys):
    _, out, _ = run(capsys, "stats", "googlenet", "--format", "markdown")
    check_golden("googlenet.stats.md", out)
    _, table, _ = run(capsys, "stats", "googlenet")
    assert "inception (3a)" in table and "6,998,552 params" in table


def test_stats_csv_totals(capsys):
    _, out, _ = run(capsys, "stats", "googlenet", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rows[-1]["name"] == "total" and rows[-1]["macs"] == "1582671872"


def test_reference_marks_the_papers_wrong_cells(capsys):
    code, out, _ = run(capsys, "stats", "googlenet", "--reference", str(REFERENCE))
    assert code == 0
    assert "7 printed figure(s) disagree" in out
    assert "convolution [conv1]: params printed 2.7K, computed 9.2K" in out
    assert "convolution [conv1]: ops printed 34M, computed 118.0M" in out
    for stage in ("4c", "4d", "5a", "5b"):
        assert f"inception ({stage}) [inception{stage}]: params printed" in out
    assert "inception (3a) [" not in out  # 3a's printed numbers agree with its shapes


def test_reference_in_json(capsys):
    _, out, _ = run(capsys, "stats", "googlenet", "--format", "json", "--reference", str(REFERENCE))
    rows = json.loads(out)["reference"]
    second = rows[2]  # the paper's "3x3 reduce + 3x3" row covers two convs
    assert second["rows"] == ["conv2", "conv3"] and second["params_K"]["agrees"]
    assert not rows[0]["params_K"]["agrees"]


def test_check_budget_exit_codes(capsys):
    assert run(capsys, "check", "googlenet")[0] == 0
    code, out, err = run(capsys, "check", "googlenet", "--budget", "1.5G")
    assert code == 1
    assert "1,582,671,872 multiply-adds > budget 1,500,000,000" in err
    assert "over by 82,671,872" in err
    assert run(capsys, "check", "googlenet", "--budget", "lots")[0] == 2


def test_compile_writes_a_loadable_file(capsys, tmp_path):
    out = tmp_path / "model.py"
    assert run(capsys, "compile", "mini_googlenet", "-o", str(out))[0] == 0
    compile(out.read_text(), str(out), "exec")
    assert out.stat().st_mode & 0o044  # readable by others, like any file the user writes


def test_compile_to_a_missing_directory(capsys, tmp_path):
    code, _, err = run(capsys, "compile", "googlenet", "-o", str(tmp_path / "no" / "model.py"))
    assert code == 2 and "cannot write" in err


def test_specs_lists_the_shipped_specs(capsys):
    _, out, _ = run(capsys, "specs")
    assert "googlenet" in out and "mini_googlenet" in out


def test_paths_and_names_are_equivalent(capsys):
    by_name = run(capsys, "stats", "googlenet", "--format", "json")[1]
    by_path = run(capsys, "stats", str(ROOT / "specs" / "googlenet.inc"), "--format", "json")[1]
    assert json.loads(by_name)["total"] == json.loads(by_path)["total"]


def test_stats_does_not_import_torch():
    code = (
        "import sys; from incdsl.tools import cli; "
        "cli.main(['stats', 'googlenet']); cli.main(['check', 'googlenet']); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_python_dash_m_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "incdsl", "check", "googlenet"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "1,582,671,872" in result.stdout


@pytest.mark.parametrize("spec", sorted((ROOT / "specs").glob("*.inc")), ids=lambda p: p.stem)
def test_every_shipped_spec_checks(capsys, spec: Path):
    assert run(capsys, "check", str(spec))[0] == 0


def test_compile_to_onnx(capsys, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch = pytest.importorskip("torch")
    out = tmp_path / "mini.onnx"
    assert run(capsys, "compile", "mini_googlenet", "-o", str(out))[0] == 0
    session = ort.InferenceSession(str(out))
    x = torch.randn(3, 3, 32, 32)
    (logits,) = session.run(None, {"x": x.numpy()})
    assert logits.shape == (3, 10)
    assert [p.name for p in tmp_path.iterdir()] == ["mini.onnx"]  # no temporary left beside it


def test_a_table_of_thousands_of_rows_is_printed_as_plain_columns(capsys, tmp_path):
    """Stats are linear in the network's size; a very long table skips rich's layout (about 500 rows
    a second) for plain aligned columns."""
    spec = tmp_path / "long.inc"
    spec.write_text("input 8x8x3\nclasses 2\nc: 1500x conv 1x1 3\nlinear classes\n")
    code, out, _ = run(capsys, "stats", str(spec))
    lines = out.splitlines()
    assert code == 0 and lines[1].split()[:2] == ["type", "patch"] and len(lines) > 1500
    assert "┃" not in out and "total (inference): 18,386 params" in out
