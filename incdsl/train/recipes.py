"""Training recipes, named after their source, each with its numbers and where they come from.

A recipe is data: the optimizer, the learning-rate schedule, the regularisers and the augmentation. What a
paper leaves open is filled from the nearest published configuration and marked "(not in the paper)".

``googlenet``  Szegedy et al. 2014, "Going deeper with convolutions", section 6. SGD with momentum 0.9;
    "fixed learning rate schedule (decreasing the learning rate by 4% every 8 epochs)"; Polyak averaging
    for the final model (an EMA of the weights, decay 0.9999); auxiliary losses weighted as the spec says
    (0.3 in the paper); dropout as the spec says. Crops of 8%-100% of the image area, aspect ratio 3/4-4/3,
    photometric distortions (Howard 2013), horizontal flips. Base lr 0.01, batch 32, weight decay 2e-4 and
    250 epochs are taken from Caffe's bvlc_googlenet solver (not in the paper).
``bvlc``  Caffe's ``models/bvlc_googlenet/solver.prototxt``: base_lr 0.01, lr_policy "step", gamma 0.96,
    stepsize 320,000 iterations, momentum 0.9, weight_decay 2e-4, batch 32 (train_val.prototxt),
    max_iter 10M. Iterations are scaled to epochs of ImageNet's 1,281,167 training images: a step every
    320000 * 32 / 1281167 = 7.99 epochs, 250 epochs in all. Augmentation as Caffe's data layer: a random
    224/256 square crop (area (224/256)^2, aspect 1) and a mirror; evaluation takes the 224/256 center.
``inception-v3``  Szegedy et al. 2015, "Rethinking the Inception architecture", sections 7-8: RMSProp with
    decay 0.9 and epsilon 1.0, lr 0.045 decayed by 0.94 every 2 epochs, gradient clipping at norm 2.0,
    label smoothing 0.1, batch 32, 100 epochs, evaluation on a running average of the weights (EMA 0.9999).
    Weight decay 4e-5 and the 0.875 evaluation crop are TF-slim's (not in the paper). The RMSProp is
    TensorFlow's, as the paper trained: epsilon inside the square root, the mean square starting at 1
    (PyTorch's adds epsilon outside and starts at 0: with epsilon 1.0 its steps differ by up to 1.4x).
``fast``  For small data on a CPU (the default; used by the digits demo): AdamW lr 2e-3, weight decay 5e-4,
    batch 64, 1 epoch of linear warm-up then cosine decay to zero over 10 epochs, label smoothing 0.1,
    no EMA, milder crops (35%-100% of the area), no flip (it turns digits into other symbols), light
    photometric distortion, evaluation on the whole image, channels-last memory layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn

from incdsl.errors import did_you_mean
from incdsl.train import TrainError

IMAGENET_TRAIN_IMAGES = 1_281_167


@dataclass(frozen=True)
class Augment:
    """Training augmentation (applied to batches on the device) and the evaluation crop."""

    crop_area: tuple[float, float] = (0.08, 1.0)  # fraction of the image area a training crop covers
    crop_aspect: tuple[float, float] = (3 / 4, 4 / 3)  # width / height of a training crop
    flip: bool = True  # mirror half of the training images
    photometric: float = 0.4  # brightness, contrast and saturation factors in [1 - p, 1 + p]; 0 = off
    eval_crop: float = 0.875  # fraction of the resized image the evaluation center crop keeps


@dataclass(frozen=True)
class Schedule:
    """Learning-rate multiplier over training: a linear warm-up, then ``step`` decays, ``cosine`` decay
    to 0 at the last step, or ``constant``."""

    kind: str  # "step", "cosine" or "constant"
    gamma: float = 1.0  # step: multiply the lr by gamma ...
    every_epochs: float = 1.0  # ... every this many epochs (fractions allowed: counted in iterations)
    warmup_epochs: float = 0.0  # linear ramp from 0 over this many epochs


@dataclass(frozen=True)
class Recipe:
    """Everything about how a model is optimised, independent of the model and the data."""

    name: str
    optimizer: str  # "sgd", "rmsprop" or "adamw"
    lr: float
    batch_size: int  # global: split across processes under torchrun
    epochs: int
    schedule: Schedule
    momentum: float = 0.0
    weight_decay: float = 0.0  # applied to conv and linear weights only (Caffe's biases have decay_mult 0)
    decay_all: bool = False  # decay biases and normalisation parameters too (as the paper's TF-slim does not)
    rmsprop_decay: float = 0.9
    rmsprop_style: str = "torch"  # "tf": epsilon inside the square root (see optim.RMSpropTF)
    eps: float = 1e-8
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW
    ema_decay: float | None = None  # Polyak averaging: evaluate an EMA of the weights
    label_smoothing: float = 0.0
    grad_clip: float | None = None  # max global gradient norm
    channels_last: bool = False
    augment: Augment = field(default_factory=Augment)


RECIPES: dict[str, Recipe] = {
    "googlenet": Recipe(
        name="googlenet",
        optimizer="sgd",
        lr=0.01,
        batch_size=32,
        epochs=250,
        schedule=Schedule("step", gamma=0.96, every_epochs=8),
        momentum=0.9,
        weight_decay=2e-4,
        ema_decay=0.9999,
        augment=Augment(),
    ),
    "bvlc": Recipe(
        name="bvlc",
        optimizer="sgd",
        lr=0.01,
        batch_size=32,
        epochs=250,
        schedule=Schedule("step", gamma=0.96, every_epochs=320_000 * 32 / IMAGENET_TRAIN_IMAGES),
        momentum=0.9,
        weight_decay=2e-4,
        augment=Augment(crop_area=((224 / 256) ** 2,) * 2, crop_aspect=(1.0, 1.0), photometric=0.0),
    ),
    "inception-v3": Recipe(
        name="inception-v3",
        optimizer="rmsprop",
        lr=0.045,
        batch_size=32,
        epochs=100,
        schedule=Schedule("step", gamma=0.94, every_epochs=2),
        weight_decay=4e-5,
        rmsprop_decay=0.9,
        rmsprop_style="tf",
        eps=1.0,
        ema_decay=0.9999,
        label_smoothing=0.1,
        grad_clip=2.0,
        augment=Augment(),
    ),
    "fast": Recipe(
        name="fast",
        optimizer="adamw",
        lr=2e-3,
        batch_size=64,
        epochs=10,
        schedule=Schedule("cosine", warmup_epochs=1),
        weight_decay=5e-4,
        label_smoothing=0.1,
        channels_last=True,
        augment=Augment(crop_area=(0.35, 1.0), flip=False, photometric=0.2, eval_crop=1.0),
    ),
}


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; a TrainError with a suggestion for an unknown one.

    >>> get_recipe("bvlc").schedule.gamma
    0.96
    """
    if name not in RECIPES:
        hint = did_you_mean(name, RECIPES) or f"recipes: {', '.join(RECIPES)}"
        raise TrainError(f"unknown recipe '{name}'", hint=hint)
    return RECIPES[name]


