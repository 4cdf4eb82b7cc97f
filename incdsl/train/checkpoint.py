"""Checkpoints: written atomically, read without unpickling code, with every RNG state.

A checkpoint is a dict of tensors, numbers and strings: ``torch.load(weights_only=True)`` reads it, so a
checkpoint from elsewhere cannot run code. It is written to a temporary file in the same folder, flushed
to disk and renamed over the old one: a run killed at any moment leaves the previous checkpoint or the
new one, never half of one. It carries a SHA-256 digest of its contents (every tensor's bytes, dtype and
shape, and the plain data beside them), checked on reading: flipped bytes in a tensor are a clear error,
not a run that goes on with damaged weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import random
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from incdsl.errors import OutputError
from incdsl.files import replacing
from incdsl.train import TrainError

FORMAT = "incdsl-checkpoint/1"
REQUIRED = frozenset({"epoch", "model", "optimizer", "scheduler", "rng", "metrics", "classes", "recipe"})


class CheckpointNotWritten(TrainError):
    """A checkpoint that could not be written (disk full, a file-size limit): the previous one is kept."""


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` atomically, on disk before the rename, with the digest of its
    contents; a CheckpointNotWritten error (and ``path`` untouched) when the file cannot be written."""
    content = {"format": FORMAT, **state}
    content["digest"] = digest(content)
    try:
        with replacing(path) as temporary, open(temporary, "wb") as file:
            torch.save(content, file)
            file.flush()
            os.fsync(file.fileno())
    except OutputError as error:  # the folder or the rename: the message names the path
        reason = error.message.removeprefix(f"cannot write {path}: ")
        hint = (
            None
            if "not a regular file" in reason
            else "is the disk full, or a file-size limit (ulimit -f) reached?"
        )
        raise CheckpointNotWritten(f"could not write the checkpoint {path}: {reason}", hint=hint) from None
    except (OSError, RuntimeError) as error:  # torch's zip writer: "unexpected pos ...", "file write failed"
        reason = getattr(error, "strerror", None) or _first_line(error)
        raise CheckpointNotWritten(
            f"could not write the checkpoint {path} ({reason})",
            hint="is the disk full, or a file-size limit (ulimit -f) reached?",
        ) from None


