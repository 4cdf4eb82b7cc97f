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
import math
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from incdsl import render
from incdsl.errors import IncdslError, escape
from incdsl.files import JSONInputError, loads_bounded, write_atomic
from incdsl.render import Column, Document, Table
from incdsl.rundir import CHECKPOINT, FORMAT, METRICS, RUN_INFO  # noqa: F401 (runs.FORMAT: what is read)


class RunError(IncdslError):
    """A run directory that cannot be read."""


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
        scored = [r for r in self.metrics if _finite(r.get("val_top1"))]
        return max(scored, key=lambda r: r["val_top1"], default=None)

    @property
    def train_seconds(self) -> float | None:
        """Time spent in training steps (images / throughput, summed over epochs; not evaluation)."""
        images = self.info.get("images_per_epoch")
        if not images or not self.metrics:
            return None
        speeds = [r.get("img_per_s") for r in self.metrics]
        seconds = sum(images / v for v in speeds if _finite(v) and v > 0)
        return seconds if math.isfinite(seconds) else None  # a stranger's figures can overflow

    @property
    def counts(self) -> tuple[int, int] | None:
        """Inference params and multiply-adds of the trained network, when it came from a spec."""
        text = self.info.get("spec_text")
        if not text:
            return None
        return _counts(text, self.info.get("num_classes"))


# A run directory is a stranger's file: read with bounds (the trainer writes a few hundred bytes an
# epoch and a run.json of its spec, at most 256 KiB), and every field checked before it is used.
MAX_METRICS_BYTES = 64 * 1024 * 1024  # metrics.jsonl: 100,000 epochs of the trainer's records fit
MAX_LINE_BYTES = 64 * 1024  # one line of metrics.jsonl
MAX_RECORDS = 100_000  # epochs in metrics.jsonl
MAX_INFO_BYTES = 4 * 1024 * 1024  # run.json (its spec_text, escaped)
MAX_NESTING = 32  # [ and { inside one another, in either file (the trainer's are 1 deep)
MAX_EPOCH = 10**9

_NUMBER_FIELDS = ("train_loss", "val_loss", "val_top1", "val_top5", "lr", "img_per_s")
_INFO_TEXT = ("format", "target", "network", "recipe", "data", "spec_text", "started")
_INFO_COUNTS = ("epochs", "batch_size", "seed", "num_classes", "images_per_epoch")


def read_run(path: str | Path) -> Run:
    """The run in directory ``path``; a RunError naming the file, line and field when its
    ``metrics.jsonl`` or ``run.json`` is larger than the limits above, is not JSON, or holds a value
    of the wrong kind."""
    path = Path(path)
    metrics_file = path / METRICS
    if not metrics_file.is_file():
        raise RunError(f"{path} is not a run directory: it has no {METRICS}")
    return Run(path, _info(path), tuple(read_metrics(metrics_file)))


