"""Options: command line over config file over recipe defaults; clear errors for bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from incdsl.train import TrainError
from incdsl.train.cli import main
from incdsl.train.config import make_config, read_config_file

REQUIRED = {"target": "model.py", "data": "fake", "out": "run"}


def test_recipe_fills_the_defaults():
    config = make_config({**REQUIRED, "recipe": "inception-v3"})
    assert (config.epochs, config.batch_size, config.lr) == (100, 32, 0.045)
    assert config.out == Path("run")
    assert make_config(REQUIRED).recipe == "fast"


def test_given_options_win_over_the_recipe():
    config = make_config({**REQUIRED, "recipe": "bvlc", "epochs": 3, "lr": 0.5, "channels_last": False})
    assert (config.epochs, config.lr, config.batch_size, config.channels_last) == (3, 0.5, 32, False)


def test_toml_file_with_dashed_keys(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('target = "m.py"\ndata = "digits"\nbatch-size = 16\nlr = 1\namp = true\n')
    options = read_config_file(path)
    assert options == {"target": "m.py", "data": "digits", "batch_size": 16, "lr": 1, "amp": True}
    config = make_config({**options, "out": "x"})
    assert config.lr == 1.0 and isinstance(config.lr, float)


def test_yaml_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("recipe: googlenet\nepochs: 2\n")
    assert read_config_file(path) == {"recipe": "googlenet", "epochs": 2}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("epochs = [", "cannot be read"),
        ("epoch = 3", "unknown key 'epoch'"),
        ("epochs = 'three'", "epochs must be int"),
        ("resume = 1", "resume must be bool"),
        ("epochs = 0", "option epochs: .0. is too small: it must be at least 1"),
        ("lr = inf", "option lr: .inf. is not a finite number"),
        ("lr = nan", "option lr: .nan. is not a finite number"),
        ("lr = 0", "the learning rate must be above 0"),
        ("seed = 99999999999999999999999", "option seed: .* it must be at most 4,294,967,295"),
        ("recipe = 'fastest'", "unknown recipe"),
    ],
)
def test_bad_config_files_are_train_errors(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text + "\n")
    with pytest.raises(TrainError, match=message):
        make_config({**REQUIRED, **read_config_file(path)})


def test_missing_required_option():
    with pytest.raises(TrainError, match="no data given"):
        make_config({"target": "m.py", "out": "run"})


def test_command_line_over_config_file(tmp_path, tiny_model, capsys):
    path = tmp_path / "run.toml"
    out = tmp_path / "run"
    path.write_text(f'target = "{tiny_model}"\ndata = "fake:16"\nout = "{out}"\nepochs = 5\nbatch-size = 8\n')
    assert main(["train", "--config", str(path), "--epochs", "1"]) == 0
    assert "epoch 1/1" in capsys.readouterr().out


def test_bad_config_file_through_the_cli(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text("epoch = 3\n")
    assert main(["train", "--config", str(path)]) == 2
    error = capsys.readouterr().err
    assert "error: unknown key 'epoch'" in error and "did you mean 'epochs'" in error
    assert "Traceback" not in error


# -- every recipe setting is an option and a config key ------------------------------------------------


def test_lr_scales_linearly_with_the_images_per_step():
    fast = make_config(REQUIRED)  # the recipe's batch: its own lr
    assert (fast.batch_size, fast.lr) == (64, 2e-3)
    assert make_config({**REQUIRED, "batch_size": 16}).lr == pytest.approx(2e-3 / 4)
    assert make_config({**REQUIRED, "batch_size": 16, "accumulate": 8}).lr == pytest.approx(2e-3 * 2)
    assert make_config({**REQUIRED, "batch_size": 16, "lr": 0.1}).lr == 0.1  # a given lr is used as given
    bvlc = make_config({**REQUIRED, "recipe": "bvlc", "batch_size": 256})
    assert bvlc.lr == pytest.approx(0.01 * 8)


def test_settings_from_a_file_and_the_command_line(tmp_path, capsys):
    path = tmp_path / "run.toml"
    path.write_text(
        'target = "m.py"\ndata = "fake"\nout = "r"\nrecipe = "googlenet"\nweight_decay = 0\n'
        "label-smoothing = 0.2\nflip = false\ncrop-area = [0.5, 1.0]\nema-decay = 0.99\n"
    )
    assert main(["train", "--config", str(path), "--no-ema", "--label-smoothing", "0", "--print-config"]) == 0
    text = capsys.readouterr().out
    lines = set(text.splitlines())
    assert {"weight-decay = 0.0", "label-smoothing = 0.0", "flip = false", "crop-area = [0.5, 1.0]"} <= lines
    assert {"ema = false", "ema-decay = 0.99", "momentum = 0.9", 'optimizer = "sgd"'} <= lines
    assert not (tmp_path / "r").exists()  # --print-config trains nothing


def test_print_config_reproduces_the_run(tmp_path, capsys):
    args = ["train", "m.py", "--data", "fake", "--out", str(tmp_path / "r"), "--batch-size", "16"]
    assert main([*args, "--recipe", "inception-v3", "--crop-aspect", "0.5", "2", "--print-config"]) == 0
    text = capsys.readouterr().out
    assert (
        "lr = 0.0225  # lr 0.0225 = recipe inception-v3's 0.045 at batch 32 x 16/32 (linear scaling)" in text
    )
    saved = tmp_path / "saved.toml"
    saved.write_text(text)
    assert main(["train", "--config", str(saved), "--print-config"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == text.splitlines()[1:]
    assert make_config(read_config_file(saved)) == make_config(
        {"target": "m.py", "data": "fake", "out": tmp_path / "r", "batch_size": 16,
         "recipe": "inception-v3", "crop_aspect": [0.5, 2]}
    )  # fmt: skip


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("optimizer = 'adam'", "option optimizer: unknown optimizer 'adam'"),
        ("schedule = 'linear'", "unknown schedule 'linear'"),
        ("crop-area = [0.5]", "crop_area must be two numbers"),
        ("crop-area = [0.9, 0.2]", "option crop-area: 0.9 is above 0.2"),
        ("crop-area = [0, 1]", "option crop-area: it must be above 0, not 0"),
        ("label-smoothing = 1.5", "option label-smoothing: '1.5' is too large: it must be at most 1"),
        ("accumulate = 0", "option accumulate: '0' is too small"),
        ("ema = 'yes'", "option ema must be bool"),
        ("crop-area = [0.1, 'x']", "option crop_area must be a number, not 'x'"),
        ("val-split = 1", "option val-split: it must be below 1"),
        ("betas = [0.9, 1.0]", "option betas: each must be below 1"),
        ("eval-crop = 0.05", "option eval-crop: '0.05' is too small: it must be at least 0.1"),
        ("lr-gamma = 1.5", "option lr-gamma: '1.5' is too large: it must be at most 1"),
    ],
)
def test_bad_settings_are_train_errors(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text + "\n")
    with pytest.raises(TrainError, match=message):
        make_config({**REQUIRED, **read_config_file(path)})


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--optimizer", "adam"], "argument --optimizer: invalid choice: 'adam'"),
        (["--crop-area", "0.5"], "argument --crop-area: expected 2 arguments"),
        (["--ema-decay", "2"], "argument --ema-decay: '2' is too large: it must be at most 1"),
        (["--warmup-epochs", "nan"], "argument --warmup-epochs: 'nan' is not a number"),
    ],
)
def test_bad_settings_on_the_command_line(capsys, extra, message):
    assert main(["train", "m.py", "--data", "fake", "--out", "r", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_resume_without_a_checkpoint_or_a_target(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "none"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"no target given, and no checkpoint at {tmp_path}/none/checkpoint.pt to resume" in err
