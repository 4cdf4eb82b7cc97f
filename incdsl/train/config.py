"""The trainer's configuration: a frozen dataclass filled from CLI options, a TOML/YAML file and a recipe.

Precedence, highest first: an option given on the command line, the same option in ``--config FILE``, on
``--resume`` the settings the run started with (saved in its checkpoint), the recipe's default. Every
setting of a recipe (optimizer, schedule, regularisers, augmentation) is an option. Keys in a config
file are the long option names, with ``-`` or ``_``; ``incdsl train --print-config`` writes one::

    # digits.toml
    target = "mini_googlenet"
    data = "digits"
    out = "runs/digits"
    recipe = "fast"
    epochs = 12
    batch-size = 64
    label-smoothing = 0.0
    crop-area = [0.5, 1.0]
    input-size = 64  # the spec built for 64x64 inputs (0: its own input line's)
"""

from __future__ import annotations

import argparse
import json
import math
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from incdsl import numbers
from incdsl.errors import did_you_mean
from incdsl.threads import MAX_THREADS
from incdsl.train import TrainError


@dataclass(frozen=True)
class TrainConfig:
    """One training run, every option resolved (``make_config`` fills the recipe's defaults)."""

    target: str  # shipped spec name, .inc file or generated model.py
    data: str  # an image folder, "digits" or "fake"
    out: Path  # run directory: metrics.jsonl, checkpoint.pt, best.pt
    epochs: int  # total epochs, also when resuming
    batch_size: int  # global batch of one forward pass, split across processes
    lr: float  # base learning rate (the recipe's, scaled linearly by the batch, unless given)
    channels_last: bool  # channels-last memory layout for the model and batches
    recipe: str = "fast"
    resume: bool = False
    amp: bool = False  # bfloat16 autocast on CPU, float16 on CUDA
    compile: bool = False  # torch.compile the model
    workers: int = -1  # data loader processes; -1 = 0 on CPU, up to 8 on CUDA
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    skip_unreadable: bool = False  # skip (and count) images that cannot be decoded, instead of stopping
    # -- the recipe's settings: make_config fills each one from the recipe unless it is given
    optimizer: str = "adamw"  # "sgd", "rmsprop" or "adamw"
    momentum: float = 0.0  # SGD and RMSProp
    eps: float = 1e-8  # RMSProp and AdamW
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW's averages of the gradient and its square
    rmsprop_decay: float = 0.9  # RMSProp's moving average of squared gradients
    rmsprop_style: str = "torch"  # "tf": epsilon inside the square root, as TensorFlow (Inception v3)
    weight_decay: float = 0.0  # on conv and linear weights; biases and normalisation are not decayed ...
    decay_all: bool = False  # ... unless this is set
    schedule: str = "cosine"  # "step", "cosine" or "constant", after the warm-up
    lr_gamma: float = 1.0  # step: multiply the lr by this ...
    lr_step_epochs: float = 1.0  # ... every this many epochs
    warmup_epochs: float = 0.0  # linear ramp of the lr from 0 over this many epochs
    label_smoothing: float = 0.0
    grad_clip: float = 0.0  # largest global gradient norm; 0 = no clipping
    ema: bool = False  # evaluate an exponential moving average of the weights (Polyak averaging)
    ema_decay: float = 0.9999
    crop_area: tuple[float, float] = (0.08, 1.0)  # training crop: fraction of the image area
    crop_aspect: tuple[float, float] = (3 / 4, 4 / 3)  # training crop: width / height
    flip: bool = True  # mirror half of the training images
    photometric: float = 0.4  # brightness, contrast, saturation in [1 - p, 1 + p]; 0 = off
    eval_crop: float = 0.875  # fraction of the resized image the evaluation center crop keeps
    mixup: float = 0.0  # alpha of mixup's Beta(alpha, alpha); 0 = off
    cutmix: float = 0.0  # alpha of CutMix's; 0 = off (both on: either, half the batches each)
    accumulate: int = 1  # forward passes whose gradients are summed per optimizer step
    val_split: float = 0.0  # hold out this fraction of DIR/train when DIR has no val/ folder
    sync_bn: bool = False  # under torchrun on GPUs: BatchNorm statistics over the global batch
    balanced: bool = False  # draw every class equally often (with replacement), for imbalanced data
    log_every: int = 100  # a progress line every this many steps when the output is not a terminal
    input_size: int = 0  # train a spec at N x N inputs instead of its input line's; 0: the spec's
    threads: int = 0  # torch's threads; 0: incdsl's default (incdsl.threads: the cores not busy)

    @property
    def step_batch(self) -> int:
        """Images per optimizer step: the batch times the accumulated forward passes."""
        return self.batch_size * self.accumulate


