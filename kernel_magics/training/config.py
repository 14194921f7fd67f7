"""The training hyper-parameters, in one place.

``%train`` builds a ``TrainConfig`` from its options, ``api.train`` from its keyword arguments,
``fit`` trains by it, and the MLflow run's parameters come from ``params()``. Every value is
checked when the config is made, so a bad one fails before any data is read or run is opened.

No torch here: the magics import this module when the extension loads.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kernel_magics.errors import InvalidInput
from kernel_magics.preprocess import check_encode, check_scale

TASKS = ("classification", "regression")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
# Built-in losses and the task (the kind of targets) each one needs: class indices for
# cross-entropy, numbers for the others (bce: numbers between 0 and 1).
LOSS_TASKS = {
    "cross_entropy": "classification",
    "mse": "regression",
    "l1": "regression",
    "huber": "regression",
    "bce": "regression",
}
DEFAULT_LOSS = {"classification": "cross_entropy", "regression": "mse"}
# Losses whose regression targets are scaled with the features (and answered in raw units by
# the registered graph); bce needs its targets in [0, 1] and a custom loss may assume raw ones.
SCALED_TARGET_LOSSES = ("mse", "l1", "huber")

# A custom loss: ``loss(outputs, targets)`` returns a scalar tensor.
LossFn = Callable[[Any, Any], Any]


@dataclass(frozen=True)
class TrainConfig:
    """How to train: the loop's hyper-parameters and how the data is split.

    ``task`` None infers it from the targets (or from a built-in ``loss``); ``loss`` None is
    cross-entropy for classification and MSE for regression.
    """

    epochs: int = 5
    lr: float = 1e-3
    batch_size: int = 64
    optimizer: str = "adam"
    weight_decay: float = 0.0
    val_split: float = 0.2
    seed: int = 0
    task: str | None = None
    loss: str | LossFn | None = None
    # Preprocessing that becomes part of the registered version (preprocess.py): scaling of
    # float features (and of regression targets), one-hot codes of string DataFrame columns.
    scale: str = "standard"
    encode: str | None = None
    # Distributed training (training/distributed.py): processes per node under torchrun,
    # nodes, and the rendezvous HOST:PORT every node uses (needed when nnodes > 1).
    nproc: int = 1
    nnodes: int = 1
    rdzv_endpoint: str | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.epochs) or self.epochs < 1:
            raise InvalidInput(f"epochs must be a whole number >= 1, got {self.epochs!r}")
        if not _is_number(self.lr) or not self.lr > 0 or not math.isfinite(self.lr):
            raise InvalidInput(f"lr must be a positive number, got {self.lr!r}")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise InvalidInput(f"batch_size must be a whole number >= 1, got {self.batch_size!r}")
        if not _is_number(self.weight_decay) or not 0 <= self.weight_decay < math.inf:
            raise InvalidInput(f"weight_decay must be a number >= 0, got {self.weight_decay!r}")
        key = self.optimizer.lower() if isinstance(self.optimizer, str) else self.optimizer
        if key not in OPTIMIZERS:
            raise InvalidInput(
                f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}"
            )
        object.__setattr__(self, "optimizer", key)
        check_split_options(self.task, self.val_split, self.seed)
        check_loss(self.loss, self.task)
        check_scale(self.scale)
        check_encode(self.encode)
        if self.encode == "none":
            object.__setattr__(self, "encode", None)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (and checked)."""
        return dataclasses.replace(self, **changes)

    @property
    def target_task(self) -> str | None:
        """The task the targets are prepared for: the given one, else the one a built-in loss
        implies, else None (inferred from the targets)."""
        if self.task is not None:
            return self.task
        return LOSS_TASKS.get(self.loss) if isinstance(self.loss, str) else None

    def loss_name(self, task: str) -> str:
        """The loss as the run records it: a built-in name or the callable's name."""
        if self.loss is None:
            return DEFAULT_LOSS[task]
        if isinstance(self.loss, str):
            return self.loss
        return getattr(self.loss, "__qualname__", None) or type(self.loss).__name__

    def scales_targets(self, task: str) -> bool:
        """Whether regression targets are scaled (with the features' method)."""
        loss = self.loss if self.loss is not None else DEFAULT_LOSS[task]
        return task == "regression" and self.scale != "none" and loss in SCALED_TARGET_LOSSES

    def params(self, task: str) -> dict[str, Any]:
        """The run's parameters (``task`` is the one the data was prepared for)."""
        return {
            "epochs": self.epochs,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "optimizer": self.optimizer,
            "weight_decay": self.weight_decay,
            "val_split": self.val_split,
            "seed": self.seed,
            "loss": self.loss_name(task),
            "scale": self.scale,
            "encode": self.encode or "none",
        } | (
            # how a distributed run was spread (training/distributed.py); absent for one process
            {"nproc": self.nproc, "nnodes": self.nnodes} if self.nproc * self.nnodes > 1 else {}
        )


def check_split_options(task: str | None, val_split: Any, seed: Any) -> None:
    """The options ``prepare_data`` takes (it is callable on its own, so it checks them too)."""
    if task is not None and task not in TASKS:
        raise InvalidInput(f"task must be 'classification' or 'regression', got {task!r}")
    if isinstance(val_split, bool) or not isinstance(val_split, int | float):
        raise InvalidInput(f"val_split must be a number in [0, 0.9), got {val_split!r}")
    if not 0 <= val_split < 0.9:  # also rejects NaN
        raise InvalidInput(f"val_split must be in [0, 0.9), got {val_split}")
    if not _is_int(seed):
        raise InvalidInput(f"seed must be an integer, got {seed!r}")


def check_loss(loss: Any, task: str | None) -> None:
    if loss is None or callable(loss):
        return
    if not isinstance(loss, str) or loss not in LOSS_TASKS:
        raise InvalidInput(
            f"unknown loss {loss!r}; choose one of {', '.join(LOSS_TASKS)} "
            "or pass a callable (outputs, targets) -> scalar tensor"
        )
    if task is not None and LOSS_TASKS[loss] != task:
        raise InvalidInput(
            f"loss {loss!r} is for {LOSS_TASKS[loss]} targets, but the task is {task!r}"
        )


def _is_int(value: Any) -> bool:
    # numpy integers count (a seed from np.random), bools do not
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
