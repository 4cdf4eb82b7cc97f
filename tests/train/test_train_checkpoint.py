"""Checkpoints: atomic writes, RNG states, and clear errors (file untouched) for damaged ones."""

from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch

from incdsl.train import TrainError
from incdsl.train import checkpoint as checkpoints
from incdsl.train.checkpoint import load_checkpoint, restore_rng_states, rng_states, save_checkpoint
from incdsl.train.cli import main


def draws() -> tuple:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_round_trip_with_rng_states(tmp_path):
    path = tmp_path / "checkpoint.pt"
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    full = dict.fromkeys(checkpoints.REQUIRED)
    save_checkpoint({**full, "epoch": 3, "weights": torch.arange(4.0), "rng": rng_states()}, path)
    expected = draws()
    state = load_checkpoint(path)
    assert state["epoch"] == 3 and torch.equal(state["weights"], torch.arange(4.0))
    restore_rng_states(state["rng"])
    assert draws() == expected
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_a_write_that_dies_midway_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({**dict.fromkeys(checkpoints.REQUIRED), "epoch": 1}, path)
    before = path.read_bytes()

    def dying_save(obj, file):
        file.write(b"PK\x03\x04 half a zip file")
        raise KeyboardInterrupt  # as if killed while writing

    monkeypatch.setattr(checkpoints.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"epoch": 2}, path)
    assert path.read_bytes() == before
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


class Exploit:
    def __reduce__(self):
        return (print, ("code ran while loading",))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a readable checkpoint"),
        (b"garbage" * 100, "not a readable checkpoint"),
        (pickle.dumps(Exploit()), "not a readable checkpoint"),
    ],
    ids=["empty", "garbage", "plain-pickle"],
)
def test_damaged_checkpoints_are_train_errors(tmp_path, content, message):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(content)
    with pytest.raises(TrainError, match=message):
        load_checkpoint(path)
    assert path.read_bytes() == content


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"epoch": 1, "weights": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(TrainError, match="not a readable checkpoint"):
        load_checkpoint(path)


def test_an_incomplete_checkpoint_is_a_train_error(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": checkpoints.FORMAT, "epoch": 1}, path)
    with pytest.raises(TrainError, match="incomplete checkpoint: it has no classes, metrics, model"):
        load_checkpoint(path)


def test_code_in_a_checkpoint_is_not_run(tmp_path, capsys):
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": checkpoints.FORMAT, "payload": Exploit()}, path)
    with pytest.raises(TrainError):
        load_checkpoint(path)
    assert "code ran" not in capsys.readouterr().out


def test_other_torch_files_are_not_checkpoints(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"fc.weight": torch.zeros(2)}, path)
    with pytest.raises(TrainError, match="not an incdsl checkpoint"):
        load_checkpoint(path)


def test_resuming_a_corrupt_checkpoint_is_a_clear_error(tmp_path, tiny_model, capsys):
    run = tmp_path / "run"
    run.mkdir()
    damaged = b"\x00\x01 not a checkpoint"
    (run / "checkpoint.pt").write_bytes(damaged)
    code = main(
        ["train", tiny_model, "--data", "fake:16", "--out", str(run), "--resume", "--batch-size", "8"]
    )
    error = capsys.readouterr().err
    assert code == 2
    assert error.startswith("error: ") and "checkpoint.pt is not a readable checkpoint" in error
    assert "Traceback" not in error
    assert (run / "checkpoint.pt").read_bytes() == damaged
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt"]


def test_empty_data_folder_is_a_clear_error(tmp_path, tiny_model, capsys):
    (tmp_path / "data" / "train").mkdir(parents=True)
    code = main(["train", tiny_model, "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run")])
    error = capsys.readouterr().err
    assert code == 2 and "has no class folders" in error and "Traceback" not in error
    assert not (tmp_path / "run").exists()
