"""One symbol table for everything a generated file defines: a spec that asks for two things with one
name, or for a name the file itself uses, gets an error at ``check`` time naming both places; internal
names (forward locals) are renamed instead. Each case here once compiled to a broken or silently
wrong model."""

import pytest

import incdsl
from incdsl.errors import IncdslError

torch = pytest.importorskip("torch")

HEADER = "network Net\ninput 16x16x3\nclasses 4\n"


def error(body: str) -> IncdslError:
    with pytest.raises(IncdslError) as info:
        incdsl.from_text(HEADER + body, "n.inc")
    return info.value


@pytest.mark.parametrize(
    "first, second, clash",
    [("a_b", "AB", "AB"), ("Mixed_5b", "Mixed5b", "Mixed5b"), ("inner_block", "InnerBlock", "InnerBlock")],
)
def test_two_templates_with_one_class_name(first, second, clash):
    exc = error(f"template {first} {{ conv 1x1 4 }}\ntemplate {second} {{ conv 1x1 8 }}\n{first}\n{second}\n")
    assert (
        exc.span.line == 5
        and f"'{clash}' is already used by the class of template '{first}' at n.inc:4:10" in exc.message
    )


@pytest.mark.parametrize(
    "name",
    [
        "f",
        "F",
        "BasicConv2d",
        "ConvBN",
        "ConvReLU",
        "OrderedDict",
        "Optional",
        "NamedTuple",
        "SPEC",
        "Tensor",
    ],
)
def test_a_template_named_like_the_files_own_names(name):
    exc = error(f"template {name} {{ conv 1x1 4 }}\n{name}\n")
    assert "is reserved in generated code" in exc.message and exc.span.line == 4


def test_a_template_named_like_the_network():
    exc = error("template Net { conv 1x1 4 }\nNet\n")
    assert "'Net' is already used by the class of network 'Net' at n.inc:1:9" in exc.message
    exc = error("template net { conv 1x1 4 }\nnet\n")  # class Net again
    assert "'Net' is already used by the class of network 'Net'" in exc.message


def test_a_network_named_after_its_file_says_so():
    with pytest.raises(IncdslError, match=r"network 't' \(named after the spec's file\)"):
        incdsl.from_text("input 8x8x3\ntemplate t { conv 1x1 4 }\nt\n", "t.inc")


def test_the_build_function_is_a_lowercase_name_a_class_never_takes():
    incdsl.compile_source(incdsl.from_text(HEADER + "template build { conv 1x1 4 }\nbuild\n", "n.inc"))


@pytest.mark.parametrize(
    "aux, message",
    [
        ("aux c after c weight=0.3: h\n", "'c' is already used by row 'c' at n.inc:4:1"),
        ("aux a after c weight=0.3: h\naux a after c weight=0.3: h\n", "'a' is already used by aux head 'a'"),
        ("aux logits after c weight=0.3: h\n", "'logits' is reserved"),
        ("aux _fields after c weight=0.3: h\n", "cannot start with '_'"),
        ("aux aux_logits after c weight=0.3: h\n", "'aux_logits' is reserved"),
        ("aux training after c weight=0.3: h\n", "'training' is reserved"),
    ],
)
def test_aux_head_names(aux, message):
    exc = error("c: conv 1x1 4\ntemplate h { linear classes }\n" + aux + "linear classes\n")
    assert message in exc.message
    assert exc.span.source_line().startswith("aux") and exc.span.column == 5


def test_template_parameters_cannot_hide_module_level_names():
    exc = error("template t(nn) { conv 1x1 nn }\nt 4\n")
    assert "'nn' is reserved" in exc.message
    exc = error("template Inner { conv 1x1 4 }\ntemplate t(Inner) { conv 1x1 Inner; Inner }\nt 4\n")
    assert "'Inner' is reserved" in exc.message


def forward_of(source: str, cls: str) -> str:
    return source.split(f"class {cls}(nn.Module):")[1].split("def forward")[1].split("\n\n")[0]