RECIPE_DEFAULTS = ("epochs", "batch_size", "channels_last")
# The recipe's settings as options, each with its help text (incdsl train --help, the README).
SETTINGS: dict[str, str] = {
    "optimizer": "sgd, rmsprop or adamw",
    "momentum": "momentum of SGD and RMSProp",
    "eps": "epsilon of RMSProp and AdamW",
    "betas": "AdamW's two decays, of the gradient's average and of its square's (like 0.9 0.999)",
    "rmsprop_decay": "decay of RMSProp's average of squared gradients",
    "rmsprop_style": "tf: epsilon inside the square root (TensorFlow's, Inception v3's); torch: outside",
    "weight_decay": "weight decay of conv and linear weights (biases and normalisation: none)",
    "decay_all": "decay biases and normalisation parameters too",
    "schedule": "the lr after the warm-up: step, cosine (to 0 at the last epoch) or constant",
    "lr_gamma": "step schedule: multiply the lr by this ...",
    "lr_step_epochs": "... every this many epochs (fractions allowed)",
    "warmup_epochs": "epochs of linear lr warm-up from 0 (fractions allowed)",
    "label_smoothing": "label smoothing of the cross-entropy",
    "grad_clip": "clip the global gradient norm to this (0: no clipping)",
    "ema": "evaluate a moving average of the weights (Polyak averaging)",
    "ema_decay": "decay of the moving average",
    "crop_area": "training crops cover this range of the image area (two numbers, like 0.08 1)",
    "crop_aspect": "training crops' width/height range (two numbers, like 0.75 1.333)",
    "flip": "mirror half of the training images",
    "photometric": "brightness, contrast and saturation jitter p: factors in [1-p, 1+p] (0: off)",
    "eval_crop": "evaluation keeps this central fraction of the resized image (1: the whole image)",
    "mixup": "mixup's alpha: blend each image with another, and their labels (0: off; 0.2 is usual)",
    "cutmix": "CutMix's alpha: paste a box of another image, labels by area (0: off; 1.0 is usual)",
    "accumulate": "sum the gradients of this many batches per optimizer step (the lr scales with both)",
}
CHOICES = {
    "optimizer": ("sgd", "rmsprop", "adamw"),
    "rmsprop_style": ("torch", "tf"),
    "schedule": ("step", "cosine", "constant"),
}

