"""Evaluation: top-1 and top-5 over 1, 10 or 144 crops (or chosen views) per image, of a model or ensemble.

Softmax outputs are averaged over an image's views and over the models of an ensemble; the loss is the
negative log of the averaged probability of the true class (the cross-entropy, for one view and model).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from incdsl.train import TrainError
from incdsl.train.augment import to_input
from incdsl.train.checkpoint import FOR_EVALUATION, check_contents, load_checkpoint, load_weights
from incdsl.train.data import check_readable, collate, open_eval_split
from incdsl.train.distributed import Processes, start_processes, sum_over_processes
from incdsl.train.models import ModelBundle, load_model
from incdsl.train.recipes import Augment, get_recipe
from incdsl.train.views import ViewsError, ViewSet, eval_view, parse_views

EVAL_IMAGES_PER_BATCH = 256  # views per forward pass; a batch holds this many // crops images


@dataclass(frozen=True)
class EvalResult:
    loss: float
    top1: float  # fraction of images whose true class has the highest probability
    top5: float  # ... is among the five highest
    images: int
    unreadable: int = 0  # images skipped because they could not be decoded (--skip-unreadable)
    confusion: tuple[tuple[int, ...], ...] = ()  # [true class][predicted class] image counts
    views: int = 0  # views evaluated, all images together
    views_per_image: tuple[int, int] = (0, 0)  # the fewest and the most of an image (distinct views)

    def per_class(self) -> list[tuple[int, float | None]]:
        """Each class's (images, top-1): the recall of the class; None for a class with no images."""
        rows = []
        for index, row in enumerate(self.confusion):
            count = sum(row)
            rows.append((count, row[index] / count if count else None))
        return rows

    @property
    def mean_class_top1(self) -> float | None:
        """The mean of the per-class top-1 over the classes that have images (balanced accuracy)."""
        figures = [top1 for _, top1 in self.per_class() if top1 is not None]
        return sum(figures) / len(figures) if figures else None

    def to_dict(self, classes: Sequence[str] = ()) -> dict:
        """JSON-ready: a loss that is not finite (a diverged model) becomes null. With ``classes``, the
        per-class figures and the confusion matrix (rows: true class, columns: predicted class)."""
        loss = self.loss if math.isfinite(self.loss) else None
        result = {
            "top1": self.top1,
            "top5": self.top5,
            "loss": loss,
            "images": self.images,
            "unreadable": self.unreadable,
        }
        if classes and self.confusion:
            result["mean_class_top1"] = self.mean_class_top1
            result["per_class"] = [
                {"class": name, "images": count, "top1": top1}
                for name, (count, top1) in zip(classes, self.per_class())
            ]
            result["confusion"] = [list(row) for row in self.confusion]
        return result


@dataclass(frozen=True)
class EvalReport:
    """An evaluation as ``incdsl eval`` prints it: the figures over the views asked for, how many
    distinct views of an image those were (the fewest and the most: a square image has fewer 144-crop
    views), and the 1-crop figures beside multi-crop ones, so that a regression is visible."""

    result: EvalResult
    crops: int | str  # what was asked: 1, 10, 144 or a list of parts (--views)
    views: int  # the most distinct views of an image
    mirrors: bool
    one_crop: EvalResult | None
    classes: tuple[str, ...] = ()
    fewest_views: int = 0  # the fewest distinct views of an image
    asked: int = 0  # the views asked for: 10 for --crops 10 with mirrors, 5 without

    def to_dict(self) -> dict:
        one = None if self.one_crop is None else self.one_crop.to_dict()
        return {
            **self.result.to_dict(self.classes),
            "crops": self.crops,
            "views": self.views,
            "fewest_views": self.fewest_views,
            "mirrors": self.mirrors,
            "one_crop": one,
        }


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype(device_type: str) -> str:
    """``--amp``'s dtype on a device, named as the memory estimate names it: float16 on CUDA (whose
    gradients the trainer scales), bfloat16 elsewhere."""
    return "fp16" if device_type == "cuda" else "bf16"


def autocast(device: torch.device, enabled: bool):
    """``--amp``'s autocast on ``device`` (:func:`amp_dtype`); nothing when not ``enabled``."""
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp_dtype(device.type)], enabled=enabled)


