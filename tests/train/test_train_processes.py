"""Separate processes: torchrun with two gloo workers, and a run killed with SIGKILL at any moment."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

from incdsl.train.checkpoint import load_checkpoint
from incdsl.train.config import make_config
from incdsl.train.logs import read_metrics
from incdsl.train.loop import train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_torchrun_with_two_processes(tiny_model, tmp_path, command_env):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += ["-m", "incdsl.train.cli", "train", tiny_model, "--data", "fake:64", "--out", str(out)]
    command += ["--epochs", "2", "--batch-size", "16", "--recipe", "googlenet"]
    done = subprocess.run(command, cwd=ROOT, env=command_env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("epoch 1/2") == 1 and done.stdout.count("epoch 2/2") == 1  # rank 0 prints
    assert [record["epoch"] for record in read_metrics(out)] == [1, 2]
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["world_size"] == 2 and state["epoch"] == 2
    assert state["scheduler"]["last_epoch"] == 2 * 64 // 16  # each process took half the images per step
    files = ["best.pt", "checkpoint.pt", "metrics.jsonl", "run.json"]
    assert sorted(path.name for path in out.iterdir()) == files
    # every process validated with rank 0's BatchNorm statistics, the checkpoint's: incdsl eval agrees
    from incdsl.train.evaluate import evaluate_checkpoints

    report = evaluate_checkpoints(tiny_model, [out / "checkpoint.pt"], "fake:64", device="cpu")
    logged = read_metrics(out)[-1]
    assert report.result.top1 == logged["val_top1"]
    assert abs(report.result.loss - logged["val_loss"]) < 1e-5 * logged["val_loss"]


def test_a_killed_run_leaves_a_loadable_checkpoint(tiny_model, tmp_path, command_env):
    out = tmp_path / "run"
    # two steps per epoch: most of the time goes to writing checkpoints, where a kill hurts most
    command = [sys.executable, "-m", "incdsl.train.cli", "train", tiny_model, "--data", "fake:16"]
    command += ["--out", str(out), "--epochs", "1000", "--batch-size", "8", "--recipe", "googlenet"]
    process = subprocess.Popen(
        command, cwd=ROOT, env=command_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.jsonl").exists() or len(read_metrics(out)) < 3:
            assert process.poll() is None, process.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the run wrote no third epoch in time"
            time.sleep(0.05)
        time.sleep(random.uniform(0.0, 0.5))
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stderr.close()
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["epoch"] >= 2
    epochs = state["epoch"] + 2
    options = {"target": tiny_model, "data": "fake:16", "out": out, "batch_size": 8, "recipe": "googlenet"}
    history = train(make_config({**options, "epochs": epochs, "resume": True}))
    assert [record["epoch"] for record in history] == list(range(1, epochs + 1))
    assert [record["epoch"] for record in read_metrics(out)] == list(range(1, epochs + 1))
    assert not [path.name for path in out.iterdir() if path.name.endswith(".tmp")]  # a dead writer's, removed


def test_torchrun_with_gradient_accumulation(tiny_model, tmp_path, command_env):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += ["-m", "incdsl.train.cli", "train", tiny_model, "--data", "fake:64", "--out", str(out)]
    command += ["--epochs", "1", "--batch-size", "8", "--accumulate", "2", "--grad-clip", "1"]
    done = subprocess.run(command, cwd=ROOT, env=command_env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["scheduler"]["last_epoch"] == 64 // 16  # 8 batches of 8 (4 per process), stepped every 2
    assert state["config"]["accumulate"] == 2 and state["metrics"][0]["train_loss"] > 0


def test_sync_bn_converts_batchnorm_on_gpus_and_is_refused_on_cpus():
    import pytest
    import torch
    from torch import nn

    from incdsl.train import TrainError
    from incdsl.train.distributed import Processes, sync_batchnorm

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    one = Processes(0, 1, torch.device("cpu"))
    assert sync_batchnorm(model, one, True) is model  # one process: nothing to synchronise
    with pytest.raises(TrainError, match="--sync-bn needs GPUs"):
        sync_batchnorm(model, Processes(0, 2, torch.device("cpu")), True)
    converted = sync_batchnorm(model, Processes(0, 2, torch.device("cuda", 0)), True)
    assert isinstance(converted[1], nn.SyncBatchNorm) and converted[1].weight is model[1].weight
    assert converted.state_dict().keys() == model.state_dict().keys()  # checkpoints load either way
