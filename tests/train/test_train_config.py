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
