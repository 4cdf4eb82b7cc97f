"""Checkpoints: written atomically, read without unpickling code, with every RNG state.

A checkpoint is a dict of tensors, numbers and strings: ``torch.load(weights_only=True)`` reads it, so a
checkpoint from elsewhere cannot run code. It is written to a temporary file in the same folder, flushed
to disk and renamed over the old one: a run killed at any moment leaves the previous checkpoint or the
new one, never half of one.
"""

from __future__ import annotations

import os
import pickle
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from incdsl.files import replacing
from incdsl.train import TrainError

FORMAT = "incdsl-checkpoint/1"
REQUIRED = frozenset({"epoch", "model", "optimizer", "scheduler", "rng", "metrics", "classes", "recipe"})


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` atomically, on disk before the rename."""
    with replacing(path) as temporary, open(temporary, "wb") as file:
        torch.save({"format": FORMAT, **state}, file)
        file.flush()
        os.fsync(file.fileno())


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
    return state


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
