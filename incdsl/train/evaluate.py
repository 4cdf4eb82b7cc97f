"""Evaluation: top-1 and top-5 over 1, 10 or 144 crops per image, of one model or an ensemble.

Softmax outputs are averaged over an image's views and over the models of an ensemble; the loss is the
negative log of the averaged probability of the true class (the cross-entropy, for one view and model).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from incdsl.train import TrainError
from incdsl.train.augment import to_input
from incdsl.train.checkpoint import load_checkpoint
from incdsl.train.data import open_split
from incdsl.train.distributed import Processes, start_processes, sum_over_processes
from incdsl.train.models import ModelBundle, load_model
from incdsl.train.recipes import get_recipe
from incdsl.train.views import eval_view

EVAL_IMAGES_PER_BATCH = 256  # views per forward pass; a batch holds this many // crops images


@dataclass(frozen=True)
class EvalResult:
    loss: float
    top1: float  # fraction of images whose true class has the highest probability
    top5: float  # ... is among the five highest
    images: int


def autocast(device: torch.device, enabled: bool):
    """bfloat16 autocast on CPUs, float16 on GPUs; nothing when not ``enabled``."""
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)


@torch.no_grad()
def evaluate(
    models: Sequence[nn.Module],
    loader: DataLoader,
    processes: Processes,
    amp: bool = False,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> EvalResult:
    """Loss, top-1 and top-5 of ``models`` (in eval mode) over batches of ``(B, V, C, H, W)`` views.

    Under torchrun each process evaluates its share of the images and the counts are summed.
    """
    totals = [0.0, 0.0, 0.0, 0.0]
    for views, labels in loader:
        views, labels = views.to(processes.device), labels.to(processes.device)
        inputs = to_input(views.flatten(0, 1)).contiguous(memory_format=memory_format)
        probabilities = torch.zeros(())
        for model in models:
            with autocast(processes.device, amp):
                probabilities = probabilities + model(inputs).float().softmax(dim=-1)
        probabilities = (probabilities / len(models)).view(*views.shape[:2], -1).mean(dim=1)
        totals = [total + value for total, value in zip(totals, batch_totals(probabilities, labels))]
    loss, top1, top5, images = sum_over_processes(totals, processes)
    return EvalResult(loss / max(images, 1), top1 / max(images, 1), top5 / max(images, 1), int(images))


def batch_totals(probabilities: Tensor, labels: Tensor) -> list[float]:
    """Summed loss, top-1 hits, top-5 hits, and the number of images."""
    true_class = probabilities.gather(1, labels[:, None]).clamp_min(1e-12)
    ranked = probabilities.topk(min(5, probabilities.shape[1]), dim=1).indices == labels[:, None]
    return [
        -true_class.log().sum().item(),
        ranked[:, 0].sum().item(),
        ranked.any(1).sum().item(),
        len(labels),
    ]


def evaluate_checkpoints(
    target: str,
    checkpoints: Sequence[Path],
    data: str,
    crops: int = 1,
    device: str = "auto",
    workers: int = 0,
) -> EvalResult:
    """Evaluate the checkpoints of ``target`` on ``data``'s validation split, as an ensemble.

    Each checkpoint contributes its averaged (EMA) weights when its recipe kept them.

    >>> evaluate_checkpoints("model.py", [Path("runs/a/best.pt")], "digits", crops=10).top1  # doctest: +SKIP
    0.98
    """
    processes = start_processes(device)
    states = [load_checkpoint(Path(path)) for path in checkpoints]
    classes = states[0]["classes"]
    bundles = [
        bundle_from_checkpoint(target, state, path, classes) for state, path in zip(states, checkpoints)
    ]
    shape = bundles[0].input_shape
    view = eval_view(crops, shape[1:], get_recipe(states[0]["recipe"]).augment.eval_crop)
    split = open_split(data, "val", shape, view, classes)
    loader = DataLoader(split.dataset, max(1, EVAL_IMAGES_PER_BATCH // crops), num_workers=workers)
    return evaluate([bundle.module.to(processes.device).eval() for bundle in bundles], loader, processes)


def bundle_from_checkpoint(target: str, state: dict, path: Path, classes: list[str]) -> ModelBundle:
    """``target`` built for the checkpoint's classes and holding its evaluation weights."""
    if state["classes"] != classes:
        raise TrainError(f"{path} was trained on other classes than {', '.join(classes)}")
    bundle = load_model(target, num_classes=len(classes))
    weights = state["ema"]["module"] if state["ema"] else state["model"]
    try:
        bundle.module.load_state_dict(weights)
    except RuntimeError as error:
        raise TrainError(f"{path} does not hold weights of {target}: {str(error).splitlines()[0]}") from None
    return bundle
