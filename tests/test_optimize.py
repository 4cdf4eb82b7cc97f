"""The optimizing build (incdsl compile --optimize): its passes, each on its own, and the module they
make: the same function as the plain build on the same weights, for every shipped spec, loading the
plain build's state_dict unchanged; exportable like it. Speed is measured by benchmarks/speed.py, not
here."""

import os
import shutil

import pytest
from conftest import SHIPPED

import incdsl
from incdsl.ir.tree import Layer, walk
from incdsl.kinds.layers import Conv
from incdsl.passes.optimize import (
    Plan,
    fold_activations,
    fold_batchnorm,
    fold_residuals,
    fuse_siblings,
    optimize,
    separable_max_pools,
    use_channels_last,
    use_onednn,
)
from incdsl.tools import cli

torch = pytest.importorskip("torch")


def test_fold_takes_every_convolution_with_batchnorm_or_relu():
    net = incdsl.load("inception_v3")
    plan = fold_batchnorm(net, Plan())
    convs = [
        n
        for cls in net.blocks
        for n in walk(cls.body)
        if isinstance(n, Layer) and isinstance(n.op.kind, Conv)
    ]
    assert convs and all(c in plan.folded for c in convs)
    bare = incdsl.from_text("input 8x8x3\nconv 1x1 4 nobn norelu\n", "n.inc")
    assert not fold_batchnorm(bare, Plan()).folded


def test_fuse_groups_the_1x1_heads_that_read_one_input():
    net = incdsl.load("inception_v3")
    plan = fuse_siblings(net, fold_batchnorm(net, Plan()))
    heads = {cls.name: [[h.attr or b.container for b, h in zip(g.branches, g.heads)] for g in plan.groups(cls)]
             for cls in net.blocks}  # fmt: skip
    assert heads["InceptionA"] == [["branch1x1", "branch5x5_1", "branch3x3dbl_1"]]
    assert heads["InceptionD"] == [["branch3x3_1", "branch7x7x3_1"]]
    assert heads["InceptionB"] == [] and heads["InceptionAux"] == []
    unfolded = fuse_siblings(net, Plan())  # only folded convolutions are fused
    assert not unfolded.fused


def test_fuse_needs_two_heads_with_one_activation():
    text = "input 8x8x4\ndefaults conv: bn\ntemplate t { branch a: conv 1x1 4; branch b: conv 1x1 4 norelu; branch c: conv 3x3 4 }\nt\n"
    net = incdsl.from_text(text, "n.inc")
    assert not fuse_siblings(net, fold_batchnorm(net, Plan())).fused
    text = text.replace("branch c: conv 3x3 4", "branch c: conv 1x1 2 norelu")
    net = incdsl.from_text(text, "n.inc")
    (group,) = fuse_siblings(net, fold_batchnorm(net, Plan())).groups(net.blocks[0])
    assert [b.container for b in group.branches] == ["b", "c"]


def test_fused_names_are_fresh_in_their_class():
    text = "input 8x8x4\ndefaults conv: bn\ntemplate t { fused: conv 1x1 4\nbranch a: conv 1x1 4; branch b: conv 1x1 4 }\nt\n"
    net = incdsl.from_text(text, "n.inc")
    (group,) = optimize(net).groups(net.blocks[0])
    assert group.name == "fused_2"
    assert optimize(net).groups(net.blocks[0])[0].name == "fused_2"  # the IR's own names are untouched


def test_the_fused_output_gets_a_fresh_local_in_its_forward():
    """Allocated in a copy of the class's locals scope, beside the forward's own variables (the
    branch outputs); the IR's scope is left as it was."""
    text = (
        "input 8x8x4\ndefaults conv: bn\ntemplate t { branch fused: conv 1x1 4; branch b: conv 1x1 4 }\nt\n"
    )
    net = incdsl.from_text(text, "n.inc")
    (group,) = optimize(net).groups(net.blocks[0])
    assert "fused" in net.blocks[0].locals and group.var == "fused_2"
    assert "fused_2" not in net.blocks[0].locals
    plain = randomised(incdsl.build_module(net)).eval()
    fast = incdsl.build_module(net, optimize=True)
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(2, 4, 8, 8)
    with torch.inference_mode():
        assert torch.allclose(fast(x), plain(x), atol=1e-5)


