"""incdsl quantize: a checkpoint's int8 ONNX build, calibrated on the user's images, scored by incdsl eval.

The int8 build is checked against what it replaces, computed independently: the checkpoint's fp32 model
in torch, on the validation images (which calibration never sees). The documented rate: the top class
agrees on at least 95% of them (the README's "int8" measures 99-100% on digits and shapes).
"""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")

from incdsl.train.cli import main  # noqa: E402
from incdsl.train.config import make_config  # noqa: E402
from incdsl.train.loop import train  # noqa: E402

AGREEMENT = 0.95  # top-class agreement of int8 with fp32 the tests require


@pytest.fixture(scope="module")
def colour_run(tiny_model, tmp_path_factory):
    """A tiny model trained 3 epochs on three noisy colours, with a fourth mixing two: its run and data."""
    from conftest import write_image

    root = tmp_path_factory.mktemp("colours")
    colours = {"blue": (20, 40, 220), "green": (30, 200, 40), "red": (220, 30, 30), "teal": (25, 120, 130)}
    for split, count in (("train", 24), ("val", 8)):
        for name, colour in colours.items():
            for index in range(count):
                write_image(root / split / name / f"{index}.png", (20 + index % 5, 16), "RGB", colour)
    out = root / "run"
    options = {"target": tiny_model, "data": str(root), "out": out, "epochs": 3, "batch_size": 8, "lr": 0.01}
    train(make_config(options))
    return out, root


@pytest.fixture(scope="module")
def quantized(tiny_model, colour_run, tmp_path_factory):
    """The int8 build of the colour run's checkpoint, and what incdsl quantize printed."""
    out, root = colour_run
    target = tmp_path_factory.mktemp("int8") / "model.int8.onnx"
    args = ["--checkpoint", str(out / "best.pt"), "--data", str(root), "-o", str(target)]
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert main(["quantize", tiny_model, *args, "--calibration-images", "40"]) == 0
    return target, printed.getvalue()


@pytest.fixture(scope="module")
def int8_build(quantized):
    return quantized[0]


def test_quantize_says_what_it_wrote_and_how_close_it_is(tiny_model, colour_run, quantized):
    _, root = colour_run
    target, printed = quantized
    first, second = printed.splitlines()
    assert first.startswith(f"wrote {target} (int8, calibrated on 40 training images); top class as")
    assert float(first.split("on ")[2].split("%")[0]) >= AGREEMENT * 100
    assert second == f"score it: incdsl eval {tiny_model} --checkpoint {target} --data {root}"
    assert [path.name for path in target.parent.iterdir()] == [target.name]  # no temporary beside it