def lr_multiplier(schedule: Schedule, steps_per_epoch: int, total_steps: int, step: int) -> float:
    """The factor on the base learning rate after ``step`` optimizer steps: a linear ramp over the
    warm-up, then the schedule (a step schedule counts its decays from step 0, warm-up included)."""
    warmup = schedule.warmup_epochs * steps_per_epoch
    ramp = (step + 1) / (warmup + 1) if step < warmup else 1.0
    if schedule.kind == "step":
        return ramp * schedule.gamma ** math.floor(step / (schedule.every_epochs * steps_per_epoch))
    if schedule.kind == "constant" or step < warmup:
        return ramp
    progress = min(1.0, (step - warmup) / max(1.0, total_steps - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(recipe: Recipe, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """The recipe's optimizer over ``model``'s parameters, decaying only weight matrices and kernels."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": recipe.weight_decay},
        {
            "params": [p for p in params if p.ndim < 2],
            "weight_decay": recipe.weight_decay if recipe.decay_all else 0.0,
        },
    ]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=recipe.momentum)
    if recipe.optimizer == "rmsprop" and recipe.rmsprop_style == "tf":
        from incdsl.train.optim import RMSpropTF

        return RMSpropTF(groups, lr=lr, decay=recipe.rmsprop_decay, eps=recipe.eps, momentum=recipe.momentum)
    if recipe.optimizer == "rmsprop":
        return torch.optim.RMSprop(
            groups, lr=lr, alpha=recipe.rmsprop_decay, eps=recipe.eps, momentum=recipe.momentum
        )
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, eps=recipe.eps, betas=recipe.betas)
    raise ValueError(f"recipe {recipe.name} names an unknown optimizer {recipe.optimizer}")


def build_scheduler(
    recipe: Recipe, optimizer: torch.optim.Optimizer, steps_per_epoch: int, epochs: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration scheduler following the recipe's schedule over ``epochs`` epochs."""
    factor = partial(lr_multiplier, recipe.schedule, steps_per_epoch, steps_per_epoch * epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def recipe_of(config) -> Recipe:
    """The recipe a TrainConfig trains with: its named recipe, every setting as the config resolved it."""
    return Recipe(
        name=config.recipe,
        optimizer=config.optimizer,
        lr=config.lr,
        batch_size=config.batch_size,
        epochs=config.epochs,
        schedule=Schedule(config.schedule, config.lr_gamma, config.lr_step_epochs, config.warmup_epochs),
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        decay_all=config.decay_all,
        rmsprop_decay=config.rmsprop_decay,
        rmsprop_style=config.rmsprop_style,
        eps=config.eps,
        betas=config.betas,
        ema_decay=config.ema_decay if config.ema else None,
        label_smoothing=config.label_smoothing,
        grad_clip=config.grad_clip or None,
        channels_last=config.channels_last,
        augment=Augment(
            crop_area=config.crop_area,
            crop_aspect=config.crop_aspect,
            flip=config.flip,
            photometric=config.photometric,
            eval_crop=config.eval_crop,
        ),
    )
