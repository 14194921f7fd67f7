"""Training progress: a live widget in a notebook, one line per epoch anywhere else.

``fit`` calls ``step`` after every batch, so a reporter must keep it cheap: the widget counts
batches and redraws at most ``max_redraws_per_s`` times a second; text mode prints only per
epoch (no carriage-return spam in papermill outputs or CI logs). ipywidgets is imported only
when a widget is built, so importing the training code stays light.
"""

from __future__ import annotations

import html
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from kernel_magics.errors import InvalidInput
from kernel_magics.training.metrics import format_value, key_metrics

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


def make_progress(mode: str = "auto") -> Progress:
    """A reporter for ``mode``: "widget", "text", "none" or "auto".

    auto: the ``KERNEL_MAGICS_PROGRESS`` environment variable when it is "text" or "none";
    otherwise a widget inside a Jupyter kernel (``ZMQInteractiveShell``) and text elsewhere.
    """
    if mode not in MODES:
        raise InvalidInput(f"progress must be one of {', '.join(MODES)}; got {mode!r}")
    if mode == "auto":
        mode = resolve_auto()
    if mode == "none":
        return NullProgress()
    if mode == "text":
        return TextProgress()
    return WidgetProgress()


def resolve_auto() -> str:
    """What "auto" means here and now: "text", "none" or "widget"."""
    env = os.environ.get(ENV_VAR, "").strip().lower()
    if env in ("text", "none"):
        return env
    return "widget" if _in_jupyter_kernel() else "text"


def _in_jupyter_kernel() -> bool:
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


_BAR_STYLES = {"done": "success", "interrupted": "warning", "failed": "danger"}


