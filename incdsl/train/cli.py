"""``incdsl train``, ``eval`` and ``predict``: argument parsing and printing over incdsl.train's functions.

``incdsl.tools.cli`` adds the sub-commands with ``add_train_parser``, ``add_eval_parser`` and
``add_predict_parser``; each sets ``func``, which takes the parsed arguments and returns an exit code.
Importing this module does not import torch. ``python -m incdsl.train.cli train ...`` runs the same
commands without the compiler's CLI.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from pathlib import Path

from incdsl import render, threads
from incdsl.errors import IncdslError
from incdsl.train.config import CHOICES, NUMBER_RANGES, SETTINGS, option_type

DATA_HELP = "an image folder (DIR/train/<class>/*.png, DIR/val/<class>/...), 'digits', or 'fake' (fake:N)"
SKIP_HELP = "skip images that cannot be decoded (and count them) instead of stopping at the first"


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """The ``train`` sub-command."""
    parser = subparsers.add_parser(
        "train",
        help="train a network with a paper's recipe",
        description="Train a network (shipped spec name, .inc file or generated model.py) on images. "
        "Every option can also be set in a TOML/YAML --config file; the command line wins.",
    )
    parser.add_argument("target", nargs="?", metavar="SPEC", help="shipped spec name, .inc file or model.py")
    parser.add_argument("--data", help=DATA_HELP)
    parser.add_argument(
        "--out", metavar="RUN_DIR", help="run directory: metrics.jsonl, checkpoint.pt, best.pt"
    )
    parser.add_argument("--config", metavar="FILE", help="TOML (or YAML) file of options")
    parser.add_argument("--recipe", help="googlenet, bvlc, inception-v3 or fast (default)")
    parser.add_argument(
        "--epochs", type=option_type("epochs"), help="total number of epochs, also when resuming"
    )
    parser.add_argument(
        "--batch-size",
        type=option_type("batch_size"),
        help="global batch size (split across torchrun processes)",
    )
    parser.add_argument("--lr", type=option_type("lr"), help="base learning rate")
    parser.add_argument(
        "--resume", action=argparse.BooleanOptionalAction, help="continue RUN_DIR/checkpoint.pt"
    )
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, help="mixed precision (bf16 on CPU)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, help="channels-last layout")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, help="torch.compile the model")
    parser.add_argument(
        "--workers", type=option_type("workers"), help="data loader processes (default: 0 on CPU)"
    )
    parser.add_argument("--seed", type=option_type("seed"), help="random seed (default 0)")
    parser.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--skip-unreadable", action=argparse.BooleanOptionalAction, help=SKIP_HELP)
    parser.add_argument(
        "--val-split",
        type=option_type("val_split"),
        metavar="F",
        help="for a folder without val/: hold out this fraction of each class's training images",
    )
    parser.add_argument(
        "--sync-bn",
        action=argparse.BooleanOptionalAction,
        help="under torchrun on GPUs: BatchNorm statistics over the global batch (SyncBatchNorm)",
    )
    parser.add_argument(
        "--balanced",
        action=argparse.BooleanOptionalAction,
        help="for imbalanced data: draw every class equally often (images drawn with replacement)",
    )
    parser.add_argument(
        "--log-every",
        type=option_type("log_every"),
        metavar="N",
        help="without a terminal, a progress line every N steps (default 100; 0: none)",
    )
    parser.add_argument(
        "--input-size",
        type=option_type("input_size"),
        metavar="N",
        help="train the spec at N x N inputs (its IR built with the input replaced; the budget follows)",
    )
    threads.add_option(parser, type=option_type("threads"))
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved settings as a --config file that reproduces the run, and stop",
    )
    settings = parser.add_argument_group(
        "recipe settings", "each defaults to the recipe's; --print-config shows them all"
    )
    for key, text in SETTINGS.items():
        flag = "--" + key.replace("_", "-")
        if key in CHOICES:
            settings.add_argument(flag, choices=CHOICES[key], help=text)
        elif key in NUMBER_RANGES and key in ("crop_area", "crop_aspect", "betas"):
            names = ("B1", "B2") if key == "betas" else ("LOW", "HIGH")
            settings.add_argument(flag, type=option_type(key), nargs=2, metavar=names, help=text)
        elif key in NUMBER_RANGES:
            settings.add_argument(flag, type=option_type(key), metavar="X", help=text)
        else:
            settings.add_argument(flag, action=argparse.BooleanOptionalAction, help=text)
    parser.set_defaults(func=run_train)
    return parser


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    """The ``eval`` sub-command."""
    parser = subparsers.add_parser(
        "eval",
        help="top-1/top-5 of checkpoints over 1, 10 or 144 crops",
        description="Evaluate a checkpoint (or an ensemble: softmax outputs averaged) on a validation split.",
    )
    parser.add_argument("target", metavar="SPEC", help="the spec or model.py the checkpoint was trained from")
    parser.add_argument(
        "--checkpoint",
        required=True,
        type=Path,
        help="checkpoint.pt or best.pt of a run, or an int8 build of incdsl quantize (.onnx)",
    )
    parser.add_argument("--data", required=True, help=DATA_HELP)
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument(
        "--crops",
        type=int,
        choices=(1, 10, 144),
        help="1, 10 (corners and center) or 144 (GoogLeNet's) crops; mirrored when trained with flips",
    )
    chosen.add_argument(
        "--views",
        type=views_option,
        metavar="V",
        help="1, 10, 144, or a list of center, corners, squares (the 144's), mirror: center,corners,mirror",
    )
    parser.add_argument("--ensemble", nargs="+", type=Path, default=[], metavar="C", help="more checkpoints")
    parser.add_argument("--workers", type=eval_workers, default=0, help="data loader processes")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    threads.add_option(parser, type=option_type("threads"))
    parser.add_argument("--skip-unreadable", action="store_true", help=SKIP_HELP)
    parser.add_argument(
        "--val-split",
        type=option_type("val_split"),
        metavar="F",
        help="for a folder with only train/: the held-out fraction (default: the checkpoint's run's)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run_eval)
    return parser


def add_predict_parser(subparsers) -> argparse.ArgumentParser:
    """The ``predict`` sub-command."""
    parser = subparsers.add_parser(
        "predict",
        help="a trained checkpoint's top classes for images",
        description="Classify images (files, or folders of them) with a checkpoint of incdsl train.",
    )
    parser.add_argument("target", metavar="SPEC", help="the spec or model.py the checkpoint was trained from")
    parser.add_argument("images", nargs="+", metavar="IMAGE|DIR", help="image files or folders of them")
    parser.add_argument(
        "--checkpoint",
        required=True,
        type=Path,
        help="checkpoint.pt or best.pt of a run, or an int8 build of incdsl quantize (.onnx)",
    )
    parser.add_argument("--top", type=top_count, default=5, metavar="K", help="classes per image (5)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--json", action="store_true", help="print the predictions as JSON")
    parser.set_defaults(func=run_predict)
    return parser


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    """The ``export`` sub-command."""
    parser = subparsers.add_parser(
        "export",
        help="a trained checkpoint as TorchScript, ONNX or safetensors",
        description="Write a checkpoint's evaluation model (its averaged weights when the run kept them): "
        "model.pt (TorchScript), model.onnx (checked with onnxruntime) or model.safetensors (the weights, "
        "class names in the metadata). The file is read back and compared with the model.",
    )
    parser.add_argument("target", metavar="SPEC", help="the spec or model.py the checkpoint was trained from")
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint.pt or best.pt of a run")
    parser.add_argument("-o", "--output", required=True, help="model.pt, model.onnx or model.safetensors")
    parser.set_defaults(func=run_export)
    return parser


def add_quantize_parser(subparsers) -> argparse.ArgumentParser:
    """The ``quantize`` sub-command."""
    parser = subparsers.add_parser(
        "quantize",
        help="a checkpoint's int8 inference build (ONNX), calibrated on your images",
        description="Write a checkpoint's evaluation model as int8 ONNX for onnxruntime: weights per "
        "channel, activations calibrated on training images of --data, framed as evaluation frames them. "
        "Its predictions are compared with the checkpoint's on those images; incdsl eval --checkpoint "
        "model.int8.onnx scores it on the validation split.",
    )
    parser.add_argument("target", metavar="SPEC", help="the spec or model.py the checkpoint was trained from")
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint.pt or best.pt of a run")
    parser.add_argument("--data", required=True, help="calibration images: " + DATA_HELP)
    parser.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    parser.add_argument(
        "--calibration-images",
        type=calibration_count,
        default=None,
        metavar="N",
        help="training images to calibrate on (512; fewer when the split has fewer)",
    )
    parser.add_argument("--skip-unreadable", action="store_true", help=SKIP_HELP)
    parser.add_argument(
        "--val-split",
        type=option_type("val_split"),
        metavar="F",
        help="for a folder with only train/: the held-out fraction (default: the checkpoint's run's)",
    )
    parser.set_defaults(func=run_quantize)
    return parser


def calibration_count(text: str) -> int:
    from incdsl import numbers
    from incdsl.train.quantize import MAX_CALIBRATION_IMAGES

    try:
        return numbers.read_int(text, 1, MAX_CALIBRATION_IMAGES)
    except numbers.NumberError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def top_count(text: str) -> int:
    from incdsl import numbers

    try:
        return numbers.read_int(text, 1, 1_000_000)
    except numbers.NumberError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def views_option(text: str) -> str:
    """``eval --views``: 1, 10, 144 or a list of parts, checked when the options are read."""
    from incdsl.train.views import ViewsError, parse_views

    try:
        parse_views(text)
    except ViewsError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text.strip()


def eval_workers(text: str) -> int:
    """``eval --workers``: as train's, without -1 (auto)."""
    from incdsl import numbers

    try:
        return numbers.read_int(text, 0, 1024)
    except numbers.NumberError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def reporting_failures(command):
    """The one place where the trainer's failures become messages and exit codes: a mistake in the
    input (TrainError, or the compiler's error for a bad spec) exits 2, a run that failed (RunFailed:
    a diverging loss, out of memory) 1, an interrupted one 130; each prints one message, no traceback."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        from incdsl.train import Interrupted, RunFailed

        try:
            return command(args)
        except KeyboardInterrupt:
            print("incdsl: interrupted", file=sys.stderr)
            return 130
        except Interrupted as stop:
            print(stop.message, file=sys.stderr)
            return 130
        except RunFailed as failure:
            print(failure.format(), file=sys.stderr)
            return 1
        except IncdslError as error:
            print(error.format(), file=sys.stderr)
            return 2
        except MemoryError:
            print("error: out of memory (lower --batch-size, or use a smaller model)", file=sys.stderr)
            return 1
        except RuntimeError as error:  # torch's out-of-memory errors are RuntimeErrors
            if not any(words in str(error).lower() for words in ("out of memory", "can't allocate memory")):
                raise
            print(f"error: {str(error).splitlines()[0]}\n  hint: lower --batch-size", file=sys.stderr)
            return 1

    return run


@reporting_failures
def run_train(args: argparse.Namespace) -> int:
    from incdsl.train.config import config_text, make_config, read_config_file
    from incdsl.train.loop import train

    options = read_config_file(args.config) if args.config else {}
    ours = ("func", "config", "command", "print_config")
    given = {key: value for key, value in vars(args).items() if key not in ours}
    options.update({key: value for key, value in given.items() if value is not None})
    config = make_config(options)
    if args.print_config:
        print(config_text(config), end="")
        return 0
    train(config)
    return 0


@reporting_failures
def run_eval(args: argparse.Namespace) -> int:
    from incdsl.train.evaluate import evaluate_checkpoints

    checkpoints = [args.checkpoint, *args.ensemble]
    report = evaluate_checkpoints(
        args.target,
        checkpoints,
        args.data,
        args.views or args.crops or 1,
        args.device,
        args.workers,
        args.skip_unreadable,
        args.val_split,
        args.threads or 0,
    )
    if args.json:
        render.emit(render.Document((), report.to_dict()), "json")
        return 0
    models = f"{len(checkpoints)} model{'s' * (len(checkpoints) > 1)}"
    print(f"{_figures(report.result)}  ({report.result.images} images, {views_note(report)}, {models})")
    if report.one_crop is not None:
        print(f"{_figures(report.one_crop)}  (1 crop, for comparison)")
    if report.result.unreadable:
        print(f"skipped {report.result.unreadable} unreadable image(s)")
    for line in class_table(report.result, report.classes):
        print(line)
    return 0


@reporting_failures
def run_predict(args: argparse.Namespace) -> int:
    from incdsl.train.predict import predict, prediction_table

    predictions = predict(args.target, args.checkpoint, args.images, args.top, args.device)
    if args.json:
        render.emit(render.Document((), [prediction.to_dict() for prediction in predictions]), "json")
    else:
        for line in prediction_table(predictions):
            print(line)
    return 0


@reporting_failures
def run_export(args: argparse.Namespace) -> int:
    from incdsl.train.predict import INPUT_NOTE, export

    exported = export(args.target, args.checkpoint, args.output)
    if exported.difference is None:
        check = "not checked: onnxruntime is not installed"
    else:
        check = f"read back: logits within {exported.difference:.1e} of the checkpoint's model"
    print(f"wrote {exported.path} ({check}); input: {INPUT_NOTE}")
    return 0


@reporting_failures
def run_quantize(args: argparse.Namespace) -> int:
    from incdsl.train.quantize import CALIBRATION_IMAGES, quantize

    images = args.calibration_images or CALIBRATION_IMAGES
    done = quantize(
        args.target,
        args.checkpoint,
        args.data,
        args.output,
        images,
        args.skip_unreadable,
        args.val_split,
        progress=lambda line: print(f"{line} ...", file=sys.stderr, flush=True),
    )
    skipped = f", {done.skipped} unreadable skipped" if done.skipped else ""
    print(
        f"wrote {done.path} (int8, calibrated on {done.images} training images{skipped}); "
        f"top class as the checkpoint's on {done.agreement:.1%} of them, logits within {done.difference:.2g}"
    )
    print(f"score it: incdsl eval {args.target} --checkpoint {done.path} --data {args.data}")
    return 0


CONFUSION_SHOWN = 20  # the text output shows the confusion matrix up to this many classes (JSON: always)


def class_table(result, classes) -> list[str]:
    """Per-class top-1 (the recall of each class), then the confusion matrix for few classes."""
    if not result.confusion or not classes:
        return []
    width = max(5, *(len(name) for name in classes))
    mean = result.mean_class_top1
    lines = [f"per class (mean top-1 {mean:.4f}):" if mean is not None else "per class:"]
    lines.append(f"  {'class':<{width}}  images  top-1")
    for name, (count, top1) in zip(classes, result.per_class()):
        figure = f"{top1:.4f}" if top1 is not None else "-"
        lines.append(f"  {name:<{width}}  {count:>6}  {figure}")
    if len(classes) <= CONFUSION_SHOWN:
        cell = max(4, *(len(str(value)) for row in result.confusion for value in row))
        lines.append("confusion (rows: true class, columns: predicted, in the order above):")
        for name, row in zip(classes, result.confusion):
            lines.append(f"  {name:<{width}}  " + " ".join(f"{value:>{cell}}" for value in row))
    return lines


def views_note(report) -> str:
    """How many distinct views each image had, and why fewer than the crops' count when they were:
    no mirrors without flip training, regions that coincide (the three squares of a square image)."""
    fewest, most = report.fewest_views or report.views, report.views
    counted = f"{fewest}-{most}" if fewest != most else str(most)
    note = f"{counted} {'distinct ' * (most > 1)}view{'s' * (most > 1)} per image"
    reasons = []
    if report.crops in (10, 144) and not report.mirrors:
        reasons.append(f"{report.crops}-crop without mirrors: the recipe trains without flips")
    if report.crops == 144:
        reasons.append("of the paper's 144, each square resized whole once, not at each of the 4 scales")
    if fewest < report.asked:
        reasons.append(
            f"{report.asked} asked; the others would repeat a region: "
            + (
                "a square image's three squares are one"
                if report.crops == 144 or "squares" in str(report.crops)
                else "the image is too small for them to differ"
            )
        )
    return note + "".join(f" ({reason})" for reason in reasons)


def _figures(result) -> str:
    loss = f"{result.loss:.4f}" if math.isfinite(result.loss) else str(result.loss)
    return f"top-1 {result.top1:.4f}  top-5 {result.top5:.4f}  loss {loss}"


def main(argv: list[str] | None = None) -> int:
    """``python -m incdsl.train.cli {train,eval} ...``: the sub-commands without the compiler's CLI."""
    parser = argparse.ArgumentParser(prog="incdsl.train")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_train_parser(subparsers)
    add_eval_parser(subparsers)
    add_predict_parser(subparsers)
    add_export_parser(subparsers)
    add_quantize_parser(subparsers)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a usage error (2) or --help (0): a code, as incdsl.tools.cli.main returns
        return exc.code if isinstance(exc.code, int) else 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
