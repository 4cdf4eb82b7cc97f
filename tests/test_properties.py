"""Property-based tests: random valid specs count exactly what torch counts; random damage to a spec
gives an IncdslError, never a traceback."""

import pytest
from conftest import ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import incdsl
from incdsl.errors import IncdslError

torch = pytest.importorskip("torch")
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

small = st.integers(1, 6)


@st.composite
def block_template(draw) -> str:
    """A template of random branches, in every form the naming rules allow: a named single layer, a
    named nn.Sequential, a flattened branch of named layers that may fork again, a pool branch."""
    branches = []
    for i in range(draw(st.integers(1, 4))):
        form = draw(st.sampled_from(["single", "sequential", "flattened", "fork", "pool"]))
        width = draw(st.sampled_from(["k", str(draw(small))]))
        if form == "single":
            branches.append(f"branch b{i}: conv 1x1 {width}")
        elif form == "sequential":
            branches.append(f"branch b{i} {{ conv 1x1 {draw(small)}; conv 3x3 {width} }}")
        elif form == "flattened":
            branches.append(f"branch {{ b{i}_1: conv 1x1 {draw(small)}; b{i}_2: conv 5x5 {width} }}")
        elif form == "fork":
            branches.append(
                f"branch {{ b{i}_1: conv 1x1 {width}\n branch b{i}_a: conv 1x3 {width}\n"
                f" branch b{i}_b: conv 3x1 {draw(small)} }}"
            )
        else:
            branches.append(f"branch {{ avgpool 3x3/1 pad=1; b{i}_proj: conv 1x1 {width} }}")
    return "template blk(k) {\n" + "\n".join(branches) + "\n}"


@st.composite
def specs(draw) -> str:
    """A random valid spec: a stem, inception rows, template blocks, factorised convs, pools, a
    classifier."""
    size = draw(st.integers(12, 40))
    channels = draw(st.integers(1, 3))
    style = draw(st.sampled_from(["bias relu", "bn eps=0.001", "nobias norelu", "bn norelu"]))
    lines = [f"input {size}x{size}x{channels}", f"classes {draw(st.integers(2, 12))}"]
    lines += [f"defaults conv: {style}", f"defaults maxpool: {draw(st.sampled_from(['ceil', 'noceil']))}"]
    k, s = draw(st.sampled_from([1, 3, 5])), draw(st.sampled_from([1, 2]))
    lines.append(f"conv {k}x{k}/{s} {draw(small)}")
    template = draw(block_template())
    for _ in range(draw(st.integers(1, 4))):
        choice = draw(st.sampled_from(["inception", "block", "pool", "factorised", "lrn"]))
        if choice == "block":
            lines.append(f"{draw(st.integers(1, 2))}x blk {draw(small)}")
        elif choice == "inception":
            cols = " ".join(str(draw(small)) for _ in range(6))
            lines.append(f"{draw(st.integers(2, 3))}x inception {cols}")
        elif choice == "pool":
            lines.append("maxpool 3x3/2 pad=1")
        elif choice == "factorised":
            n = draw(st.sampled_from([3, 5, 7]))
            lines += [f"conv 1x{n} {draw(small)}", f"conv {n}x1 {draw(small)}"]
        else:
            lines.append("lrn 3")
    tail = draw(st.sampled_from(["global_avgpool", "adaptive_avgpool 2x2", "avgpool 2x2/2"]))
    lines += [tail, f"dropout {draw(st.sampled_from([0.0, 0.5]))}", "linear 8 relu", "linear classes"]
    return "\n".join([template, *lines]) + "\n"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs())
def test_random_specs_count_what_torch_counts(text):
    net = incdsl.from_text(text, "random.inc")
    stats = incdsl.stats(net)
    model = incdsl.build_module(net).eval()
    assert stats.params == sum(p.numel() for p in model.parameters())
    x = torch.randn(2, *net.input.as_list())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        y = model(x)
    assert stats.macs * 2 == counter.get_total_flops() // 2  # batch of 2: FLOPs = 2 x 2 x MACs
    assert tuple(y.shape) == (2, net.classes)


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