def digest(state: Any) -> str:
    """SHA-256 of a checkpoint's contents (its own ``digest`` entry left out): tensors by their dtype,
    shape and bytes, plain values by their type and repr, in the order they are stored."""
    hasher = hashlib.sha256()

    def visit(value: Any) -> None:
        if torch.is_tensor(value):
            hasher.update(f"tensor {value.dtype} {tuple(value.shape)};".encode())
            flat = value.detach().to("cpu").contiguous().reshape(-1)
            if flat.numel():
                hasher.update(flat.view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            items = [(k, v) for k, v in value.items() if not (value is state and k == "digest")]
            hasher.update(f"dict {len(items)};".encode())
            for key, item in items:
                visit(key)
                visit(item)
        elif isinstance(value, list | tuple):
            hasher.update(f"{type(value).__name__} {len(value)};".encode())
            for item in value:
                visit(item)
        else:
            hasher.update(f"{type(value).__name__} {value!r};".encode())

    visit(state)
    return hasher.hexdigest()


def _digest_or_none(state: dict[str, Any]) -> str | None:
    try:
        return digest(state)
    except (RuntimeError, TypeError, ValueError):  # a tensor layout incdsl never writes (sparse, ...)
        return None


def read_saved_config(path: Path) -> dict[str, Any]:
    """The settings saved in the checkpoint at ``path``, read without its tensors' data (memory-mapped);
    empty when there is no readable checkpoint there (the trainer reports that when it loads it), a
    TrainError when its config is not a table."""
    if not path.is_file():
        return {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # damaged or not a checkpoint: load_checkpoint says so when the run starts
        return {}
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        return {}
    config = state.get("config")
    if config is not None and not isinstance(config, dict):
        raise TrainError(f"{path} is a damaged checkpoint: its config is not a table of settings")
    return config or {}


def remove_temporaries(run_dir: Path) -> None:
    """Delete the temporary files of writers killed before their rename."""
    for path in run_dir.glob(".*.tmp"):
        path.unlink(missing_ok=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The state saved at ``path``; a TrainError (and the file untouched) when it is not a checkpoint."""
    if not path.is_file():
        raise TrainError(f"no checkpoint at {path}")
    try:
        with warnings.catch_warnings():  # a foreign pickle warns before it fails; the error says enough
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # damaged, or objects a weights-only load refuses to build
        raise TrainError(
            f"{path} is not a readable checkpoint: it is damaged, or holds more than tensors and plain data",
            hint="incdsl writes only tensors and plain data; anything else could run code, so is not loaded",
        ) from None
    except Exception as error:  # torch.load fails in many ways on a damaged file: zip, EOF, ...
        raise TrainError(f"{path} is not a readable checkpoint ({_first_line(error)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise TrainError(f"{path} is not an incdsl checkpoint")
    missing = sorted(REQUIRED - set(state))
    if missing:
        raise TrainError(f"{path} is an incomplete checkpoint: it has no {', '.join(missing)}")
    if "digest" in state and state["digest"] != _digest_or_none(state):  # older checkpoints have none
        raise TrainError(
            f"{path} is a damaged checkpoint: its contents do not match the digest saved with them",
            hint="flipped bytes on the disk, or a copy that went wrong; use another checkpoint (best.pt?)",
        )
    return state


# What a loadable checkpoint must hold for each use, beyond REQUIRED's presence: a checkpoint that
# torch.load reads safely can still hold anything (``rng={}``, metrics without val_top1, a list for a
# scheduler); each is a clear error here rather than a KeyError deep in the loop.
def _weights(value) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and torch.is_tensor(v) for k, v in value.items()
    )


def _record(value) -> bool:
    if not isinstance(value, dict) or not isinstance(value.get("epoch"), int):
        return False
    top1 = value.get("val_top1")
    return isinstance(top1, int | float) and not isinstance(top1, bool) and 0 <= top1 <= 1


def _optimizer(value) -> bool:
    if not isinstance(value, dict) or not isinstance(value.get("state"), dict):
        return False
    groups = value.get("param_groups")
    return isinstance(groups, list) and all(
        isinstance(group, dict) and isinstance(group.get("params"), list) for group in groups
    )


def _rng(value) -> bool:
    return (
        isinstance(value, dict)
        and isinstance(value.get("python"), tuple | list)
        and isinstance(value.get("numpy"), tuple | list)
        and len(value["numpy"]) == 5
        and torch.is_tensor(value.get("torch"))
    )


def _ema(value) -> bool:
    return value is None or (
        isinstance(value, dict) and _weights(value.get("module")) and isinstance(value.get("updates"), int)
    )


CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "epoch": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an epoch count"),
    "model": (_weights, "a dict of tensors"),
    "optimizer": (_optimizer, "an optimizer state (state, param_groups)"),
    "scheduler": (lambda v: isinstance(v, dict), "a scheduler state (a dict)"),
    "ema": (_ema, "None or an averaged model (module, updates)"),
    "rng": (_rng, "the random states of python, numpy and torch"),
    "metrics": (
        lambda v: isinstance(v, list) and all(map(_record, v)),
        "a list of epoch records with val_top1",
    ),
    "classes": (
        lambda v: isinstance(v, list) and v and all(isinstance(c, str) for c in v),
        "a list of class names",
    ),
    "recipe": (lambda v: isinstance(v, str), "a recipe name"),
    "config": (lambda v: v is None or isinstance(v, dict), "a table of settings"),
}
FOR_TRAINING = tuple(CHECKS)
FOR_EVALUATION = ("model", "ema", "classes", "recipe")


def check_contents(state: dict[str, Any], path: Path, keys: tuple[str, ...] = FOR_TRAINING) -> None:
    """A TrainError naming the first of ``keys`` whose value is not what the trainer wrote."""
    for key in keys:
        is_valid, expected = CHECKS[key]
        if not is_valid(state.get(key)):
            raise TrainError(f"{path} is a damaged checkpoint: its {key} is not {expected}")


def check_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any], path: Path) -> None:
    """A TrainError when the saved optimizer state does not fit ``optimizer``'s parameters: other
    groups, or a state tensor (a momentum, an average) of another shape than its parameter. PyTorch
    checks the groups' sizes only; a wrong shape would fail at the first step, deep in the optimizer."""
    params = [param for group in optimizer.param_groups for param in group["params"]]
    sizes = [len(group["params"]) for group in optimizer.param_groups]
    if [len(group["params"]) for group in saved["param_groups"]] != sizes:
        raise TrainError(f"{path}: its optimizer state does not fit this run (other parameter groups)")
    for index, entry in saved["state"].items():
        if not isinstance(index, int) or not 0 <= index < len(params) or not isinstance(entry, dict):
            raise TrainError(f"{path}: its optimizer state does not fit this run (parameter {index!r})")
        param = params[index]
        for name, value in entry.items():
            if torch.is_tensor(value) and value.ndim and tuple(value.shape) != tuple(param.shape):
                raise TrainError(
                    f"{path}: its optimizer state does not fit this run: {name} of parameter {index} is "
                    f"{_shape(value)}, the parameter {_shape(param)}"
                )


@contextlib.contextmanager
def loading(path: Path, part: str) -> Iterator[None]:
    """Turn the errors of loading ``part`` of a checkpoint (torch's, random's) into a TrainError."""
    try:
        yield
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as error:
        raise TrainError(f"{path}: its {part} does not fit this run ({_first_line(error)})") from None


def load_weights(module: torch.nn.Module, weights: dict[str, Any], what: str) -> None:
    """Load ``weights`` into ``module``; a TrainError naming the keys that are missing, unexpected or
    of another shape (PyTorch's own message stops at "Error(s) in loading state_dict for ...")."""
    expected = module.state_dict()
    missing = [key for key in expected if key not in weights]
    unexpected = [key for key in weights if key not in expected]
    reshaped = [
        f"{key} ({_shape(weights[key])} in the checkpoint, {_shape(expected[key])} in the model)"
        for key in expected
        if key in weights and tuple(weights[key].shape) != tuple(expected[key].shape)
    ]
    problems = [
        f"{label}: {_some(keys)}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped))
        if keys
    ]
    if problems:
        raise TrainError(f"{what} does not fit the model: " + "; ".join(problems))
    module.load_state_dict(weights)


def _shape(tensor: torch.Tensor) -> str:
    return "x".join(map(str, tensor.shape)) or "scalar"


def _some(items: list[str], shown: int = 5) -> str:
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def rng_states() -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's random number generators, in loadable types."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    kind, keys, position, has_gauss, gauss = states["numpy"]
    random.setstate(states["python"])
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
