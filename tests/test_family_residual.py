"""The rest of the Inception family, weight for weight: inception_v4.inc and inception_resnet_v2.inc
against timm 1.0.29, bn_inception.inc against pretrainedmodels' BNInception (the Caffe port), through
``incdsl port-weights``.

Reference data (state_dict layouts, counts, logits) were taken from those implementations and are kept
in tests/fixtures/reference (copied from the project's shared reference folder), so neither timm nor
pretrainedmodels is imported. Two models with the same keys and shapes get the same weights from
``fill_state_dict``, so equal logits mean the same function.
"""

from functools import cache

import pytest
from reference_data import reference_init, reference_json
from test_family import rel_error

import incdsl
from incdsl.tools import cli
from incdsl.tools.port import PortError, port_state

torch = pytest.importorskip("torch")

TIMM = {"inception_v4": "inception_v4", "inception_resnet_v2": "inception_resnet_v2"}
COUNTS = {  # the table: params, MACs
    "inception_v4": (42_679_816, 12_253_974_624),
    "inception_resnet_v2": (55_843_464, 13_155_794_016),
    "bn_inception": (11_295_240, 2_032_600_064),
}


def models() -> dict:
    return reference_json("family_models")


def logits() -> dict:
    return reference_json("family_reference_logits")


@cache
def network(spec: str):
    return incdsl.load(spec)


def reference_logits(name: str, model) -> float:
    """The relative error of ``model``'s eval logits on the reference input against the reference's."""
    size = models()[name]["input"][-1]
    x = reference_init.reference_input(2, 3, size, seed=0)
    with torch.no_grad():
        got = model.eval()(x)
    return rel_error(got, torch.tensor(logits()[name]["logits"]))


@pytest.mark.parametrize("spec", COUNTS)
def test_counts_are_the_reference_implementations(spec):
    stats = incdsl.stats(network(spec))
    reference = models()["bninception" if spec == "bn_inception" else spec]
    assert (stats.params, stats.macs) == COUNTS[spec] == (reference["params"], reference["macs"])


@pytest.mark.parametrize("spec", TIMM)
def test_state_dict_is_timms_key_for_key(spec):
    """Same keys, same shapes, same order: timm's checkpoints load with strict=True."""
    model = incdsl.build_module(network(spec))
    expected = models()[TIMM[spec]]["state_dict"]
    assert [(k, list(t.shape)) for k, t in model.state_dict().items()] == list(expected.items())
    model.load_state_dict({k: torch.zeros(s) for k, s in expected.items()}, strict=True)


@pytest.mark.parametrize("spec", TIMM)
def test_logits_are_timms(spec):
    model = incdsl.build_module(network(spec))
    reference_init.fill_state_dict(model)
    assert reference_logits(TIMM[spec], model) < 1e-4


def foreign_module(layout: dict) -> torch.nn.Module:
    """An nn.Module whose state_dict has exactly ``layout``'s keys and shapes, in its order."""
    root = torch.nn.Module()
    for key, shape in layout.items():
        *path, name = key.split(".")
        module = root
        for part in path:
            if not hasattr(module, part):
                module.add_module(part, torch.nn.Module())
            module = getattr(module, part)
        dtype = torch.long if name == "num_batches_tracked" else torch.float32
        if name.startswith("running") or name == "num_batches_tracked":
            module.register_buffer(name, torch.zeros(shape, dtype=dtype))
        else:
            module.register_parameter(name, torch.nn.Parameter(torch.zeros(shape)))
    return root


@pytest.fixture(scope="module")
def bninception_file(tmp_path_factory):
    """pretrainedmodels' BNInception state_dict, filled by fill_state_dict's rule, saved as a file."""
    module = foreign_module(models()["bninception"]["state_dict"])
    reference_init.fill_state_dict(module)
    path = tmp_path_factory.mktemp("foreign") / "bninception.pth"
    torch.save(module.state_dict(), path)
    return path


def test_port_weights_from_the_caffe_layout_gives_its_logits(bninception_file, tmp_path, capsys):
    out = tmp_path / "bn_inception.pt"
    assert cli.main(["port-weights", "bn_inception", str(bninception_file), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "inception3a.b1x1  " in printed and "<-  inception_3a_1x1, inception_3a_1x1_bn" in printed
    assert "wrote" in printed and "485 tensors" in printed
    model = incdsl.build_module(network("bn_inception"))
    model.load_state_dict(torch.load(out, weights_only=True), strict=True)
    assert reference_logits("bninception", model) < 1e-4


def test_port_weights_names_the_first_layer_that_differs(bninception_file):
    foreign = torch.load(bninception_file, weights_only=True)
    with pytest.raises(PortError) as info:
        port_state(network("googlenet"), foreign)
    assert "the first layer that differs is" in info.value.hint
    short = dict(list(foreign.items())[:-2])  # the classifier missing
    with pytest.raises(PortError, match="the file ends before last_linear"):
        port_state(network("bn_inception"), short)


def test_port_weights_without_batch_counts(bninception_file):
    foreign = {
        k: v for k, v in torch.load(bninception_file, weights_only=True).items() if "num_batches" not in k
    }
    port = port_state(network("bn_inception"), foreign)
    assert len(port.filled) == 69 and all(port.state[k].item() == 0 for k in port.filled)
    model = incdsl.build_module(network("bn_inception"))
    model.load_state_dict(port.state, strict=True)
    assert reference_logits("bninception", model) < 1e-4


def test_port_weights_from_safetensors(tmp_path):
    """A safetensors file keeps no order: timm's positional keys sort back into network order."""
    safetensors = pytest.importorskip("safetensors.torch")
    module = foreign_module(models()["inception_v4"]["state_dict"])
    reference_init.fill_state_dict(module)
    path = tmp_path / "v4.safetensors"
    safetensors.save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))
    out = tmp_path / "v4.pt"
    assert cli.main(["port-weights", "inception_v4", str(path), "-o", str(out), "--quiet"]) == 0
    model = incdsl.build_module(network("inception_v4"))
    model.load_state_dict(torch.load(out, weights_only=True), strict=True)
    assert reference_logits("inception_v4", model) < 1e-4


def test_port_weights_refuses_what_is_not_a_state_dict(tmp_path, capsys):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a checkpoint")
    assert cli.main(["port-weights", "bn_inception", str(path), "-o", str(tmp_path / "o.pt")]) == 2
    assert "cannot read weights" in capsys.readouterr().err
    assert not (tmp_path / "o.pt").exists()


def test_residual_blocks_are_written_as_timm_writes_them():
    source = incdsl.compile_source(network("inception_resnet_v2"))
    block35 = source.split("class Block35(nn.Module):")[1].split("\nclass ")[0]
    assert "self.scale = scale" in block35 and "self.conv2d = nn.Conv2d(128, 320, kernel_size=1)" in block35
    assert "x = F.relu(out * self.scale + x, inplace=True)" in block35
    block8 = source.split("class Block8(nn.Module):")[1].split("\nclass ")[0]  # timm's Block8(no_relu=)
    assert "class Block8NoRelu" not in source and "scale: float, relu: bool)" in block8
    assert (
        "x = out * self.scale + x\n        if self.relu:\n            x = F.relu(x, inplace=True)" in block8
    )
    assert "self.block8 = Block8(2080, 1.0, relu=False)" in source
    assert "self.repeat = nn.Sequential(" in source and "x = self.repeat(x)" in source  # as timm calls it