def test_nested_forks_never_clobber_an_outer_branch():
    """The inner branch named y must not overwrite the outer branch's y before the final cat."""
    spec = (
        "template t { branch { y_1: conv 1x1 4 }\n"
        " branch { z_1: conv 1x1 4; branch y: conv 3x3 4; branch w: conv 1x1 4 } }\nt\nlinear classes\n"
    )
    source = incdsl.compile_source(incdsl.from_text(HEADER + spec, "n.inc"))
    forward = forward_of(source, "T")
    assert "y_2 = self.y(z)" in forward and "x = torch.cat([y, z], 1)" in forward
    model = incdsl.build_module(incdsl.from_text(HEADER + spec, "n.inc"))
    model(torch.randn(2, 3, 16, 16)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())  # y_1 reaches the output


def test_a_local_that_would_hide_torch_is_renamed():
    spec = "template t { branch { torch_1: conv 1x1 4; torch_2: conv 1x1 4 }\n branch { conv 1x1 2 } }\nt\n"
    source = incdsl.compile_source(incdsl.from_text(HEADER + spec + "linear classes\n", "n.inc"))
    assert "torch_2 = self.torch_1(x)" in source and "torch.cat([torch_2, branch2], 1)" in source


def test_a_flattened_branch_may_start_with_an_identity_layer():
    spec = "template t { branch { softmax; b: conv 1x1 4 }\n branch { conv 1x1 2 } }\nt\nlinear classes\n"
    model = incdsl.build_module(incdsl.from_text(HEADER + spec, "n.inc"))
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 4)


def test_a_layer_named_like_a_sequential_method_inside_a_named_branch():
    exc = error("template t { branch b { append: conv 1x1 4; conv 1x1 4 } }\nt\n")
    assert "'append' is reserved in generated code (a method of nn.Sequential)" in exc.message


# smaller defects -------------------------------------------------------------------------------


def test_a_template_parameter_used_as_eps_and_as_a_probability_is_a_float():
    spec = "template t(e, p) { conv 1x1 4 bn eps=e; dropout p }\nt 0.001 0.5\nlinear classes\n"
    source = incdsl.compile_source(incdsl.from_text(HEADER + spec, "n.inc"))
    assert "def __init__(self, in_channels: int, e: float, p: float)" in source
    assert "BasicConv2d(in_channels, 4, kernel_size=1, eps=e)" in source


def test_a_one_branch_group_is_not_concatenated():
    source = incdsl.compile_source(
        incdsl.from_text(HEADER + "template t { branch { conv 1x1 4 } }\nt\n", "n.inc")
    )
    assert "torch.cat" not in forward_of(source, "T")


def test_errors_in_a_template_no_row_calls():
    exc = error("template unused { conv 1x1 4 relu2 }\nconv 1x1 4\n")
    assert (
        "unknown name 'relu2'" in exc.message
        and "in template 'unused', which no row calls yet" in exc.format()
    )


def test_errors_inside_a_call_name_the_call_site():
    exc = error("template t(c) { conv 1x1 c }\n\nt 2.5\n")
    assert exc.span.line == 6 and exc.span.column == 3  # the argument, at the call
    exc = error("template t(c) {\n  conv 9x9/4 c pad=0\n  conv 9x9 c pad=0\n}\nt 4\n")
    assert exc.span.line == 6 and "note: in template 't', called at n.inc:8:1" in exc.format()


def test_check_refuses_an_aux_head_that_could_not_train():
    exc = error("c: conv 1x1 4\naux a after c weight=0.3: conv 1x1 3\nlinear classes\n")
    assert "an aux head ends in logits" in exc.message
    exc = error("c: conv 1x1 4\naux a after c weight=0.3: linear 3\nlinear classes\n")
    assert "gives 3 outputs; the network has 4 classes" in exc.message


def test_a_linear_layer_on_a_feature_map_inside_a_named_sequence():
    exc = error("template t { branch b { conv 1x1 4; linear 3 } }\nt\n")
    assert "cannot sit in a named branch of several layers" in exc.message


def test_calls_flattening_different_sizes():
    exc = error("template t { fc: linear 3 relu }\nconv 1x1 4\nt\nlinear 4 relu\nt\n")
    assert "flatten feature maps of different sizes" in exc.message or "needs a spatial input" in exc.message


