"""The loss a generated model is trained with: torch only, so that ``incdsl bench`` times the
trainer's own loss without the trainer's data dependencies."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def training_loss(
    outputs: Tensor | tuple, labels: Tensor, aux_weights: dict[str, float], smoothing: float
) -> Tensor:
    """The main head's cross-entropy plus each auxiliary head's, weighted as the spec says."""
    if not isinstance(outputs, tuple):
        return F.cross_entropy(outputs, labels, label_smoothing=smoothing)
    loss = F.cross_entropy(outputs.logits, labels, label_smoothing=smoothing)
    for name, weight in aux_weights.items():
        loss = loss + weight * F.cross_entropy(getattr(outputs, name), labels, label_smoothing=smoothing)
    return loss