def test_channels_last_is_a_decision_of_its_own():
    assert use_channels_last(incdsl.load("mini_googlenet"), Plan()).channels_last


def randomised(model):
    """Weights and running statistics that make BatchNorm folding matter."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.05)
    return model


@pytest.mark.parametrize("name", SHIPPED)
def test_the_optimized_build_loads_the_plain_state_dict_and_computes_the_same(name):
    net = incdsl.load(name)
    plain = randomised(incdsl.build_module(net)).eval()
    fast = incdsl.build_module(net, optimize=True)
    assert list(fast.state_dict()) == list(plain.state_dict())
    fast.load_state_dict(plain.state_dict(), strict=True)
    x = torch.randn(1, *net.input.as_list(), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected, got = plain(x), fast(x)
    assert ((got - expected).norm() / expected.norm()).item() < 1e-4


@pytest.mark.parametrize(
    "passes",
    [
        (fold_batchnorm,),
        (fold_batchnorm, use_channels_last),
        (fold_batchnorm, fuse_siblings),
        (use_channels_last,),
    ],
    ids=lambda passes: "+".join(p.__name__ for p in passes),
)
def test_each_subset_of_the_passes_builds_a_module_that_computes_the_same(passes):
    """The passes are independent decisions: any of them alone, or with others, is a working build
    (fold without fuse once wrote a module that called a helper it had not defined)."""
    from incdsl.backends.pytorch import writer as pytorch

    net = incdsl.load("googlenet_tv")
    plan = optimize(net, passes)
    fast = pytorch.instantiate(pytorch.generate(net, formatted=False, optimize=True, plan=plan))
    plain = randomised(incdsl.build_module(net)).eval()
    fast.load_state_dict(plain.state_dict(), strict=True)
    x = torch.randn(1, *net.input.as_list(), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected, got = plain(x), fast(x)
    assert ((got - expected).norm() / expected.norm()).item() < 1e-4


def test_prepare_after_weights_change_in_place():
    net = incdsl.load("mini_googlenet")
    plain, fast = incdsl.build_module(net).eval(), incdsl.build_module(net, optimize=True)
    fast.load_state_dict(plain.state_dict())
    randomised(plain)
    with torch.no_grad():
        for key, tensor in fast.state_dict().items():
            tensor.copy_(plain.state_dict()[key])
    fast.prepare()
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-4, atol=1e-5)


def test_the_optimized_build_is_for_inference_only():
    fast = incdsl.build_module("mini_googlenet", optimize=True)
    assert not fast.training
    with pytest.raises(RuntimeError, match="inference build"):
        fast.train()
    assert fast.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_the_optimized_build_exports():
    net = incdsl.load("googlenet_tv")
    fast = incdsl.build_module(net, optimize=True)
    x = torch.randn(2, 3, 64, 64)
    program = torch.export.export(fast, (x,))
    with torch.inference_mode():
        torch.testing.assert_close(program.module()(x), fast(x), rtol=1e-4, atol=1e-5)


def test_onnx_export_of_the_optimized_build(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from incdsl.backends import onnx

    net = incdsl.load("mini_googlenet")
    fast = incdsl.build_module(net, optimize=True)
    fast.load_state_dict(randomised(incdsl.build_module(net)).state_dict())
    path = onnx.export_model(fast, net.input.as_list(), tmp_path / "fast.onnx")
    x = torch.randn(3, 3, 32, 32)
    (got,) = onnxruntime.InferenceSession(str(path)).run(None, {"x": x.numpy()})
    with torch.inference_mode():
        expected = fast(x)
    assert ((torch.from_numpy(got) - expected).norm() / expected.norm()).item() < 1e-5


RESIDUAL = """network Res
input 16x16x8
classes 4
defaults conv: bn
template block(scale, act) {
    residual scale=scale relu=act {
        branch a: conv 1x1 4
        branch b { conv 1x1 4; conv 3x3 4 }
        up: conv 1x1 8 nobn norelu bias
    }
}
sequential repeat { 2x block 0.2 1 }
last: block 1.0 0
pool: global_avgpool
fc: linear classes
template head { global_avgpool; linear classes }
aux side after last weight=0.3: head
"""


@pytest.mark.parametrize("name", ["mini_googlenet", "googlenet_tv", "inception_v3", "residual"])
def test_the_plain_build_is_scriptable(name):
    """torch.jit.script, as torchvision's models are: the outputs NamedTuple in training mode too."""
    net = incdsl.from_text(RESIDUAL, "res.inc") if name == "residual" else incdsl.load(name)
    model = incdsl.build_module(net)
    scripted = torch.jit.script(model)
    size = {"googlenet_tv": 96, "mini_googlenet": 32, "residual": 16}.get(name, 299)
    channels = net.input.channels
    x = torch.randn(1, channels, size, size)
    with torch.no_grad():
        torch.testing.assert_close(scripted.eval()(x), model.eval()(x))
    if net.auxes and name != "inception_v3":  # training mode at 299 is slow; the type is what matters
        assert type(scripted.train()(torch.randn(2, channels, size, size))).__name__.endswith("Outputs")


