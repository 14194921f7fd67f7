"""The training loop: seeded, checked up front, reported per batch and per epoch, interruptible.

It runs in the notebook kernel and knows nothing of MLflow: the caller passes ``on_epoch`` to
log each epoch and registers the model afterwards.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from kernel_magics.errors import InvalidInput, TrainingInterrupted, first_line
from kernel_magics.metric_names import key_metrics
from kernel_magics.training.config import TrainConfig
from kernel_magics.training.data import PreparedData
from kernel_magics.training.losses import Loss, check_loss_value, check_targets, make_loss
from kernel_magics.training.metrics import format_value, language_model_metrics, task_metrics
from kernel_magics.training.progress import NullProgress, Progress, StopRequested, stop_check

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
    metrics_on: str = "validation"
    steps_per_epoch: int = 0


def fit(
    model: torch.nn.Module,
    data: PreparedData,
    config: TrainConfig | None = None,
    *,
    on_epoch: Callable[[EpochResult], None] | None = None,
    progress: Progress | None = None,
    title: str | None = None,
) -> FitResult:
    """Train ``model`` in place on ``data`` as ``config`` says; the same call gives the same
    weights. ``title`` names the training for the reporter (the model's class by default).

    The loss is ``config.loss`` (cross-entropy for classification and MSE for regression by
    default). A kernel interrupt, or the reporter's ``stop_requested()`` turning true (checked
    after every batch), stops cleanly and raises ``TrainingInterrupted``; the model is left in
    eval mode and usable either way.
    """
    config = config if config is not None else TrainConfig()
    _check_args(model, data)
    epochs, batch_size, seed = config.epochs, config.batch_size, config.seed
    opt = _optimizer(model, config)
    loss_fn = make_loss(config.loss, data.task)
    check_targets(config.loss, data.y_train)
    device = model_device(model)
    try:
        _check_model(model, data, device, loss_fn, custom_loss=callable(config.loss))
    except KeyboardInterrupt as exc:
        raise TrainingInterrupted("training interrupted before the first epoch") from exc

    reporter = progress if progress is not None else NullProgress()
    sizes = _batch_sizes(len(data.X_train), batch_size)
    history: list[EpochResult] = []
    epoch = 0
    started = time.perf_counter()
    reporter.start(epochs, len(sizes), title or type(model).__name__)
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
    except (KeyboardInterrupt, StopRequested) as exc:
        _settle(model)
        how = "stopped" if isinstance(exc, StopRequested) else "interrupted"
        message = f"training {how} at epoch {max(epoch, 1)}/{epochs}"
        reporter.finish("interrupted", message)
        error = TrainingInterrupted(message)
        # what finished before the interrupt, for callers who want it
        error.history = history  # type: ignore[attr-defined]
        raise error from exc
    except BaseException as exc:
        _settle(model)
        reporter.finish("failed", first_line(exc))
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
        metrics_on=data.metrics_on,
        steps_per_epoch=len(sizes),
    )


# -- checks -------------------------------------------------------------------------------------
def _check_args(model: Any, data: Any) -> None:
    if not isinstance(model, torch.nn.Module):
        raise InvalidInput(f"the model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(data, PreparedData):
        raise InvalidInput(f"data must come from prepare_data(), got {type(data).__name__}")


def _optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise InvalidInput("the model has no trainable parameters")
    lr, weight_decay = config.lr, config.weight_decay
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay)


def model_device(model: torch.nn.Module) -> torch.device:
    """Batches go where the model's weights are (a GPU model stays on the GPU)."""
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def _check_model(
    model: torch.nn.Module,
    data: PreparedData,
    device: torch.device,
    loss_fn: Loss,
    *,
    custom_loss: bool,
) -> None:
    """One forward and one loss on 2 training rows, so a model (or loss) that does not fit the
    data fails before any run is logged."""
    batch, targets = data.X_train[:2].to(device), data.y_train[:2].to(device)
    try:
        with eval_mode(model), torch.no_grad():
            out = model(batch)
    except Exception as exc:
        raise InvalidInput(
            "model failed on a batch of the training data: "
            f"{type(exc).__name__}: {first_line(exc)}{_dtype_hint(batch)}"
        ) from exc
    _check_output(out, data, len(batch), shapes=not custom_loss)
    try:
        value = loss_fn(_as_loss_input(out, data.task), targets)
    except Exception as exc:
        raise InvalidInput(
            f"the loss failed on a batch of the training data: {type(exc).__name__}: "
            f"{first_line(exc)}"
        ) from exc
    check_loss_value(value)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Probe or export in eval mode (no dropout, no BatchNorm statistics updates); the model is
    left in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _dtype_hint(batch: torch.Tensor) -> str:
    if batch.dtype in (torch.int64, torch.bool):
        return (
            f" (X is {str(batch.dtype).removeprefix('torch.')}, kept for token ids and masks: "
            "pass X.astype('float32') if these are numeric features)"
        )
    return ""


