"""The PyTorch backend: generated files are standalone, count what the stats say, and run, export
and compile. Counts are checked against torch itself: numel() and FlopCounterMode (FLOPs / 2)."""

import subprocess
import sys

import pytest
from conftest import ROOT, SHIPPED
from golden import check_golden

import incdsl

torch = pytest.importorskip("torch")
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from incdsl.backends.pytorch.writer import load_source  # noqa: E402


def counted_by_torch(net, model):
    """(main params, aux params, eval MACs) as torch counts them, for one example."""
    aux_names = {a.name for a in net.auxes}
    main = sum(p.numel() for n, p in model.named_parameters() if n.split(".")[0] not in aux_names)
    aux = sum(p.numel() for n, p in model.named_parameters() if n.split(".")[0] in aux_names)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.randn(1, *net.input.as_list()))
    return main, aux, counter.get_total_flops() // 2


@pytest.mark.parametrize("name", SHIPPED)
def test_stats_equal_numel_and_flop_counter(name):
    net = incdsl.load(name)
    stats = incdsl.stats(net)
    main, aux, macs = counted_by_torch(net, incdsl.build_module(net))
    assert stats.params == main
    assert sum(a.params for a in stats.aux) == aux
    assert stats.macs == macs


def test_googlenet_reference_counts():
    """The paper's network counted by torch: 6,998,552 params, 1,582,671,872 MACs (shared/reference)."""
    net = incdsl.load("googlenet")
    main, _, macs = counted_by_torch(net, incdsl.build_module(net))
    assert (main, macs) == (6_998_552, 1_582_671_872)


def test_googlenet_golden():
    check_golden("googlenet.py", incdsl.compile_source("googlenet"))


def test_generated_file_is_standalone(tmp_path):
    """model.py imports torch only: it runs in a fresh interpreter where incdsl cannot be imported."""
    (tmp_path / "model.py").write_text(incdsl.compile_source("mini_googlenet"))
    code = (
        "import sys; sys.modules['incdsl'] = None\n"
        "import torch, model\n"
        "m = model.build().eval()\n"
        "print(tuple(m(torch.randn(2, 3, 32, 32)).shape), model.SPEC['classes'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["(2,", "10)", "10"]
    assert "incdsl" not in (tmp_path / "model.py").read_text().split('"""')[2]  # only the docstring


def test_train_mode_returns_named_tuple_and_eval_a_tensor():
    model = incdsl.build_module("mini_googlenet")
    x = torch.randn(2, 3, 32, 32)
    out = model.train()(x)
    assert type(out).__name__ == "MiniGoogLeNetOutputs"
    assert out._fields == ("logits", "aux1")
    assert out.logits.shape == out.aux1.shape == (2, 10)
    assert isinstance(model.eval()(x), torch.Tensor)
    assert isinstance(incdsl.build_module("mini_googlenet", aux_logits=False).train()(x), torch.Tensor)


def test_build_overrides():
    model = incdsl.build_module("googlenet", num_classes=7, aux_logits=False, dropout=0.1)
    assert model.fc.out_features == 7 and model.aux1 is None and model.dropout.p == 0.1


def test_state_dict_keys_follow_spec_names():
    keys = incdsl.build_module("googlenet").state_dict().keys()
    assert "inception3a.branch2.0.conv.weight" in keys
    assert "inception3a.branch4.1.conv.bias" in keys
    assert "aux1.fc2.weight" in keys and "fc.weight" in keys


def test_torch_export_in_eval_mode():
    model = incdsl.build_module("mini_googlenet").eval()
    x = torch.randn(2, 3, 32, 32)
    exported = torch.export.export(model, (x,))
    torch.testing.assert_close(exported.module()(x), model(x))


def test_torch_compile_train_and_eval():
    model = incdsl.build_module("mini_googlenet")
    compiled = torch.compile(model, backend="eager")
    x = torch.randn(2, 3, 32, 32)
    assert compiled.train()(x).logits.shape == (2, 10)
    torch.testing.assert_close(compiled.eval()(x), model.eval()(x))


def test_generated_sources_are_black_formatted():
    black = pytest.importorskip("black")
    for name in SHIPPED:
        source = incdsl.compile_source(name)
        assert black.format_str(source, mode=black.Mode(line_length=100)) == source


def test_module_attribute_list_matches_torch():
    """incdsl.ir.symbols refuses spec names that would shadow nn.Module attributes; keep it current."""
    from incdsl.ir.symbols import MODULE_ATTRIBUTES

    public = {n for n in dir(torch.nn.Module) if not n.startswith("_")}
    assert public <= MODULE_ATTRIBUTES


def test_load_source_registers_a_module():
    module = load_source(incdsl.compile_source("mini_googlenet"), "incdsl_test_model")
    assert sys.modules["incdsl_test_model"] is module
    assert module.build().__class__.__name__ == "MiniGoogLeNet"


def test_shipped_specs_are_packaged_in_the_wheel_config():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"specs" = "incdsl/specs"' in text and '"grammars" = "incdsl/grammars"' in text
