"""Training runs as a user compares them: a table of runs and their curves, read from run directories.

A run directory holds ``metrics.jsonl`` (one JSON object per epoch, see :mod:`incdsl.train.logs`) and
``run.json``, written by the trainer when the run starts::

    {"format": "incdsl-run/1", "target": "mini_googlenet", "network": "MiniGoogLeNet",
     "recipe": "fast", "data": "digits", "epochs": 12, "batch_size": 64, "lr": 0.002, "seed": 0,
     "num_classes": 10, "images_per_epoch": 1408, "spec_text": "..." | null, "started": "2025-...Z"}

A run from before ``run.json`` existed is described from its ``checkpoint.pt`` instead (which needs
torch). Reading runs never imports torch otherwise, so ``incdsl runs`` starts fast.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from .errors import IncdslError
from .files import write_atomic

RUN_INFO, METRICS, CHECKPOINT = "run.json", "metrics.jsonl", "checkpoint.pt"
FORMAT = "incdsl-run/1"


class RunError(IncdslError):
    """A run directory that cannot be read."""


# writing (called by the trainer) -----------------------------------------------------------------


def write_run_info(config, bundle, images_per_epoch: int, settings: dict[str, Any] | None = None) -> None:
    """Write ``run.json`` into ``config.out``: what was trained, how, on what (see the module doc);
    ``settings``, every resolved training setting (incdsl train --print-config), when given."""
    info = {
        "format": FORMAT,
        "target": config.target,
        "network": bundle.name,
        "recipe": config.recipe,
        "data": config.data,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "seed": config.seed,
        "num_classes": bundle.num_classes,
        "images_per_epoch": images_per_epoch,
        "spec_text": bundle.spec_text,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if settings is not None:
        info["settings"] = settings
    write_atomic(Path(config.out) / RUN_INFO, json.dumps(info, indent=2) + "\n")


# reading ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One run directory, read."""

    path: Path
    info: dict[str, Any]
    metrics: tuple[dict[str, Any], ...]

    @property
    def spec(self) -> str:
        """The target's name: a shipped spec's, or the file's stem."""
        target = str(self.info.get("target") or "?")
        return Path(target).stem if target.endswith((".inc", ".py")) else target

    @property
    def recipe(self) -> str:
        return str(self.info.get("recipe") or "?")

    @property
    def best(self) -> dict[str, Any] | None:
        """The epoch with the best validation top-1 (the first of equals, as best.pt keeps)."""
        return max(self.metrics, key=lambda r: r["val_top1"], default=None)

    @property
    def train_seconds(self) -> float | None:
        """Time spent in training steps (images / throughput, summed over epochs; not evaluation)."""
        images = self.info.get("images_per_epoch")
        if not images or not self.metrics:
            return None
        return sum(images / r["img_per_s"] for r in self.metrics if r.get("img_per_s"))

    @property
    def counts(self) -> tuple[int, int] | None:
        """Inference params and multiply-adds of the trained network, when it came from a spec."""
        text = self.info.get("spec_text")
        if not text:
            return None
        return _counts(text, self.info.get("num_classes"))


def read_run(path: str | Path) -> Run:
    """The run in directory ``path``."""
    path = Path(path)
    metrics_file = path / METRICS
    if not metrics_file.is_file():
        raise RunError(f"{path} is not a run directory: it has no {METRICS}")
    try:
        lines = metrics_file.read_text().splitlines()
        metrics = tuple(json.loads(line) for line in lines if line.strip())
    except (OSError, ValueError) as error:
        raise RunError(f"cannot read {metrics_file}: {error}") from None
    return Run(path, _info(path), metrics)


def _info(path: Path) -> dict[str, Any]:
    info_file = path / RUN_INFO
    if info_file.is_file():
        try:
            return json.loads(info_file.read_text())
        except (OSError, ValueError) as error:
            raise RunError(f"cannot read {info_file}: {error}") from None
    if (path / CHECKPOINT).is_file():
        return _info_from_checkpoint(path / CHECKPOINT)
    return {}


def _info_from_checkpoint(checkpoint: Path) -> dict[str, Any]:
    """What ``run.json`` would say, from a checkpoint written before it existed (needs torch)."""
    from .train.checkpoint import load_checkpoint

    state = load_checkpoint(checkpoint)
    config = state.get("config") or {}
    return {
        "target": state.get("target"),
        "recipe": state.get("recipe"),
        "data": config.get("data"),
        "epochs": config.get("epochs"),
        "num_classes": len(state.get("classes", ())) or None,
        "spec_text": state.get("spec_text"),
    }


