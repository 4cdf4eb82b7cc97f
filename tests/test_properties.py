"""Property-based tests: random damage to a spec gives an IncdslError, never a traceback. (Random valid
specs are held to the interpreter and to torch's own counts in test_differential.py.)"""

import pytest
from conftest import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import incdsl
from incdsl.errors import IncdslError

torch = pytest.importorskip("torch")

SEEDS = [(ROOT / "specs" / "mini_googlenet.inc").read_text(), (ROOT / "specs" / "googlenet.inc").read_text()]
TOKENS = ["{", "}", ":", "=", "x", "3x3", "/2", "branch", "template", "aux", "after", "conv", "-1", "0",
          "1e9", "classes", "inception", "\n", ";", "#", "3a:", "2x ", "pad=9", "__init__", "import"]  # fmt: skip


@st.composite
def damaged(draw) -> str:
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["delete", "insert", "duplicate-line"]))
        if kind == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 12)) :]
        elif kind == "insert":
            text = text[:at] + draw(st.sampled_from(TOKENS) | st.text(max_size=3)) + text[at:]
        else:
            lines = text.splitlines(keepends=True)
            i = draw(st.integers(0, len(lines) - 1))
            text = "".join(lines[: i + 1] + lines[i:])
    return text


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged())
def test_damaged_specs_never_give_a_traceback(text):
    try:
        net = incdsl.from_text(text, "damaged.inc")
        incdsl.stats(net)
        compile(incdsl.compile_source(net), "model.py", "exec")
    except IncdslError as exc:
        assert exc.format().count("error:") == 1
