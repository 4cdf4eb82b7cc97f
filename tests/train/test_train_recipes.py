"""Every recipe's optimizer and schedule, checked against the numbers of its source."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from incdsl.train import TrainError
from incdsl.train.config import make_config
from incdsl.train.optim import RMSpropTF
from incdsl.train.recipes import (
    IMAGENET_TRAIN_IMAGES,
    RECIPES,
    build_optimizer,
    build_scheduler,
    get_recipe,
    lr_multiplier,
    recipe_of,
)

STEPS_PER_EPOCH = 10


def lrs_over(recipe_name: str, epochs: int, steps_per_epoch: int = STEPS_PER_EPOCH) -> list[float]:
    """The learning rate of every optimizer step, from a real optimizer and scheduler."""
    recipe = get_recipe(recipe_name)
    model = nn.Linear(2, 2)
    optimizer = build_optimizer(recipe, model, recipe.lr)
    scheduler = build_scheduler(recipe, optimizer, steps_per_epoch, epochs)
    rates = []
    for _ in range(steps_per_epoch * epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def epoch_start(rates: list[float], epoch: int) -> float:
    """The learning rate of 0-based ``epoch``'s first step."""
    return rates[epoch * STEPS_PER_EPOCH]


def test_googlenet_sgd_momentum_decreases_lr_4_percent_every_8_epochs():
    recipe = get_recipe("googlenet")
    optimizer = build_optimizer(recipe, nn.Linear(2, 2), recipe.lr)
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["momentum"] == 0.9
    rates = lrs_over("googlenet", 25)
    assert epoch_start(rates, 0) == epoch_start(rates, 7) == pytest.approx(0.01)
    assert rates[8 * STEPS_PER_EPOCH - 1] == pytest.approx(0.01)
    assert epoch_start(rates, 8) == epoch_start(rates, 15) == pytest.approx(0.01 * 0.96)
    assert epoch_start(rates, 16) == pytest.approx(0.01 * 0.96**2)
    assert epoch_start(rates, 24) == pytest.approx(0.01 * 0.96**3)
    assert recipe.ema_decay == 0.9999  # Polyak averaging for evaluation
    assert recipe.augment.crop_area == (0.08, 1.0)
    assert recipe.augment.crop_aspect == (3 / 4, 4 / 3)
    assert recipe.augment.flip and recipe.augment.photometric > 0


def test_bvlc_is_caffes_solver():
    recipe = get_recipe("bvlc")
    optimizer = build_optimizer(recipe, nn.Linear(2, 2), recipe.lr)
    assert isinstance(optimizer, torch.optim.SGD)
    assert (recipe.lr, recipe.momentum, recipe.weight_decay, recipe.batch_size) == (0.01, 0.9, 2e-4, 32)
    assert optimizer.param_groups[0]["weight_decay"] == 2e-4  # weights
    assert optimizer.param_groups[1]["weight_decay"] == 0.0  # biases: Caffe's decay_mult 0
    # on ImageNet, with Caffe's batch of 32, the step falls on iteration 320,000 exactly
    steps_per_epoch = IMAGENET_TRAIN_IMAGES / 32
    assert lr_multiplier(recipe.schedule, steps_per_epoch, 0, 319_999) == 1.0
    assert lr_multiplier(recipe.schedule, steps_per_epoch, 0, 320_000) == pytest.approx(0.96)
    assert lr_multiplier(recipe.schedule, steps_per_epoch, 0, 640_000) == pytest.approx(0.96**2)
    assert recipe.schedule.every_epochs == pytest.approx(7.993, abs=1e-3)
    assert recipe.epochs * IMAGENET_TRAIN_IMAGES / 32 == pytest.approx(10_000_000, rel=1e-3)  # max_iter
    assert recipe.augment.crop_area == ((224 / 256) ** 2,) * 2 and recipe.augment.crop_aspect == (1, 1)


def test_inception_v3_rmsprop_schedule_clipping_smoothing():
    recipe = get_recipe("inception-v3")
    optimizer = build_optimizer(recipe, nn.Linear(2, 2), recipe.lr)
    assert isinstance(optimizer, RMSpropTF)  # TensorFlow's, as the paper trained
    assert optimizer.defaults["decay"] == 0.9 and optimizer.defaults["eps"] == 1.0
    rates = lrs_over("inception-v3", 7)
    assert epoch_start(rates, 0) == epoch_start(rates, 1) == pytest.approx(0.045)
    assert epoch_start(rates, 2) == epoch_start(rates, 3) == pytest.approx(0.045 * 0.94)
    assert epoch_start(rates, 6) == pytest.approx(0.045 * 0.94**3)
    assert (recipe.grad_clip, recipe.label_smoothing, recipe.batch_size) == (2.0, 0.1, 32)


def test_fast_warms_up_for_an_epoch_then_decays_to_zero():
    recipe = get_recipe("fast")
    assert isinstance(build_optimizer(recipe, nn.Linear(2, 2), recipe.lr), torch.optim.AdamW)
    assert not recipe.augment.flip  # mirrored digits are other symbols
    rates = lrs_over("fast", 5)
    warmup, decay = rates[:STEPS_PER_EPOCH], rates[STEPS_PER_EPOCH:]
    assert all(a < b for a, b in zip(warmup, warmup[1:]))
    assert decay[0] == pytest.approx(recipe.lr)
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    assert decay[-1] < 0.01 * recipe.lr
    middle = (len(rates) + STEPS_PER_EPOCH) // 2
    assert rates[middle] == pytest.approx(recipe.lr / 2, rel=0.05)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_is_named_after_itself_and_positive(name):
    recipe = RECIPES[name]
    assert recipe.name == name
    assert recipe.lr > 0 and recipe.batch_size > 0 and recipe.epochs > 0
    assert math.isfinite(lr_multiplier(recipe.schedule, 100, 100 * recipe.epochs, 0))