def _check_output(out: Any, data: PreparedData, rows: int, *, shapes: bool) -> None:
    """The output a built-in loss can use: class scores in the last dimension for every label
    (rows, classes) or (rows, positions, classes), or the targets' own shape for regression.
    With a custom loss (``shapes`` False) only the loss decides what fits."""
    if not isinstance(out, torch.Tensor):
        raise InvalidInput(f"model returned a {type(out).__name__}; it must return one tensor")
    if not out.is_floating_point():
        raise InvalidInput(f"model output has dtype {out.dtype}; it must be floating point")
    if not shapes:
        if out.ndim == 0 or out.shape[0] != rows:
            raise InvalidInput(f"model output has shape {tuple(out.shape)} for {rows} rows")
        return
    k, label_dims = data.n_outputs, tuple(data.y_train.shape[1:])
    if data.task == "classification":
        wanted, expected = f"{k} classes", (*label_dims, k)
    else:
        wanted, expected = f"{k} target column" + ("s" if k != 1 else ""), label_dims
    if out.ndim == 1 and data.task == "regression" and k == 1:
        out = out.reshape(-1, 1)  # a (rows,) output is fine for a single target
    if out.ndim != 1 + len(expected):
        hint = ""
        if data.task == "regression" and out.ndim == 2 + len(label_dims):
            hint = " (for one class label per position, pass task='classification')"
        raise InvalidInput(
            f"model output has shape {tuple(out.shape)} for {rows} rows; "
            f"it must be {_shape_text(expected)} for {wanted}{hint}"
        )
    if out.shape[0] != rows:
        raise InvalidInput(f"model returned {out.shape[0]} rows for a batch of {rows}")
    if out.shape[-1] != expected[-1]:
        raise InvalidInput(f"model output has {out.shape[-1]} columns but the data has {wanted}")
    if tuple(out.shape[1:]) != expected:
        raise InvalidInput(
            f"model output has shape {tuple(out.shape)} for labels of shape "
            f"{(rows, *label_dims)}; it must be {_shape_text(expected)}"
        )


def _shape_text(row_shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(["rows", *map(str, row_shape)]) + ")"


# -- loop ---------------------------------------------------------------------------------------
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
    return _as_loss_input(model(x), task)


def _as_loss_input(out: torch.Tensor, task: str) -> torch.Tensor:
    """A single regression target may come back as a vector (rows,): the loss gets (rows, 1)."""
    return out.reshape(-1, 1) if task == "regression" and out.ndim == 1 else out


def train_step(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    loss_fn: Loss,
    data: PreparedData,
    idx: torch.Tensor,
    device: torch.device,
    epoch: int,
    epochs: int,
) -> float:
    """One optimizer step on the training rows ``idx``; its loss. One process or one DDP rank
    (``ddp_worker``) alike; a loss that stops being finite ends the training in one line."""
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
    return value


def _train_epoch(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    loss_fn: Loss,
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
    should_stop = stop_check(reporter)
    for idx in torch.split(order, sizes):
        value = train_step(model, opt, loss_fn, data, idx, device, epoch, epochs)
        total += value * len(idx)
        seen += len(idx)
        reporter.step(value)
        if should_stop is not None and should_stop():
            raise StopRequested
    return total / seen


def _evaluate(
    model: torch.nn.Module,
    loss_fn: Loss,
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
    if data.language_model:
        return loss, language_model_metrics(loss, y, out)
    if data.target_scaling is not None:  # metrics in the targets' own units
        from kernel_magics.training.scaling import unscale_targets

        y, out = unscale_targets(y, data), unscale_targets(out, data)
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
