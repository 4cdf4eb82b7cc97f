"""Hostile and careless input to the newer surfaces (issue 18): port-weights, fit, diff, runs, plot,
bench. Whatever a file or an option says, incdsl answers with a clear error (exit 2, no traceback) or a
correct result, and changes no file it reads. The language server's cases are in test_lsp.py."""

from __future__ import annotations

import os

import pytest
from conftest import ROOT

from incdsl import cli


def run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "net.inc"
    path.write_text((ROOT / "specs" / "mini_googlenet.inc").read_text())
    return path


# -- a 1,000-deep template chain: a clear error, not RecursionError ------------------------------------


def chain(depth: int) -> str:
    lines = ["network deep", "input 32x32x3", "classes 10", "budget 1G", ""]
    lines += ["template t0(w) {", "    conv 3x3 w", "}"]
    for i in range(1, depth):
        lines += [f"template t{i}(w) {{", f"    t{i - 1} w", "}"]
    return "\n".join([*lines, f"a: t{depth - 1} 16", "pool: global_avgpool", "fc: linear classes", ""])


@pytest.mark.parametrize("command", ["check", "fit", "diff", "stats"])
def test_a_thousand_deep_template_chain_is_a_spec_error(capsys, tmp_path, command):
    path = tmp_path / "deep.inc"
    path.write_text(chain(1000))
    argv = [command, path, path] if command == "diff" else [command, path]
    code, _, err = run(capsys, *argv)
    assert code == 2, err
    assert "nests deeper than 64 levels" in err and "Traceback" not in err


def test_a_template_chain_within_the_limit_builds(capsys, tmp_path):
    path = tmp_path / "chain.inc"
    path.write_text(chain(50))
    code, out, err = run(capsys, "check", path)
    assert code == 0, err


# -- fit: the output-file policy -----------------------------------------------------------------------


@pytest.mark.parametrize("alias", ["same", "symlink", "hardlink"])
def test_fit_never_writes_over_its_input(capsys, tmp_path, spec, alias):
    before = spec.read_bytes()
    out = {"same": spec, "symlink": tmp_path / "link.inc", "hardlink": tmp_path / "hard.inc"}[alias]
    if alias == "symlink":
        out.symlink_to(spec)
    elif alias == "hardlink":
        os.link(spec, out)
    code, _, err = run(capsys, "fit", spec, "--budget", "30M", "-o", out)
    assert code == 2 and "is the input file" in err, err
    assert spec.read_bytes() == before


def test_fit_refuses_an_empty_output_name(capsys, spec):
    code, out, err = run(capsys, "fit", spec, "--budget", "30M", "-o", "")
    assert code == 2 and "the output file name is empty" in err, err
    assert out == ""  # not taken as "no -o": nothing printed


def test_fit_refuses_a_directory_before_fitting(capsys, tmp_path, spec):
    code, _, err = run(capsys, "fit", spec, "--budget", "30M", "-o", tmp_path)
    assert code == 2 and "a directory" in err, err


def test_fit_still_writes_a_new_file(capsys, tmp_path, spec):
    out = tmp_path / "fitted.inc"
    code, _, err = run(capsys, "fit", spec, "--budget", "30M", "-o", out)
    assert code == 0, err
    assert out.read_text().startswith("# Fitted by")


# -- port-weights: files that hold no weights ------------------------------------------------------------


def test_port_weights_refuses_an_empty_file(capsys, tmp_path, spec):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    code, _, err = run(capsys, "port-weights", spec, empty, "-o", tmp_path / "out.pt")
    assert code == 2 and "empty.pt is empty" in err, err
    assert not (tmp_path / "out.pt").exists()


def test_port_weights_names_an_unreadable_file_whatever_its_error_says(capsys, tmp_path, spec):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00")
    code, _, err = run(capsys, "port-weights", spec, junk, "-o", tmp_path / "out.pt")
    assert code == 2 and "cannot read weights from" in err, err


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda torch: torch.zeros(4, 4, device="meta"), "on the meta device"),
        (lambda torch: torch.zeros(4, 4).to_sparse(), "sparse_coo, not a dense tensor"),
    ],
)
def test_port_weights_refuses_tensors_without_dense_values(capsys, tmp_path, spec, make, words):
    torch = pytest.importorskip("torch")
    path = tmp_path / "odd.pt"
    torch.save({"conv1.weight": torch.zeros(2), "conv1.bias": make(torch)}, path)
    code, _, err = run(capsys, "port-weights", spec, path, "-o", tmp_path / "out.pt")
    assert code == 2 and f"tensor conv1.bias in {path} is" in err and words in err, err
    assert not (tmp_path / "out.pt").exists()
