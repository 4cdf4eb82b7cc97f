"""The trainer as practitioners use it (issue 15): settings that reach the run and its records, warnings
about data left unused, per-class figures, a validation split, progress without a terminal."""

from __future__ import annotations

import json
import shutil

import pytest

from incdsl.train.checkpoint import load_checkpoint
from incdsl.train.cli import main
from incdsl.train.logs import read_metrics


def command(tiny_model, out, *extra, data="fake:32"):
    return ["train", tiny_model, "--data", data, "--out", str(out), "--batch-size", "8", *extra]


def test_settings_reach_run_json_the_checkpoint_and_a_resume(tiny_model, tmp_path, capsys):
    out = tmp_path / "run"
    settings = [
        "--label-smoothing",
        "0",
        "--no-flip",
        "--weight-decay",
        "0.01",
        "--ema",
        "--ema-decay",
        "0.5",
    ]
    assert main(command(tiny_model, out, "--epochs", "1", "--recipe", "googlenet", *settings)) == 0
    info = json.loads((out / "run.json").read_text())["settings"]
    assert (info["label_smoothing"], info["flip"], info["weight_decay"]) == (0.0, False, 0.01)
    assert (info["ema"], info["ema_decay"], info["crop_area"]) == (True, 0.5, [0.08, 1.0])
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["augment"]["flip"] is False and state["ema"] is not None
    assert state["optimizer"]["param_groups"][0]["weight_decay"] == 0.01
    capsys.readouterr()
    # a resume without the options continues with the run's own settings, not the recipe's
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2"]) == 0
    assert "resumed from epoch 1" in capsys.readouterr().out
    resumed = load_checkpoint(out / "checkpoint.pt")["config"]
    assert {key: resumed[key] for key in info} == {**info, "epochs": 2}


