"""The training progress widget for notebooks: it implements ``training.progress.Progress``.

``%load_ext kernel_magics`` registers it (``register()``) as the reporter for "widget", which
"auto" picks inside a Jupyter kernel. ``fit`` calls ``step`` after every batch, so the widget
counts batches and redraws at most ``max_redraws_per_s`` times a second. ipywidgets is imported
only when a widget is built, so registering it costs nothing.

Stop: the button sets a flag that ``fit`` reads through ``stop_requested()`` after every batch;
the training then ends exactly as a kernel interrupt ends it (run KILLED, nothing registered).
A click reaches the kernel while the cell runs because ``stop_requested`` lets ``ui_events``
handle the front end's widget messages (at most every ``UI_POLL_S``).
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kernel_magics.metric_names import direction, key_metrics
from kernel_magics.training.metrics import format_value
from kernel_magics.training.progress import register_progress, unregister_progress

if TYPE_CHECKING:
    from kernel_magics.training.fit import EpochResult
    from kernel_magics.widgets.ui_events import UiEvents

MODE = "widget"
UI_POLL_S = 0.1  # how often a running training looks for a Stop click


def register() -> None:
    """Make the widget the reporter for "widget" (and for "auto" in a Jupyter kernel)."""
    register_progress(MODE, WidgetProgress)


def unregister() -> None:
    unregister_progress(MODE)


_BAR_STYLES = {"done": "success", "interrupted": "warning", "failed": "danger"}
_BAR_COLOURS = {"done": "#4caf50", "interrupted": "#ff9800", "failed": "#f44336"}
# ipywidgets' HTML content inherits a 28 px line height meant for one-line controls; tables in
# it would look double-spaced
_COMPACT = "line-height:1.35"


class WidgetProgress:
    """A VBox: title, progress bar with a label (epoch, loss, remaining and elapsed time) and a
    Stop button, the loss curves beside the validation metric curves, the metrics table."""

    def __init__(
        self, *, max_redraws_per_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        import ipywidgets as widgets

        self._clock = clock
        self._interval = 1.0 / max_redraws_per_s
        self.title = widgets.HTML()
        self.bar = widgets.IntProgress(min=0, max=1, value=0, layout=widgets.Layout(width="50%"))
        self.label = widgets.Label()
        self.stop_button = widgets.Button(
            description="Stop",
            icon="stop",
            tooltip="end the training after this batch (the run is recorded as KILLED)",
            layout=widgets.Layout(width="auto"),
        )
        self.stop_button.on_click(lambda _: self.request_stop())
        self.plot = widgets.HTML()
        self.metrics_plot = widgets.HTML()
        self.table = widgets.HTML()
        self.box = widgets.VBox(
            [
                self.title,
                widgets.HBox([self.bar, self.label, self.stop_button]),
                widgets.HBox([self.plot, self.metrics_plot]),
                self.table,
            ]
        )
        self.history: list[EpochResult] = []
        self.redraws = 0  # label/bar redraws from step(): lets tests check the throttle
        self.model_title = ""
        self.status = "running"
        self.message = ""
        self._stop = threading.Event()
        self._ui: UiEvents | None = None
        self._last_poll = 0.0
        self._handle: Any = None  # the output the box is shown in: a static summary replaces it
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

    # -- the Progress protocol ------------------------------------------------------------------
    def start(self, epochs: int, steps_per_epoch: int, title: str) -> None:
        from IPython.display import display

        from kernel_magics.widgets.ui_events import UiEvents

        self._reset(epochs, steps_per_epoch)
        self.model_title, self.status, self.message = title, "running", ""
        self._stop.clear()
        self.stop_button.disabled, self.stop_button.description = False, "Stop"
        self.title.value = f"<b>Training {html.escape(title)}</b>"
        self.bar.max, self.bar.value, self.bar.bar_style = self.total, 0, ""
        self.label.value = f"epoch 1/{epochs}"
        self._draw_epochs()
        self._ui = UiEvents.attach()
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
            f"epoch {epoch}/{self.epochs}  running loss {format_value(loss)}  "
            f"ETA {duration(eta)} · {duration(elapsed)} elapsed"
        )

    def epoch_end(self, result: EpochResult) -> None:
        self.history.append(result)
        self.done = result.epoch * self.steps_per_epoch  # resync with the loop's own count
        self._epoch_loss, self._epoch_steps = 0.0, 0
        self.bar.value = min(self.done, self.total)
        elapsed = self._clock() - self._started
        remaining = elapsed / result.epoch * (self.epochs - result.epoch)
        self.label.value = (
            f"epoch {result.epoch}/{result.epochs}  train_loss {format_value(result.train_loss)}"
            f"  val_loss {format_value(result.val_loss)}  ETA {duration(remaining)}"
            f" · {duration(elapsed)} elapsed"
        )
        self._draw_epochs()

    def finish(self, status: str, message: str) -> None:
        self.status, self.message = status, message
        self.bar.bar_style = _BAR_STYLES.get(status, "")
        if status == "done":
            self.bar.value = self.total
        self.label.value = message
        self.stop_button.disabled = True
        noun = {"done": "trained", "interrupted": "stopped", "failed": "failed"}.get(status, status)
        self.title.value = f"<b>{html.escape(self.model_title)}: {noun}</b>"
        if self._ui is not None:
            self._ui.release()
            self._ui = None
        self._show_summary()

    # -- Stop -----------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """What the Stop button does: ``fit`` stops after the batch it is on."""
        self._stop.set()
        self.stop_button.disabled, self.stop_button.description = True, "Stopping…"

    def stop_requested(self) -> bool:
        """Read by ``fit`` after every batch; handles pending clicks first (see ``ui_events``)."""
        if self._ui is not None and not self._stop.is_set():
            now = time.monotonic()
            if now - self._last_poll >= UI_POLL_S:
                self._last_poll = now
                self._ui.poll()
        return self._stop.is_set()

    # -- after the run --------------------------------------------------------------------------
    def conclude(self, headline: str | None = None, message: str | None = None) -> None:
        """The caller's last word once the run is settled: the title becomes ``headline``
        ("digits v2 registered") and the bar's label ``message`` (the KILLED run's id); the
        static summary shown in place of the box follows."""
        if headline is not None:
            self.title.value = f"<b>{html.escape(headline)}</b>"
        if message is not None:
            self.message = self.label.value = message
        self._show_summary()

    def _show_summary(self) -> None:
        # Widget views live only as long as the kernel: a saved notebook reopened later would
        # show "model not found". Replace the live box with the same content as static HTML.
        if self._handle is not None:
            from IPython.display import HTML

            self._handle.update(HTML(self.summary_html(self.status, self.message)))

    def summary_html(self, status: str, message: str) -> str:
        """The finished widget as static HTML: title, final bar, curves, metrics table."""
        colour = _BAR_COLOURS.get(status, "#2196f3")
        share = 100 * min(self.done, self.total) / max(self.total, 1)
        bar = (
            '<div style="display:flex;align-items:center;gap:8px;margin:4px 0">'
            '<div style="width:50%;height:12px;background:#eee;border-radius:2px">'
            f'<div style="width:{share:.0f}%;height:100%;background:{colour};border-radius:2px">'
            f"</div></div><span>{html.escape(message)}</span></div>"
        )
        plots = self.plot.value + self.metrics_plot.value
        curves = f'<div style="display:flex;flex-wrap:wrap">{plots}</div>'
        return f"<div>{self.title.value}{bar}{curves}{self.table.value}</div>"

    def _draw_epochs(self) -> None:
        from kernel_magics.display.svg import line_chart

        on_train = bool(self.history) and self.history[-1].metrics_on != "validation"
        val_label = "eval loss (training rows)" if on_train else "val loss"
        self.plot.value = line_chart(
            [
                ("train loss", [r.train_loss for r in self.history]),
                (val_label, [r.val_loss for r in self.history]),
            ]
        )
        shown = list(key_metrics(self.history[-1].metrics)) if self.history else []
        where = "training rows" if on_train else "validation"
        self.metrics_plot.value = "".join(
            line_chart(
                [
                    (name, [r.metrics.get(name, float("nan")) for r in self.history])
                    for name in group
                ],
                y_label=f"{group[0]} ({where})" if len(group) == 1 else where,
                empty="metrics after the first epoch",
            )
            for group in same_scale(shown)
        )
        self.table.value = metrics_table(self.history)


def same_scale(names: list[str]) -> list[list[str]]:
    """Metrics that share a chart: scores (accuracy, F1, R², higher is better, about 0 to 1)
    together; each error (MSE in millions beside MAE in hundreds) on a chart of its own, so no
    curve is flattened to zero by another's scale. Always one group, empty or not."""
    scores = [n for n in names if direction(n) == "higher"]
    groups = ([scores] if scores else []) + [[n] for n in names if n not in scores]
    return groups or [[]]


