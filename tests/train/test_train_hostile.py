"""The trainer under interruption, diverging losses, bad options, bad images and bad checkpoints: one
clear message each (no traceback), nothing good overwritten, and a run that can always go on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, write_image

from incdsl.train import Interrupted, RunFailed, TrainError
from incdsl.train import loop as loop_module
from incdsl.train.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from incdsl.train.cli import main
from incdsl.train.config import make_config
from incdsl.train.logs import read_metrics
from incdsl.train.loop import train


def config(tiny_model, out, **options):
    return make_config({"target": tiny_model, "out": out, "data": "fake:32", "batch_size": 8, **options})


def command(tiny_model, out, *extra, data="fake:32"):
    return ["train", tiny_model, "--data", data, "--out", str(out), "--batch-size", "8", *extra]


@pytest.fixture(scope="module")
def finished_run(tiny_model, tmp_path_factory):
    """One epoch of the fast recipe on fake data: (run directory, its checkpoint's bytes)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    train(config(tiny_model, out, epochs=1))
    return out, (out / "checkpoint.pt").read_bytes()


def interrupt_at_step(monkeypatch, step):
    """Ctrl-C arriving at the ``step``-th training step (counted over the whole run)."""
    calls, real = [], loop_module.augment_batch

    def augment(*args):
        calls.append(1)
        if len(calls) == step:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(loop_module, "augment_batch", augment)


# -- interruption -------------------------------------------------------------------------------------


def test_a_first_epoch_interrupted_can_be_started_over_or_resumed(tiny_model, tmp_path, monkeypatch):
    out = tmp_path / "run"
    interrupt_at_step(monkeypatch, 2)
    with pytest.raises(Interrupted, match="in epoch 1, before the first checkpoint: run the same command"):
        train(config(tiny_model, out, epochs=2))
    monkeypatch.undo()
    assert not (out / "checkpoint.pt").exists() and read_metrics(out) == []
    assert len(train(config(tiny_model, out, epochs=1))) == 1  # the same command again
    interrupt_at_step(monkeypatch, 2)
    with pytest.raises(Interrupted):
        train(config(tiny_model, tmp_path / "other", epochs=1))
    monkeypatch.undo()
    assert len(train(config(tiny_model, tmp_path / "other", epochs=1, resume=True))) == 1


def test_ctrl_c_prints_one_line_that_says_how_to_continue(tiny_model, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    interrupt_at_step(monkeypatch, 6)  # epoch 2 of 4-step epochs
    assert main(command(tiny_model, out, "--epochs", "3")) == 130
    err = capsys.readouterr().err
    assert (
        err
        == f"interrupted in epoch 2; {out}/checkpoint.pt holds epoch 1: run the same command with --resume to continue\n"
    )
    monkeypatch.undo()
    assert main(command(tiny_model, out, "--epochs", "3", "--resume")) == 0
    assert [record["epoch"] for record in read_metrics(out)] == [1, 2, 3]


def test_a_real_sigint_ends_without_a_traceback(tiny_model, tmp_path, command_env):
    out = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "incdsl", *command(tiny_model, out, "--epochs", "3", data="fake:2000")],
        cwd=ROOT,
        env=command_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = [process.stdout.readline()]  # the lr's scaling, progress lines, then epoch 1's summary
    while "train_loss" not in lines[-1] and lines[-1]:
        lines.append(process.stdout.readline())
    assert lines[-1].startswith("epoch 1/3") and "epoch 1/3  step 100/250  loss " in "".join(lines)
    deadline = time.monotonic() + 60
    while not (out / "best.pt").exists() and time.monotonic() < deadline:  # epoch 1 is saved
        time.sleep(0.05)
    time.sleep(0.3)  # epoch 2 takes seconds
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert err.startswith("interrupted in epoch 2;") and err.count("\n") == 1 and "Traceback" not in err


# -- a diverging loss ---------------------------------------------------------------------------------


def test_a_non_finite_loss_stops_the_run_and_keeps_the_good_checkpoint(
    tiny_model, finished_run, tmp_path, monkeypatch
):
    source, _ = finished_run
    out = tmp_path / "run"
    out.mkdir()
    for name in ("checkpoint.pt", "best.pt", "metrics.jsonl"):
        (out / name).write_bytes((source / name).read_bytes())
    before = {name: (out / name).read_bytes() for name in ("checkpoint.pt", "best.pt", "metrics.jsonl")}
    monkeypatch.setattr(
        loop_module, "training_loss", lambda *args: torch.tensor(float("nan"), requires_grad=True)
    )
    with pytest.raises(RunFailed, match=r"training loss is nan in epoch 2.*still holds epoch 1") as error:
        train(config(tiny_model, out, epochs=2, resume=True))
    assert "lower the learning rate" in error.value.hint
    assert {name: (out / name).read_bytes() for name in before} == before


def test_a_huge_learning_rate_exits_1_with_a_message(tiny_model, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(command(tiny_model, out, "--epochs", "1", "--lr", "1e30")) == 1
    err = capsys.readouterr().err
    assert "error: the training loss is nan in epoch 1" in err and "no checkpoint was written" in err
    assert not (out / "checkpoint.pt").exists() and not (out / "best.pt").exists()
    assert "NaN" not in (out / "metrics.jsonl").read_text()


# -- options and places that ended in a traceback -----------------------------------------------------


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lr", "nan"], "argument --lr: 'nan' is not a number (it must be finite)"),
        (["--lr", "inf"], "argument --lr: 'inf' is not a number (it must be finite)"),
        (["--lr=-1"], "the learning rate must be above 0, not -1"),
        (["--seed", "99999999999999999999999"], "argument --seed: '99999999999999999999999' is too large"),
        (["--epochs", "1_0"], "(write it without separators)"),
        (["--data", "fake:-5"], "--data fake:-5: '-5' is too small: it must be at least 1"),
        (["--data", "fake:0"], "--data fake:0: '0' is too small: it must be at least 1"),
        (["--device", "meta"], "--device meta holds no data"),
    ],
    ids=["lr-nan", "lr-inf", "lr-negative", "seed", "epochs", "fake-5", "fake0", "meta"],
)
def test_bad_training_options_are_one_message(tiny_model, tmp_path, capsys, extra, message):
    assert main([*command(tiny_model, tmp_path / "run", "--epochs", "1"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_out_naming_a_file_or_inside_one(tiny_model, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep")
    for out in (afile, afile / "run"):
        assert main(command(tiny_model, out, "--epochs", "1")) == 2
        assert f"--out {out}: {afile} is a file, not a folder" in capsys.readouterr().err
    assert afile.read_text() == "keep"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--device", "meta"], "--device meta holds no data"),
        (["--workers", "-3"], "argument --workers: '-3' is too small: it must be at least 0"),
    ],
)
def test_bad_eval_options_are_one_message(tiny_model, finished_run, capsys, extra, message):
    out, _ = finished_run
    args = ["eval", tiny_model, "--checkpoint", str(out / "checkpoint.pt"), "--data", "fake:32", *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_too_little_fake_data_says_how_to_get_more(tiny_model, tmp_path, capsys):
    assert main(command(tiny_model, tmp_path / "run", data="fake:4")) == 2
    assert "lower --batch-size (or more fake images: fake:N)" in capsys.readouterr().err


def test_a_model_that_cannot_fit_is_refused_before_allocating(tiny_model, tmp_path, capsys, monkeypatch):
    from incdsl import memory

    monkeypatch.setattr(memory, "available_ram", lambda: 100_000)  # 100 KB free
    assert main(command(tiny_model, tmp_path / "run", "--epochs", "1")) == 2
    err = capsys.readouterr().err
    assert "tiny_net: training it needs" in err and "more than the 97.7 KiB available on cpu" in err


# -- images -------------------------------------------------------------------------------------------


@pytest.fixture
def folder_with_a_bad_image(color_folder):
    bad = color_folder / "train" / "red" / "zz_broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    return color_folder, bad


def test_a_corrupt_image_is_named_and_can_be_skipped(tiny_model, folder_with_a_bad_image, tmp_path, capsys):
    folder, bad = folder_with_a_bad_image
    args = command(tiny_model, tmp_path / "run", "--epochs", "1", data=str(folder))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert (
        f"error: cannot decode image {bad}" in err and "--skip-unreadable" in err and "Traceback" not in err
    )
    assert main([*args, "--skip-unreadable"]) == 0  # the interrupted first epoch is simply started over
    assert "skipped 1 training and 0 validation images that could not be decoded" in capsys.readouterr().out


def test_a_corrupt_image_in_a_worker_process_is_reported_the_same(
    tiny_model, folder_with_a_bad_image, tmp_path, capsys
):
    folder, bad = folder_with_a_bad_image
    assert (
        main([*command(tiny_model, tmp_path / "run", "--epochs", "1", "--workers", "1", data=str(folder))])
        == 2
    )
    err = capsys.readouterr().err
    assert f"\nerror: cannot decode image {bad}" in err and "Original Traceback" not in err


def test_a_decompression_bomb_is_an_unreadable_image(tmp_path, monkeypatch):
    from PIL import Image

    from incdsl.train.data import decode_image

    path = write_image(tmp_path / "big.png", (64, 64), "RGB", (10, 20, 30))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels is over twice the limit
    with pytest.raises(TrainError, match="big.png: it has more pixels than Pillow's limit of 1,000"):
        decode_image(path, 3)


def test_eval_skips_and_counts_unreadable_images(tiny_model, color_folder, tmp_path, capsys):
    train(config(tiny_model, tmp_path / "run", epochs=1, data=str(color_folder)))
    (color_folder / "val" / "red" / "broken.jpg").write_bytes(b"not a jpeg")
    args = [
        "eval",
        tiny_model,
        "--checkpoint",
        str(tmp_path / "run" / "best.pt"),
        "--data",
        str(color_folder),
    ]
    assert main(args) == 2 and "broken.jpg" in capsys.readouterr().err
    assert main([*args, "--skip-unreadable", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["unreadable"] == 1 and result["images"] == 12


# -- checkpoints --------------------------------------------------------------------------------------


def damage(state, how):
    if how == "rng":
        state["rng"] = {}
    elif how == "metrics":
        state["metrics"] = [{"epoch": 1}]
    elif how == "optimizer groups":
        state["optimizer"]["param_groups"].append(dict(state["optimizer"]["param_groups"][0]))
    elif how == "scheduler":
        state["scheduler"] = [1, 2, 3]
    elif how == "model":
        state["model"]["fc.weight"] = torch.zeros(3, 3)
        del state["model"]["fc.bias"]
        state["model"]["head.weight"] = torch.zeros(1)
    return state


@pytest.mark.parametrize(
    "how, message",
    [
        ("rng", "is a damaged checkpoint: its rng is not the random states of python, numpy and torch"),
        ("metrics", "is a damaged checkpoint: its metrics is not a list of epoch records with val_top1"),
        ("optimizer groups", "its optimizer state does not fit this run"),
        ("scheduler", "is a damaged checkpoint: its scheduler is not a scheduler state"),
        (
            "model",
            "(its model) does not fit the model: missing: fc.bias; unexpected: head.weight; "
            "of another shape: fc.weight (3x3 in the checkpoint, 10x512 in the model)",
        ),
    ],
)
def test_a_malformed_checkpoint_is_a_clear_error(tiny_model, finished_run, tmp_path, capsys, how, message):
    _, content = finished_run
    out = tmp_path / "run"
    out.mkdir()
    state = damage(torch.load(__import__("io").BytesIO(content), weights_only=True), how)
    save_checkpoint({key: value for key, value in state.items() if key != "format"}, out / "checkpoint.pt")
    before = (out / "checkpoint.pt").read_bytes()
    assert main(command(tiny_model, out, "--epochs", "2", "--resume")) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert (out / "checkpoint.pt").read_bytes() == before


def test_eval_names_the_keys_that_do_not_fit(finished_run, tmp_path, capsys):
    out, _ = finished_run
    other = tmp_path / "other_model.py"
    other.write_text(
        (ROOT / "tests/train/fixtures/tiny_model.py").read_text().replace("self.fc", "self.head")
    )
    assert main(["eval", str(other), "--checkpoint", str(out / "checkpoint.pt"), "--data", "fake:32"]) == 2
    err = capsys.readouterr().err
    assert "missing: head.weight, head.bias; unexpected: fc.weight, fc.bias" in err


def test_lr_on_resume_warns_that_it_is_ignored(tiny_model, finished_run, tmp_path, capsys):
    source, content = finished_run
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(content)
    (out / "metrics.jsonl").write_bytes((source / "metrics.jsonl").read_bytes())
    assert main(command(tiny_model, out, "--epochs", "2", "--resume", "--lr", "0.5")) == 0
    err = capsys.readouterr().err
    assert "warning: --lr 0.5 is ignored: a resumed run keeps its optimizer's state" in err


def test_checkpoints_follow_the_output_policy(tmp_path):
    fifo = tmp_path / "checkpoint.pt"
    os.mkfifo(fifo)
    with pytest.raises(TrainError, match=r"could not write the checkpoint .*checkpoint.pt: it is a FIFO"):
        save_checkpoint({"format": FORMAT}, fifo)
    target = tmp_path / "real.pt"
    link = tmp_path / "link.pt"
    link.symlink_to(target)
    save_checkpoint({"epoch": 1}, link)
    assert link.is_symlink() and load_checkpoint.__name__ and target.stat().st_size > 0


def test_the_digits_cache_is_staged_where_nobody_can_plant_a_link(tmp_path, monkeypatch):
    from incdsl.train import data

    cache, victim = tmp_path / "cache", tmp_path / "victim"
    cache.mkdir()
    victim.mkdir()
    (cache / f"digits.{os.getpid()}.tmp").symlink_to(victim)  # the old, predictable staging name
    monkeypatch.setenv("INCDSL_CACHE", str(cache))
    folder = data.digits_folder()
    assert folder == cache / "digits" and len(list((folder / "val").rglob("*.png"))) == 359
    assert list(victim.iterdir()) == []


# -- evaluation views ---------------------------------------------------------------------------------


def test_eval_views_follow_the_recipe_the_checkpoint_was_trained_with(tiny_model, tmp_path, capsys):
    flips = tmp_path / "flips"
    train(config(tiny_model, flips, epochs=1, recipe="googlenet"))
    capsys.readouterr()
    assert load_checkpoint(flips / "best.pt")["augment"]["flip"] is True
    plain = tmp_path / "plain"
    train(config(tiny_model, plain, epochs=1))  # fast: no flips, whole-image evaluation
    capsys.readouterr()
    for option in ("--crops", "--views"):
        args = ["eval", tiny_model, "--data", "fake:32", option, "10"]
        assert main([*args, "--json", "--checkpoint", str(flips / "best.pt")]) == 0
        mirrored = json.loads(capsys.readouterr().out)
        assert (mirrored["views"], mirrored["fewest_views"], mirrored["mirrors"]) == (10, 10, True)
        assert mirrored["images"] == mirrored["one_crop"]["images"] == 8
        assert main([*args, "--json", "--checkpoint", str(plain / "best.pt")]) == 0
        unmirrored = json.loads(capsys.readouterr().out)
        assert (unmirrored["views"], unmirrored["fewest_views"], unmirrored["mirrors"]) == (5, 5, False)
        assert main([*args, "--checkpoint", str(plain / "best.pt")]) == 0
        shown = capsys.readouterr().out
        assert (
            "5 distinct views per image (10-crop without mirrors: the recipe trains without flips)" in shown
        )
        assert main([*args, "--checkpoint", str(flips / "best.pt")]) == 0
        assert "(8 images, 10 distinct views per image, 1 model)" in capsys.readouterr().out
    # asked by name, a mirror is taken whatever the training
    listed = ["eval", tiny_model, "--data", "fake:32", "--views", "center,corners,mirror", "--json"]
    assert main([*listed, "--checkpoint", str(plain / "best.pt")]) == 0
    assert json.loads(capsys.readouterr().out)["views"] == 10


def test_eval_views_that_name_nothing_are_a_usage_error(tiny_model, tmp_path, capsys):
    checkpoint = str(tmp_path / "none.pt")
    for wrong in ("5", "centre,corners", "mirror"):
        assert main(["eval", tiny_model, "--checkpoint", checkpoint, "--data", "fake", "--views", wrong]) == 2
        assert "--views: " in capsys.readouterr().err
    both = ["--crops", "10", "--views", "10"]
    assert main(["eval", tiny_model, "--checkpoint", checkpoint, "--data", "fake", *both]) == 2
    assert "not allowed with argument" in capsys.readouterr().err


# -- issue 18: the first save, write limits, damaged checkpoints, odd files in image folders -----------


def test_a_run_whose_first_save_failed_can_be_started_again(tiny_model, tmp_path, capsys, monkeypatch):
    from incdsl.train import checkpoint as checkpoint_module

    def disk_full(obj, file):
        file.write(b"PK\x03\x04")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0")

    out = tmp_path / "run"
    monkeypatch.setattr(checkpoint_module.torch, "save", disk_full)
    assert main(command(tiny_model, out, "--epochs", "1")) == 1
    err = capsys.readouterr().err
    assert f"error: could not write the checkpoint {out}/checkpoint.pt (" in err and "Traceback" not in err
    assert "no checkpoint was written: run the same command again to start over" in err
    assert "ulimit -f" in err and len(read_metrics(out)) == 1  # epoch 1 was logged before the save
    assert sorted(path.name for path in out.iterdir() if path.suffix == ".pt" or ".tmp" in path.name) == []
    monkeypatch.undo()
    assert main(command(tiny_model, out, "--epochs", "1")) == 0  # the same command starts it over
    assert "never completed a checkpoint: starting it over" in capsys.readouterr().out
    assert [record["epoch"] for record in read_metrics(out)] == [1]


def test_sigint_during_the_first_save_then_resume_starts_over(tiny_model, tmp_path, capsys, monkeypatch):
    def interrupted_save(state, path):
        raise KeyboardInterrupt

    out = tmp_path / "run"
    monkeypatch.setattr(loop_module, "save_checkpoint", interrupted_save)
    assert main(command(tiny_model, out, "--epochs", "1")) == 130
    assert "before the first checkpoint: run the same command again" in capsys.readouterr().err
    monkeypatch.undo()
    assert main(command(tiny_model, out, "--epochs", "1", "--resume")) == 0  # --resume too
    assert (out / "checkpoint.pt").exists()


def test_a_file_size_limit_keeps_the_previous_checkpoint(finished_run, tiny_model, tmp_path, command_env):
    source, content = finished_run
    out = tmp_path / "run"
    out.mkdir()
    for name in ("checkpoint.pt", "metrics.jsonl"):
        (out / name).write_bytes((source / name).read_bytes())
    limit = len(content) // 2
    script = (
        f"import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
        "from incdsl.train.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    args = command(tiny_model, out, "--epochs", "2", "--resume")
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        env=command_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    # torch's writer fails ("unexpected pos ..."), or Python's flush ("File too large"), as the limit falls
    assert f"error: could not write the checkpoint {out}/checkpoint.pt" in done.stderr
    assert "still holds epoch 1: run the same command with --resume" in done.stderr
    assert "hint: is the disk full, or a file-size limit (ulimit -f) reached?" in done.stderr
    assert "Traceback" not in done.stderr
    assert (out / "checkpoint.pt").read_bytes() == content
    assert not [path for path in out.iterdir() if path.name.endswith(".tmp")]


def largest_member_offset(content: bytes) -> int:
    """Where the data of the largest tensor record of a torch.save zip file lies, in the file."""
    import io
    import struct
    import zipfile

    archive = zipfile.ZipFile(io.BytesIO(content))
    member = max(archive.infolist(), key=lambda info: info.file_size if "/data/" in info.filename else 0)
    header = content[member.header_offset : member.header_offset + 30]
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    return member.header_offset + 30 + name_length + extra_length + member.file_size // 2


def test_flipped_bytes_in_a_tensor_are_detected(finished_run, tiny_model, tmp_path, capsys):
    import io

    source, content = finished_run
    out = tmp_path / "run"
    out.mkdir()
    offset = largest_member_offset(content)
    damaged = bytearray(content)
    damaged[offset] ^= 0x10
    (out / "checkpoint.pt").write_bytes(bytes(damaged))
    (out / "metrics.jsonl").write_bytes((source / "metrics.jsonl").read_bytes())
    torch.load(io.BytesIO(bytes(damaged)), weights_only=True)  # torch itself reads it without a word
    assert main(command(tiny_model, out, "--epochs", "2", "--resume")) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt is a damaged checkpoint: its contents do not match the digest" in err
    assert "Traceback" not in err and (out / "checkpoint.pt").read_bytes() == bytes(damaged)


@pytest.mark.parametrize(
    "how, message",
    [
        ("optimizer shape", "its optimizer state does not fit this run: exp_avg of parameter 0 is 3,"),
        ("config list", "is a damaged checkpoint: its config is not a table of settings"),
    ],
)
def test_more_malformed_checkpoints(tiny_model, finished_run, tmp_path, capsys, how, message):
    _, content = finished_run
    out = tmp_path / "run"
    out.mkdir()
    state = torch.load(__import__("io").BytesIO(content), weights_only=True)
    if how == "optimizer shape":
        state["optimizer"]["state"][0]["exp_avg"] = torch.zeros(3)
    else:
        state["config"] = [1, 2, 3]
    save_checkpoint({key: value for key, value in state.items() if key != "format"}, out / "checkpoint.pt")
    assert main(command(tiny_model, out, "--epochs", "2", "--resume")) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


def test_only_regular_files_are_read_from_an_image_folder(tiny_model, color_folder, tmp_path, run_cli):
    from incdsl.train.data import list_images

    fifo = color_folder / "train" / "red" / "x.png"
    os.mkfifo(fifo)
    (color_folder / "train" / "red" / "folder.png").mkdir()
    assert fifo not in list_images(color_folder / "train" / "red") and len(list_images(color_folder)) == 48
    done = run_cli(
        *command(tiny_model, tmp_path / "run", "--epochs", "1", data=str(color_folder)), timeout=90
    )
    assert done.returncode == 0, done.stderr


def test_a_folder_with_one_class_is_an_error(tiny_model, color_folder, tmp_path, capsys):
    import shutil

    for split in ("train", "val"):
        for name in ("blue", "green"):
            shutil.rmtree(color_folder / split / name)
    assert main(command(tiny_model, tmp_path / "run", "--epochs", "1", data=str(color_folder))) == 2
    err = capsys.readouterr().err
    assert "error: the training data has a single class (red)" in err and "Traceback" not in err
