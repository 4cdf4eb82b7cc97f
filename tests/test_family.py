"""The Inception family, weight for weight with torchvision: googlenet_tv.inc and inception_v3.inc.

Reference data (state_dict layouts, counts, logits) were taken from torchvision 0.28 and are kept in
tests/fixtures/reference, so torchvision is never imported. Two models with the same keys and shapes
get the same weights from ``fill_state_dict``, so equal logits mean the same function.
"""

import sys
from functools import cache

import pytest
from golden import check_golden
from reference_data import reference_init, reference_json

import incdsl
from incdsl.errors import OutputError

torch = pytest.importorskip("torch")
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

TORCHVISION = {"googlenet_tv": "googlenet", "inception_v3": "inception_v3"}
AUX_FIELDS = {"googlenet_tv": ("logits", "aux1", "aux2"), "inception_v3": ("logits", "AuxLogits")}
# The smallest inputs that reach every layer (aux heads included) in training mode.
TRAIN_SIZE = {"googlenet_tv": 64, "inception_v3": 299}


def torchvision_models() -> dict:
    return reference_json("torchvision_models")


def torchvision_logits() -> dict:
    return reference_json("torchvision_reference_logits")


@cache
def network(spec: str):
    return incdsl.load(spec)


def build(spec: str, **overrides):
    return incdsl.build_module(network(spec), **overrides)


def reference_key(spec: str, aux: bool) -> str:
    return TORCHVISION[spec] + ("" if aux else "_noaux")


def rel_error(got, expected) -> float:
    return ((got - expected).norm() / expected.norm()).item()


# weights ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("aux", [True, False], ids=["aux", "noaux"])
@pytest.mark.parametrize("spec", TORCHVISION)
def test_state_dict_is_torchvisions(spec, aux):
    """Same keys, same shapes: torchvision's checkpoints load with strict=True."""
    model = build(spec, aux_logits=aux)
    expected = torchvision_models()[reference_key(spec, aux)]
    shapes = {key: list(t.shape) for key, t in model.state_dict().items()}
    assert shapes == expected["state_dict"]
    model.load_state_dict({k: torch.zeros(s) for k, s in expected["state_dict"].items()}, strict=True)
    assert sum(p.numel() for p in model.parameters()) == expected["num_params"]


@pytest.mark.parametrize("spec", TORCHVISION)
def test_counts_agree_with_torch_and_torchvision(spec):
    """incdsl's stats = numel() and FlopCounterMode / 2 = torchvision's published counts."""
    net, stats = network(spec), incdsl.stats(network(spec))
    with torch.device("meta"):  # shapes only: FlopCounterMode counts without computing
        model = build(spec).eval()
        x = torch.zeros(1, *net.input.as_list())
    aux_names = {a.name for a in net.auxes}
    main = sum(p.numel() for n, p in model.named_parameters() if n.split(".")[0] not in aux_names)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    with_aux = torchvision_models()[reference_key(spec, True)]
    without = torchvision_models()[reference_key(spec, False)]
    assert stats.params == main == without["num_params"]
    assert stats.params + sum(a.params for a in stats.aux) == with_aux["num_params"]
    assert stats.macs == counter.get_total_flops() // 2 == without["eval_forward_flops_FlopCounterMode"] // 2


def test_published_counts():
    """The issue's figures, written out."""
    googlenet, inception = incdsl.stats(network("googlenet_tv")), incdsl.stats(network("inception_v3"))
    assert (googlenet.params, googlenet.macs) == (6_624_904, 1_498_376_192)
    assert googlenet.params + sum(a.params for a in googlenet.aux) == 13_004_888
    assert (inception.params, inception.macs) == (23_834_568, 5_713_216_096)
    assert inception.params + sum(a.params for a in inception.aux) == 27_161_264


@pytest.mark.parametrize("spec", TORCHVISION)
def test_logits_are_torchvisions(spec):
    """Eval-mode logits after fill_state_dict equal torchvision's on the same input."""
    reference = torchvision_logits()[TORCHVISION[spec]]
    model = build(spec).eval()
    reference_init.fill_state_dict(model)
    shape = reference["input"]
    x = reference_init.reference_input(shape["batch"], shape["channels"], shape["size"], seed=shape["seed"])
    with torch.no_grad():
        logits = model(x)
    assert rel_error(logits, torch.tensor(reference["logits"])) < 1e-4


# outputs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", TORCHVISION)
def test_train_mode_returns_named_tuple_eval_mode_a_tensor(spec):
    size = TRAIN_SIZE[spec]
    with torch.device("meta"):  # shapes only
        model = build(spec, num_classes=10)
        x = torch.zeros(2, 3, size, size)
    outputs, logits = model.train()(x), model.eval()(x)
    assert type(outputs).__name__ == f"{network(spec).name}Outputs"
    assert outputs._fields == AUX_FIELDS[spec]
    assert all(t.shape == (2, 10) for t in outputs)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 10)


