"""Fixtures for the trainer's tests: a hand-written model file, the digits cache, small image folders."""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FIXTURES = Path(__file__).parent / "fixtures"
TINY_MODEL = FIXTURES / "tiny_model.py"
ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="session")
def tiny_model() -> str:
    """A model file following the compiler's contract: 3x32x32 input, 10 classes, aux head of weight 0.3."""
    return str(TINY_MODEL)


@pytest.fixture(scope="session", autouse=True)
def cache(tmp_path_factory) -> Path:
    """$INCDSL_CACHE for the whole session, so the digits are written once and never in ~/.cache."""
    folder = tmp_path_factory.mktemp("incdsl-cache")
    old = os.environ.get("INCDSL_CACHE")
    os.environ["INCDSL_CACHE"] = str(folder)
    yield folder
    if old is None:
        del os.environ["INCDSL_CACHE"]
    else:
        os.environ["INCDSL_CACHE"] = old


@pytest.fixture(scope="session")
def digits(cache) -> str:
    from incdsl.train.data import digits_folder

    digits_folder()
    return "digits"


def write_image(path: Path, size: tuple[int, int], mode: str, color) -> Path:
    """An image of ``size`` (width, height) in ``mode`` filled with ``color`` plus a little noise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(str(path).encode()))
    rgb = np.clip(np.array(color)[None, None] + rng.integers(-20, 20, (size[1], size[0], 3)), 0, 255)
    Image.fromarray(rgb.astype(np.uint8)).convert(mode).save(path)
    return path


@pytest.fixture
def color_folder(tmp_path) -> Path:
    """An image folder of 3 colour classes, in mixed sizes, modes and formats: easy to learn."""
    root = tmp_path / "colors"
    colors = {"blue": (20, 40, 220), "green": (30, 200, 40), "red": (220, 30, 30)}
    shapes = [
        ((16, 20), "RGB", "png"),
        ((50, 30), "RGBA", "png"),
        ((40, 40), "P", "png"),
        ((33, 47), "RGB", "jpg"),
    ]
    for split, count in (("train", 12), ("val", 4)):
        for name, color in colors.items():
            for index in range(count):
                size, mode, suffix = shapes[index % len(shapes)]
                write_image(root / split / name / f"{index}.{suffix}", size, mode, color)
    return root


@pytest.fixture(scope="session")
def command_env() -> dict[str, str]:
    """The environment for running the trainer in another process from the repository root."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="session")
def run_cli(command_env):
    """Run ``python -m incdsl.train.cli ARGS`` in a fresh process; its CompletedProcess."""

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "incdsl.train.cli", *args]
        return subprocess.run(
            command, cwd=ROOT, env=command_env, capture_output=True, text=True, timeout=timeout
        )

    return run
