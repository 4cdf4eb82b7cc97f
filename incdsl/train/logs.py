"""What a run reports: ``metrics.jsonl`` (a JSON object per epoch), TensorBoard if installed, the console."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from incdsl.files import write_atomic
from incdsl.rundir import METRICS


class MetricsLog:
    """Appends one line per epoch to ``RUN_DIR/metrics.jsonl``, starting from ``history`` (a resume's)."""

    def __init__(self, run_dir: Path, history: list[dict[str, Any]]):
        self.path = run_dir / METRICS
        rewrite_lines(self.path, [json.dumps(record) for record in history])
        self.board = tensorboard_writer(run_dir)

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as file:
            file.write(json.dumps(record, allow_nan=False) + "\n")  # the loop stops before a NaN
        if self.board:
            for key, value in record.items():
                if key != "epoch" and isinstance(value, int | float):  # not per-class lists
                    self.board.add_scalar(key, value, record["epoch"])
            self.board.flush()

    def close(self) -> None:
        if self.board:
            self.board.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records in ``RUN_DIR/metrics.jsonl``."""
    return [json.loads(line) for line in (run_dir / METRICS).read_text().splitlines() if line.strip()]


def rewrite_lines(path: Path, lines: list[str]) -> None:
    write_atomic(path, "".join(line + "\n" for line in lines))


def tensorboard_writer(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def progress(batches: Iterable, epoch: int, epochs: int, show: bool) -> tqdm:
    """A progress bar over an epoch's batches; silent unless ``show`` and stderr is a terminal."""
    return tqdm(batches, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=False, disable=not show or None)


def summary(record: dict[str, Any], epochs: int) -> str:
    """One console line for an epoch's record."""
    return (
        f"epoch {record['epoch']}/{epochs}  train_loss {record['train_loss']:.4f}  "
        f"val_loss {record['val_loss']:.4f}  val_top1 {record['val_top1']:.4f}  "
        f"val_top5 {record['val_top5']:.4f}  lr {record['lr']:.3g}  {record['img_per_s']:.0f} img/s"
    )


def say(message: str, show: bool) -> None:
    if show:
        print(message, file=sys.stdout, flush=True)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)
