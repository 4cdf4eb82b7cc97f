"""The generated module against an independent oracle: the IR interpreter (incdsl.backends.pytorch.interpreter).

For every shipped spec and for random specs (nested forks, flattened branches, named and positional
nn.Sequentials, template calls inside templates, repeats, aux heads, names that collide with what
the generated file uses), the module and the interpreter, given the same weights (the module's
state_dict loads into the interpreter's keys with strict=True), compute the same outputs and the
same gradients, in training mode, and every parameter of the network receives a gradient. The
module's numel() and FlopCounterMode also equal the stats. A spec that ``check`` accepts always
compiles to a model that builds and runs.
"""

import pytest
from conftest import SHIPPED
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import incdsl

torch = pytest.importorskip("torch")
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from incdsl.backends.pytorch.interpreter import Interpreter  # noqa: E402
from incdsl.backends.pytorch.writer import load_source  # noqa: E402

RANDOM_SPECS = 300  # per CI run


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These networks are tiny: with more than one thread, synchronising costs ten times the work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build_pair(net, dtype):
    """The generated module and an interpreter holding the very same tensors."""
    module = load_source(incdsl.compile_source(net, formatted=False), "incdsl_differential").build().to(dtype)
    reference = Interpreter(net)
    module.load_state_dict(reference.state, strict=True)  # the IR's keys and shapes are the module's
    named = dict(module.named_parameters())
    state = {key: named.get(key, tensor) for key, tensor in module.state_dict(keep_vars=True).items()}
    return module, Interpreter(net, state)


def outputs_of(result):
    return list(result) if isinstance(result, tuple) else [result]


def assert_same_function(net, batch=2, seed=0, dtype=torch.float64, tolerance=1e-9):
    """Same outputs and gradients in training mode (batch statistics, dropout, aux heads)."""
    module, reference = build_pair(net, dtype)
    x = torch.randn(batch, *net.input.as_list(), dtype=dtype, generator=torch.Generator().manual_seed(seed))
    module.train(), reference.train()
    torch.manual_seed(seed)
    got = outputs_of(module(x))
    torch.manual_seed(seed)
    expected = outputs_of(reference(x))
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance)
    weights = [torch.randn(o.shape, dtype=dtype, generator=torch.Generator().manual_seed(1)) for o in got]
    sum((o * w).sum() for o, w in zip(got, weights)).backward()
    params = reference.parameters()
    grads = torch.autograd.grad(sum((o * w).sum() for o, w in zip(expected, weights)), list(params.values()))
    for (key, param), grad in zip(params.items(), grads):
        assert param.grad is not None, f"{key} receives no gradient"
        torch.testing.assert_close(param.grad, grad, rtol=tolerance, atol=tolerance, msg=key)
    return module


def assert_counts_agree(net, module):
    stats = incdsl.stats(net)
    aux_params = sum(a.params for a in stats.aux)
    assert sum(p.numel() for p in module.parameters()) == stats.params + aux_params
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module.eval()(torch.randn(1, *net.input.as_list(), dtype=torch.float64))
    assert counter.get_total_flops() == 2 * stats.macs


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_specs_module_equals_interpreter(name):
    """In float32 (the same kernels run in the same order, so the results agree to rounding)."""
    assert_same_function(incdsl.load(name), dtype=torch.float32, tolerance=1e-5)


# random specs -----------------------------------------------------------------------------------

# Valid names that collide with what generated code uses: imports, helpers, locals, builtins.
HOSTILE = ["x", "torch", "F", "nn", "Tensor", "cat", "self_", "y", "OrderedDict", "build", "SPEC", "int",
           "sum", "branch1", "x_1", "torch_1", "flatten", "Optional", "in_channels", "num_classes"]  # fmt: skip


class Names:
    """Unique names for one block, drawn from HOSTILE (with a suffix once a base is used)."""

    def __init__(self, draw):
        self.draw, self.used = draw, set()

    def __call__(self) -> str:
        base = self.draw(st.sampled_from(HOSTILE))
        name, i = base, 1
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name


widths = st.integers(1, 5)


@st.composite
def branch(draw, names: Names, depth: int = 0) -> str:
    w = lambda: draw(widths)  # noqa: E731
    forms = [
        "single",
        "sequential",
        "ordered",
        "unnamed",
        "flattened",
        "identity_first",
        "pool",
        "call",
        "zero",
    ]
    if depth < 2:
        forms.append("fork")
    form = draw(st.sampled_from(forms))
    if form == "single":
        return f"branch {names()}: conv 1x1 {w()}"
    if form == "sequential":
        return f"branch {names()} {{ conv 1x1 {w()}; conv 3x3 k }}"
    if form == "ordered":
        return f"branch {names()} {{ {names()}: conv 1x1 {w()}; {names()}: conv 3x1 {w()} }}"
    if form == "unnamed":
        return f"branch {{ conv 1x1 {w()}; maxpool 3x3/1 pad=1 }}"
    if form == "flattened":
        return f"branch {{ {names()}: conv 1x1 {w()}; {names()}: conv 5x5 k }}"
    if form == "identity_first":
        return f"branch {{ softmax; {names()}: conv 1x1 {w()} }}"
    if form == "pool":
        exclude = draw(st.sampled_from(["", " exclude_pad"]))
        return f"branch {{ avgpool 3x3/1 pad=1{exclude}; relu; {names()}: conv 1x1 k }}"
    if form == "zero":  # dropped when the call passes z = 0
        return f"branch {names()}: conv 1x1 z"
    if form == "call":
        return f"branch {{ {names()}: inception {w()} {w()} {w()} {w()} {w()} k }}"
    inner = [draw(branch(names, depth + 1)) for _ in range(draw(st.integers(1, 3)))]
    return f"branch {{ {names()}: conv 1x1 {w()}\n" + "\n".join(inner) + "\n}"


