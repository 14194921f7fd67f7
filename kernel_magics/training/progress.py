"""How training reports progress: the ``Progress`` protocol, the reporters the core owns (text
lines, nothing), and the registry through which a front end adds its own.

``fit`` calls ``step`` after every batch, so a reporter must keep it cheap; text mode prints only
per epoch (no carriage-return spam in papermill outputs or CI logs). The core never imports a
front end: ``%load_ext kernel_magics`` registers the notebook widget under "widget", and "auto"
picks it inside a Jupyter kernel once it is registered, text lines anywhere else.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from kernel_magics.errors import InvalidInput
from kernel_magics.metric_names import key_metrics
from kernel_magics.training.metrics import format_value

if TYPE_CHECKING:
    from kernel_magics.training.fit import EpochResult

MODES = ("auto", "widget", "text", "none")
ENV_VAR = "KERNEL_MAGICS_PROGRESS"


@runtime_checkable
class Progress(Protocol):
    def start(self, epochs: int, steps_per_epoch: int, title: str) -> None: ...
    def step(self, loss: float) -> None: ...
    def epoch_end(self, result: EpochResult) -> None: ...
    def finish(self, status: str, message: str) -> None: ...


class StopRequested(Exception):
    """Raised by ``fit`` between two batches when the reporter asked to stop (the widget's Stop
    button); it ends the training exactly as a kernel interrupt does."""


def stop_check(reporter: object) -> Callable[[], bool] | None:
    """The reporter's optional ``stop_requested()`` (checked by ``fit`` after every batch), or
    None: the protocol's four methods stay all a reporter must have."""
    check = getattr(reporter, "stop_requested", None)
    return check if callable(check) else None


ProgressFactory = Callable[[], Progress]
_front_end_factories: dict[str, ProgressFactory] = {}


def register_progress(mode: str, factory: ProgressFactory) -> None:
    """Let a front end provide the reporter for ``mode`` (the notebook registers "widget")."""
    _front_end_factories[mode] = factory


def unregister_progress(mode: str) -> None:
    _front_end_factories.pop(mode, None)


def make_progress(mode: str = "auto") -> Progress:
    """A reporter for ``mode``: "widget", "text", "none" or "auto".

    auto: the ``KERNEL_MAGICS_PROGRESS`` environment variable when it is "text" or "none";
    otherwise the widget inside a Jupyter kernel (``ZMQInteractiveShell``) when a front end
    registered one, and text elsewhere.
    """
    if mode not in MODES:
        raise InvalidInput(f"progress must be one of {', '.join(MODES)}; got {mode!r}")
    if mode == "auto":
        mode = resolve_auto()
    if mode == "none":
        return NullProgress()
    if mode == "text":
        return TextProgress()
    factory = _front_end_factories.get(mode)
    if factory is None:
        raise InvalidInput(
            f"progress {mode!r} needs the notebook front end: run %load_ext kernel_magics first"
        )
    return factory()


def resolve_auto() -> str:
    """What "auto" means here and now: "text", "none" or "widget"."""
    env = os.environ.get(ENV_VAR, "").strip().lower()
    if env in ("text", "none"):
        return env
    return "widget" if "widget" in _front_end_factories and in_jupyter_kernel() else "text"


def in_jupyter_kernel() -> bool:
    """True inside a Jupyter kernel, where a widget can render."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


class NullProgress:
    """Reports nothing (``progress="none"``)."""

    def start(self, epochs: int, steps_per_epoch: int, title: str) -> None:
        pass

    def step(self, loss: float) -> None:
        pass

    def epoch_end(self, result: EpochResult) -> None:
        pass

    def finish(self, status: str, message: str) -> None:
        pass


def epoch_line(result: EpochResult) -> str:
    """``epoch 3/10  train_loss 0.412  val_loss 0.398  accuracy 0.912  f1_macro 0.910  (0.4 s)``"""
    width = len(str(result.epochs))
    parts = [
        f"epoch {result.epoch:>{width}}/{result.epochs}",
        f"train_loss {format_value(result.train_loss)}",
        f"val_loss {format_value(result.val_loss)}",
    ]
    parts += [f"{k} {format_value(v)}" for k, v in key_metrics(result.metrics).items()]
    if result.metrics_on != "validation":
        parts.append("[no validation set: on training rows]")
    parts.append(f"({result.seconds:.1f} s)")
    return "  ".join(parts)


class TextProgress:
    """One line per epoch and a final line, printed to stdout (whatever it is at that moment)."""

    def __init__(self) -> None:
        self.title = ""

    def start(self, epochs: int, steps_per_epoch: int, title: str) -> None:
        self.title = title

    def step(self, loss: float) -> None:
        pass  # per-batch output would flood papermill outputs and CI logs

    def epoch_end(self, result: EpochResult) -> None:
        print(epoch_line(result), flush=True)

    def finish(self, status: str, message: str) -> None:
        who = f"{self.title} " if self.title else ""
        print(f"{who}{status}: {message}", file=sys.stdout, flush=True)
