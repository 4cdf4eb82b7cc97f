"""Generated code that reads like timm's and torchvision's (issue 16, item 5): one class per template
whose when= decisions and flags are constructor arguments, shape comments in block classes,
docstrings from the spec's comments and the paper it cites."""

import pytest

import incdsl
from incdsl.ir.symbolic import Expr, Sym, apply
from incdsl.syntax.parser import comment_above, parse

torch = pytest.importorskip("torch")

HEADER = """# A test network, after "A Made-Up Paper on Blocks" (Doe, Roe, 2031).
#
# More about it.
network Net
input 16x16x8
classes 4
defaults conv: act=none nobias
"""

BLOCKS = """
# torchvision's Bottleneck, small: a projection where the shape changes.
template bottleneck(w, s) {
    residual {
        conv1: conv 1x1 w
        bn1: batchnorm
        relu
        conv2: conv 3x3/s w
        bn2: batchnorm
        relu
        conv3: conv 1x1 w*2
        bn3: batchnorm
        shortcut downsample when=s!=1 or in_channels!=w*2 { conv 1x1/s w*2; batchnorm }
    }
}
# An inverted residual: the expansion only where t != 1, the input added where the shape is kept.
template ir(t, c, s) {
    residual norelu when=s==1 and in_channels==c {
        sequential conv {
            conv 1x1 in_channels*t when=t!=1
            conv 3x3/s in_channels*t groups=in_channels*t
            conv 1x1 c
            batchnorm
        }
    }
}
"""

ROWS = """
a: bottleneck 4 1
b: bottleneck 4 1
c: bottleneck 8 2
d: ir 1 16 1
e: ir 2 16 1
f: ir 2 24 2
pool: global_avgpool
fc: linear classes
"""


def load(text: str = HEADER + BLOCKS + ROWS):
    return incdsl.from_text(text, "n.inc")


def state_keys(model) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def test_a_templates_when_decisions_are_one_class_as_torchvision_writes_it():
    source = incdsl.compile_source(load())
    assert source.count("class Bottleneck(") == 1 and "BottleneckNoDownsample" not in source
    assert source.count("class Ir(") == 1 and "IrNo" not in source
    assert "if s != 1 or in_channels != 2 * w\n            else None" in source
    assert "if self.downsample is not None:\n            downsample = self.downsample(x)" in source
    assert "if t != 1:\n            layers.append(nn.Conv2d(in_channels, in_channels * t" in source
    assert "self.use_residual = s == 1 and in_channels == c" in source
    assert "x = out + x if self.use_residual else out" in source


def test_the_one_class_has_the_variants_state_dict_keys():
    model = incdsl.build_module(load())
    keys = [k for k, _ in state_keys(model)]
    # a: 8 -> 2 * 4 = 8 channels at stride 1, no projection; c: 8 -> 16 at stride 2, projected
    assert not any(k.startswith("a.downsample") for k in keys)
    assert "c.downsample.0.weight" in keys and "c.downsample.1.running_var" in keys  # stride 2
    assert model.a.downsample is None and model.c.downsample is not None
    # d: t = 1 has no expansion, so its depthwise conv is position 0; e: t = 2 is position 1
    assert dict(state_keys(model))["d.conv.0.weight"] == (16, 1, 3, 3)
    assert dict(state_keys(model))["e.conv.0.weight"] == (32, 16, 1, 1)
    assert dict(state_keys(model))["e.conv.1.weight"] == (32, 1, 3, 3)
    assert (model.d.use_residual, model.e.use_residual, model.f.use_residual) == (True, True, False)