@st.composite
def residual(draw, names: Names) -> str:
    """A residual after the block's branches: strided or not, identity or projected shortcut, a
    scale, and a ReLU after the add given by the template's flag argument f."""
    stride = draw(st.sampled_from([1, 2]))
    width = draw(widths)
    shortcut = draw(st.sampled_from(["shortcut", "shortcut " + names()]))
    scale = draw(st.sampled_from(["", " scale=0.5", " scale=s"]))
    return (
        f"\nresidual{scale} relu=f {{\n {names()}: conv 3x3/{stride} {width}\n"
        f" {names()}: conv 1x1 {width} norelu\n {shortcut}: conv 1x1/{stride} {width} norelu\n}}"
    )


@st.composite
def block_template(draw, index: int) -> str:
    names = Names(draw)
    branches = [draw(branch(names)) for _ in range(draw(st.integers(1, 4)))]
    branches.append(f"branch {names()}: conv 1x1 {draw(widths)}")  # one that a 0 never drops
    tail = draw(st.sampled_from(["", f"\n{names()}: conv 1x1 k", "\nlrn 3", draw(residual(names))]))
    return f"template blk{index}(k, z, f, s) {{\n" + "\n".join(branches) + tail + "\n}"


@st.composite
def specs(draw) -> str:
    size = draw(st.integers(8, 16))
    lines = [f"input {size}x{size}x{draw(st.integers(1, 3))}", f"classes {draw(st.integers(2, 6))}"]
    style = draw(st.sampled_from(["bias relu", "bn eps=0.001", "nobias norelu", "bn norelu", "bn bias"]))
    lines += [f"defaults conv: {style}", f"defaults maxpool: {draw(st.sampled_from(['ceil', 'noceil']))}"]
    templates = [draw(block_template(i)) for i in range(draw(st.integers(1, 2)))]
    k = draw(st.sampled_from([1, 3, 5]))
    lines.append(f"stem: conv {k}x{k}/{draw(st.sampled_from([1, 2]))} {draw(widths)}")
    stages, body = [], []
    for i in range(draw(st.integers(1, 4))):
        choice = draw(st.sampled_from(["block", "inception", "pool", "factorised"]))
        repeat = draw(st.integers(1, 2))
        times = f"{repeat}x " if repeat > 1 else ""
        name = f"s{i}"
        stages += [f"{name}_{j + 1}" for j in range(repeat)] if repeat > 1 else [name]
        if choice == "block":
            args = f"{draw(widths)} {draw(st.sampled_from([0, 2]))} {draw(st.sampled_from([0, 1]))} 0.25"
            body.append(f"{name}: {times}blk{draw(st.integers(0, len(templates) - 1))} {args}")
        elif choice == "inception":
            body.append(f"{name}: {times}inception " + " ".join(str(draw(widths)) for _ in range(6)))
        elif choice == "pool":
            body.append(f"{name}: {times}maxpool 3x3/2 pad=1")
        else:
            n = draw(st.sampled_from([3, 5]))
            body += [f"{name}: {times}conv 1x{n} {draw(widths)}", f"conv {n}x1 {draw(widths)}"]
    grouped = draw(st.booleans())  # the stages as one nn.Sequential, keyed by position
    lines += ["sequential grp {", *body, "}"] if grouped else body
    tail = draw(st.sampled_from(["global_avgpool", "adaptive_avgpool 2x2", "avgpool 2x2/2 ceil"]))
    lines += [
        tail,
        f"dropout {draw(st.sampled_from([0.0, 0.5]))}",
        "linear 8 relu",
        "fc: linear classes",
        "softmax",
    ]
    heads = ["template head { adaptive_avgpool 2x2; conv 1x1 3; linear 6 relu; linear classes }"]
    for j in range(draw(st.integers(0, 2))):
        head = draw(st.sampled_from(["head", "linear classes"]))
        after = draw(st.sampled_from(stages))
        name = draw(st.sampled_from(["x", "torch", "F", "cat", "aux", "y", "sum", "Tensor"])) + f"{j}" * (
            j > 0
        )
        lines.append(f"aux {name} after {after} weight=0.3: {head}")
    return "\n".join([*templates, *heads, *lines]) + "\n"


@settings(max_examples=RANDOM_SPECS, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs())
def test_random_specs_module_equals_interpreter(text):
    try:
        net = incdsl.from_text(text, "random.inc")
    except incdsl.IncdslError as exc:  # a random spec may not fit its input; then check says so
        assert "error:" in exc.format()
        return
    module = assert_same_function(net)
    assert_counts_agree(net, module)