def test_compile_optimize_writes_onnx_too(tmp_path):
    pytest.importorskip("onnxscript")
    out = tmp_path / "fast.onnx"
    assert (
        cli.main(["compile", "mini_googlenet", "--optimize", "-o", str(out)]) == 0 and out.stat().st_size > 0
    )


def test_compile_optimize_on_the_command_line(tmp_path, capsys):
    out = tmp_path / "fast.py"
    assert cli.main(["compile", "mini_googlenet", "--optimize", "--compile", "-o", str(out)]) == 0
    text = out.read_text()
    assert "FoldedConv2d" in text and "def build(compile: bool = True" in text
    assert cli.main(["compile", "mini_googlenet", "--compile", "-o", str(out)]) == 2
    assert "--compile goes with --optimize" in capsys.readouterr().err


def test_build_compile_wraps_the_model_in_torch_compile():
    from incdsl.backends.pytorch.writer import load_source

    module = load_source(incdsl.compile_source("mini_googlenet", optimize=True), "incdsl_fast")
    assert type(module.build(compile=True)).__name__ == "OptimizedModule"  # compiles at its first call


@pytest.mark.parametrize("name", ["resnet50", "shufflenet_v2_x1_0", "mobilenet_v2", "efficientnet_b0"])
def test_every_batchnorm_row_after_a_convolution_is_folded(name):
    """torchvision's layout writes conv and BN as two rows (two modules); the inference build folds each
    BN into the convolution before it, and its module passes its input on."""
    if name not in SHIPPED:
        pytest.skip(f"{name} is not shipped")
    net = incdsl.load(name)
    fast = incdsl.build_module(net, optimize=True)
    kinds = [type(m).__name__ for m in fast.modules()]
    assert "BatchNorm2d" not in kinds
    assert kinds.count("FoldedBatchNorm2d") == kinds.count("ConvFoldingBN") > 0


ROWS = """input 12x12x3
classes 5
defaults conv: act=none nobias
c1: conv 3x3/2 8
b1: batchnorm
a1: relu6
c2: conv 3x3 8 groups=8
b2: batchnorm
a2: relu
c3: conv 1x1 6
b3: batchnorm
a3: relu
pool: global_avgpool
fc: linear classes
"""


