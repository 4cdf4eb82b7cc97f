"""The bundled trainer: the papers' recipes on real data, with resume and torchrun.

Stages, each one module with one entry function::

    load_model(target)          models.py      spec name, .inc or model.py -> ModelBundle
    make_config(options)        config.py      CLI / TOML / saved / recipe settings -> TrainConfig
    open_split(...)             data.py        folder | digits | fake -> a train or val split
    augment_batch(...)          augment.py     Inception crop, flip, photometric, on the device
    train(config)               loop.py        the training loop; writes metrics.jsonl, checkpoint.pt
    evaluate_checkpoints(...)   evaluate.py    top-1/top-5 over 1, 10 or 144 crops, ensembles
    predict(...), export(...)   predict.py     a checkpoint's top-k for images; TorchScript, ONNX, safetensors

Example::

    >>> from incdsl.train import make_config, train
    >>> history = train(make_config({"target": "mini_googlenet", "data": "digits", "out": "runs/d"}))
    ... # doctest: +SKIP

Importing this package does not import torch; the names below load their module on first use.
"""

from __future__ import annotations

import importlib

from incdsl.errors import IncdslError


class TrainError(IncdslError):
    """A mistake in the trainer's domain: bad data folder, corrupt checkpoint, bad config, unknown recipe."""


class RunFailed(TrainError):
    """A run that could not go on: its loss stopped being finite. The last good checkpoint is kept."""


class Interrupted(TrainError):
    """Ctrl-C: the message says which checkpoint holds the run and how to continue."""


_LAZY = {
    "load_model": "models",
    "ModelBundle": "models",
    "make_config": "config",
    "TrainConfig": "config",
    "RECIPES": "recipes",
    "train": "loop",
    "evaluate_checkpoints": "evaluate",
    "predict": "predict",
    "export": "predict",
}

__all__ = ["TrainError", "RunFailed", "Interrupted", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