# The range of every numeric option, wherever it comes from (command line, config file, Python): low and
# high bounds, inclusive; None is open. Those in ABOVE_ZERO must also be above 0 (see check_option).
NUMBER_RANGES: dict[str, tuple[type, float | None, float | None]] = {
    "epochs": (int, 1, 1_000_000),
    "batch_size": (int, 1, 2**31 - 1),
    "lr": (float, 0.0, None),
    "workers": (int, -1, 1024),  # -1: 0 on a CPU, up to 8 on a GPU
    "seed": (int, 0, 2**32 - 1),  # as NumPy's seeds
    "momentum": (float, 0.0, 1.0),
    "eps": (float, 0.0, None),
    "betas": (float, 0.0, 1.0),
    "rmsprop_decay": (float, 0.0, 1.0),
    "weight_decay": (float, 0.0, None),
    "lr_gamma": (float, 0.0, 1.0),  # a step schedule decays
    "lr_step_epochs": (float, 0.0, 1_000_000),
    "warmup_epochs": (float, 0.0, 1_000_000),
    "label_smoothing": (float, 0.0, 1.0),
    "grad_clip": (float, 0.0, None),
    "ema_decay": (float, 0.0, 1.0),
    "crop_area": (float, 0.0, 1.0),
    "crop_aspect": (float, 0.0, None),
    "photometric": (float, 0.0, 1.0),
    "eval_crop": (float, 0.1, 1.0),  # below, the image is enlarged over 10x for its center
    "mixup": (float, 0.0, 100.0),
    "cutmix": (float, 0.0, 100.0),
    "accumulate": (int, 1, 1_000_000),
    "val_split": (float, 0.0, 1.0),
    "log_every": (int, 0, 2**31 - 1),
    "input_size": (int, 0, 16384),  # 0: the spec's own
    "threads": (int, 0, MAX_THREADS),  # 0: incdsl's default
}
ABOVE_ZERO = frozenset({"lr", "eps", "lr_gamma", "lr_step_epochs", "crop_area", "crop_aspect"})


def recipe_settings(recipe) -> dict[str, Any]:
    """A recipe's settings as TrainConfig fields (the learning rate apart: see make_config)."""
    augment, schedule = recipe.augment, recipe.schedule
    return {
        "epochs": recipe.epochs,
        "batch_size": recipe.batch_size,
        "channels_last": recipe.channels_last,
        "optimizer": recipe.optimizer,
        "momentum": recipe.momentum,
        "eps": recipe.eps,
        "betas": recipe.betas,
        "rmsprop_decay": recipe.rmsprop_decay,
        "rmsprop_style": recipe.rmsprop_style,
        "weight_decay": recipe.weight_decay,
        "decay_all": recipe.decay_all,
        "schedule": schedule.kind,
        "lr_gamma": schedule.gamma,
        "lr_step_epochs": schedule.every_epochs,
        "warmup_epochs": schedule.warmup_epochs,
        "label_smoothing": recipe.label_smoothing,
        "grad_clip": recipe.grad_clip or 0.0,
        "ema": recipe.ema_decay is not None,
        "ema_decay": recipe.ema_decay or 0.9999,
        "crop_area": augment.crop_area,
        "crop_aspect": augment.crop_aspect,
        "flip": augment.flip,
        "photometric": augment.photometric,
        "eval_crop": augment.eval_crop,
    }


def make_config(options: Mapping[str, Any]) -> TrainConfig:
    """A TrainConfig from option values (None or absent = default), with the recipe's defaults filled in.

    Precedence: ``options`` (the command line over the config file), then, on ``resume``, the settings
    the run was started with (saved in its checkpoint), then the recipe's. The learning rate, unless
    given, is the recipe's scaled linearly by the images per optimizer step: ``recipe lr x batch_size x
    accumulate / recipe batch`` (Goyal et al. 2017), the recipe's batch being the one its lr was
    published for.

    >>> make_config({"target": "m.py", "data": "fake", "out": "run", "recipe": "bvlc"}).batch_size
    32
    >>> make_config({"target": "m.py", "data": "fake", "out": "run", "batch_size": 128}).lr  # fast: 64
    0.004
    """
    values = {key: value for key, value in options.items() if value is not None}
    _check_names(values)
    values = {key: _convert(key, value) for key, value in values.items()}
    saved = saved_settings(Path(values["out"])) if values.get("resume") and "out" in values else {}
    for key, value in saved.items():
        values.setdefault(key, value)
    for required in ("target", "data", "out"):
        if required not in values and values.get("resume") and "out" in values and not saved:
            raise TrainError(
                f"no {required} given, and no checkpoint at {Path(values['out']) / 'checkpoint.pt'} to "
                "resume with its settings",
                hint=f"pass {required} to start a new run (without --resume)",
            )
        if required not in values:
            raise TrainError(
                f"no {required} given", hint=f"pass it on the command line or set {required} in --config"
            )
    from incdsl.train.recipes import get_recipe  # imports torch: not needed to parse options

    recipe = get_recipe(values.get("recipe", "fast"))
    for key, value in recipe_settings(recipe).items():
        values.setdefault(key, _convert(key, value))
    if "lr" not in values:
        values["lr"] = scaled_lr(recipe, values["batch_size"] * values.get("accumulate", 1))
    for key, value in values.items():
        if key in NUMBER_RANGES:
            for number in value if isinstance(value, tuple) else (value,):
                check_option(key, number, f"option {key.replace('_', '-')}")
        if key in CHOICES and value not in CHOICES[key]:
            raise TrainError(
                f"option {key.replace('_', '-')}: unknown {key.replace('_', ' ')} '{value}'",
                hint=did_you_mean(value, CHOICES[key]) or f"one of {', '.join(CHOICES[key])}",
            )
        if isinstance(value, tuple) and key != "betas" and value[0] > value[1]:
            raise TrainError(f"option {key.replace('_', '-')}: {value[0]:g} is above {value[1]:g}")
    if max(values["betas"]) >= 1.0:
        raise TrainError("option betas: each must be below 1, like 0.9 0.999")
    if values.get("val_split", 0.0) >= 1.0:
        raise TrainError("option val-split: it must be below 1, like 0.1 (a tenth of the images)")
    return TrainConfig(**values)


