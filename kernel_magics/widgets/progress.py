"""The training progress widget for notebooks: it implements ``training.progress.Progress``.

``%load_ext kernel_magics`` registers it (``register()``) as the reporter for "widget", which
"auto" picks inside a Jupyter kernel. ``fit`` calls ``step`` after every batch, so the widget
counts batches and redraws at most ``max_redraws_per_s`` times a second. ipywidgets is imported
only when a widget is built, so registering it costs nothing.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from kernel_magics.training.metrics import format_value
from kernel_magics.training.progress import register_progress, unregister_progress

if TYPE_CHECKING:
    from kernel_magics.training.fit import EpochResult

MODE = "widget"


def register() -> None:
    """Make the widget the reporter for "widget" (and for "auto" in a Jupyter kernel)."""
    register_progress(MODE, WidgetProgress)


def unregister() -> None:
    unregister_progress(MODE)


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