@torch.no_grad()
def evaluate(
    models: Sequence[nn.Module],
    loader: DataLoader,
    processes: Processes,
    amp: bool = False,
    memory_format: torch.memory_format = torch.contiguous_format,
    skip_unreadable: bool = False,
    classes: int | None = None,
) -> EvalResult:
    """Loss, top-1, top-5 and the confusion matrix of ``models`` (in eval mode) over batches of
    ``(B, V, C, H, W)`` views; ``classes`` is the models' number of outputs (else the first batch's).

    Under torchrun each process evaluates its share of the images and the counts are summed.
    """
    totals = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    fewest, most = math.inf, 0
    confusion = torch.zeros(classes * classes if classes else 0, dtype=torch.float64)
    for batch in loader:
        views, labels, unreadable, counts = unpack(batch)
        totals[4] += check_readable(unreadable, skip_unreadable)
        if len(labels) == 0:
            continue
        if counts is None:  # (B, V, C, H, W): V views of every image
            counts = torch.full((len(labels),), views.shape[1], dtype=torch.long)
            views = views.flatten(0, 1)
        views, labels = views.to(processes.device), labels.to(processes.device)
        inputs = to_input(views).contiguous(memory_format=memory_format)
        probabilities = torch.zeros(())
        for model in models:
            with autocast(processes.device, amp):
                probabilities = probabilities + model(inputs).float().softmax(dim=-1)
        probabilities = per_image_mean(probabilities / len(models), counts.to(processes.device))
        sums, predicted = batch_totals(probabilities, labels)
        totals[:4] = [total + value for total, value in zip(totals, sums)]
        totals[5] += int(counts.sum())
        fewest, most = min(fewest, int(counts.min())), max(most, int(counts.max()))
        count = probabilities.shape[1]
        if not len(confusion):
            confusion = torch.zeros(count * count, dtype=torch.float64)
        pairs = (labels * count + predicted).cpu()
        confusion += torch.bincount(pairs, minlength=count * count).to(torch.float64)
    (*sums,) = sum_over_processes([*totals, *confusion.tolist()], processes)
    loss, top1, top5, images, skipped, views_total = sums[:6]
    side = math.isqrt(len(sums) - 6)
    matrix = tuple(
        tuple(int(value) for value in sums[6 + row * side : 6 + (row + 1) * side]) for row in range(side)
    )
    count = max(images, 1)
    span = (0, 0) if not most else (int(fewest), most)  # this process's images: under torchrun, its share
    return EvalResult(
        loss / count, top1 / count, top5 / count, int(images), int(skipped), matrix, int(views_total), span
    )


def unpack(batch) -> tuple:
    """(views, labels, unreadable, counts) of a batch: collate's (with counts for stacks of views of
    varying number) or a plain loader's (views, labels) of ``(B, V, C, H, W)``, whose counts are None."""
    if len(batch) == 4:
        return tuple(batch)
    views, labels, unreadable = batch if len(batch) == 3 else (*batch, [])
    return views, labels, unreadable, None


def per_image_mean(probabilities: Tensor, counts: Tensor) -> Tensor:
    """The mean of each image's rows of ``probabilities`` (its views': ``counts[i]`` rows for image i)."""
    images = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
    sums = torch.zeros(len(counts), probabilities.shape[1], device=probabilities.device)
    return sums.index_add_(0, images, probabilities) / counts[:, None].to(probabilities.dtype)


def batch_totals(probabilities: Tensor, labels: Tensor) -> tuple[list[float], Tensor]:
    """Summed loss, top-1 hits, top-5 hits, and the number of images; and each image's top class."""
    true_class = probabilities.gather(1, labels[:, None]).clamp_min(1e-12)
    top = probabilities.topk(min(5, probabilities.shape[1]), dim=1).indices
    ranked = top == labels[:, None]
    sums = [
        -true_class.log().sum().item(),
        ranked[:, 0].sum().item(),
        ranked.any(1).sum().item(),
        len(labels),
    ]
    return sums, top[:, 0]


def evaluate_checkpoints(
    target: str,
    checkpoints: Sequence[Path],
    data: str,
    crops: int | str = 1,
    device: str = "auto",
    workers: int = 0,
    skip_unreadable: bool = False,
    val_split: float | None = None,
    threads: int = 0,
) -> EvalReport:
    """Evaluate the checkpoints of ``target`` on ``data``'s validation split, as an ensemble.

    ``data`` is a folder with ``val/``, a folder of class folders, "digits" or "fake"; for a folder
    with only ``train/``, ``val_split`` (by default the one the first checkpoint was trained with)
    picks the same held-out images as the training run did. ``crops`` chooses the views (views.py):
    1, 10, 144 or a list like "center,corners,mirror".

    Each checkpoint contributes its averaged (EMA) weights when its recipe kept them; an int8 build of
    ``incdsl quantize`` (a .onnx file, run by onnxruntime) may stand in for a checkpoint. The views follow
    the recipe the checkpoints were trained with: framed as its evaluation crop, and (for 10 and 144)
    mirrored only when it trained with flips. Multi-crop figures come with the 1-crop ones. ``threads``:
    torch's threads for the evaluation (0: incdsl's default, :mod:`incdsl.threads`).

    >>> evaluate_checkpoints("model.py", [Path("runs/a/best.pt")], "digits", crops=10).result.top1
    ... # doctest: +SKIP
    0.98
    """
    from incdsl.threads import using

    with using(threads):
        return _evaluate_checkpoints(
            target, checkpoints, data, crops, device, workers, skip_unreadable, val_split
        )


