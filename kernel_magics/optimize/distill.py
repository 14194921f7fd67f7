"""Knowledge distillation: a small student learns from the teacher's softened outputs and the
true labels, trained by ``kernel_magics.training`` (``fit`` with a custom loss).

The loss is Hinton's: ``alpha · T² · KL(p_teacher ‖ p_student) + (1 − alpha) · CE(student, y)``
with ``p = softmax(logits / T)``. The teacher's logits for every training row are computed once
(they do not change) and travel with the labels as the targets the loss receives, so ``fit``
runs unchanged. The same student is also trained on the labels alone (same initial weights,
seed and epochs) so the table can show whether distillation helped — on small data it often
does not.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kernel_magics.errors import InvalidInput, first_line
from kernel_magics.training.config import TrainConfig
from kernel_magics.training.data import PreparedData


class DistillationLoss:
    """``(student logits, [label, teacher logits...]) -> scalar``: a ``fit`` custom loss."""

    def __init__(self, temperature: float, alpha: float) -> None:
        self.temperature = temperature
        self.alpha = alpha

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if targets.ndim == 1:  # labels alone (the validation rows): the task's own loss
            return F.cross_entropy(outputs, targets.long())
        labels, teacher = targets[:, 0].long(), targets[:, 1:]
        t = self.temperature
        soft = F.kl_div(
            F.log_softmax(outputs / t, dim=-1),
            F.log_softmax(teacher / t, dim=-1),
            log_target=True,
            reduction="batchmean",
        )
        return self.alpha * t * t * soft + (1 - self.alpha) * F.cross_entropy(outputs, labels)


@dataclass
class Distilled:
    student: torch.nn.Module  # trained on the teacher and the labels
    labels_only: torch.nn.Module  # the same student trained on the labels alone
    history: list[Any]  # the distillation's EpochResults


def check_student(student: Any, data: PreparedData, classes: int) -> torch.nn.Module:
    """A module answering (rows, classes) scores for the data's rows."""
    if not isinstance(student, torch.nn.Module):
        raise InvalidInput(f"the student must be a torch.nn.Module, got {type(student).__name__}")
    if data.task != "classification":
        raise InvalidInput("distillation needs a classification model and class labels")
    student.eval()
    with torch.no_grad():
        try:
            out = student(data.X_train[:2])
        except Exception as err:
            raise InvalidInput(
                f"the student failed on the data: {type(err).__name__}: {first_line(err)}"
            ) from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InvalidInput(f"the student must answer (rows, {classes}) class scores, got {shape}")
    return student


def distill(
    teacher: Callable[[np.ndarray], np.ndarray],
    student: torch.nn.Module,
    data: PreparedData,
    config: TrainConfig,
    *,
    temperature: float,
    alpha: float,
    on_epoch: Callable[[Any], None] | None = None,
    progress: Any = None,
    title: str | None = None,
) -> Distilled:
    """Train ``student`` (in place) on ``teacher``'s outputs and the labels; train a copy of its
    initial weights on the labels alone for comparison. The teacher's outputs ride along with
    the training labels only: validation keeps the plain labels, so its loss is cross-entropy
    and its metrics (accuracy, F1) are measured as ``%train`` measures them."""
    from kernel_magics.training.fit import fit

    baseline = copy.deepcopy(student)
    packed = dataclasses.replace(
        data,
        y_train=_pack(data.y_train, teacher(data.X_train.numpy())),
    )
    loss = DistillationLoss(temperature, alpha)
    fitted = fit(
        student,
        packed,
        config.replace(loss=loss),
        on_epoch=on_epoch,
        progress=progress,
        title=title,
    )
    fit(baseline, data, config.replace(loss=None))
    return Distilled(student, baseline, fitted.history)


def _pack(labels: torch.Tensor, logits: np.ndarray) -> torch.Tensor:
    teacher = torch.from_numpy(np.asarray(logits, dtype=np.float32))
    return torch.cat([labels.reshape(-1, 1).float(), teacher], dim=1)