def scaled_lr(recipe, step_batch: int) -> float:
    """The recipe's learning rate for ``step_batch`` images per optimizer step, by linear scaling."""
    return recipe.lr * step_batch / recipe.batch_size


def lr_note(config: TrainConfig) -> str | None:
    """How the learning rate was derived, when it is the recipe's scaled to another batch; else None."""
    from incdsl.train.recipes import RECIPES

    recipe = RECIPES.get(config.recipe)
    if recipe is None or config.step_batch == recipe.batch_size:
        return None
    if not math.isclose(config.lr, scaled_lr(recipe, config.step_batch), rel_tol=1e-12):
        return None
    return (
        f"lr {config.lr:g} = recipe {recipe.name}'s {recipe.lr:g} at batch {recipe.batch_size}"
        f" x {config.step_batch}/{recipe.batch_size} (linear scaling)"
    )


def saved_settings(run_dir: Path) -> dict[str, Any]:
    """The settings a run was started with, from its checkpoint (empty when it has none: the loop says
    what is wrong with a missing or unreadable one), but for the machine's (device, workers), which
    a resume on another machine chooses afresh. A config that is not a table is a TrainError."""
    from incdsl.train.checkpoint import read_saved_config

    path = run_dir / "checkpoint.pt"
    saved = read_saved_config(path)
    # a checkpoint from before the settings were saved trained with the recipe's, and PyTorch's RMSProp
    settings: dict[str, Any] = {"rmsprop_style": "torch"} if saved and "optimizer" not in saved else {}
    known = {f.name for f in fields(TrainConfig)} - {
        "out",
        "resume",
        "device",
        "workers",
        "threads",
    }  # machine's
    for key, value in saved.items():
        if key not in known or value is None:
            continue
        try:
            settings[key] = _convert(key, value)
            for number in settings[key] if isinstance(settings[key], tuple) else (settings[key],):
                if key in NUMBER_RANGES:
                    check_option(key, number, key)
        except TrainError:
            raise TrainError(f"{path} is a damaged checkpoint: its setting {key} is {value!r}") from None
    return settings


def check_option(key: str, value: int | float, where: str, text: str | None = None) -> int | float:
    """``value`` when it is finite and within ``NUMBER_RANGES[key]``; a TrainError naming ``where``.

    >>> check_option("lr", float("nan"), "--lr")
    Traceback (most recent call last):
    ...
    incdsl.train.TrainError: error: --lr: 'nan' is not a finite number
    """
    kind, low, high = NUMBER_RANGES[key]
    text = str(value) if text is None else text
    if isinstance(value, float) and not math.isfinite(value):
        raise TrainError(f"{where}: {text!r} is not a finite number")
    if key == "lr" and value <= 0:
        raise TrainError(f"{where}: the learning rate must be above 0, not {text}")
    if key in ABOVE_ZERO and value <= 0:
        raise TrainError(f"{where}: it must be above 0, not {text}")
    try:
        numbers.check_range(value, text, low, high)
    except numbers.NumberError as error:
        raise TrainError(f"{where}: {error}") from None
    return value


