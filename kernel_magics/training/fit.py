"""The training loop: seeded, checked up front, reported per batch and per epoch, interruptible.

It runs in the notebook kernel and knows nothing of MLflow: the caller passes ``on_epoch`` to
log each epoch and registers the model afterwards.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from kernel_magics.errors import InvalidInput, TrainingInterrupted
from kernel_magics.training.data import PreparedData
from kernel_magics.training.metrics import format_value, key_metrics, task_metrics
from kernel_magics.widgets.progress import NullProgress

if TYPE_CHECKING:  # the widgets module is only needed for the type, never at import time
    from kernel_magics.widgets.progress import Progress

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
EVAL_CHUNK = 1024  # rows per forward when evaluating: bounded memory on large validation sets


@dataclass
class EpochResult:
    epoch: int  # 1-based
    epochs: int
    train_loss: float  # mean loss over the epoch's batches, weighted by batch size
    val_loss: float
    metrics: dict[str, float]  # on the validation set (on the training set if metrics_on="train")
    seconds: float
    metrics_on: str = "validation"


@dataclass
class FitResult:
    history: list[EpochResult]
    final_metrics: dict[str, float]  # train_loss, val_loss and the metrics of the last epoch
    seconds: float
    interrupted: bool = False  # an interrupt raises TrainingInterrupted, so a result has False
    metrics_on: str = "validation"
    steps_per_epoch: int = 0


def fit(
    model: torch.nn.Module,
    data: PreparedData,
    *,
    epochs: int = 5,
    lr: float = 1e-3,
    batch_size: int = 64,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    seed: int = 0,
    on_epoch: Callable[[EpochResult], None] | None = None,
    progress: Progress | None = None,
) -> FitResult:
    """Train ``model`` in place on ``data``; the same call gives the same weights.

    Cross-entropy for classification, MSE for regression. A kernel interrupt stops cleanly and
    raises ``TrainingInterrupted``; the model is left in eval mode and usable either way.
    """
    _check_args(model, data, epochs, lr, batch_size, weight_decay, seed)
    opt = _optimizer(model, optimizer, lr, weight_decay)
    device = _device(model)
    try:
        _check_model(model, data, device)
    except KeyboardInterrupt as exc:
        raise TrainingInterrupted("training interrupted before the first epoch") from exc

    reporter = progress if progress is not None else NullProgress()
    sizes = _batch_sizes(len(data.X_train), batch_size)
    loss_fn = _loss(data.task)
    history: list[EpochResult] = []
    epoch = 0
    started = time.perf_counter()
    reporter.start(epochs, len(sizes), type(model).__name__)
    try:
        # fork_rng: seeding must not reset the notebook's own random stream.
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)  # dropout and other in-model randomness
            shuffle = torch.Generator().manual_seed(seed)
            for epoch in range(1, epochs + 1):
                epoch_started = time.perf_counter()
                model.train()
                train_loss = _train_epoch(
                    model, opt, loss_fn, data, sizes, shuffle, device, reporter, epoch, epochs
                )
                val_loss, metrics = _evaluate(model, loss_fn, data, device, batch_size)
                result = EpochResult(
                    epoch=epoch,
                    epochs=epochs,
                    train_loss=train_loss,
                    val_loss=val_loss,
                    metrics=metrics,
                    seconds=time.perf_counter() - epoch_started,
                    metrics_on=data.metrics_on,
                )
                history.append(result)
                reporter.epoch_end(result)
                if on_epoch is not None:
                    on_epoch(result)
    except KeyboardInterrupt as exc:
        _settle(model)
        message = f"training interrupted at epoch {max(epoch, 1)}/{epochs}"
        reporter.finish("interrupted", message)
        error = TrainingInterrupted(message)
        error.history = history  # what finished before the interrupt, for callers who want it
        raise error from exc
    except BaseException as exc:
        _settle(model)
        reporter.finish("failed", _first_line(exc))
        raise
    _settle(model)
    seconds = time.perf_counter() - started
    last = history[-1]
    final = {"train_loss": last.train_loss, "val_loss": last.val_loss, **last.metrics}
    reporter.finish("done", _summary(epochs, seconds, last))
    return FitResult(
        history=history,
        final_metrics=final,
        seconds=seconds,
        interrupted=False,
        metrics_on=data.metrics_on,
        steps_per_epoch=len(sizes),
    )


# -- checks -------------------------------------------------------------------------------------
def _check_args(
    model: Any, data: Any, epochs: Any, lr: Any, batch_size: Any, weight_decay: Any, seed: Any
) -> None:
    if not isinstance(model, torch.nn.Module):
        raise InvalidInput(f"the model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(data, PreparedData):
        raise InvalidInput(f"data must come from prepare_data(), got {type(data).__name__}")
    if not _is_int(epochs) or epochs < 1:
        raise InvalidInput(f"epochs must be a whole number >= 1, got {epochs!r}")
    if not _is_number(lr) or not lr > 0 or not math.isfinite(lr):
        raise InvalidInput(f"lr must be a positive number, got {lr!r}")
    if not _is_int(batch_size) or batch_size < 1:
        raise InvalidInput(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    if not _is_number(weight_decay) or not 0 <= weight_decay < math.inf:
        raise InvalidInput(f"weight_decay must be a number >= 0, got {weight_decay!r}")
    if not _is_int(seed):
        raise InvalidInput(f"seed must be an integer, got {seed!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _optimizer(
    model: torch.nn.Module, name: Any, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    key = name.lower() if isinstance(name, str) else name
    if key not in OPTIMIZERS:
        raise InvalidInput(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise InvalidInput("the model has no trainable parameters")
    if key == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if key == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if key == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay)


def _device(model: torch.nn.Module) -> torch.device:
    """Batches go where the model's weights are (a GPU model stays on the GPU)."""
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def _check_model(model: torch.nn.Module, data: PreparedData, device: torch.device) -> None:
    """One forward on 2 training rows, so a mismatched model fails before any run is logged."""
    batch = data.X_train[:2].to(device)
    was_training = model.training
    model.eval()  # no dropout and no BatchNorm statistics updates from the probe
    try:
        with torch.no_grad():
            out = model(batch)
    except Exception as exc:
        raise InvalidInput(
            "model failed on a batch of the training data: "
            f"{type(exc).__name__}: {_first_line(exc)}"
        ) from exc
    finally:
        model.train(was_training)
    _check_output(out, data, len(batch))


