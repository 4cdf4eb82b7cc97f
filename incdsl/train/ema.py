"""Polyak averaging: an exponential moving average (EMA) of a model's weights, used for evaluation."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """A frozen copy of ``model`` whose weights and buffers trail the model's.

    The decay ramps up as ``(1 + n) / (10 + n)`` over the first updates (as TensorFlow's
    ExponentialMovingAverage with ``num_updates``), so that short runs are not dominated by the
    initial weights.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0
        pairs = zip(
            self.module.state_dict(keep_vars=True).values(), model.state_dict(keep_vars=True).values()
        )
        pairs = [(mine, theirs) for mine, theirs in pairs]
        self.floats = [(mine, theirs) for mine, theirs in pairs if mine.is_floating_point()]
        self.others = [(mine, theirs) for mine, theirs in pairs if not mine.is_floating_point()]

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the model's current weights."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        mine, theirs = zip(*self.floats)
        torch._foreach_lerp_(list(mine), [t.detach() for t in theirs], 1.0 - decay)
        for mine, theirs in self.others:
            mine.copy_(theirs)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = state["updates"]
