"""incdsl predict and incdsl export: a trained checkpoint used on images and written for other tools."""

from __future__ import annotations

import json
import os

import pytest
import torch

from incdsl.train.cli import main
from incdsl.train.config import make_config
from incdsl.train.loop import train


@pytest.fixture(scope="module")
def colour_run(tiny_model, tmp_path_factory):
    """A tiny model trained 3 epochs on three flat colours (red, green, blue): its run directory and data."""
    from conftest import write_image

    root = tmp_path_factory.mktemp("colours")
    colours = {"blue": (20, 40, 220), "green": (30, 200, 40), "red": (220, 30, 30)}
    for split, count in (("train", 16), ("val", 4)):
        for name, colour in colours.items():
            for index in range(count):
                write_image(root / split / name / f"{index}.png", (20, 16), "RGB", colour)
    out = root / "run"
    options = {"target": tiny_model, "data": str(root), "out": out, "epochs": 3, "batch_size": 8, "lr": 0.01}
    history = train(make_config(options))
    assert history[-1]["val_top1"] == 1.0  # three flat colours
    return out, root


def test_predict_prints_the_top_classes_of_images_and_folders(tiny_model, colour_run, capsys):
    out, root = colour_run
    image = root / "val" / "red" / "0.png"
    args = ["predict", tiny_model, "--checkpoint", str(out / "best.pt")]
    assert main([*args, str(image), "--top", "2"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    path, first, p1, second, p2 = line.split()
    assert (path, first) == (str(image), "red") and float(p1) > float(p2) and second in ("blue", "green")

    assert main([*args, str(root / "val"), "--json"]) == 0
    predictions = json.loads(capsys.readouterr().out)
    assert len(predictions) == 12 and all(len(p["top"]) == 3 for p in predictions)  # 3 classes: top 3
    for prediction in predictions:
        truth = os.path.basename(os.path.dirname(prediction["image"]))
        assert prediction["top"][0]["class"] == truth
        assert sum(entry["probability"] for entry in prediction["top"]) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize(
    "name, message",
    [
        ("missing.png", "missing.png does not exist"),
        ("fifo.png", "fifo.png is not a regular file or a folder"),
    ],
)
def test_predict_refuses_what_is_not_an_image(tiny_model, colour_run, tmp_path, capsys, name, message):
    out, _ = colour_run
    if name == "fifo.png":
        os.mkfifo(tmp_path / name)
    assert main(["predict", tiny_model, "--checkpoint", str(out / "best.pt"), str(tmp_path / name)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize("suffix", [".pt", ".onnx", ".safetensors"])
def test_export_writes_a_file_that_computes_the_same_logits(tiny_model, colour_run, tmp_path, capsys, suffix):
    out, _ = colour_run
    target = tmp_path / f"model{suffix}"
    assert main(["export", tiny_model, "--checkpoint", str(out / "best.pt"), "-o", str(target)]) == 0
    said = capsys.readouterr().out
    assert said.startswith(f"wrote {target} (read back: logits within ") and "[-1, 1]" in said
    assert float(said.split("within ")[1].split()[0]) < 1e-4
    example = torch.zeros(1, 3, 32, 32)
    if suffix == ".pt":
        extra = {"classes.json": ""}
        loaded = torch.jit.load(str(target), _extra_files=extra)
        assert json.loads(extra["classes.json"]) == ["blue", "green", "red"]
        assert loaded(example).shape == (1, 3)
    elif suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(target), "pt") as weights:
            assert json.loads(weights.metadata()["classes"]) == ["blue", "green", "red"]
            assert weights.get_tensor("fc.weight").shape == (3, 512)


def test_export_refuses_an_unknown_suffix_and_its_own_checkpoint(tiny_model, colour_run, tmp_path, capsys):
    out, _ = colour_run
    before = (out / "best.pt").read_bytes()
    assert (
        main(["export", tiny_model, "--checkpoint", str(out / "best.pt"), "-o", str(tmp_path / "m.h5")]) == 2
    )
    assert "its suffix says no format" in capsys.readouterr().err
    assert main(["export", tiny_model, "--checkpoint", str(out / "best.pt"), "-o", str(out / "best.pt")]) == 2
    assert "it is the input file" in capsys.readouterr().err
    assert (out / "best.pt").read_bytes() == before
