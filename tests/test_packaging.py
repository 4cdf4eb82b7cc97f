"""A plain `pip install` carries the grammar, the prelude and the shipped specs: build the wheel,
install it into an empty folder, and load a spec by name from there."""

import subprocess
import sys
import zipfile

import pytest
from conftest import ROOT

pytest.importorskip("hatchling")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(ROOT),
        ],
        check=True,
    )
    (path,) = out.glob("incdsl-*.whl")
    return path


def test_wheel_contains_grammar_prelude_and_specs(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"incdsl/grammars/incdsl.lark", "incdsl/grammars/prelude.inc"} <= names
    shipped = {f"incdsl/specs/{p.name}" for p in (ROOT / "specs").glob("*.inc")}
    assert shipped and shipped <= names
    assert "incdsl/backends/pytorch/templates/model.py.j2" in names


def test_installed_wheel_loads_specs_by_name(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
    )
    code = "import incdsl; print(incdsl.__file__); print(incdsl.stats('googlenet').macs)"
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    where, macs = result.stdout.split()
    assert where.startswith(str(target)) and macs == "1582671872"