def _check_output(out: Any, data: PreparedData, rows: int) -> None:
    if not isinstance(out, torch.Tensor):
        raise InvalidInput(f"model returned a {type(out).__name__}; it must return one tensor")
    if not out.is_floating_point():
        raise InvalidInput(f"model output has dtype {out.dtype}; it must be floating point")
    k = data.n_outputs
    if data.task == "classification":
        wanted = f"{k} classes"
    else:
        wanted = f"{k} target column" + ("s" if k != 1 else "")
    if out.ndim == 1 and data.task == "regression" and k == 1:
        out = out.reshape(-1, 1)  # a (rows,) output is fine for a single target
    if out.ndim != 2:
        raise InvalidInput(
            f"model output has shape {tuple(out.shape)} for {rows} rows; "
            f"it must be (rows, {k}) for {wanted}"
        )
    if out.shape[0] != rows:
        raise InvalidInput(f"model returned {out.shape[0]} rows for a batch of {rows}")
    if out.shape[1] != k:
        raise InvalidInput(f"model output has {out.shape[1]} columns but the data has {wanted}")


# -- loop ---------------------------------------------------------------------------------------
def _loss(task: str) -> torch.nn.Module:
    return torch.nn.CrossEntropyLoss() if task == "classification" else torch.nn.MSELoss()


def _batch_sizes(n: int, batch_size: int) -> list[int]:
    """Batch sizes for one epoch; a trailing batch of 1 row is merged into the one before it,
    because BatchNorm cannot train on a single row."""
    sizes = [batch_size] * (n // batch_size)
    rest = n % batch_size
    if rest == 1 and sizes:
        sizes[-1] += 1
    elif rest:
        sizes.append(rest)
    return sizes


def _forward(model: torch.nn.Module, x: torch.Tensor, task: str) -> torch.Tensor:
    out = model(x)
    return out.reshape(-1, 1) if task == "regression" and out.ndim == 1 else out


def _train_epoch(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    loss_fn: torch.nn.Module,
    data: PreparedData,
    sizes: list[int],
    shuffle: torch.Generator,
    device: torch.device,
    reporter: Any,
    epoch: int,
    epochs: int,
) -> float:
    # Index batches straight from the tensors: a DataLoader's per-row collate costs more than
    # the step itself for tabular data; the seeded generator gives the same shuffle every run.
    order = torch.randperm(len(data.X_train), generator=shuffle)
    total, seen = 0.0, 0
    for idx in torch.split(order, sizes):
        x = data.X_train[idx].to(device)
        y = data.y_train[idx].to(device)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(_forward(model, x, data.task), y)
        loss.backward()
        opt.step()
        value = loss.item()
        if not math.isfinite(value):
            raise InvalidInput(
                f"training diverged at epoch {epoch}/{epochs}: the loss became {value}; "
                "try a smaller lr or scale the features"
            )
        total += value * len(idx)
        seen += len(idx)
        reporter.step(value)
    return total / seen


def _evaluate(
    model: torch.nn.Module,
    loss_fn: torch.nn.Module,
    data: PreparedData,
    device: torch.device,
    batch_size: int,
) -> tuple[float, dict[str, float]]:
    """Loss and metrics on the validation rows, or on the training rows when there are none."""
    if data.metrics_on == "validation":
        X, y = data.X_val, data.y_val
    else:
        X, y = data.X_train, data.y_train
    chunk = max(batch_size, EVAL_CHUNK)
    model.eval()
    with torch.no_grad():
        outs = [
            _forward(model, X[i : i + chunk].to(device), data.task).float().cpu()
            for i in range(0, len(X), chunk)
        ]
    out = torch.cat(outs)
    loss = float(loss_fn(out, y).item())
    return loss, task_metrics(data.task, y, out)


def _settle(model: torch.nn.Module) -> None:
    """Leave the model ready to predict: eval mode, no stale gradients from a cut-off step."""
    model.eval()
    model.zero_grad(set_to_none=True)


# -- reporting ----------------------------------------------------------------------------------
def _summary(epochs: int, seconds: float, last: EpochResult) -> str:
    shown = ", ".join(f"{k} {format_value(v)}" for k, v in key_metrics(last.metrics).items())
    where = "validation" if last.metrics_on == "validation" else "training set, no validation"
    noun = "epoch" if epochs == 1 else "epochs"
    return f"trained {epochs} {noun} in {seconds:.1f} s; {shown} ({where})"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__