def test_every_kind_has_a_spelling_in_each_backend():
    """Adding a layer or merge kind means spelling it in the PyTorch backend and the interpreter."""
    from incdsl.backends.pytorch import interpreter
    from incdsl.backends.pytorch.writer import Writer
    from incdsl.kinds.layers import KINDS, MERGES

    def spelt(kind, table):
        return any(cls in table for cls in type(kind).__mro__)

    for kind in KINDS.values():
        methods = {getattr(Writer, f"module_{c.__name__}", None) for c in type(kind).__mro__} - {None}
        assert kind.identity or methods, f"no module_<Kind> for {kind.name}"
        assert spelt(kind, interpreter._OPS), f"the interpreter cannot run {kind.name}"
    for merge in MERGES.values():
        assert hasattr(Writer, f"merge_{type(merge).__name__}") and spelt(merge, interpreter._MERGES)


def test_repeats_of_templates_that_repeat_are_bounded():
    spec = "template t { c: 400x conv 1x1 2 }\nb: 400x t\n"
    with pytest.raises(IncdslError, match="more than 100,000 layers"):
        incdsl.from_text(HEADER + spec, "n.inc")


def test_a_chain_of_template_calls_is_bounded():
    chain = "".join(f"template t{i} {{ t{i + 1} }}\n" for i in range(200)) + "template t200 { conv 1x1 2 }\n"
    with pytest.raises(IncdslError, match="nests deeper than 64 levels"):
        incdsl.from_text(HEADER + chain + "t0\n", "n.inc")


# Every name the generated file can define or import --------------------------------------------
# The reserved list is read from the template (incdsl/backends/pytorch/names.py); these tests hold it to
# what generated files really bind, and a spec that names its classes with each of those names either
# is refused at check time or compiles, in both builds, to a module that runs.

RICH_SPECS = ["googlenet_tv", "inception_v3", "inception_resnet_v2", "convnext_tiny", "mobilenet_v3_large"]


def _module_level_names(source: str) -> set[str]:
    import ast

    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


@pytest.mark.parametrize("spec", RICH_SPECS)
def test_the_reserved_names_cover_what_generated_files_bind(spec):
    from incdsl.backends.pytorch.names import defined_names

    net = incdsl.load(spec)
    claimed = {cls.name for cls in net.blocks} | {net.model.name, net.model.outputs}
    for optimize in (False, True):
        bound = _module_level_names(incdsl.compile_source(net, formatted=False, optimize=optimize))
        assert bound - claimed <= set(defined_names()), (spec, optimize)


def _spellings(name: str) -> set[str]:
    """Template names whose class is ``name``: itself, and its snake_case spelling."""
    import re

    return {name, re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()}


def _every_file_name():
    from incdsl.backends.pytorch.names import defined_names

    return sorted({s for name in defined_names() for s in _spellings(name)})


AUX_SPEC = (
    "network Net\ninput 16x16x3\nclasses 4\n"
    "template {name} {{ conv 3x3 4 bn\nbatchnorm }}\n"
    "conv 3x3 4 relu\nb: {name}\nglobal_avgpool\nlinear classes\n"
    "aux side after b weight=0.3: linear classes\n"
)


@pytest.mark.parametrize("name", _every_file_name())
def test_a_template_named_like_any_name_the_file_binds(name):
    """Refused with a clear error naming the clash, or compiled: plain and optimized builds both run."""
    from incdsl.backends.pytorch.writer import instantiate
    from incdsl.errors import SpecNameError
    from incdsl.ir.symbols import class_name

    try:
        net = incdsl.from_text(AUX_SPEC.format(name=name), "n.inc")
    except SpecNameError as exc:  # a clear refusal naming the clash (a reserved name, a layer kind)
        assert name in exc.message or class_name(name) in exc.message, exc.message
        return
    x = torch.zeros(2, 3, 16, 16)
    for optimize in (False, True):
        model = instantiate(incdsl.compile_source(net, formatted=False, optimize=optimize)).eval()
        with torch.no_grad():
            assert model(x).shape == (2, 4), (name, optimize)