def test_unknown_recipe_suggests_a_name():
    with pytest.raises(TrainError, match="unknown recipe 'googlenett'") as caught:
        get_recipe("googlenett")
    assert "googlenet" in caught.value.hint


GRADIENTS = [torch.tensor([0.5, -2.0, 0.0]), torch.tensor([1.5, 0.25, -3.0]), torch.tensor([-0.75, 1.0, 2.0])]


def tf_rmsprop_by_hand(start, gradients, lr, decay, eps, momentum, weight_decay):
    """TensorFlow's RMSPropOptimizer written out in plain floats: ms starts at 1, eps inside the sqrt."""
    params, ms, mom = list(start), [1.0] * len(start), [0.0] * len(start)
    for gradient in gradients:
        for i, g in enumerate(gradient.tolist()):
            g += weight_decay * params[i]
            ms[i] = decay * ms[i] + (1 - decay) * g * g
            mom[i] = momentum * mom[i] + lr * g / math.sqrt(ms[i] + eps)
            params[i] -= mom[i]
    return params


@pytest.mark.parametrize("momentum, weight_decay", [(0.0, 0.0), (0.9, 4e-5)])
def test_rmsprop_tf_takes_tensorflows_steps(momentum, weight_decay):
    start = [1.0, -0.5, 2.0]
    param = nn.Parameter(torch.tensor(start, dtype=torch.float64))
    optimizer = RMSpropTF([param], lr=0.045, decay=0.9, eps=1.0, momentum=momentum, weight_decay=weight_decay)
    for gradient in GRADIENTS:
        param.grad = gradient.to(torch.float64)
        optimizer.step()
    expected = tf_rmsprop_by_hand(start, GRADIENTS, 0.045, 0.9, 1.0, momentum, weight_decay)
    assert param.tolist() == pytest.approx(expected, rel=1e-12)
    # PyTorch's RMSprop (eps outside the sqrt, ms from 0) takes other steps on the same gradients
    torch_param = nn.Parameter(torch.tensor(start, dtype=torch.float64))
    torch_optimizer = torch.optim.RMSprop([torch_param], lr=0.045, alpha=0.9, eps=1.0, momentum=momentum)
    for gradient in GRADIENTS:
        torch_param.grad = gradient.to(torch.float64)
        torch_optimizer.step()
    assert torch_param.tolist() != pytest.approx(expected, rel=1e-3)


def test_rmsprop_style_torch_is_pytorchs():
    config = make_config({"target": "m.py", "data": "fake", "out": "r", "recipe": "inception-v3",
                          "rmsprop_style": "torch"})  # fmt: skip
    assert type(build_optimizer(recipe_of(config), nn.Linear(2, 2), config.lr)) is torch.optim.RMSprop


def test_every_setting_reaches_the_recipe():
    options = {
        "target": "m.py", "data": "fake", "out": "r", "recipe": "googlenet", "optimizer": "adamw",
        "weight_decay": 0.0, "label_smoothing": 0.2, "grad_clip": 1.5, "ema": False, "schedule": "cosine",
        "warmup_epochs": 2.0, "crop_area": [0.5, 0.9], "crop_aspect": (1, 1), "flip": False,
        "photometric": 0.0, "eval_crop": 1.0, "eps": 1e-6, "betas": [0.8, 0.99],
    }  # fmt: skip
    recipe = recipe_of(make_config(options))
    assert (recipe.optimizer, recipe.weight_decay, recipe.label_smoothing) == ("adamw", 0.0, 0.2)
    assert (recipe.grad_clip, recipe.ema_decay, recipe.eps) == (1.5, None, 1e-6)
    assert recipe.schedule == recipe.schedule.__class__("cosine", 0.96, 8, 2.0)
    augment = recipe.augment
    assert (augment.crop_area, augment.crop_aspect, augment.flip) == ((0.5, 0.9), (1.0, 1.0), False)
    assert (augment.photometric, augment.eval_crop) == (0.0, 1.0)
    optimizer = build_optimizer(recipe, nn.Linear(2, 2), 0.1)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.param_groups[0]["weight_decay"] == 0.0
    assert optimizer.defaults["betas"] == (0.8, 0.99)
    decayed = recipe_of(make_config({**options, "weight_decay": 0.1, "decay_all": True}))
    groups = build_optimizer(decayed, nn.Linear(2, 2), 0.1).param_groups  # the weight, then the bias
    assert [group["weight_decay"] for group in groups] == [0.1, 0.1]
    groups = build_optimizer(replace(decayed, decay_all=False), nn.Linear(2, 2), 0.1).param_groups
    assert [group["weight_decay"] for group in groups] == [0.1, 0.0]
    # a recipe's own settings come back unchanged
    for name, original in RECIPES.items():
        config = make_config({"target": "m.py", "data": "fake", "out": "r", "recipe": name})
        assert recipe_of(config) == original, name


def test_warm_up_applies_to_a_step_schedule_too():
    schedule = RECIPES["googlenet"].schedule.__class__("step", 0.5, 2, warmup_epochs=1)
    factors = [lr_multiplier(schedule, 10, 50, step) for step in range(30)]
    assert factors[0] == pytest.approx(1 / 11) and factors[9] == pytest.approx(10 / 11)
    assert factors[10:20] == [1.0] * 10 and factors[20:30] == [0.5] * 10
    constant = schedule.__class__("constant")
    assert {lr_multiplier(constant, 10, 50, step) for step in range(50)} == {1.0}
