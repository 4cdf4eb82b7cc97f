"""The trainer's configuration: a frozen dataclass filled from CLI options, a TOML/YAML file and a recipe.

Precedence, highest first: an option given on the command line, the same option in ``--config FILE``, the
recipe's default. Keys in a config file are the long option names, with ``-`` or ``_``::

    # digits.toml
    target = "mini_googlenet"
    data = "digits"
    out = "runs/digits"
    recipe = "fast"
    epochs = 12
    batch-size = 64
"""

from __future__ import annotations

import argparse
import math
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from incdsl import numbers
from incdsl.errors import did_you_mean
from incdsl.train import TrainError


@dataclass(frozen=True)
class TrainConfig:
    """One training run, every option resolved (``make_config`` fills the recipe's defaults)."""

    target: str  # shipped spec name, .inc file or generated model.py
    data: str  # an image folder, "digits" or "fake"
    out: Path  # run directory: metrics.jsonl, checkpoint.pt, best.pt
    epochs: int  # total epochs, also when resuming
    batch_size: int  # global batch size, split across processes
    lr: float  # base learning rate
    channels_last: bool  # channels-last memory layout for the model and batches
    recipe: str = "fast"
    resume: bool = False
    amp: bool = False  # bfloat16 autocast on CPU, float16 on CUDA
    compile: bool = False  # torch.compile the model
    workers: int = -1  # data loader processes; -1 = 0 on CPU, up to 8 on CUDA
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    skip_unreadable: bool = False  # skip (and count) images that cannot be decoded, instead of stopping


RECIPE_DEFAULTS = ("epochs", "batch_size", "lr", "channels_last")

# The range of every numeric option, wherever it comes from (command line, config file, Python): low and
# high bounds, inclusive; None is open. The learning rate must also be above 0 (see check_option).
NUMBER_RANGES: dict[str, tuple[type, float | None, float | None]] = {
    "epochs": (int, 1, 1_000_000),
    "batch_size": (int, 1, 2**31 - 1),
    "lr": (float, 0.0, None),
    "workers": (int, -1, 1024),  # -1: 0 on a CPU, up to 8 on a GPU
    "seed": (int, 0, 2**32 - 1),  # as NumPy's seeds
}


def make_config(options: Mapping[str, Any]) -> TrainConfig:
    """A TrainConfig from option values (None or absent = default), with the recipe's defaults filled in.

    >>> make_config({"target": "m.py", "data": "fake", "out": "run", "recipe": "bvlc"}).batch_size
    32
    """
    values = {key: value for key, value in options.items() if value is not None}
    _check_names(values)
    for required in ("target", "data", "out"):
        if required not in values:
            raise TrainError(
                f"no {required} given", hint=f"pass it on the command line or set {required} in --config"
            )
    values = {key: _convert(key, value) for key, value in values.items()}
    from incdsl.train.recipes import get_recipe  # imports torch: not needed to parse options

    recipe = get_recipe(values.get("recipe", "fast"))
    for key in RECIPE_DEFAULTS:
        values.setdefault(key, getattr(recipe, key))
    for key, value in values.items():
        if key in NUMBER_RANGES:
            check_option(key, value, f"option {key.replace('_', '-')}")
    return TrainConfig(**values)


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
    accepted = {float: (int, float), Path: (str, Path)}.get(kind, (kind,))
    if isinstance(value, bool) and kind is not bool or not isinstance(value, accepted):
        raise TrainError(f"option {key} must be {accepted[0].__name__}, not {value!r}")
    return kind(value)