def read_metrics(file: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``, read line by line within the limits, each checked."""
    records = []
    try:
        with open(file, "rb") as stream:
            _check_size(file, os.fstat(stream.fileno()).st_size, MAX_METRICS_BYTES, "metrics")
            total = 0
            for number, raw in enumerate(iter(lambda: stream.readline(MAX_LINE_BYTES + 1), b""), 1):
                total += len(raw)
                _check_size(file, total, MAX_METRICS_BYTES, "metrics")  # a file that grows as it is read
                if len(raw) > MAX_LINE_BYTES:
                    raise RunError(f"{file}:{number}: the line is longer than {MAX_LINE_BYTES // 1024} KiB")
                if not raw.strip():
                    continue
                if len(records) == MAX_RECORDS:
                    raise RunError(f"{file}:{number}: more than {MAX_RECORDS:,} epochs, the limit of a run")
                records.append(_record(_json(raw, f"{file}:{number}"), f"{file}:{number}"))
    except OSError as error:
        raise RunError(f"cannot read {file}: {error.strerror or error}") from None
    return records


def _check_size(file: Path, size: int, limit: int, what: str) -> None:
    if size > limit:
        raise RunError(
            f"cannot read {file}: it is larger than {limit // 1024 // 1024} MiB, the limit for a run's {what}"
        )


def _json(raw: bytes, where: str) -> Any:
    """One JSON value, refused when it nests deeper than MAX_NESTING (before the parser recurses)."""
    try:
        return loads_bounded(raw, MAX_NESTING)
    except JSONInputError as error:
        raise RunError(f"{where}: " + _JSON_ERRORS[error.problem].format(error.detail)) from None


_JSON_ERRORS = {
    "encoding": "not UTF-8 text (byte {})",
    "depth": f"JSON nested more than {MAX_NESTING} deep",
    "recursion": "JSON nested too deep",
    "syntax": "not JSON ({})",
}


def _record(value: Any, where: str) -> dict[str, Any]:
    """One epoch's record: an object with an ``epoch`` count and ``val_top1``; the other numbers
    the trainer writes, when present, are numbers (NaN and infinities are kept, and shown as such)."""
    if not isinstance(value, dict):
        raise RunError(f"{where}: an epoch's record is a JSON object, not {_kind(value)}")
    epoch = value.get("epoch")
    if "epoch" not in value:
        raise RunError(f"{where}: the record has no 'epoch' field")
    if not _is_int(epoch) or not 0 <= epoch <= MAX_EPOCH:
        raise RunError(f"{where}: field 'epoch' is {_shown(epoch)}, not an epoch count (0 to {MAX_EPOCH:,})")
    if "val_top1" not in value:
        raise RunError(f"{where}: the record has no 'val_top1' field")
    record = dict(value)
    for key in _NUMBER_FIELDS:
        if key in value and value[key] is not None:
            record[key] = _number(value[key], where, key)
    return record


def _number(value: Any, where: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RunError(f"{where}: field '{key}' is {_shown(value)}, not a number")
    try:
        return float(value)
    except OverflowError:
        raise RunError(f"{where}: field '{key}' is a number too large for a float") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _shown(value: Any) -> str:
    """A value in an error message: short, its kind when it is not a number."""
    if isinstance(value, str):
        return f"the string {json.dumps(value[:40])}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value) if len(str(value)) <= 40 else "a number of more than 40 digits"
    return _kind(value)


def _info(path: Path) -> dict[str, Any]:
    info_file = path / RUN_INFO
    if info_file.is_file():
        try:
            with open(info_file, "rb") as stream:
                data = stream.read(MAX_INFO_BYTES + 1)
        except OSError as error:
            raise RunError(f"cannot read {info_file}: {error.strerror or error}") from None
        _check_size(info_file, len(data), MAX_INFO_BYTES, "description")
        return _checked_info(_json(data, str(info_file)), str(info_file))
    if (path / CHECKPOINT).is_file():
        return _checked_info(_info_from_checkpoint(path / CHECKPOINT), str(path / CHECKPOINT))
    return {}


def _checked_info(value: Any, where: str) -> dict[str, Any]:
    """``run.json``: an object whose known fields are text, counts and a learning rate (or null)."""
    if not isinstance(value, dict):
        raise RunError(f"{where}: a run's description is a JSON object, not {_kind(value)}")
    for key in _INFO_TEXT:
        if value.get(key) is not None and not isinstance(value[key], str):
            raise RunError(f"{where}: field '{key}' is {_shown(value[key])}, not text")
    for key in _INFO_COUNTS:
        count = value.get(key)
        if count is not None and (not _is_int(count) or not 0 <= count <= 2**63):
            raise RunError(f"{where}: field '{key}' is {_shown(count)}, not a count")
    if value.get("lr") is not None:
        _number(value["lr"], where, "lr")
    return value


def _info_from_checkpoint(checkpoint: Path) -> dict[str, Any]:
    """What ``run.json`` would say, from a checkpoint written before it existed (needs torch)."""
    from incdsl.train.checkpoint import load_checkpoint

    state = load_checkpoint(checkpoint)
    config = state.get("config")
    config = config if isinstance(config, dict) else {}
    classes = state.get("classes")
    return {
        "target": state.get("target"),
        "recipe": state.get("recipe"),
        "data": config.get("data"),
        "epochs": config.get("epochs"),
        "num_classes": len(classes) if isinstance(classes, (list, tuple)) and classes else None,
        "spec_text": state.get("spec_text"),
    }


@cache
def _counts(spec_text: str, num_classes: int | None) -> tuple[int, int] | None:
    """IR glue: params and MACs of a spec, with its classes as trained (the trainer rebuilds the
    classifier for the data's number of classes)."""
    import incdsl

    try:
        stats = incdsl.stats(incdsl.from_text(spec_text, "<run>", classes=num_classes or None))
    except IncdslError:
        return None
    return stats.params, stats.macs


# renderings ---------------------------------------------------------------------------------

HEADERS = ["run", "spec", "recipe", "params", "ops", "epochs", "best top-1", "top-5", "train time"]


def labels(runs: list[Run]) -> list[str]:
    """A legend label per run, ``spec · recipe``, with the directory where two would read the same
    (control characters escaped: the names come from the run's files)."""
    plain = [f"{r.spec} · {r.recipe}" for r in runs]
    return [escape(f"{p} ({r.path.name})" if plain.count(p) > 1 else p) for p, r in zip(plain, runs)]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _json_safe(value: Any) -> Any:
    """A value for ``--format json``: NaN and infinities (which JSON cannot write) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def cells(run: Run) -> list[str]:
    from incdsl.analysis.report import kilo, mega

    counts, best = run.counts, run.best
    planned = run.info.get("epochs")
    epochs = (
        f"{len(run.metrics)}/{planned}" if planned and planned != len(run.metrics) else str(len(run.metrics))
    )
    return [escape(cell) for cell in [
        str(run.path), run.spec, run.recipe,
        kilo(counts[0]) if counts else "—", mega(counts[1]) if counts else "—", epochs,
        f"{_percent(best['val_top1'])} (epoch {best['epoch']})" if best else "—",
        _percent(best.get("val_top5")) if best else "—",
        _duration(run.train_seconds),
    ]]  # fmt: skip


def _percent(value: Any) -> str:
    return f"{value:.2%}" if isinstance(value, float) else "—"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {seconds:02d}s"


# How readily a column leaves a narrow terminal (0: never; larger: sooner), by header.
PRIORITIES = {"spec": 1, "recipe": 3, "params": 2, "ops": 2, "epochs": 4, "top-5": 5, "train time": 3}
FIGURES = ("params", "ops", "epochs")  # right-aligned; the others (best top-1 too) left


def table(runs: list[Run]) -> Table:
    """The table of ``incdsl runs``: one row per run directory (its path whole, however long)."""
    columns = tuple(Column(h, "figure" if h in FIGURES else "name", PRIORITIES.get(h, 0)) for h in HEADERS)
    return Table("runs", columns, tuple(tuple(cells(run)) for run in runs))


def document(runs: list[Run]) -> Document:
    """What ``incdsl runs`` prints, in every format."""
    return Document((table(runs),), [to_dict(run) for run in runs])


def to_markdown(runs: list[Run]) -> str:
    return render.to_markdown(table(runs), heading=False)


def to_dict(run: Run) -> dict[str, Any]:
    counts, best = run.counts, run.best
    return _json_safe(
        {
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
    )


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
        name = name.replace("$", r"\$")  # text, not matplotlib's mathtext
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