def test_fold_activations_takes_a_relu_or_relu6_row_after_a_folded_batchnorm_row():
    net = incdsl.from_text(ROWS, "rows.inc")
    plan = fold_activations(net, fold_batchnorm(net, Plan()))
    assert sorted(plan.folds_act.values()) == ["relu", "relu", "relu6"]
    assert {a.attr for a in plan.folded_acts} == {"a1", "a2", "a3"}
    assert not fold_activations(net, Plan()).folds_act  # only after a batchnorm row folded into its conv
    text = ROWS.replace("a1: relu6", "a1: silu")
    net = incdsl.from_text(text, "rows.inc")
    plan = fold_activations(net, fold_batchnorm(net, Plan()))
    assert sorted(plan.folds_act.values()) == ["relu", "relu"]  # oneDNN's fused set: relu, relu6


@pytest.mark.parametrize(
    "passes",
    [
        (fold_batchnorm, fold_activations),
        (fold_batchnorm, fold_activations, use_channels_last),
        (fold_batchnorm, fold_activations, use_onednn),
        (fold_batchnorm, fold_activations, use_channels_last, use_onednn),
    ],
    ids=lambda passes: "+".join(p.__name__ for p in passes),
)
def test_folded_activation_rows_compute_the_same(passes):
    from incdsl.backends.pytorch import writer as pytorch

    net = incdsl.from_text(ROWS, "rows.inc")
    source = pytorch.generate(net, formatted=False, optimize=True, plan=optimize(net, passes))
    assert source.count('FoldedActivation("relu') == 3
    fast = pytorch.instantiate(source)
    plain = randomised(incdsl.build_module(net)).eval()
    fast.load_state_dict(plain.state_dict(), strict=True)
    x = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(2)) * 3  # ReLU6 clips some
    with torch.inference_mode():
        expected, got = plain(x), fast(x)
    assert ((got - expected).norm() / expected.norm()).item() < 1e-5


def generated_module(passes=None):
    from incdsl.backends.pytorch.writer import generate, load_source

    net = incdsl.load("mini_googlenet")
    plan = optimize(net, passes) if passes else None
    return load_source(generate(net, formatted=False, optimize=True, plan=plan), "incdsl_conv2d")


@pytest.mark.parametrize("act", ["none", "relu", "relu6"])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_the_generated_conv2d_is_conv2d_then_its_activation(act, layout):
    """The fused oneDNN call against F.conv2d and the activation, on strided, padded, dilated and
    grouped convolutions, channels_last or not."""
    F = torch.nn.functional
    module = generated_module()
    assert module.ONEDNN == (torch.backends.mkldnn.is_available())
    generator = torch.Generator().manual_seed(3)
    for stride, padding, dilation, groups in [
        (1, 0, 1, 1),
        (2, 1, 1, 1),
        (1, 2, 2, 1),
        (1, 1, 1, 4),
        (2, 0, 1, 8),
    ]:
        x = (torch.randn(2, 8, 11, 11, generator=generator) * 4).contiguous(memory_format=layout)
        weight = torch.randn(16, 8 // groups, 3, 3, generator=generator).contiguous(memory_format=layout)
        bias = torch.randn(16, generator=generator)
        s, p, d = (stride, stride), (padding, padding), (dilation, dilation)
        expected = F.conv2d(x, weight, bias, s, p, d, groups)
        expected = {"none": expected, "relu": F.relu(expected), "relu6": F.relu6(expected)}[act]
        with torch.inference_mode():
            got = module.conv2d(x, weight, bias, s, p, d, groups, act)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_without_use_onednn_the_conv2d_is_torchs_own():
    module = generated_module((fold_batchnorm, fold_activations, fuse_siblings, use_channels_last))
    assert module.ONEDNN is False


def test_build_compile_runs_eagerly_with_a_warning_without_a_cpp_compiler(monkeypatch):
    cpp_builder = pytest.importorskip("torch._inductor.cpp_builder")

    def missing():
        raise RuntimeError("no C++ compiler")

    module = generated_module()
    assert module.has_cpp_compiler() == (shutil.which(os.environ.get("CXX", "g++")) is not None)
    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", missing)
    with pytest.warns(UserWarning, match="C\\+\\+ compiler"):
        model = module.build(compile=True)
    assert type(model).__name__ == "MiniGoogLeNet"


def test_the_frozen_compiled_build_computes_the_same():
    """build(compile=True): torch.compile with freezing, the weights loaded before its first call."""
    from incdsl.backends.pytorch.writer import generate, load_source

    net = incdsl.from_text(ROWS, "rows.inc")
    module = load_source(generate(net, formatted=False, optimize=True), "incdsl_frozen")
    if not module.has_cpp_compiler():
        pytest.skip("no C++ compiler for torch.compile")
    plain = randomised(incdsl.build_module(net)).eval()
    compiled = module.build(compile=True, state_dict=plain.state_dict())
    x = torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(2)) * 3
    with torch.inference_mode():
        expected, got = plain(x), compiled(x)
    assert ((got - expected).norm() / expected.norm()).item() < 1e-5


