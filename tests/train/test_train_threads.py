"""--threads on train and eval: the count torch computes with inside the run, printed at the start,
restored afterwards; checked like the trainer's other options (command line, config file)."""

from __future__ import annotations

import pytest
import torch

from incdsl.train import evaluate as evaluate_module
from incdsl.train import loop as loop_module
from incdsl.train.cli import main
from incdsl.train.config import config_text, make_config, saved_settings


def spy(monkeypatch, module, name):
    """Record torch's thread count whenever ``module.name`` is called."""
    seen, real = [], getattr(module, name)

    def wrapper(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return seen


@pytest.fixture(scope="module")
def one_epoch(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("threads") / "run"
    argv = ["train", tiny_model, "--data", "fake:16", "--out", str(out), "--epochs", "1", "--batch-size", "8"]
    return out, argv


def test_train_runs_with_the_threads_asked_for_and_says_so(one_epoch, monkeypatch, capsys):
    out, argv = one_epoch
    before = torch.get_num_threads()
    seen = spy(monkeypatch, loop_module, "run")
    assert main([*argv, "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == "threads: 1 (set by --threads)"  # the first line of the run
    assert seen == [1] and torch.get_num_threads() == before
    assert "threads" not in saved_settings(out)  # the machine's, as --device: a resume chooses afresh


def test_the_default_is_said_with_its_reason(tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    seen = spy(monkeypatch, loop_module, "run")
    argv = ["train", tiny_model, "--data", "fake:16", "--out", str(tmp_path / "run"), "--epochs", "1"]
    assert main([*argv, "--batch-size", "8"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"threads: {seen[0]} (incdsl's default for ") and (
        "of them busy" in first or "load average" in first
    )
    assert 1 <= seen[0] <= torch.get_num_threads()


def test_eval_runs_with_the_threads_asked_for(one_epoch, tiny_model, monkeypatch, capsys):
    out, _ = one_epoch
    seen = spy(monkeypatch, evaluate_module, "_evaluate_checkpoints")
    argv = ["eval", tiny_model, "--checkpoint", str(out / "checkpoint.pt"), "--data", "fake:16", "--json"]
    assert main([*argv, "--threads", "1"]) == 0 and seen == [1]


def test_threads_is_an_option_like_the_others(tmp_path, capsys):
    base = {"target": "m.py", "data": "fake", "out": str(tmp_path)}
    assert make_config({**base, "threads": 3}).threads == 3
    assert make_config(base).threads == 0  # incdsl's default
    assert "threads = 0" in config_text(make_config(base))
    with pytest.raises(Exception, match="option threads"):
        make_config({**base, "threads": 5000})
    assert main(["train", "m.py", "--data", "fake", "--out", str(tmp_path), "--threads", "x"]) == 2
    assert "argument --threads" in capsys.readouterr().err