def test_the_build_is_int8_and_carries_what_eval_needs(int8_build):
    model = onnx.load(str(int8_build))
    operators = {node.op_type for node in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= operators
    int8_weights = [init for init in model.graph.initializer if init.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 3  # both convolutions and the classifier: weights held as int8
    metadata = json.loads({entry.key: entry.value for entry in model.metadata_props}["incdsl"])
    assert metadata["classes"] == ["blue", "green", "red", "teal"] and metadata["input"] == [3, 32, 32]
    assert metadata["calibration"]["images"] == 40 and metadata["format"] == "incdsl-int8/1"


@torch.no_grad()
def test_int8_logits_follow_the_fp32_model_on_unseen_images(tiny_model, colour_run, int8_build):
    import onnxruntime

    from incdsl.train.augment import to_input
    from incdsl.train.data import decode_image
    from incdsl.train.predict import trained_model
    from incdsl.train.views import eval_view

    out, root = colour_run
    bundle, state = trained_model(tiny_model, out / "best.pt", torch.device("cpu"))
    view = eval_view(1, (32, 32), 1.0)
    paths = sorted((root / "val").rglob("*.png"))
    inputs = to_input(torch.cat([view(decode_image(path, 3)) for path in paths]))
    expected = bundle.module(inputs)
    session = onnxruntime.InferenceSession(str(int8_build), providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {"x": inputs.numpy()})
    actual = torch.from_numpy(actual)
    agreement = (expected.argmax(1) == actual.argmax(1)).float().mean().item()
    assert agreement >= AGREEMENT
    spread = (expected.max() - expected.min()).item()
    assert (expected - actual).abs().max().item() < 0.1 * spread  # int8 steps, not another function


def test_eval_scores_the_int8_build_as_it_scores_the_checkpoint(tiny_model, colour_run, int8_build, capsys):
    out, root = colour_run
    figures = {}
    for model in (out / "best.pt", int8_build):
        assert main(["eval", tiny_model, "--checkpoint", str(model), "--data", str(root), "--json"]) == 0
        figures[model.suffix] = json.loads(capsys.readouterr().out)
    fp32, int8 = figures[".pt"], figures[".onnx"]
    assert int8["images"] == fp32["images"] == 32
    assert abs(int8["top1"] - fp32["top1"]) <= 0.05  # at most one of the 32 images differs
    assert len(int8["per_class"]) == 4 and int8["per_class"][0]["class"] == "blue"
    assert (
        main(["eval", tiny_model, "--checkpoint", str(int8_build), "--data", str(root), "--crops", "10"]) == 0
    )
    assert capsys.readouterr().out.startswith("top-1 ")  # multi-crop views go through it too


def test_predict_with_the_int8_build_names_the_classes_fp32_names(tiny_model, colour_run, int8_build, capsys):
    out, root = colour_run
    tables = []
    for model in (out / "best.pt", int8_build):
        assert main(["predict", tiny_model, "--checkpoint", str(model), str(root / "val"), "--json"]) == 0
        tables.append(json.loads(capsys.readouterr().out))
    fp32, int8 = ([entry["top"][0]["class"] for entry in table] for table in tables)
    assert len(int8) == 32
    assert sum(a == b for a, b in zip(fp32, int8)) >= AGREEMENT * 32


@pytest.mark.parametrize(
    "data, message",
    [
        ("missing-folder", "does not exist"),
        ("fake:bad", "--data fake:bad"),
    ],
)
def test_bad_calibration_data_is_one_line_and_writes_nothing(
    tiny_model, colour_run, tmp_path, capsys, data, message
):
    out, _ = colour_run
    data = str(tmp_path / data) if data == "missing-folder" else data
    target = tmp_path / "out" / "m.onnx"
    target.parent.mkdir()
    assert (
        main(
            ["quantize", tiny_model, "--checkpoint", str(out / "best.pt"), "--data", data, "-o", str(target)]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert list(target.parent.iterdir()) == []


def test_other_classes_and_unreadable_images_are_clean_errors(tiny_model, colour_run, tmp_path, capsys):
    from conftest import write_image

    out, root = colour_run
    target = tmp_path / "m.onnx"
    other = tmp_path / "other"
    write_image(other / "train" / "purple" / "0.png", (16, 16), "RGB", (120, 20, 120))
    args = ["quantize", tiny_model, "--checkpoint", str(out / "best.pt"), "-o", str(target)]
    assert main([*args, "--data", str(other)]) == 2
    assert "classes the model was not trained on: purple" in capsys.readouterr().err

    broken = tmp_path / "broken"
    write_image(broken / "train" / "red" / "0.png", (16, 16), "RGB", (220, 30, 30))
    (broken / "train" / "red" / "1.png").write_bytes(b"not a png")
    assert main([*args, "--data", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "cannot decode image" in err and "1.png" in err and "--skip-unreadable" in err
    assert not target.exists()
    assert main([*args, "--data", str(broken), "--skip-unreadable"]) == 0
    assert "1 unreadable skipped" in capsys.readouterr().out


def test_quantize_refuses_other_outputs_and_eval_other_onnx(tiny_model, colour_run, tmp_path, capsys):
    out, root = colour_run
    args = ["quantize", tiny_model, "--checkpoint", str(out / "best.pt"), "--data", str(root)]
    assert main([*args, "-o", str(tmp_path / "m.pt")]) == 2
    assert "the int8 build is an ONNX file" in capsys.readouterr().err
    (tmp_path / "d.onnx").mkdir()
    assert main([*args, "-o", str(tmp_path / "d.onnx")]) == 2
    assert "it is a directory" in capsys.readouterr().err
    assert main([*args, "--calibration-images", "0", "-o", str(tmp_path / "m.onnx")]) == 2
    capsys.readouterr()

    plain = tmp_path / "plain.onnx"
    assert main(["export", tiny_model, "--checkpoint", str(out / "best.pt"), "-o", str(plain)]) == 0
    capsys.readouterr()
    assert main(["eval", tiny_model, "--checkpoint", str(plain), "--data", str(root)]) == 2
    err = capsys.readouterr().err
    assert "is not an int8 build of incdsl quantize" in err and "Traceback" not in err
    (tmp_path / "junk.onnx").write_bytes(b"\x00junk")
    assert main(["eval", tiny_model, "--checkpoint", str(tmp_path / "junk.onnx"), "--data", str(root)]) == 2
    assert "is not a model onnxruntime can run" in capsys.readouterr().err


def test_the_compilers_cli_offers_quantize(capsys):
    from incdsl.tools.cli import main as incdsl_main

    assert incdsl_main(["--help"]) == 0
    assert "quantize" in capsys.readouterr().out
    assert incdsl_main(["quantize", "--help"]) == 0
    assert "--calibration-images" in capsys.readouterr().out