RESIDUAL_ROWS = """network ResRows
input 12x12x8
classes 4
defaults conv: bn
template down(c, s) {
    residual {
        conv 3x3/s c
        conv 3x3 c act=none
        shortcut proj { conv 1x1/s c act=none }
    }
}
template same(c) {
    residual {
        conv 3x3 c
        conv 3x3 c act=none
    }
}
template straight(c) {
    residual relu=0 {
        conv 1x1 c
        conv 3x3 c act=none
    }
}
b1: down 16 2
b2: same 16
b3: straight 16
pool: global_avgpool
fc: linear classes
"""


def test_fold_residuals_gives_each_residual_the_last_folded_convolution_of_its_body():
    net = incdsl.load("resnet18")
    plan = fold_residuals(net, fold_batchnorm(net, Plan()))
    for block in net.blocks:  # with and without the projection (downsample)
        convs = [conv.attr for fork, conv in plan.residuals.items() if fork in set(walk(block.body))]
        assert convs == ["conv2"]  # conv2 (its bn2 folded) adds the shortcut
    assert not fold_residuals(net, Plan()).residuals  # only a convolution whose BatchNorm is folded
    net = incdsl.from_text(RESIDUAL_ROWS, "rows.inc")
    plan = fold_residuals(net, fold_batchnorm(net, Plan()))
    assert sorted(c.attr for f, c in plan.residuals.items() if any(f in set(walk(b.body)) for b in net.blocks)) == [
        "conv2", "conv2", "conv2"
    ]  # fmt: skip


@pytest.mark.parametrize("name", ["inception_resnet_v2", "mobilenet_v2", "googlenet_tv"])
def test_fold_residuals_leaves_scaled_adds_sequential_bodies_and_concatenations(name):
    """A scaled add (Inception-ResNet), a body in an nn.Sequential (MobileNetV2's), a concatenation."""
    if name not in SHIPPED:
        pytest.skip(f"{name} is not shipped")
    net = incdsl.load(name)
    assert not optimize(net).residuals


