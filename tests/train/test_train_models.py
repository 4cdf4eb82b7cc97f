"""load_model: generated model files and compiler targets become a module plus what SPEC says."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import incdsl
from incdsl.errors import IncdslError
from incdsl.train import TrainError
from incdsl.train.models import load_model


def test_model_file_gives_module_and_spec(tiny_model):
    bundle = load_model(tiny_model)
    assert bundle.input_shape == (3, 32, 32)
    assert bundle.num_classes == 10
    assert bundle.aux_weights == {"aux1": 0.3}
    assert bundle.source == Path(tiny_model).read_text()
    assert bundle.name == "tiny_net"


def test_train_mode_returns_outputs_and_eval_mode_logits(tiny_model):
    model = load_model(tiny_model).module
    images = torch.randn(2, 3, 32, 32)
    outputs = model.train()(images)
    assert outputs._fields == ("logits", "aux1")
    assert outputs.logits.shape == outputs.aux1.shape == (2, 10)
    assert model.eval()(images).shape == (2, 10)


def test_num_classes_rebuilds_the_classifier(tiny_model):
    bundle = load_model(tiny_model, num_classes=3)
    assert bundle.num_classes == 3
    assert bundle.module.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_missing_model_file_is_a_train_error(tmp_path):
    with pytest.raises(TrainError, match="does not exist"):
        load_model(str(tmp_path / "nowhere.py"))


def test_file_without_spec_is_a_train_error(tmp_path):
    path = tmp_path / "plain.py"
    path.write_text("x = 1\n")
    with pytest.raises(TrainError, match="SPEC"):
        load_model(str(path))


def test_other_targets_go_through_the_compiler(tiny_model, monkeypatch):
    asked = []

    def compile_source(target):
        asked.append(target)
        return Path(tiny_model).read_text()

    monkeypatch.setattr(incdsl, "compile_source", compile_source, raising=False)
    monkeypatch.setattr(incdsl, "read", lambda target: ("input 32x32x3\n", target))
    bundle = load_model("some_spec.inc")
    assert asked == ["some_spec.inc"]
    assert bundle.aux_weights == {"aux1": 0.3}
    assert bundle.spec_text == "input 32x32x3\n"  # kept in checkpoints beside the generated source
    assert bundle.module.train()(torch.randn(2, 3, 32, 32)).aux1.shape == (2, 10)


def test_compiler_errors_reach_the_caller(monkeypatch):
    def compile_source(target):
        raise IncdslError(f"unknown spec {target}")

    monkeypatch.setattr(incdsl, "compile_source", compile_source, raising=False)
    with pytest.raises(IncdslError, match="unknown spec nope"):
        load_model("nope")
