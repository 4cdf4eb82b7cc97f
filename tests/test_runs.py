"""incdsl runs and incdsl plot: run directories read back as a table and as curves."""

from __future__ import annotations

import json
import sys

import pytest

from incdsl.tools import cli, runs

SPEC = """network Small
input 16x16x3
classes 4

defaults conv: bn
stem: conv 3x3 8
pool: global_avgpool
fc: linear classes
"""


def make_run(folder, recipe="fast", epochs=3, top1=(0.3, 0.6, 0.5), info=True):
    folder.mkdir(parents=True)
    records = [
        {"epoch": e + 1, "train_loss": 2.0 - e / 2, "val_loss": 2.1 - e / 2, "val_top1": top1[e],
         "val_top5": min(1.0, top1[e] + 0.3), "lr": 0.01 / (e + 1), "img_per_s": 100.0}
        for e in range(epochs)
    ]  # fmt: skip
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if info:
        run_info = {"format": runs.FORMAT, "target": "specs/small.inc", "network": "Small", "recipe": recipe,
                    "epochs": 5, "num_classes": 4, "images_per_epoch": 600, "spec_text": SPEC}  # fmt: skip
        (folder / "run.json").write_text(json.dumps(run_info))
    return folder


def test_a_run_read_back(tmp_path):
    run = runs.read_run(make_run(tmp_path / "a"))
    assert run.spec == "small" and run.recipe == "fast"
    assert run.best["epoch"] == 2 and run.train_seconds == pytest.approx(18.0)
    params = (8 * 27 + 16) + 4 * 9  # conv + BN; linear 8 -> 4 with biases
    assert run.counts == (params, 16 * 16 * 8 * 27 + 8 * 4)


def test_the_classes_trained_on_replace_the_specs(tmp_path):
    folder = make_run(tmp_path / "a")
    info = json.loads((folder / "run.json").read_text())
    (folder / "run.json").write_text(json.dumps({**info, "num_classes": 10}))
    assert runs.read_run(folder).counts[0] == (8 * 27 + 16) + 10 * 9


def test_runs_table(capsys, tmp_path):
    a = make_run(tmp_path / "a")
    b = make_run(tmp_path / "b", recipe="googlenet", epochs=2, info=True)
    assert cli.main(["runs", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "60.00% (epoch 2)" in out and "3/5" in out and "0m 18s" in out and "googlenet" in out
    assert cli.main(["runs", str(a), "--format", "json"]) == 0
    (data,) = json.loads(capsys.readouterr().out)
    assert data["best"]["val_top1"] == 0.6 and data["epochs"] == 3 and data["macs"] == 16 * 16 * 8 * 27 + 32


def test_a_folder_that_is_no_run_is_an_error(capsys, tmp_path):
    assert cli.main(["runs", str(tmp_path)]) == 2
    assert "is not a run directory: it has no metrics.jsonl" in capsys.readouterr().err


def test_labels_name_spec_and_recipe_and_tell_equals_apart(tmp_path):
    a, b = make_run(tmp_path / "a"), make_run(tmp_path / "b")
    c = make_run(tmp_path / "c", recipe="bvlc")
    assert runs.labels([runs.read_run(p) for p in (a, b, c)]) == [
        "small · fast (a)",
        "small · fast (b)",
        "small · bvlc",
    ]


def test_plot_writes_an_image(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    a, b = make_run(tmp_path / "a"), make_run(tmp_path / "b", recipe="bvlc", info=False)
    out = tmp_path / "curves.png"
    assert cli.main(["plot", str(a), str(b), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli.main(["plot", str(a), "-o", str(tmp_path / "curves.svg")]) == 0
    assert (tmp_path / "curves.svg").read_text().lstrip().startswith("<?xml")
    assert cli.main(["plot", str(a), "-o", str(tmp_path / "curves.txt")]) == 2
    assert "write a .png, .svg or .pdf file" in capsys.readouterr().err


def test_plot_without_matplotlib_says_how_to_get_it(capsys, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert cli.main(["plot", str(make_run(tmp_path / "a")), "-o", str(tmp_path / "c.png")]) == 2
    assert "pip install 'incdsl[plot]'" in capsys.readouterr().err


def test_the_trainer_writes_run_json(capsys, tmp_path):
    pytest.importorskip("torch")
    spec = tmp_path / "small.inc"
    spec.write_text(SPEC)
    out = tmp_path / "run"
    argv = ["train", str(spec), "--data", "fake:64", "--out", str(out), "--epochs", "2", "--batch-size", "16"]
    assert cli.main(argv) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["target"] == str(spec) and info["recipe"] == "fast" and info["spec_text"] == SPEC
    assert info["images_per_epoch"] == 64 and info["num_classes"] == 4
    run = runs.read_run(out)
    assert len(run.metrics) == 2 and run.train_seconds > 0 and run.counts[1] == 16 * 16 * 8 * 27 + 32
    capsys.readouterr()
    assert cli.main(["runs", str(out)]) == 0
    assert "small" in capsys.readouterr().out


def test_a_run_without_run_json_is_read_from_its_checkpoint(tmp_path):
    pytest.importorskip("torch")
    spec = tmp_path / "small.inc"
    spec.write_text(SPEC)
    out = tmp_path / "run"
    assert (
        cli.main(
            [
                "train",
                str(spec),
                "--data",
                "fake:32",
                "--out",
                str(out),
                "--epochs",
                "1",
                "--batch-size",
                "16",
            ]
        )
        == 0
    )
    (out / "run.json").unlink()
    run = runs.read_run(out)
    assert run.spec == "small" and run.recipe == "fast" and run.counts is not None
    assert run.train_seconds is None


def test_the_trainer_does_not_import_runs():
    """runs reads what the trainer writes: the shared part (file names, run.json) is incdsl.rundir,
    so the import goes one way (runs -> train, for a checkpoint from before run.json)."""
    import ast
    from pathlib import Path

    import incdsl

    train = Path(incdsl.__file__).parent / "train"
    for path in train.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert not any(n == "incdsl.tools.runs" or n.startswith("incdsl.tools.runs.") for n in names), (
                path
            )
            assert not (isinstance(node, ast.ImportFrom) and node.level and node.module == "runs"), path
