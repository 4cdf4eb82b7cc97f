"""--input-size: a spec trained at another resolution without editing it; the budget follows the size."""

from __future__ import annotations

import json

import pytest
import torch

import incdsl
from incdsl.train.checkpoint import load_checkpoint
from incdsl.train.cli import main
from incdsl.train.models import load_model, spec_network

SPEC = """\
network TinySpec
input 16x16x3
classes 4
budget 500K

conv1:    conv        3x3           8
pool1:    maxpool     2x2/2
conv2:    conv        3x3           8
pool2:    global_avgpool
fc:       linear      classes
softmax
"""  # 92,192 multiply-adds at 16x16, 368,672 at 32x32, 1,474,592 at 64x64


@pytest.fixture
def spec(tmp_path) -> str:
    path = tmp_path / "tiny.inc"
    path.write_text(SPEC)
    return str(path)


def train_args(spec, out, *extra):
    return [
        "train",
        spec,
        "--data",
        "fake:16",
        "--out",
        str(out),
        "--batch-size",
        "8",
        "--epochs",
        "1",
        *extra,
    ]


def test_the_model_is_built_for_the_input_size(spec):
    bundle = load_model(spec, input_size=32)
    assert bundle.input_shape == (3, 32, 32) and bundle.input_size == 32
    assert bundle.spec_text == SPEC  # the spec as written: checkpoints rebuild it at the saved size
    assert bundle.module.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 4)
    assert load_model(spec).input_shape == (3, 16, 16)


def test_the_budget_at_a_size_is_what_check_says_of_the_spec_edited_to_it():
    edited = incdsl.stats(incdsl.from_text(SPEC.replace("input 16x16x3", "input 64x64x3")))
    at_size = incdsl.stats(spec_network(SPEC, "tiny.inc", input_size=64))
    assert at_size.macs == edited.macs == 1_474_592 and at_size.budget == edited.budget == 500_000


def test_training_at_another_size_follows_the_budget_and_evaluation_follows_the_run(spec, tmp_path, capsys):
    out = tmp_path / "at32"
    assert main(train_args(spec, out, "--input-size", "32")) == 0
    shown = capsys.readouterr().out
    assert "TinySpec at 32x32 (--input-size): 368,672 multiply-adds; budget: 368,672 <= 500,000" in shown
    assert load_checkpoint(out / "best.pt")["config"]["input_size"] == 32
    assert json.loads((out / "run.json").read_text())["settings"]["input_size"] == 32
    assert main(["eval", spec, "--checkpoint", str(out / "best.pt"), "--data", "fake:16", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 4  # the model rebuilt at 32x32

    over = tmp_path / "at64"
    assert main(train_args(spec, over, "--input-size", "64")) == 0
    err = capsys.readouterr().err
    assert "TinySpec at 64x64: budget exceeded: 1,474,592 multiply-adds > budget 500,000" in err
    assert "incdsl check would fail at this size" in err


def test_the_input_size_is_a_config_key_and_is_printed(spec, tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text("input-size = 24\n")
    assert main([*train_args(spec, tmp_path / "r"), "--config", str(config), "--print-config"]) == 0
    assert "input-size = 24\n" in capsys.readouterr().out
    assert main([*train_args(spec, tmp_path / "r"), "--print-config"]) == 0
    assert "input-size = 0\n" in capsys.readouterr().out  # the spec's own


def test_a_size_the_spec_cannot_take_is_an_error_naming_the_option(spec, tmp_path, capsys):
    assert main(train_args(spec, tmp_path / "tiny", "--input-size", "1")) == 2
    err = capsys.readouterr().err
    assert "note: with --input-size 1 (the spec's input is 16x16x3)" in err and "Traceback" not in err
    assert main(train_args(spec, tmp_path / "neg", "--input-size", "-3")) == 2
    assert "--input-size" in capsys.readouterr().err


def test_a_generated_model_file_keeps_its_input(tiny_model, tmp_path, capsys):
    args = ["train", tiny_model, "--data", "fake:16", "--out", str(tmp_path / "m"), "--batch-size", "8"]
    assert main([*args, "--epochs", "1", "--input-size", "64"]) == 2
    err = capsys.readouterr().err
    assert "--input-size 64: " in err and "is a generated model, built for its input 32x32" in err
    assert "hint: train the spec" in err