def _evaluate_checkpoints(target, checkpoints, data, crops, device, workers, skip_unreadable, val_split):
    try:
        views = parse_views(crops)
    except ViewsError as error:
        raise TrainError(f"--views {crops}: {error}") from None
    processes = start_processes(device)
    loaded = evaluation_models(target, [Path(path) for path in checkpoints], processes.device)
    states = [state for state, _, _ in loaded]
    classes = states[0]["classes"]
    shapes = {shape for _, _, shape in loaded}
    if len(shapes) > 1:
        raise TrainError("the checkpoints were trained at different input sizes: they cannot share views")
    models = [model for _, model, _ in loaded]
    augments = [trained_augment(state) for state in states]
    flips = all(augment.flip for augment in augments)
    fraction = augments[0].eval_crop

    if val_split is None:
        val_split = saved_val_split(states[0], data)

    def run(chosen: ViewSet) -> EvalResult:
        shape = loaded[0][2]
        view = eval_view(chosen, shape[1:], fraction, flips)
        split = open_eval_split(data, shape, view, classes, val_split)
        batch = max(1, EVAL_IMAGES_PER_BATCH // chosen.most(flips))
        loader = DataLoader(split.dataset, batch, num_workers=workers, collate_fn=collate)
        return evaluate(models, loader, processes, skip_unreadable=skip_unreadable, classes=len(classes))

    result = run(views)
    one_crop = run(parse_views(1)) if views.most(flips) > 1 else None
    fewest, most = result.views_per_image
    crops = int(crops) if str(crops).strip() in ("1", "10", "144") else str(crops)
    return EvalReport(
        result, crops, most, views.mirrored(flips), one_crop, tuple(classes), fewest, views.most(flips)
    )


def evaluation_models(target: str, paths: Sequence[Path], device) -> list[tuple[dict, nn.Module, tuple]]:
    """Each checkpoint's (state, model in eval mode on ``device``, input shape); an int8 build of
    ``incdsl quantize`` (a .onnx file) stands for its checkpoint, its state read from its metadata.
    A TrainError when they were trained on different classes."""
    from incdsl.train import quantize

    loaded = []
    for path in paths:
        if quantize.is_artefact(path):
            state, model, shape = quantize.load_artefact(path)
            if loaded and state["classes"] != loaded[0][0]["classes"]:
                raise TrainError(
                    f"{path} was trained on other classes than {', '.join(loaded[0][0]['classes'])}"
                )
        else:
            state = load_checkpoint(path)
            check_contents(state, path, FOR_EVALUATION)
            classes = loaded[0][0]["classes"] if loaded else state["classes"]
            bundle = bundle_from_checkpoint(target, state, path, classes, device)
            model, shape = bundle.module.to(device).eval(), bundle.input_shape
        loaded.append((state, model, shape))
    return loaded


def saved_val_split(state: dict, data: str) -> float:
    """The --val-split the checkpoint's run held out of ``data`` (0 for other data, or none): the same
    images are held out again, for evaluation, and left out of int8 calibration."""
    saved = state.get("config")
    same_data = isinstance(saved, dict) and saved.get("data") == data
    val_split = saved.get("val_split", 0.0) if same_data else 0.0
    return val_split if isinstance(val_split, float) and 0 < val_split < 1 else 0.0


def trained_augment(state: dict) -> Augment:
    """The augmentation a checkpoint was trained with: saved in it, or (older checkpoints) its recipe's."""
    saved = state.get("augment")
    if isinstance(saved, dict):
        try:
            return Augment(**{key: tuple(v) if isinstance(v, list) else v for key, v in saved.items()})
        except TypeError:
            pass
    return get_recipe(state["recipe"]).augment


def trained_input_size(state: dict) -> int | None:
    """The --input-size a checkpoint was trained at; None: its spec's own input."""
    saved = state.get("config")
    size = saved.get("input_size") if isinstance(saved, dict) else None
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None


def bundle_from_checkpoint(
    target: str, state: dict, path: Path, classes: list[str], device=None
) -> ModelBundle:
    """``target`` built for the checkpoint's classes and holding its evaluation weights."""
    if state["classes"] != classes:
        raise TrainError(f"{path} was trained on other classes than {', '.join(classes)}")
    bundle = load_model(
        target, num_classes=len(classes), fits_on=device, input_size=trained_input_size(state)
    )
    averaged = state["ema"] is not None
    weights = state["ema"]["module"] if averaged else state["model"]
    load_weights(bundle.module, weights, f"{path} (its {'averaged ' if averaged else ''}weights)")
    return bundle
