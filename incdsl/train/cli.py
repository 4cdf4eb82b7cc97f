"""``incdsl train`` and ``incdsl eval``: argument parsing and printing over incdsl.train's functions.

``incdsl.cli`` adds the two sub-commands with ``add_train_parser`` and ``add_eval_parser``; each sets
``func``, which takes the parsed arguments and returns an exit code. Importing this module does not
import torch. ``python -m incdsl.train.cli train ...`` runs the same commands without the compiler's CLI.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from incdsl.errors import IncdslError

DATA_HELP = "an image folder (DIR/train/<class>/*.png, DIR/val/<class>/...), 'digits', or 'fake' (fake:N)"


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
    parser.add_argument("--epochs", type=int, help="total number of epochs, also when resuming")
    parser.add_argument("--batch-size", type=int, help="global batch size (split across torchrun processes)")
    parser.add_argument("--lr", type=float, help="base learning rate")
    parser.add_argument(
        "--resume", action=argparse.BooleanOptionalAction, help="continue RUN_DIR/checkpoint.pt"
    )
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, help="mixed precision (bf16 on CPU)")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, help="channels-last layout")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, help="torch.compile the model")
    parser.add_argument("--workers", type=int, help="data loader processes (default: 0 on CPU)")
    parser.add_argument("--seed", type=int, help="random seed (default 0)")
    parser.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
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
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint.pt or best.pt of a run")
    parser.add_argument("--data", required=True, help=DATA_HELP)
    parser.add_argument("--crops", type=int, choices=(1, 10, 144), default=1, help="views per image")
    parser.add_argument("--ensemble", nargs="+", type=Path, default=[], metavar="C", help="more checkpoints")
    parser.add_argument("--workers", type=int, default=0, help="data loader processes")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run_eval)
    return parser


def run_train(args: argparse.Namespace) -> int:
    from incdsl.train.config import make_config, read_config_file
    from incdsl.train.loop import train

    options = read_config_file(args.config) if args.config else {}
    given = {key: value for key, value in vars(args).items() if key not in ("func", "config", "command")}
    options.update({key: value for key, value in given.items() if value is not None})
    train(make_config(options))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from incdsl.train.evaluate import evaluate_checkpoints

    checkpoints = [args.checkpoint, *args.ensemble]
    result = evaluate_checkpoints(args.target, checkpoints, args.data, args.crops, args.device, args.workers)
    if args.json:
        print(
            json.dumps(
                {"top1": result.top1, "top5": result.top5, "loss": result.loss, "images": result.images}
            )
        )
    else:
        models = f"{len(checkpoints)} model{'s' * (len(checkpoints) > 1)}"
        print(
            f"top-1 {result.top1:.4f}  top-5 {result.top5:.4f}  loss {result.loss:.4f}  "
            f"({result.images} images, {args.crops} crop{'s' * (args.crops > 1)}, {models})"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m incdsl.train.cli {train,eval} ...``: the sub-commands without the compiler's CLI."""
    parser = argparse.ArgumentParser(prog="incdsl.train")
    subparsers = parser.add_subparsers(dest="command", required=True)
    add_train_parser(subparsers)
    add_eval_parser(subparsers)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except IncdslError as error:  # TrainError, or the compiler's error for a bad spec
        print(error.format(), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