class WidgetProgress:
    """A VBox: title, progress bar with a label (epoch, loss, ETA), loss curve, metrics table."""

    def __init__(
        self, *, max_redraws_per_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        import ipywidgets as widgets

        self._clock = clock
        self._interval = 1.0 / max_redraws_per_s
        self.title = widgets.HTML()
        self.bar = widgets.IntProgress(min=0, max=1, value=0, layout=widgets.Layout(width="50%"))
        self.label = widgets.Label()
        self.plot = widgets.HTML()
        self.table = widgets.HTML()
        self.box = widgets.VBox(
            [self.title, widgets.HBox([self.bar, self.label]), self.plot, self.table]
        )
        self.history: list[EpochResult] = []
        self.redraws = 0  # label/bar redraws from step(): lets tests check the throttle
        self._handle = None  # the output the box is shown in: a static summary replaces it
        self._reset(1, 1)

    def _reset(self, epochs: int, steps_per_epoch: int) -> None:
        self.epochs, self.steps_per_epoch = epochs, max(steps_per_epoch, 1)
        self.total = self.epochs * self.steps_per_epoch
        self.done = 0
        self.history = []
        self._epoch_loss, self._epoch_steps = 0.0, 0
        self._started = self._last_draw = self._clock()

    def _ipython_display_(self) -> None:  # ``display(progress)`` shows the box
        from IPython.display import display

        display(self.box)

    def start(self, epochs: int, steps_per_epoch: int, title: str) -> None:
        from IPython.display import display

        self._reset(epochs, steps_per_epoch)
        self.title.value = f"<b>Training {html.escape(title)}</b>"
        self.bar.max, self.bar.value, self.bar.bar_style = self.total, 0, ""
        self.label.value = f"epoch 1/{epochs}"
        self._draw_epochs()
        self._handle = display(self.box, display_id=True)

    def step(self, loss: float) -> None:
        if self._epoch_steps >= self.steps_per_epoch:  # a new epoch began without epoch_end
            self._epoch_loss, self._epoch_steps = 0.0, 0
        self.done += 1
        self._epoch_loss += loss
        self._epoch_steps += 1
        now = self._clock()
        if now - self._last_draw >= self._interval:
            self._last_draw = now
            self.redraws += 1
            self._draw_step(now)

    def _draw_step(self, now: float) -> None:
        self.bar.value = min(self.done, self.total)
        epoch = min(self.done // self.steps_per_epoch + 1, self.epochs)
        loss = self._epoch_loss / max(self._epoch_steps, 1)
        elapsed = now - self._started
        eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        self.label.value = (
            f"epoch {epoch}/{self.epochs}  running loss {format_value(loss)}  ETA {_duration(eta)}"
        )

    def epoch_end(self, result: EpochResult) -> None:
        self.history.append(result)
        self.done = result.epoch * self.steps_per_epoch  # resync with the loop's own count
        self._epoch_loss, self._epoch_steps = 0.0, 0
        self.bar.value = min(self.done, self.total)
        remaining = (self._clock() - self._started) / result.epoch * (self.epochs - result.epoch)
        self.label.value = (
            f"epoch {result.epoch}/{result.epochs}  train_loss {format_value(result.train_loss)}"
            f"  val_loss {format_value(result.val_loss)}  ETA {_duration(remaining)}"
        )
        self._draw_epochs()

    def finish(self, status: str, message: str) -> None:
        self.bar.bar_style = _BAR_STYLES.get(status, "")
        if status == "done":
            self.bar.value = self.total
        self.label.value = message
        # Widget views live only as long as the kernel: a saved notebook reopened later would
        # show "model not found". Replace the live box with the same content as static HTML.
        if self._handle is not None:
            from IPython.display import HTML

            self._handle.update(HTML(self.summary_html(status, message)))

    def summary_html(self, status: str, message: str) -> str:
        """The finished widget as static HTML: title, final bar, curve, metrics table."""
        colour = {"done": "#4caf50", "interrupted": "#ff9800", "failed": "#f44336"}.get(
            status, "#2196f3"
        )
        share = 100 * min(self.done, self.total) / max(self.total, 1)
        bar = (
            '<div style="display:flex;align-items:center;gap:8px;margin:4px 0">'
            '<div style="width:50%;height:12px;background:#eee;border-radius:2px">'
            f'<div style="width:{share:.0f}%;height:100%;background:{colour};border-radius:2px">'
            f"</div></div><span>{html.escape(message)}</span></div>"
        )
        return f"<div>{self.title.value}{bar}{self.plot.value}{self.table.value}</div>"

    def _draw_epochs(self) -> None:
        from kernel_magics.widgets._svg import line_chart

        on_train = bool(self.history) and self.history[-1].metrics_on != "validation"
        val_label = "eval loss (training rows)" if on_train else "val loss"
        self.plot.value = line_chart(
            [
                ("train loss", [r.train_loss for r in self.history]),
                (val_label, [r.val_loss for r in self.history]),
            ]
        )
        self.table.value = metrics_table(self.history)


TABLE_ROWS = 10  # the newest epochs shown; every epoch is in the MLflow run and the curve


def metrics_table(history: list[EpochResult], max_rows: int = TABLE_ROWS) -> str:
    """An HTML table, one row per epoch (the newest ``max_rows``): losses, metrics, seconds."""
    names = list(history[0].metrics) if history else []
    hidden = max(0, len(history) - max_rows)
    history = history[hidden:]
    head = ["epoch", "train_loss", "val_loss", *names, "seconds"]
    cell = 'style="padding:2px 10px;text-align:right"'
    rows = [
        "".join(f"<th {cell}>{html.escape(h)}</th>" for h in head),
        *(
            "".join(
                f"<td {cell}>{v}</td>"
                for v in [
                    f"{r.epoch}/{r.epochs}",
                    format_value(r.train_loss),
                    format_value(r.val_loss),
                    *(format_value(r.metrics.get(n, float("nan"))) for n in names),
                    f"{r.seconds:.1f}",
                ]
            )
            for r in history
        ),
    ]
    if hidden:
        note = f"… {hidden} earlier epoch{'s' if hidden > 1 else ''} (all in the MLflow run)"
        rows.insert(1, f'<td {cell} colspan="{len(head)}">{note}</td>')
    body = "".join(f"<tr>{row}</tr>" for row in rows)
    return f'<table style="border-collapse:collapse;font-size:0.9em">{body}</table>'


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"
