"""Losses: the built-in ones by name, or any callable ``(outputs, targets) -> scalar tensor``.

Built-in losses take the model's output as it comes: cross-entropy reads the class scores from
the last dimension, so (rows, classes) against labels (rows,) and (rows, positions, classes)
against labels (rows, positions) both work (torch wants the classes at dim 1: they are moved
there). The regression losses compare outputs and targets of the same shape.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from kernel_magics.errors import InvalidInput
from kernel_magics.training.config import DEFAULT_LOSS, LossFn, check_loss

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(outputs.movedim(-1, 1) if outputs.ndim > 2 else outputs, targets)


BUILTIN: dict[str, Loss] = {
    "cross_entropy": _cross_entropy,
    "mse": F.mse_loss,
    "l1": F.l1_loss,
    "huber": F.huber_loss,
    "bce": F.binary_cross_entropy_with_logits,
}


def make_loss(loss: str | LossFn | None, task: str) -> Loss:
    """The loss function for ``loss`` (None: the task's default) on targets prepared for
    ``task``."""
    check_loss(loss, task)
    if loss is None:
        return BUILTIN[DEFAULT_LOSS[task]]
    if isinstance(loss, str):
        return BUILTIN[loss]
    return loss


def check_targets(loss: str | LossFn | None, targets: torch.Tensor) -> None:
    """Targets a built-in loss cannot use, found before training starts."""
    if loss == "bce" and len(targets) and (targets.min() < 0 or targets.max() > 1):
        raise InvalidInput("loss 'bce' needs targets between 0 and 1 (labels or probabilities)")


def check_loss_value(value: object) -> torch.Tensor:
    """A custom loss must give one number that gradients can flow from."""
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise InvalidInput(f"the loss must return a scalar tensor, got {shape}")
    if not value.is_floating_point():
        raise InvalidInput(f"the loss must return a floating-point tensor, got {value.dtype}")
    return value
