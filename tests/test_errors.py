"""Every class of mistake gets ``path:line:col: error: message``, the line, a caret, exit 2, no
traceback, and leaves no output file behind."""

import pytest

from incdsl.tools import cli

HEADER = "network net\ninput 32x32x3\nclasses 10\n"

# (spec body after the 3 header lines, line, column, message fragment, hint fragment or None)
CASES = [
    ("conv 3x3 16 =\n", 4, 13, "unexpected '='", "expected"),
    ("conv 3x3 @\n", 4, 10, "unexpected character '@'", None),
    ("template t {\n  conv 1x1 4\n", 5, 13, "unexpected end of file", "'}'"),
    (
        "conv 3x3 16\nincepton 1 2 3 4 5 6\n",
        5,
        1,
        "unknown layer kind or template 'incepton'",
        "did you mean 'inception'?",
    ),
    ("conv 3x3 16\ninception 1 2 3 4 5\n", 5, 1, "template 'inception' takes 6 arguments, got 5", "n1x1"),
    ("conv 3x3 16\ninception 1 2 3 4 5 6 n7=1\n", 5, 23, "has no parameter 'n7'", None),
    ("conv 3x3\n", 4, 1, "conv takes 2 arguments, got 1", "write: conv KERNEL OUT"),
    ("conv 3x3 16 relu2\n", 4, 13, "unknown name 'relu2'", "did you mean 'relu'?"),
    ("conv 3x3 16 pading=1\n", 4, 13, "conv has no option 'pading'", "did you mean 'pad'?"),
    ("conv 3x3 16\nfc: linear clases\n", 5, 12, "unknown name 'clases'", "did you mean 'classes'?"),
    ("conv 9x9/4 16 pad=0\nconv 9x9 16 pad=0\n", 5, 1, "does not fit its 6x6 input", "larger input"),
    ("conv 3x3 0\n", 4, 10, "out must be a positive integer", None),  # at the value
    ("dropout 1.5\n", 4, 9, "dropout probability is in [0, 1)", None),
    # arithmetic: at the expression, with what has no value and why
    ("template t(c) { conv 3x3 c//0 }\nt 8\n", 4, 26, "// of 8, 0: division by zero", None),
    ("template t(c) { conv 3x3 c*99999*99999 }\nt 8\n", 4, 26, "the result is out of range", None),
    ("template t(c) { conv 3x3 c/2 }\nt 8\n", 4, 26, "out must be an integer, not 4.0", "// divides"),
    ("conv 3x3 make_divisible(16)\n", 4, 10, "make_divisible takes 2 to 3 arguments", None),
    ("conv 3x3 16 act=relu7\n", 4, 13, "unknown activation 'relu7'", "did you mean"),
    ("template t(c) { conv 3x3 c when=relu6 }\nt 8\n", 4, 28, "when= takes a condition", "when=s==1"),
    ("class: conv 3x3 16\n", 4, 1, "'class' is not a valid name", None),
    ("forward: conv 3x3 16\n", 4, 1, "'forward' is reserved", None),
    ("a: conv 3x3 16\na: conv 3x3 16\n", 5, 1, "'a' is already used", None),
    (
        "template t(c) { branch: conv 1x1 c\n branch: conv 3x3/2 c }\nt 4\n",
        5,  # at the strided branch's kernel (the branch that differs), not the group's first
        15,
        "branches must agree",
        None,
    ),
    ("template t(cc) { conv 1x1 c }\nt 4\n", 4, 27, "unknown name 'c'", "did you mean 'cc'?"),
    ("template t(c) { t c }\nt 4\n", 4, 17, "template 't' calls itself", None),
    (
        "conv 3x3 16\naux a after conv2 weight=0.3: linear 10\n",
        5,
        13,
        "no stage named 'conv2'",
        "did you mean 'conv'?",
    ),
    ("fc: linear 10\nconv 3x3 16\n", 5, 1, "needs a spatial input", None),
]


@pytest.mark.parametrize("body, line, column, message, hint", CASES, ids=[c[3][:40] for c in CASES])
def test_spec_errors(spec_file, capsys, tmp_path, body, line, column, message, hint):
    path = spec_file(HEADER + body)
    out = tmp_path / "model.py"
    assert cli.main(["compile", str(path), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    first = err.splitlines()[0]
    assert first.startswith(f"{path}:{line}:{column}: error: "), err
    assert message in first, err
    if hint:
        assert hint in err
    assert "Traceback" not in err
    caret_line = err.splitlines()[2]
    assert caret_line.index("^") - 4 == column - 1  # the caret sits under the column reported
    assert not out.exists()


def test_missing_file(capsys, tmp_path):
    assert cli.main(["stats", str(tmp_path / "absent.inc")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read") and "No such file" in err


def test_unknown_shipped_name(capsys):
    assert cli.main(["stats", "googlenett"]) == 2
    assert "did you mean 'googlenet'?" in capsys.readouterr().err


def test_missing_input_line(spec_file, capsys):
    assert cli.main(["check", str(spec_file("network n\nconv 3x3 4\n"))]) == 2
    assert "needs an input size" in capsys.readouterr().err


def test_compile_error_keeps_an_existing_output(spec_file, tmp_path, capsys):
    out = tmp_path / "model.py"
    out.write_text("previous")
    assert cli.main(["compile", str(spec_file(HEADER + "conv 3x3 @\n")), "-o", str(out)]) == 2
    assert out.read_text() == "previous"