def test_the_one_class_computes_what_the_interpreter_computes():
    """The IR's interpreter (no generated code) gives the keys, the shapes and the function."""
    from incdsl.backends.pytorch.interpreter import Interpreter

    net = load()
    model = incdsl.build_module(net).double().eval()
    reference = Interpreter(net)
    model.load_state_dict(reference.state, strict=True)
    x = torch.randn(2, 8, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(model(x), Interpreter(net, model.state_dict()).eval()(x), atol=1e-9)


def test_it_scripts_with_its_optional_modules():
    model = incdsl.build_module(load()).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(1, 8, 16, 16)
    with torch.no_grad():
        assert torch.allclose(scripted(x), model(x))


def test_a_part_that_changes_what_follows_keeps_its_own_class():
    """Left out, the 1x1 conv leaves the 3x3 conv reading in_channels, not 12: one class could not
    build both, so each set of decisions stays a class, and the model still builds and runs."""
    text = HEADER + "template b(e) {\n    conv 1x1 12 when=e\n    conv 3x3 4\n}\nx1: b 1\nx2: b 0\n"
    source = incdsl.compile_source(load(text))
    assert "class B(" in source and "class BNoConv(" in source
    model = incdsl.build_module(load(text))
    assert model(torch.randn(1, 8, 16, 16)).shape == (1, 4, 16, 16)


def test_block_classes_say_each_steps_shape_in_their_arguments_terms():
    source = incdsl.compile_source(load())
    bottleneck = source.split("class Bottleneck(")[1].split("\nclass ")[0]
    assert "# (N, in_channels, H, W)\n        out = self.conv1(x)\n        # (N, w, H, W)" in bottleneck
    assert "out = self.conv2(out)\n        # (N, w, H/s, W/s)" in bottleneck  # strides 1 and 2 called
    assert "out = self.conv3(out)\n        # (N, 2 * w, H/s, W/s)" in bottleneck
    inception = incdsl.compile_source("googlenet").split("class Inception(")[1].split("\nclass ")[0]
    assert "# (N, n1x1 + n3x3 + n5x5 + pool_proj, H, W)" in inception


def test_docstrings_carry_the_templates_comment_the_paper_and_the_counts():
    net = load()
    source = incdsl.compile_source(net)
    bottleneck = source.split("class Bottleneck(nn.Module):\n")[1]
    assert bottleneck.startswith(
        '    """torchvision\'s Bottleneck, small: a projection where the shape changes.\n\n'
        '    Template `bottleneck` of n.inc, after "A Made-Up Paper on Blocks" (Doe, Roe, 2031).\n'
    )
    model = incdsl.build_module(net)
    params = sum(p.numel() for p in model.parameters())  # torch's count, not the compiler's
    doc = type(model).__doc__
    assert doc.startswith('A test network, after "A Made-Up Paper on Blocks" (Doe, Roe, 2031).')
    assert f"16x16x8 input; {params:,} parameters;" in " ".join(doc.split())
    prelude = incdsl.compile_source("googlenet").split("class Inception(nn.Module):\n")[1]
    assert "Template `inception` of incdsl's prelude, after" in prelude.split('"""')[1]


def test_a_templates_comment_is_kept_with_its_span_and_parses_the_same():
    text = HEADER + BLOCKS + ROWS
    spec = parse(text, "n.inc")
    block = spec.templates[0]
    assert block.comment == "torchvision's Bottleneck, small: a projection where the shape changes."
    assert block.comment_span.line == text.split("\n").index(f"# {block.comment}") + 1
    bare = parse("\n".join(x for x in text.split("\n") if not x.startswith("# ")), "n.inc")
    assert bare.templates[0].comment == "" and bare.templates == spec.templates  # compare=False
    assert comment_above("x\n\n# loose\n\ntemplate t { conv 1x1 4 }\n", 5) == ("", None)


def test_a_multiple_of_a_floor_division_prints_as_python_computes_it():
    e = Expr.of(apply("//", Sym("c"), 2)) * 2
    assert str(e) == "2 * (c // 2)" and eval(str(e), {"c": 5}) == 4  # 2 * c // 2 would give 5


def test_no_shipped_spec_runs_a_sequential_group_position_by_position():
    """Every shipped spec's forward calls its sequential groups whole (x = self.layer1(x)): none
    reads inside one with an aux head or flattens in it."""
    import re
    from pathlib import Path

    for path in sorted(Path(__file__).parent.parent.joinpath("specs").glob("*.inc")):
        source = incdsl.compile_source(incdsl.load(str(path)), formatted=False)
        assert not re.findall(r"self\.\w+\[\d+\]\(", source), path.name


def test_the_inference_build_of_the_one_class_loads_the_plain_builds_weights():
    net = load()
    plain = incdsl.build_module(net).eval()
    with torch.no_grad():  # BatchNorm statistics that are not the identity, so folding shows
        for name, tensor in plain.state_dict().items():
            if name.endswith(("running_mean", "running_var")):
                tensor.uniform_(0.5, 1.5)
    fast = incdsl.build_module(net, optimize=True)
    fast.load_state_dict(plain.state_dict(), strict=True)
    x = torch.randn(2, 8, 16, 16)
    with torch.no_grad():
        assert torch.allclose(fast(x), plain(x), atol=1e-4)


def test_a_comment_is_a_docstring_whatever_it_holds():
    comment = '# quotes """ and \\ a backslash, a tab\there, a form feed \x0c, "at the end"\n'
    source = incdsl.compile_source(load(HEADER + comment + "template b { conv 1x1 4 }\nx: b\n"))
    compile(source, "model.py", "exec")  # valid Python
    model = incdsl.build_module(load(HEADER + comment + "template b { conv 1x1 4 }\nx: b\n"))
    assert type(model.x).__doc__.startswith('quotes """ and \\ a backslash, a tab\there, a form feed \x0c')


def test_a_flag_before_other_parameters_is_passed_by_keyword_after_them():
    text = HEADER + "template b(f, z, c) {\n    residual relu=f { conv 1x1 c }\n}\nx1: b 1 0 8\nx2: b 0 0 8\n"
    source = incdsl.compile_source(load(text))
    # z, 0 in every call and used nowhere, is fixed (no argument); f comes last, by keyword
    assert "self.x1 = B(8, 8, f=True)" in source and "self.x2 = B(8, 8, f=False)" in source
    assert (
        "class B(nn.Module)" in source and "def __init__(self, in_channels: int, c: int, f: bool)" in source
    )
    model = incdsl.build_module(load(text))
    assert (model.x1.f, model.x2.f) == (True, False)
