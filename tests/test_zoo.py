"""torchvision's CNN zoo, weight for weight: each shipped zoo spec against torchvision 0.28's model.

For every spec, from the reference data in tests/fixtures/reference (torchvision is never imported):
the generated model's state_dict has torchvision's keys and shapes *in torchvision's order* (so its
checkpoints load with ``strict=True``, and through ``.safetensors``), its parameter count and
multiply-adds equal torchvision's (counted by incdsl's stats, by ``numel()`` and by
``FlopCounterMode``), and with every tensor filled from its name its eval-mode logits equal
torchvision's on two inputs (the second 4 times the first: large activations, where ReLU6 and ReLU,
or hard-swish and SiLU, differ) to a relative error under 1e-5.
"""

import pytest
from reference_data import reference_init, reference_json

import incdsl
from incdsl.resources import shipped_specs

torch = pytest.importorskip("torch")
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

# spec -> torchvision's model name
ZOO = {
    "resnet18": "resnet18",
    "resnet50": "resnet50",
    "resnext50_32x4d": "resnext50_32x4d",
    "wide_resnet50_2": "wide_resnet50_2",
    "vgg16_bn": "vgg16_bn",
    "squeezenet1_1": "squeezenet1_1",
    "densenet121": "densenet121",
    "mobilenet_v2": "mobilenet_v2",
    "mobilenet_v3_large": "mobilenet_v3_large",
    "efficientnet_b0": "efficientnet_b0",
    "regnet_y_400mf": "regnet_y_400mf",
    "shufflenet_v2_x1_0": "shufflenet_v2_x1_0",
    "mnasnet1_0": "mnasnet1_0",
    "convnext_tiny": "convnext_tiny",
}
SHIPPED = [spec for spec in ZOO if spec in shipped_specs()]


def zoo_models() -> dict:
    return reference_json("zoo_models")


def zoo_logits() -> dict:
    return reference_json("zoo_reference_logits")


@pytest.fixture(autouse=True)
def reference_threads():
    """The reference logits were computed by torchvision with two threads or more, where PyTorch's CPU
    convolutions sum in another order than with one: MobileNetV3 and RegNet, with every tensor filled
    from its name, amplify that rounding at 4x the input to 1e-4 and 2e-3 (torchvision's own model,
    run with one thread, misses its reference by as much). With two threads both agree to 1e-6."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    yield
    torch.set_num_threads(threads)


def rel_error(got, expected) -> float:
    return ((got - expected).norm() / expected.norm()).item()


@pytest.mark.parametrize("spec", SHIPPED)
def test_zoo_spec_is_torchvisions_model(spec):
    reference = zoo_models()[ZOO[spec]]
    net = incdsl.load(spec)
    model = incdsl.build_module(net).eval()

    # keys and shapes, in torchvision's order: a strict load, and the safetensors route, work as is
    shapes = [(key, list(t.shape)) for key, t in model.state_dict().items()]
    assert shapes == list(reference["state_dict"].items())
    model.load_state_dict({k: torch.zeros(s) for k, s in reference["state_dict"].items()}, strict=True)

    # counts: incdsl's stats, torch's numel, torchvision's
    stats = incdsl.stats(net)
    assert stats.params == sum(p.numel() for p in model.parameters()) == reference["params"]
    assert stats.macs == reference["macs"]

    # the same function: logits equal torchvision's on both reference inputs
    reference_init.fill_state_dict(model)
    c, size = reference["input"][0], reference["input"][1]
    x = reference_init.reference_input(2, c, size, seed=0)
    expected = zoo_logits()[ZOO[spec]]
    with torch.no_grad(), FlopCounterMode(display=False) as flops:
        logits = model(x)
    assert flops.get_total_flops() // 2 == 2 * reference["macs"]  # a batch of 2
    assert rel_error(logits, torch.tensor(expected["logits"])) < 1e-5
    with torch.no_grad():
        logits_x4 = model(4 * x)
    assert rel_error(logits_x4, torch.tensor(expected["logits_x4"])) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["mobilenet_v3_large", "shufflenet_v2_x1_0"])
def test_zoo_onnx_export_agrees_with_onnxruntime(spec, tmp_path):
    """hard-swish, hard-sigmoid and the gate's multiply (MobileNetV3); the split's chunks and the
    channel shuffle (ShuffleNetV2): exported through torch.onnx, run by onnxruntime."""
    ort = pytest.importorskip("onnxruntime")
    from incdsl.backends.onnx import export_model

    if spec not in SHIPPED:
        pytest.skip(f"{spec} is not shipped")
    net = incdsl.load(spec)
    model = incdsl.build_module(net).eval()
    reference_init.fill_state_dict(model)
    path = export_model(model, net.input.as_list(), tmp_path / "model.onnx")
    x = reference_init.reference_input(2, 3, 224, seed=0)
    with torch.no_grad():
        expected = model(x)
    (got,) = ort.InferenceSession(str(path)).run(None, {"x": x.numpy()})
    assert rel_error(torch.from_numpy(got), expected) < 1e-4


@pytest.mark.parametrize("spec", ["convnext_tiny", "mobilenet_v3_large", "shufflenet_v2_x1_0"])
def test_zoo_models_script_and_export(spec):
    """The generated helpers (Permute, LayerNorm2d, StochasticDepth, the layer scale parameter, the
    split's chunks, the gate) are TorchScript and torch.export friendly, and compute the same."""
    if spec not in SHIPPED:
        pytest.skip(f"{spec} is not shipped")
    model = incdsl.build_module(incdsl.load(spec)).eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
        assert rel_error(torch.jit.script(model)(x), expected) < 1e-5
        assert rel_error(torch.export.export(model, (x,)).module()(x), expected) < 1e-5