TABLE_ROWS = 10  # the newest epochs shown; every epoch is in the MLflow run and the curve


def metrics_table(history: list[EpochResult], max_rows: int = TABLE_ROWS) -> str:
    """An HTML table, one row per epoch (the newest ``max_rows``): losses, metrics, time."""
    names = list(history[0].metrics) if history else []
    hidden = max(0, len(history) - max_rows)
    history = history[hidden:]
    head = ["epoch", "train_loss", "val_loss", *names, "seconds"]
    cell = 'style="padding:1px 10px;text-align:right"'
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
                    duration(r.seconds, precise=True),
                ]
            )
            for r in history
        ),
    ]
    if hidden:
        note = f"… {hidden} earlier epoch{'s' if hidden > 1 else ''} (all in the MLflow run)"
        rows.insert(1, f'<td {cell} colspan="{len(head)}">{note}</td>')
    body = "".join(f"<tr>{row}</tr>" for row in rows)
    return f'<table style="border-collapse:collapse;font-size:0.9em;{_COMPACT}">{body}</table>'


def duration(seconds: float, *, precise: bool = False) -> str:
    """``850 ms``, ``1.24 s`` (precise) or ``12 s``, ``3m 05s``, ``1h 02m``."""
    seconds = max(0.0, seconds)
    if precise and seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if precise and seconds < 60:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"
