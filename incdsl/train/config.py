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

import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from incdsl.errors import did_you_mean
from incdsl.train import TrainError
from incdsl.train.recipes import get_recipe


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


RECIPE_DEFAULTS = ("epochs", "batch_size", "lr", "channels_last")


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
    recipe = get_recipe(values.get("recipe", "fast"))
    for key in RECIPE_DEFAULTS:
        values.setdefault(key, getattr(recipe, key))
    _check_ranges(values)
    return TrainConfig(**values)


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


def _check_ranges(values: dict[str, Any]) -> None:
    for key, least in (("epochs", 1), ("batch_size", 1), ("seed", 0), ("workers", -1)):
        if values.get(key, least) < least:
            raise TrainError(f"{key.replace('_', '-')} must be at least {least}, not {values[key]}")
    if values["lr"] <= 0:
        raise TrainError(f"lr must be positive, not {values['lr']}")