def test_gradient_accumulation_steps_once_per_group(tiny_model, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(command(tiny_model, out, "--epochs", "1", "--batch-size", "4", "--accumulate", "3")) == 0
    # 32 images at batch 4: 8 batches, stepped after batches 3, 6 and 8
    assert load_checkpoint(out / "checkpoint.pt")["scheduler"]["last_epoch"] == 3
    assert "lr 0.000375 = recipe fast's 0.002 at batch 64 x 12/64 (linear scaling)" in capsys.readouterr().out


def test_unused_images_and_a_short_warm_up_are_warned_about(tiny_model, tmp_path, capsys):
    assert main(command(tiny_model, tmp_path / "run", "--epochs", "1", data="fake:20")) == 0
    err = capsys.readouterr().err
    assert "warning: 4 of the 20 training images are left out of each epoch" in err
    assert "warning: --epochs 1 is not longer than the warm-up (1 epoch)" in err
    assert main(command(tiny_model, tmp_path / "run2", "--epochs", "2")) == 0
    assert "warning" not in capsys.readouterr().err


def test_progress_lines_eta_and_closing_summary_without_a_terminal(tiny_model, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(command(tiny_model, out, "--epochs", "2", "--log-every", "2")) == 0
    lines = capsys.readouterr().out.splitlines()
    steps = [line for line in lines if "  step " in line]
    assert [line.split("  ")[:2] for line in steps] == [
        ["epoch 1/2", "step 2/4"],
        ["epoch 1/2", "step 4/4"],
        ["epoch 2/2", "step 2/4"],
        ["epoch 2/2", "step 4/4"],
    ]
    assert all(" img/s  eta " in line for line in steps)
    assert [line for line in lines if "train_loss" in line][-1].endswith("eta 0:00:00")
    best = max(read_metrics(out), key=lambda record: record["val_top1"])
    assert lines[-2].startswith("done: 2 epochs in 0:00:0")
    assert lines[-2].endswith(f"best val_top1 {best['val_top1']:.4f} at epoch {best['epoch']}")
    assert lines[-1] == f"  {out}/best.pt (epoch {best['epoch']}), {out}/checkpoint.pt (epoch 2, to --resume)"


@pytest.fixture
def imbalanced(tmp_path):
    """Three colour classes of 9, 6 and 3 training images and no val/ folder."""
    from conftest import write_image

    root = tmp_path / "imbalanced"
    for name, color, count in (
        ("blue", (20, 40, 220), 9),
        ("green", (30, 200, 40), 6),
        ("red", (220, 30, 30), 3),
    ):
        for index in range(count):
            write_image(root / "train" / name / f"{index}.png", (12, 12), "RGB", color)
    return root


def test_val_split_per_class_figures_and_eval_of_a_folder(tiny_model, imbalanced, tmp_path, capsys):
    out = tmp_path / "run"
    args = command(tiny_model, out, "--epochs", "1", "--batch-size", "4", data=str(imbalanced))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "has no val/ folder" in err and "--val-split 0.1" in err
    assert main([*args, "--val-split", "0.34"]) == 0
    capsys.readouterr()
    (record,) = read_metrics(out)
    # held out per class: round(0.34 * 9) = 3, round(0.34 * 6) = 2, round(0.34 * 3) = 1
    confusion = record["val_confusion"]
    assert [sum(row) for row in confusion] == [3, 2, 1]
    assert sum(confusion[i][i] for i in range(3)) / 6 == pytest.approx(record["val_top1"])
    per_class = [confusion[i][i] / sum(confusion[i]) for i in range(3)]
    assert record["val_class_top1"] == pytest.approx(per_class)

    # incdsl eval on the same folder picks the same held-out images (the run's --val-split)
    checkpoint = ["eval", tiny_model, "--checkpoint", str(out / "checkpoint.pt"), "--json"]
    assert main([*checkpoint, "--data", str(imbalanced)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 6 and result["confusion"] == confusion
    assert [row["class"] for row in result["per_class"]] == ["blue", "green", "red"]
    assert [row["images"] for row in result["per_class"]] == [3, 2, 1]

    # and a folder of class folders directly
    direct = tmp_path / "direct"
    shutil.copytree(imbalanced / "train", direct)
    shutil.rmtree(direct / "green")
    assert main([*checkpoint, "--data", str(direct)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 12 and [row["images"] for row in result["per_class"]] == [9, 0, 3]
    assert result["per_class"][1]["top1"] is None
    assert main([*checkpoint[:-1], "--data", str(direct)]) == 0
    text = capsys.readouterr().out
    assert "per class (mean top-1 " in text and "  green       0  -" in text
    assert "confusion (rows: true class, columns: predicted, in the order above):" in text


def test_val_split_is_refused_where_there_is_a_val_folder(tiny_model, color_folder, tmp_path, capsys):
    args = command(
        tiny_model, tmp_path / "run", "--epochs", "1", "--val-split", "0.2", data=str(color_folder)
    )
    assert main(args) == 2
    assert "has a val/ folder: --val-split is for a folder without one" in capsys.readouterr().err


def test_a_checkpoint_from_before_the_settings_resumes_as_it_trained(tiny_model, tmp_path, capsys):
    from incdsl.train.checkpoint import save_checkpoint

    out = tmp_path / "run"
    assert (
        main(
            command(tiny_model, out, "--epochs", "1", "--recipe", "inception-v3", "--rmsprop-style", "torch")
        )
        == 0
    )
    state = load_checkpoint(out / "checkpoint.pt")
    old_keys = ("target", "data", "out", "epochs", "batch_size", "lr", "channels_last", "recipe", "seed")
    state["config"] = {key: state["config"][key] for key in old_keys}  # what the trainer saved before
    save_checkpoint(
        {key: value for key, value in state.items() if key not in ("format", "digest")}, out / "checkpoint.pt"
    )
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2"]) == 0
    settings = load_checkpoint(out / "checkpoint.pt")["config"]
    assert settings["rmsprop_style"] == "torch" and settings["optimizer"] == "rmsprop"  # PyTorch's, as before
    assert settings["lr"] == state["config"]["lr"]


def test_balanced_sampling_draws_every_class_about_equally():
    import torch

    from incdsl.train.data import BalancedSampler

    labels = torch.tensor([0] * 900 + [1] * 90 + [2] * 10)
    sampler = BalancedSampler(labels, seed=3)
    sampler.set_epoch(1)
    first = list(sampler)
    counts = torch.bincount(labels[first], minlength=3).tolist()
    assert len(first) == 1000 and all(280 < count < 390 for count in counts), counts
    assert list(sampler) == first  # the draw is (seed, epoch)'s: a resume repeats it
    sampler.set_epoch(2)
    assert list(sampler) != first
    ranks = [BalancedSampler(labels, 2, rank, seed=3) for rank in (0, 1)]
    for rank in ranks:
        rank.set_epoch(1)
    assert sorted(list(ranks[0]) + list(ranks[1])) == sorted(first)  # one draw, split over the processes


def test_balanced_training_on_an_imbalanced_folder(tiny_model, imbalanced, tmp_path):
    out = tmp_path / "run"
    extra = ["--epochs", "1", "--batch-size", "4", "--val-split", "0.34", "--balanced"]
    assert main(command(tiny_model, out, *extra, data=str(imbalanced))) == 0
    assert load_checkpoint(out / "checkpoint.pt")["config"]["balanced"] is True
    assert json.loads((out / "run.json").read_text())["settings"]["balanced"] is True


def test_mixup_and_cutmix_mix_with_the_reversed_batch():
    import torch

    from incdsl.train.augment import mix_batch

    inputs = torch.stack([torch.full((1, 10, 10), float(i)) for i in range(4)])
    same, lam = mix_batch(inputs, 0.0, 0.0, torch.Generator().manual_seed(0))
    assert same is inputs and lam == 1.0
    mixed, lam = mix_batch(inputs, 0.4, 0.0, torch.Generator().manual_seed(0))
    assert 0 < lam < 1 and torch.allclose(mixed, lam * inputs + (1 - lam) * inputs.flip(0))
    for seed in range(5):
        cut, lam = mix_batch(inputs, 0.0, 1.0, torch.Generator().manual_seed(seed))
        pasted = (cut[0] == 3.0).float().mean().item()  # image 0 holds a box of image 3
        assert ((cut[0] == 0.0) | (cut[0] == 3.0)).all() and pasted == pytest.approx(1 - lam)


def test_a_mixup_cutmix_run_resumes_exactly(tiny_model, tmp_path):
    from incdsl.train.config import make_config
    from incdsl.train.loop import train

    options = {"target": tiny_model, "data": "fake:32", "batch_size": 8, "mixup": 0.2, "cutmix": 1.0}
    whole = train(make_config({**options, "out": tmp_path / "whole", "epochs": 2}))
    train(make_config({**options, "out": tmp_path / "part", "epochs": 1}))
    resumed = train(make_config({"out": tmp_path / "part", "epochs": 2, "resume": True}))
    assert [r["train_loss"] for r in resumed] == [r["train_loss"] for r in whole]
    assert load_checkpoint(tmp_path / "part" / "checkpoint.pt")["config"]["cutmix"] == 1.0