@pytest.mark.parametrize(
    "passes",
    [
        (fold_batchnorm, fold_residuals),
        (fold_batchnorm, fold_residuals, use_onednn),
        (fold_batchnorm, fold_activations, fold_residuals, use_channels_last, use_onednn),
    ],
    ids=lambda passes: "+".join(p.__name__ for p in passes),
)
@pytest.mark.parametrize("spec", ["rows", "resnet18"])
def test_folded_residuals_compute_the_same(passes, spec):
    from incdsl.backends.pytorch import writer as pytorch

    net = incdsl.from_text(RESIDUAL_ROWS, "rows.inc") if spec == "rows" else incdsl.load(spec)
    source = pytorch.generate(net, formatted=False, optimize=True, plan=optimize(net, passes))
    assert source.count("add=") == (3 if spec == "rows" else 1)  # resnet18: one Basic class
    assert "F.relu(out + " not in source
    fast = pytorch.instantiate(source)
    plain = randomised(incdsl.build_module(net)).eval()
    fast.load_state_dict(plain.state_dict(), strict=True)
    assert list(fast.state_dict()) == list(plain.state_dict())
    size = [8, 12, 12] if spec == "rows" else [3, 64, 64]
    x = torch.randn(2, *size, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        expected, got = plain(x), fast(x)
    assert ((got - expected).norm() / expected.norm()).item() < 1e-5


@pytest.mark.parametrize("act", ["none", "relu"])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_the_generated_conv2d_adds_before_its_activation(act, layout):
    """The oneDNN call with a binary add against F.conv2d, the add and the activation; the input
    added is left as it was."""
    F = torch.nn.functional
    module = generated_module()
    generator = torch.Generator().manual_seed(4)
    for stride, padding, groups in [(1, 0, 1), (2, 1, 1), (1, 1, 4)]:
        x = (torch.randn(2, 8, 11, 11, generator=generator) * 4).contiguous(memory_format=layout)
        weight = torch.randn(16, 8 // groups, 3, 3, generator=generator).contiguous(memory_format=layout)
        bias = torch.randn(16, generator=generator)
        s, p, d = (stride, stride), (padding, padding), (1, 1)
        expected = F.conv2d(x, weight, bias, s, p, d, groups)
        add = torch.randn(expected.shape, generator=generator).contiguous(memory_format=layout)
        before = add.clone()
        expected = expected + add
        expected = F.relu(expected) if act == "relu" else expected
        with torch.inference_mode():
            got = module.conv2d(x, weight, bias, s, p, d, groups, act, add)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        assert torch.equal(add, before)


def test_separable_max_pools_takes_the_3x3_stride_1_padding_1_max_pools():
    net = incdsl.load("googlenet_tv")
    plan = separable_max_pools(net, Plan())
    ops = {(n.op["kernel"], n.op["stride"], n.op["pad"]) for n in plan.max_pools}
    assert ops == {((3, 3), 1, (1, 1))}
    in_blocks = {n for cls in net.blocks for n in walk(cls.body)} & plan.max_pools
    assert len(in_blocks) == 1  # the inception module's pool branch; the stem's stride-2 pools stay
    assert not separable_max_pools(incdsl.load("inception_v3"), Plan()).max_pools  # stride 2 only


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_the_separable_max_pool_is_nn_max_pool(layout):
    """Odd and even sizes, ceil mode, the smallest maps (1 pixel: nn.MaxPool2d's own), -inf and
    ties; inference mode or not."""
    from incdsl.backends.pytorch import writer as pytorch

    net = incdsl.load("mini_googlenet")
    plan = optimize(net, (separable_max_pools,))
    module = pytorch.load_source(
        pytorch.generate(net, formatted=False, optimize=True, plan=plan), "incdsl_pool"
    )
    generator = torch.Generator().manual_seed(5)
    for ceil in (False, True):
        pool = module.SeparableMaxPool2d(3, stride=1, padding=1, ceil_mode=ceil)
        reference = torch.nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=ceil)
        for h, w in [(1, 1), (2, 2), (2, 5), (3, 3), (7, 6), (14, 14)]:
            x = torch.randn(2, 5, h, w, generator=generator).round().contiguous(memory_format=layout)
            x[0, 0, 0, 0] = float("-inf")
            with torch.inference_mode():
                assert torch.equal(pool(x), reference(x))
            assert torch.equal(pool(x), reference(x))
            x.requires_grad_()
            assert torch.equal(pool(x), reference(x))  # nn.MaxPool2d's own, which autograd follows
