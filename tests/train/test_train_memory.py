"""The trainer's memory estimate: printed before the first step, and a batch that cannot fit refused
(with the largest that would) before anything is trained or written."""

from __future__ import annotations

import pytest
import torch

import incdsl
from incdsl import memory
from incdsl.backends.pytorch.memory import Setting, estimate, largest_batch
from incdsl.train.cli import main
from incdsl.train.config import make_config
from incdsl.train.distributed import Processes
from incdsl.train.loop import step_setting
from incdsl.train.recipes import RECIPES

FREE = 50 * 2**20  # what the refusal tests pretend the machine has free


def command(target, out, batch, *extra):
    return ["train", target, "--data", "fake:16", "--out", str(out), "--batch-size", str(batch), *extra]


def test_the_estimate_is_printed_before_the_first_step(tmp_path, capsys):
    assert main(command("mini_googlenet", tmp_path / "run", 8, "--epochs", "1")) == 0
    out = capsys.readouterr().out
    est = estimate(incdsl.load("mini_googlenet"), Setting(8, training=True))
    assert "memory at batch 8 (training, fp32, AdamW, aux heads included)" in out
    assert f"peak {memory.human_bytes(est.peak)}" in out and "saved for backward" in out
    assert "available on cpu" in out
    assert out.index("memory at batch") < out.index("epoch 1/1")


def test_a_batch_that_cannot_fit_is_refused_with_the_largest_that_can(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(memory, "available_ram", lambda: FREE)
    assert main(command("mini_googlenet", tmp_path / "run", 512, "--epochs", "1")) == 2
    err = capsys.readouterr().err
    net, setting = incdsl.load("mini_googlenet"), Setting(512, training=True)
    est = estimate(net, setting)
    room = FREE + est.weights  # the model is built in RAM before the check
    largest = largest_batch(net, setting, room)
    assert 0 < largest < 512
    assert f"a training step at batch 512 needs about {memory.human_bytes(est.peak)}" in err
    assert f"more than the {memory.human_bytes(room)} available on cpu" in err
    assert f"the largest batch that fits is {largest}: --batch-size {largest}" in err
    assert not (tmp_path / "run").exists()  # refused before the run directory is made


def test_the_largest_batch_it_names_is_accepted(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(memory, "available_ram", lambda: FREE)
    net = incdsl.load("mini_googlenet")
    largest = largest_batch(net, Setting(1, training=True), FREE + estimate(net, Setting(1, True)).weights)
    data = ["--data", f"fake:{largest}", "--epochs", "1"]
    argv = ["train", "mini_googlenet", "--out", str(tmp_path / "run"), "--batch-size", str(largest), *data]
    assert main(argv) == 0


def test_not_even_a_batch_of_one(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(memory, "available_ram", lambda: 5_000_000)  # the weights fit, one image does not
    assert main(command("mini_googlenet", tmp_path / "run", 8, "--epochs", "1")) == 2
    assert "not even a batch of 1 fits" in capsys.readouterr().err


def test_a_model_file_has_no_estimate(tiny_model, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(memory, "available_ram", lambda: FREE)  # its parameters fit: it trains
    assert main(command(tiny_model, tmp_path / "run", 512, "--data", "fake:512", "--epochs", "1")) == 0
    assert "memory at batch" not in capsys.readouterr().out


def test_the_setting_follows_the_run():
    config = make_config(
        {"target": "x.inc", "data": "fake", "out": "run", "recipe": "googlenet", "amp": True}
    )
    two = Processes(rank=0, world_size=2, device=torch.device("cpu"))
    setting = step_setting(config, RECIPES["googlenet"], two)
    assert setting == Setting(16, True, "bf16", "cpu", "sgd", averaged=True)  # batch 32 over 2 processes


@pytest.mark.parametrize("classes", [3, 10])
def test_the_estimate_uses_the_datas_classes(tmp_path, capsys, classes):
    """A folder of 3 classes rebuilds the classifier: the estimate counts the weights built."""
    from incdsl.train.loop import spec_network
    from incdsl.train.models import load_model

    bundle = load_model("mini_googlenet", num_classes=classes)
    net = spec_network(bundle)
    built = sum(p.numel() for p in bundle.module.parameters())
    assert estimate(net, Setting(1, training=True)).params == built


def test_on_cuda_amp_is_estimated_as_fp16():
    """--amp autocasts to float16 on CUDA (bfloat16 on a CPU): the printed estimate names the dtype
    the run uses (it once said bf16 on a GPU)."""
    config = make_config(
        {"target": "x.inc", "data": "fake", "out": "run", "recipe": "googlenet", "amp": True}
    )
    gpu = Processes(rank=0, world_size=1, device=torch.device("cuda", 0))
    assert step_setting(config, RECIPES["googlenet"], gpu) == Setting(
        32, True, "fp16", "cuda", "sgd", averaged=True
    )
    fp16 = estimate(incdsl.load("mini_googlenet"), Setting(8, training=True, dtype="fp16", device="cuda"))
    bf16 = estimate(incdsl.load("mini_googlenet"), Setting(8, training=True, dtype="bf16", device="cuda"))
    assert fp16.peak == bf16.peak
    assert "fp16 weight" in {name for layer in fp16.layers for name, _ in layer.parts}