def test_without_aux_heads_train_mode_returns_a_tensor():
    with torch.device("meta"):
        model = build("googlenet_tv", aux_logits=False).train()
        assert isinstance(model(torch.zeros(2, 3, 64, 64)), torch.Tensor)


# export and compile -------------------------------------------------------------------------------


# Small inputs to keep the test fast: 75x75 is the smallest Inception-v3 takes (in eval mode, no aux head).
@pytest.mark.parametrize(("spec", "size"), [("googlenet_tv", 64), ("inception_v3", 75)])
def test_torch_export_eval(spec, size):
    model = build(spec).eval()
    x = torch.randn(2, 3, size, size)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        assert torch.allclose(program.module()(x), model(x), atol=1e-5)


@pytest.mark.parametrize("spec", TORCHVISION)
def test_torch_export_train(spec):
    """Training mode exports too, the aux logits in the NamedTuple."""
    size = TRAIN_SIZE[spec]
    program = torch.export.export(build(spec).train(), (torch.randn(2, 3, size, size),))
    assert len(program.graph_signature.user_outputs) == len(AUX_FIELDS[spec])


def test_torch_compile_googlenet_tv_eval():
    """One graph, no breaks (fullgraph); the same logits as eager."""
    torch._dynamo.reset()
    model = build("googlenet_tv").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(torch.compile(model, backend="eager", fullgraph=True)(x), model(x), atol=1e-5)


def test_torch_compile_googlenet_tv_train():
    """Training mode through AOTAutograd too (BatchNorm's running statistics, the aux heads)."""
    torch._dynamo.reset()
    model = build("googlenet_tv").train()
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(0)  # the same dropout masks in both runs
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)(x)
    torch.manual_seed(0)
    eager = model(x)
    assert type(compiled) is type(eager)
    for got, expected in zip(compiled, eager):
        assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.slow
def test_torch_compile_inductor_googlenet_tv():
    """The default backend generates and compiles C++ for every kernel: about 90 s on a 2-core CPU
    with a cold inductor cache (about 10 s once the cache is warm)."""
    torch._dynamo.reset()
    model = build("googlenet_tv").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(torch.compile(model, fullgraph=True)(x), model(x), atol=1e-4)


def test_torch_compile_inception_v3_train():
    """Inception-v3 captured in one graph too, aux head included (299x299: the head needs a 17x17 grid)."""
    torch._dynamo.reset()
    model = build("inception_v3").train()
    with torch.no_grad():
        outputs = torch.compile(model, backend="eager", fullgraph=True)(torch.randn(2, 3, 299, 299))
    assert outputs._fields == AUX_FIELDS["inception_v3"]


# ONNX ---------------------------------------------------------------------------------------------


def test_onnx_export_matches_pytorch(tmp_path):
    """`incdsl compile --format onnx`'s function: onnxruntime gives PyTorch's logits, any batch size."""
    ort = pytest.importorskip("onnxruntime")
    from incdsl.backends import onnx

    torch.manual_seed(0)
    path = onnx.export(network("googlenet_tv"), tmp_path / "googlenet.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["googlenet.onnx"]
    torch.manual_seed(0)  # the same initial weights as the exported model's
    model = build("googlenet_tv").eval()
    x = reference_init.reference_input(3, 3, 224, seed=0)
    with torch.no_grad():
        expected = model(x)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": x.numpy()})
    assert rel_error(torch.from_numpy(got), expected) < 1e-4


def test_onnx_export_without_onnxscript_is_a_clear_error(tmp_path, monkeypatch):
    from incdsl.backends import onnx

    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(OutputError, match="onnxscript"):
        onnx.export(network("googlenet_tv"), tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


def test_onnx_export_into_a_missing_folder_is_a_clear_error(tmp_path):
    from incdsl.backends import onnx

    with pytest.raises(OutputError, match="cannot write"):
        onnx.export(network("googlenet_tv"), tmp_path / "no" / "model.onnx")


# the generated code and the table -----------------------------------------------------------------


@pytest.mark.parametrize("spec", TORCHVISION)
def test_generated_code_golden(spec):
    check_golden(f"{spec}.py", incdsl.compile_source(network(spec)))


def test_inception_v3_table_names_its_blocks():
    """The table reads like the paper's: block rows named, no empty GoogLeNet Table 1 columns."""
    from incdsl.analysis import report

    text = report.to_markdown(incdsl.stats(network("inception_v3")))
    assert "| InceptionA (Mixed_5b) |  | 35x35x192 | 35x35x256 |" in text
    assert "InceptionE (Mixed_7c)" in text
    assert "#1x1" not in text and "pool proj" not in text
