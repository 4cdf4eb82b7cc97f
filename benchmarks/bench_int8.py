"""int8 against fp32: top-1 and time per batch of ``incdsl quantize``'s build, side by side.

For each model (mini_googlenet trained on digits, and one trained on an image folder of coloured shapes
that this script draws), the checkpoint is quantized with ``incdsl quantize`` (calibrated on its
training images) and both are scored by ``incdsl eval`` on the validation split. Then, at one thread,
the variants are timed in interleaved rounds on the same batch (median ms per batch):

- torch fp32:      the checkpoint's model, eager (the plain build)
- ORT fp32:        its ONNX export in onnxruntime, every graph optimization on
- ORT int8:        the int8 build of ``incdsl quantize`` (what incdsl ships)
- torch x86 int8:  PyTorch's own x86 quantization (FX graph mode, the "x86" engine: oneDNN/FBGEMM),
                   calibrated on the same images, the alternative weighed in the README's "int8"

    python benchmarks/bench_int8.py                          # trains both models (minutes)
    python benchmarks/bench_int8.py --digits-run runs/digits --shapes-run runs/shapes --work /tmp/b
    python benchmarks/bench_int8.py --speed googlenet_tv --batch 8    # time only: untrained weights

With ``--speed SPEC...`` the specs' untrained models (``torch.manual_seed(0)``) are timed alone, each
calibrated on 64 random inputs: speed only, for networks larger than the trained ones (no top-1).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "cross")


def write_shapes(root: Path, train: int = 150, val: int = 50, size: int = 40, seed: int = 0) -> Path:
    """An image folder of four shapes (circle, square, triangle, cross), each of a random colour, size
    and place on a random background with noise: ``root/train/<shape>/*.png`` and ``root/val/...``."""
    rng = random.Random(seed)
    for split, count in (("train", train), ("val", val)):
        for label in SHAPES:
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                draw_shape(label, size, rng).save(folder / f"{index:04d}.png")
    return root


def draw_shape(label: str, size: int, rng: random.Random) -> Image.Image:
    background = tuple(rng.randrange(256) for _ in range(3))
    colour = tuple((c + rng.randrange(80, 176)) % 256 for c in background)  # never the background's
    image = Image.new("RGB", (size, size), background)
    pen = ImageDraw.Draw(image)
    extent = rng.randrange(size // 3, size * 3 // 4)
    x0, y0 = rng.randrange(0, size - extent), rng.randrange(0, size - extent)
    box = (x0, y0, x0 + extent, y0 + extent)
    if label == "circle":
        pen.ellipse(box, fill=colour)
    elif label == "square":
        pen.rectangle(box, fill=colour)
    elif label == "triangle":
        pen.polygon([(x0, y0 + extent), (x0 + extent, y0 + extent), (x0 + extent // 2, y0)], fill=colour)
    else:
        bar = max(2, extent // 4)
        middle = extent // 2 - bar // 2
        pen.rectangle((x0 + middle, y0, x0 + middle + bar, y0 + extent), fill=colour)
        pen.rectangle((x0, y0 + middle, x0 + extent, y0 + middle + bar), fill=colour)
    noise = np.random.default_rng(rng.randrange(2**32)).integers(-12, 13, (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.int64) + noise, 0, 255).astype(np.uint8))


def run_cli(*args: str) -> None:
    from incdsl.tools.cli import main

    code = main(list(args))
    if code:
        sys.exit(f"incdsl {' '.join(args)} failed ({code})")


def trained(run: Path | None, target: str, data: str, epochs: int, work: Path, name: str) -> Path:
    """The best checkpoint of ``run``, or of a run trained here now."""
    if run is not None:
        return run / "best.pt"
    out = work / f"run-{name}"
    if not (out / "best.pt").is_file():
        run_cli("train", target, "--data", data, "--out", str(out), "--epochs", str(epochs))
    return out / "best.pt"


def scored(target: str, model: Path, data: str) -> float:
    """top-1 of a checkpoint or an int8 build, as ``incdsl eval`` computes it."""
    from incdsl.train.evaluate import evaluate_checkpoints

    return evaluate_checkpoints(target, [model], data).result.top1


def torch_x86_int8(module, batches):
    """PyTorch's x86 int8 (FX graph mode): deprecated, and its PT2E successor is no longer in torch."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(module, get_default_qconfig_mapping("x86"), (batches[0],))
        with torch.no_grad():
            for batch in batches:
                prepared(batch)
        return convert_fx(prepared)


@torch.no_grad()
def torch_top1(module, target: str, checkpoint: Path, data: str) -> float:
    """top-1 of a torch module on the checkpoint's validation split (1 crop, as eval frames it)."""
    from torch.utils.data import DataLoader

    from incdsl.train.augment import to_input
    from incdsl.train.checkpoint import load_checkpoint
    from incdsl.train.data import collate, open_eval_split
    from incdsl.train.evaluate import trained_augment
    from incdsl.train.views import eval_view

    state = load_checkpoint(checkpoint)
    shape = tuple(state_input(target, state))
    view = eval_view(1, shape[1:], trained_augment(state).eval_crop)
    split = open_eval_split(data, shape, view, state["classes"])
    hits = total = 0
    for views, labels, *_ in DataLoader(split.dataset, 64, collate_fn=collate):
        hits += int((module(to_input(views)).argmax(1) == labels).sum())
        total += len(labels)
    return hits / total


def state_input(target: str, state: dict):
    from incdsl.train.models import load_model

    return load_model(target, num_classes=len(state["classes"])).input_shape


def timings(variants: dict, rounds: int, min_time: float) -> dict[str, list[float]]:
    """ms per call of each variant, measured in interleaved rounds after a warm-up."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    with torch.no_grad():
        for call in variants.values():
            call()
        for _ in range(rounds):
            for name, call in variants.items():
                count, started = 0, time.perf_counter()
                while (elapsed := time.perf_counter() - started) < min_time or count < 2:
                    call()
                    count += 1
                times[name].append(elapsed / count * 1e3)
    return times


def calls(module, x86, fp32_session, int8_session, example: torch.Tensor) -> dict:
    """The four variants, each a call on the same batch."""
    array = example.numpy()
    return {
        "torch fp32": lambda: module(example),
        "ORT fp32": lambda: fp32_session.run(None, {"x": array}),
        "ORT int8": lambda: int8_session.run(None, {"x": array}),
        "torch x86 int8": lambda: x86(example),
    }


def measure(label: str, target: str, checkpoint: Path, data: str, work: Path, args) -> list[str]:
    from incdsl.backends.onnx import export_model
    from incdsl.train.predict import trained_model
    from incdsl.train.quantize import CALIBRATION_IMAGES, calibration_batches, open_session

    name = label.split()[-1]
    int8 = work / f"{name}.int8.onnx"
    run_cli("quantize", target, "--checkpoint", str(checkpoint), "--data", data, "-o", str(int8))
    bundle, state = trained_model(target, checkpoint, torch.device("cpu"))
    fp32_onnx = work / f"{name}.fp32.onnx"
    export_model(bundle.module, list(bundle.input_shape), fp32_onnx)
    batches, _ = calibration_batches(data, bundle.input_shape, state, CALIBRATION_IMAGES, False, 0.0)
    x86 = torch_x86_int8(bundle.module, batches)
    top1 = {
        "torch fp32": scored(target, checkpoint, data),
        "ORT int8": scored(target, int8, data),
        "torch x86 int8": torch_top1(x86, target, checkpoint, data),
    }
    lines = []
    for batch in args.batch:
        example = torch.randn(batch, *bundle.input_shape, generator=torch.Generator().manual_seed(0))
        variants = calls(bundle.module, x86, open_session(fp32_onnx), open_session(int8), example)
        times = timings(variants, args.rounds, args.min_time)
        lines += table(label, batch, times, top1)
    drop = (top1["torch fp32"] - top1["ORT int8"]) * 100
    lines.append(f"  top-1 fp32 - int8: {drop:+.2f} points")
    print(lines[-1], flush=True)
    return lines


def measure_speed(spec: str, work: Path, args) -> None:
    """The four variants' times on ``spec``'s untrained model, calibrated on random inputs."""
    from incdsl.train.models import load_model
    from incdsl.train.quantize import _quantize_onnx, open_session

    torch.manual_seed(0)
    bundle = load_model(spec)
    bundle.module.eval()
    batches = [torch.randn(16, *bundle.input_shape) for _ in range(4)]
    folder = work / f"speed-{spec}"
    folder.mkdir(parents=True, exist_ok=True)
    int8 = _quantize_onnx(bundle, folder, batches)  # writes fp32.onnx beside it
    x86 = torch_x86_int8(bundle.module, batches)
    for batch in args.batch:
        example = torch.randn(batch, *bundle.input_shape, generator=torch.Generator().manual_seed(0))
        sessions = open_session(folder / "fp32.onnx"), open_session(int8)
        times = timings(calls(bundle.module, x86, *sessions, example), args.rounds, args.min_time)
        table(f"{spec} (untrained, speed only)", batch, times, {})


def table(label: str, batch: int, times: dict[str, list[float]], top1: dict[str, float]) -> list[str]:
    """The variants' medians, spreads, ratios and top-1, printed and returned."""
    base = statistics.median(times["torch fp32"])
    lines = [f"\n{label}, batch {batch}, 1 thread, load average {load()}"]
    lines.append(f"  {'variant':<15} {'ms/batch':>9} {'spread':>15} {'x torch fp32':>13} {'top-1':>7}")
    for name, values in times.items():
        median = statistics.median(values)
        spread = f"{min(values):.1f}-{max(values):.1f}"
        figure = f"{top1[name]:.4f}" if name in top1 else "-"
        lines.append(f"  {name:<15} {median:>9.2f} {spread:>15} {base / median:>12.2f}x {figure:>7}")
    int8_ratio = statistics.median(times["ORT fp32"]) / statistics.median(times["ORT int8"])
    lines.append(f"  ORT int8 / ORT fp32 speed-up {int8_ratio:.2f}x")
    print("\n".join(lines), flush=True)
    return lines


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits-run", type=Path, help="a run of mini_googlenet on digits (else trained)")
    parser.add_argument("--shapes-run", type=Path, help="a run of mini_googlenet on --shapes (else trained)")
    parser.add_argument("--shapes", type=Path, help="the shapes folder (else drawn under --work)")
    parser.add_argument("--work", type=Path, default=Path("bench-int8"), help="where to write (bench-int8)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of the runs trained here (10)")
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 64], help="batch sizes timed (8 64)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (5)")
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds per measurement (0.5)")
    parser.add_argument("--only", choices=("digits", "shapes"), help="one of the two models")
    parser.add_argument("--speed", nargs="+", default=[], metavar="SPEC", help="time these specs alone")
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, load average {load()}", flush=True)
    for spec in args.speed:
        measure_speed(spec, args.work, args)
    if args.speed:
        return
    if args.only != "shapes":
        checkpoint = trained(args.digits_run, "mini_googlenet", "digits", args.epochs, args.work, "digits")
        measure("mini_googlenet on digits", "mini_googlenet", checkpoint, "digits", args.work, args)
    if args.only != "digits":
        shapes = args.shapes or args.work / "shapes"
        if not (shapes / "train").is_dir():
            write_shapes(shapes)
        checkpoint = trained(args.shapes_run, "mini_googlenet", str(shapes), args.epochs, args.work, "shapes")
        measure("mini_googlenet on shapes", "mini_googlenet", checkpoint, str(shapes), args.work, args)


if __name__ == "__main__":
    main()