def option_type(key: str) -> Callable[[str], int | float]:
    """An argparse ``type`` for a numeric option: the text read by incdsl.numbers (ASCII digits, finite)
    and checked against NUMBER_RANGES, so a bad value is a usage error (exit 2) naming the option."""
    kind = NUMBER_RANGES[key][0]

    def read(text: str) -> int | float:
        try:
            value = numbers.read_int(text) if kind is int else numbers.read_float(text)
            return check_option(key, value, "", text)
        except numbers.NumberError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        except TrainError as error:
            raise argparse.ArgumentTypeError(error.message.removeprefix(": ")) from None

    read.__name__ = kind.__name__  # argparse names the type in its messages
    return read


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The options in a TOML (or, with PyYAML installed, YAML) file, keys normalised to field names."""
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"config file {path} does not exist")
    try:
        table = _parse_yaml(path) if path.suffix in (".yaml", ".yml") else _parse_toml(path)
    except (ValueError, UnicodeDecodeError) as error:  # TOMLDecodeError is a ValueError
        raise TrainError(f"config file {path} cannot be read: {error}") from None
    if not isinstance(table, dict):
        raise TrainError(f"config file {path} must hold a table of options")
    options = {key.replace("-", "_"): value for key, value in table.items()}
    _check_names(options, path)
    return options


def _parse_toml(path: Path) -> Any:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise TrainError(f"reading {path} on Python 3.10 needs tomli (pip install tomli)") from None
    return tomllib.loads(path.read_text())


def _parse_yaml(path: Path) -> Any:
    try:
        import yaml
    except ImportError:
        raise TrainError(f"reading {path} needs PyYAML (pip install pyyaml); TOML needs nothing") from None
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(str(error)) from None


def _check_names(options: Mapping[str, Any], path: Path | None = None) -> None:
    known = [f.name for f in fields(TrainConfig)]
    for key in options:
        if key not in known:
            what = f"key '{key}' in {path}" if path else f"option '{key}'"
            raise TrainError(f"unknown {what}", hint=did_you_mean(key, known))


def _convert(key: str, value: Any) -> Any:
    """The value as the field's type; a TrainError when it is something else."""
    kind = typing.get_type_hints(TrainConfig)[key]
    if typing.get_origin(kind) is tuple:  # a range: two numbers, a TOML list or argparse's nargs=2
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise TrainError(f"option {key} must be two numbers (low, high), not {value!r}")
        return tuple(_convert_one(key, float, item) for item in value)
    return _convert_one(key, kind, value)


def _convert_one(key: str, kind: type, value: Any) -> Any:
    accepted = {float: (int, float), Path: (str, Path)}.get(kind, (kind,))
    if isinstance(value, bool) and kind is not bool or not isinstance(value, accepted):
        name = "a number" if kind is float else accepted[0].__name__
        raise TrainError(f"option {key} must be {name}, not {value!r}")
    return kind(value)


def config_text(config: TrainConfig) -> str:
    """``config`` as a TOML file that reproduces the run with ``incdsl train --config FILE``."""
    lines = [
        f"# incdsl train --config FILE: the settings of this run, resolved (recipe {config.recipe})",
    ]
    note = lr_note(config)
    for field in fields(TrainConfig):
        if field.name == "resume":
            continue
        value = getattr(config, field.name)
        line = f"{field.name.replace('_', '-')} = {_toml_value(value)}"
        if field.name == "lr" and note:
            line += f"  # {note}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    if any("\ud800" <= char <= "\udfff" for char in text):  # undecodable bytes of a file name
        raise TrainError(f"{text!r} cannot be written in a config file: it is not valid text")
    # a TOML basic string: JSON's escapes are TOML's (but for DEL, which TOML wants escaped too)
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")
