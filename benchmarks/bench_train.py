"""The trainer's step throughput against a bare hand-written loop over the same model and data.

Both train the same freshly built model with the same optimizer, loss (aux heads included), batch size
and memory layout on the same in-memory fake images. The trainer also pays for its data loader, batch
augmentation, scheduler, EMA (if the recipe has one) and bookkeeping; the bare loop for nothing but the
steps. The two alternate (A B B A ...) after a warm-up, so that drifts of a shared machine hit both alike;
the median ratio is printed (target: the trainer within 5% of the bare loop, a ratio of 0.95 or more).

    python benchmarks/bench_train.py                       # mini_googlenet, fast recipe
    python benchmarks/bench_train.py --target tests/train/fixtures/tiny_model.py --rounds 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from incdsl.train.augment import to_input
from incdsl.train.config import make_config
from incdsl.train.data import open_split
from incdsl.train.loop import train, training_loss
from incdsl.train.models import load_model
from incdsl.train.recipes import build_optimizer, get_recipe


def trainer_throughput(target: str, images: int, recipe: str, batch_size: int, seed: int) -> float:
    """Training images per second of one epoch of ``incdsl train`` (its own ``img_per_s``)."""
    with tempfile.TemporaryDirectory() as folder:
        options = {"target": target, "data": f"fake:{images}", "out": Path(folder) / "run", "recipe": recipe}
        config = make_config({**options, "epochs": 1, "batch_size": batch_size, "seed": seed})
        (record,) = train(config)
    return record["img_per_s"]


def bare_throughput(target: str, images: int, recipe_name: str, batch_size: int, seed: int) -> float:
    """Training images per second of the plainest loop that takes the same steps."""
    recipe = get_recipe(recipe_name)
    torch.manual_seed(seed)
    bundle = load_model(target)
    layout = torch.channels_last if recipe.channels_last else torch.contiguous_format
    split = open_split(
        f"fake:{images}", "train", bundle.input_shape, lambda image: image, num_classes=bundle.num_classes
    )
    pixels, labels = split.dataset.images, split.dataset.labels
    model = bundle.module.to(memory_format=layout).train()
    optimizer = build_optimizer(recipe, model, recipe.lr)
    order = torch.randperm(len(pixels))
    started = time.perf_counter()
    steps = len(pixels) // batch_size
    for step in range(steps):
        batch = order[step * batch_size : (step + 1) * batch_size]
        inputs = to_input(pixels[batch]).contiguous(memory_format=layout)
        loss = training_loss(model(inputs), labels[batch], bundle.aux_weights, recipe.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * batch_size / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", default="mini_googlenet", help="spec name, .inc or model.py")
    parser.add_argument("--recipe", default="fast")
    parser.add_argument("--images", type=int, default=1024, help="fake training images per epoch")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="pairs of measurements (alternating order)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    measure = {"trainer": trainer_throughput, "bare": bare_throughput}
    common = (args.target, args.images, args.recipe, args.batch_size)
    measure["trainer"](args.target, 2 * args.batch_size, args.recipe, args.batch_size, 0)  # warm-up
    measure["bare"](args.target, 2 * args.batch_size, args.recipe, args.batch_size, 0)
    rates: dict[str, list[float]] = {"trainer": [], "bare": []}
    for round_ in range(args.rounds):
        order = ("trainer", "bare") if round_ % 2 == 0 else ("bare", "trainer")
        for name in order:
            rates[name].append(measure[name](*common, round_))
        trainer, bare = rates["trainer"][-1], rates["bare"][-1]
        print(f"round {round_ + 1}: trainer {trainer:.1f} img/s, bare {bare:.1f} img/s")
    ratios = [trainer / bare for trainer, bare in zip(rates["trainer"], rates["bare"])]
    ratio = statistics.median(ratios)
    print(f"trainer / bare loop throughput: {ratio:.3f} (median of {args.rounds}; target >= 0.95)")
    if args.json:
        result = {
            "target": args.target,
            "recipe": args.recipe,
            "rates": rates,
            "ratios": ratios,
            "ratio": ratio,
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