@cache
def _counts(spec_text: str, num_classes: int | None) -> tuple[int, int] | None:
    """IR glue: params and MACs of a spec, with its classes as trained (the trainer rebuilds the
    classifier for the data's number of classes)."""
    from dataclasses import replace

    import incdsl
    from incdsl.formatter import format_spec

    try:
        spec = incdsl.parse(spec_text, "<run>")
        if num_classes and spec.classes != num_classes:
            spec_text = format_spec(replace(spec, classes=num_classes))
        stats = incdsl.stats(incdsl.from_text(spec_text, "<run>"))
    except IncdslError:
        return None
    return stats.params, stats.macs


# renderings ---------------------------------------------------------------------------------

HEADERS = ["run", "spec", "recipe", "params", "ops", "epochs", "best top-1", "top-5", "train time"]


def labels(runs: list[Run]) -> list[str]:
    """A legend label per run, ``spec · recipe``, with the directory where two would read the same."""
    plain = [f"{r.spec} · {r.recipe}" for r in runs]
    return [f"{p} ({r.path.name})" if plain.count(p) > 1 else p for p, r in zip(plain, runs)]


def cells(run: Run) -> list[str]:
    from .report import kilo, mega

    counts, best = run.counts, run.best
    planned = run.info.get("epochs")
    epochs = (
        f"{len(run.metrics)}/{planned}" if planned and planned != len(run.metrics) else str(len(run.metrics))
    )
    return [
        str(run.path), run.spec, run.recipe,
        kilo(counts[0]) if counts else "—", mega(counts[1]) if counts else "—", epochs,
        f"{best['val_top1']:.2%} (epoch {best['epoch']})" if best else "—",
        f"{best['val_top5']:.2%}" if best else "—",
        _duration(run.train_seconds),
    ]  # fmt: skip


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {seconds:02d}s"


def to_rich(runs: list[Run]):
    from rich.table import Table

    table = Table(title="runs", title_justify="left")
    for header in HEADERS:
        table.add_column(header, justify="right" if header in ("params", "ops", "epochs") else "left")
    for run in runs:
        table.add_row(*cells(run))
    return table


def to_markdown(runs: list[Run]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(cells(run)) + " |" for run in runs]
    return "\n".join(lines) + "\n"


def to_dict(run: Run) -> dict[str, Any]:
    counts, best = run.counts, run.best
    return {
        "run": str(run.path),
        "spec": run.spec,
        "network": run.info.get("network"),
        "recipe": run.recipe,
        "params": counts[0] if counts else None,
        "macs": counts[1] if counts else None,
        "epochs": len(run.metrics),
        "best": best,
        "train_seconds": run.train_seconds,
    }


# curves --------------------------------------------------------------------------------------

PANELS = (
    ("loss", ("train_loss", "val_loss")),
    ("validation top-1", ("val_top1",)),
    ("validation top-5", ("val_top5",)),
    ("learning rate", ("lr",)),
)


def plot(runs: list[Run], output: str | Path, title: str | None = None) -> None:
    """Draw loss, top-1, top-5 and learning rate against epochs for ``runs`` into ``output`` (its
    suffix says the format: .png, .svg, .pdf). Needs matplotlib (``pip install incdsl[plot]``)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise IncdslError(
            "incdsl plot needs matplotlib", hint="pip install 'incdsl[plot]' (or pip install matplotlib)"
        ) from None
    figure = Figure(figsize=(11, 7.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 2, sharex=True).flat
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for ax, (name, keys) in zip(axes, PANELS):
        for run, label, color in zip(runs, labels(runs), colors):
            _curves(ax, run, keys, label, color)
        ax.set_title(name)
        ax.grid(alpha=0.3)
        if name.startswith("validation"):
            ax.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    for ax in list(figure.axes)[2:]:
        ax.set_xlabel("epoch")
    figure.axes[0].legend(fontsize="small")
    figure.suptitle(title or "training runs")
    _save(figure, Path(output))


def _curves(ax, run: Run, keys, label: str, color: str) -> None:
    epochs = [r["epoch"] for r in run.metrics]
    for key in keys:
        dashed = key.startswith("train")
        name = f"{label} ({'train' if dashed else 'val'})" if len(keys) > 1 else label
        values = [r.get(key) for r in run.metrics]
        ax.plot(epochs, values, color=color, linestyle="--" if dashed else "-", marker=".", label=name)


def _save(figure, output: Path) -> None:
    import io

    formats = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
    if output.suffix.lower() not in formats:
        raise IncdslError(f"cannot draw into {output}: write a .png, .svg or .pdf file")
    buffer = io.BytesIO()
    metadata = {"Software": None} if output.suffix.lower() == ".png" else {"Date": None}
    figure.savefig(buffer, format=formats[output.suffix.lower()], dpi=110, metadata=metadata)
    write_atomic(output, buffer.getvalue())
