"""TensorFlow's RMSProp, as Inception v3 was trained with it (Szegedy et al. 2015, section 8).

PyTorch's ``RMSprop`` divides by ``sqrt(ms) + eps`` and starts the mean square ``ms`` at 0; TensorFlow's
(``tf.compat.v1.train.RMSPropOptimizer``, which the paper's epsilon of 1.0 was chosen for) divides by
``sqrt(ms + eps)`` and starts it at 1. With epsilon 1.0 the two take steps 0.71-1.4x apart on the same
gradients. One step, for each parameter ``p`` with gradient ``g``::

    g   = g + weight_decay * p                      # L2 regularisation, added to the loss in TF-slim
    ms  = decay * ms + (1 - decay) * g**2
    mom = momentum * mom + lr * g / sqrt(ms + eps)  # the learning rate inside the momentum, as TF
    p   = p - mom

The state keeps PyTorch's names (``square_avg``, ``momentum_buffer``, ``step``).
"""

from __future__ import annotations

import torch
from torch.optim import Optimizer


class RMSpropTF(Optimizer):
    """RMSProp with TensorFlow's update: epsilon inside the square root, mean square starting at 1."""

    def __init__(self, params, lr: float, decay: float = 0.9, eps: float = 1.0, momentum: float = 0.0,
                 weight_decay: float = 0.0):  # fmt: skip
        if lr <= 0 or eps <= 0 or not 0 <= decay <= 1 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"RMSpropTF: lr {lr}, eps {eps}, decay {decay}, momentum {momentum}")
        defaults = {"lr": lr, "decay": decay, "eps": eps, "momentum": momentum, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if group["weight_decay"]:
                    grad = grad.add(param, alpha=group["weight_decay"])
                state = self.state[param]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["square_avg"] = torch.ones_like(param, memory_format=torch.preserve_format)
                if group["momentum"] > 0 and "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["step"] += 1
                square_avg = state["square_avg"]
                square_avg.mul_(group["decay"]).addcmul_(grad, grad, value=1 - group["decay"])
                scaled = grad / square_avg.add(group["eps"]).sqrt_()
                if group["momentum"] > 0:
                    buffer = state["momentum_buffer"]
                    buffer.mul_(group["momentum"]).add_(scaled, alpha=group["lr"])
                    param.sub_(buffer)
                else:
                    param.add_(scaled, alpha=-group["lr"])
        return loss
