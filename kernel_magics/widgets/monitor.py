"""``%monitor [NAME]``: the inference process, live, for as long as the widget runs.

Per deployed model: live version, requests/s, p50 and p99 latency, error rate, mean batch size,
rows/s, queue; per language model: tokens/s, time to first token p50/p99, inter-token latency
p99, running and queued sequences, KV-cache use; a quality line per version (the inference
process's latest drift check, live metrics from feedback); usage per token, recent errors, the
log's last lines, and plots of the last minutes (tokens/s too where a language model is served)
with a strip of drift flags per feature, one mark per tick, so it shows since when a feature
drifts. One
``api.server_status()`` per tick (``GET /v1/status``: a millisecond for the process) on a
daemon thread, so the kernel keeps running cells; the live metrics (a read of the inference log
joined with feedback) at most every ``LIVE_EVERY_S`` per model.

The timer stops with the Stop button, when the front end closes the widget, when a new
``%monitor`` for the same model starts (re-running the cell), after ``minutes``, or with
``%monitor --stop``. Stopped, the widget is replaced by a static HTML copy of its last state, so
the saved notebook still shows it.
"""

from __future__ import annotations

import collections
import html
import math
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

from kernel_magics import api, display
from kernel_magics.config import Settings
from kernel_magics.display import dashboards as views
from kernel_magics.display.rates import generation_rates, model_rates, token_rates
from kernel_magics.display.svg import flag_strip, line_chart
from kernel_magics.records import DriftSummary, ServerStatus
from kernel_magics.widgets.front_end import Snapshot, show_with_snapshot

RATE_WINDOW_S = 5.0  # the table's rates: over the last seconds, steadier than one tick
# A model's live metrics (the inference log joined with feedback: a SQLite read of up to
# log_max_rows rows) are read at most this often; the rest of a tick is one status request.
LIVE_EVERY_S = 5.0
LiveFigures = dict[int, dict[str, float]]  # per version: labelled, accuracy, f1_macro / mse, mae


class ServiceMonitor:
    running: ClassVar[dict[str | None, ServiceMonitor]] = {}  # by model filter

    def __init__(
        self,
        settings: Settings,
        name: str | None = None,
        *,
        interval_s: float = 1.0,
        window_s: float = 300.0,
        minutes: float = 60.0,
        status: Callable[..., ServerStatus | None] = api.server_status,
        live_every_s: float = LIVE_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        import ipywidgets as widgets

        self.settings, self.name = settings, name
        self.interval_s, self.window_s = interval_s, window_s
        self.deadline = time.monotonic() + minutes * 60
        self._status = status
        self.live_every_s, self._clock = live_every_s, clock
        # per model: (when its live metrics were read, what they were)
        self.live: dict[str, tuple[float, LiveFigures]] = {}
        self.title = widgets.HTML()
        self.stop_button = widgets.Button(description="Stop", icon="stop", tooltip="stop polling")
        self.stop_button.layout.width = "auto"
        self.stop_button.on_click(lambda _: self.stop())
        self.body = widgets.HTML()
        self.plots = widgets.HTML()
        self.box = widgets.VBox(
            [widgets.HBox([self.title, self.stop_button]), self.plots, self.body]
        )
        keep = int(window_s / max(interval_s, 0.05)) + 2
        self.samples: collections.deque[ServerStatus] = collections.deque(maxlen=keep)
        # per tick: (time, {model: (requests/s, p99 ms, tokens/s; nan where not known)})
        self.points: collections.deque[tuple[float, dict[str, tuple[float, float, float]]]] = (
            collections.deque(maxlen=keep)
        )
        # per tick: the inference process's latest drift check of each served version
        self.drift_marks: collections.deque[dict[tuple[str, int], DriftSummary]] = (
            collections.deque(maxlen=keep)
        )
        self.ticks = 0
        self.last_error = ""
        self._text = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._snapshot: Snapshot | None = None

    # -- lifetime -------------------------------------------------------------------------------
    def show(self) -> None:
        self.tick()
        self._snapshot = show_with_snapshot(self.box, self.static_html(), self.static_text())
        comm = getattr(self.box, "comm", None)
        if comm is not None and hasattr(comm, "on_close"):
            comm.on_close(lambda _msg: self._stop.set())  # the front end closed the widget
        self.start()

    def start(self) -> None:
        previous = ServiceMonitor.running.get(self.name)
        if previous is not None and previous is not self:
            previous.stop()
        ServiceMonitor.running[self.name] = self
        self._thread = threading.Thread(target=self._run, name="km-monitor", daemon=True)
        self._thread.start()

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the timer (and wait for it), then leave the static copy in the output."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if ServiceMonitor.running.get(self.name) is self:
            del ServiceMonitor.running[self.name]
        self.stop_button.disabled, self.stop_button.description = True, "Stopped"
        if self._snapshot is not None:
            self._snapshot.replace_widget(self.static_html(), self.static_text())
            self._snapshot = None

    @classmethod
    def stop_all(cls) -> int:
        monitors = list(cls.running.values())
        for monitor in monitors:
            monitor.stop()
        return len(monitors)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            if time.monotonic() > self.deadline:
                break
            self.tick()
        if not self._stop.is_set():  # ran out of time: stop as the button would
            self.stop()

    # -- one poll -------------------------------------------------------------------------------
    def tick(self) -> None:
        self.ticks += 1
        try:
            status = self._status(settings=self.settings)
        except Exception as err:  # shown in the title; the next tick tries again
            self.last_error = display.one_line(err)
            self.title.value = f"<span style='color:#cf222e'>{html.escape(self.last_error)}</span>"
            return
        self.last_error = ""
        if status is not None:
            self._add_point(status)
            self.samples.append(status)
            self.drift_marks.append(
                {
                    (d.model, d.version): d
                    for d in status.drift
                    if self.name is None or d.model == self.name
                }
            )
        self._render(status)

    def _earlier(self, now: ServerStatus) -> ServerStatus | None:
        """The sample about ``RATE_WINDOW_S`` before ``now`` (the oldest one if younger)."""
        best = None
        for sample in self.samples:
            if sample is now or sample.snapshot_at is None or now.snapshot_at is None:
                continue
            if now.snapshot_at - sample.snapshot_at >= RATE_WINDOW_S or best is None:
                best = sample
        return best

    def _add_point(self, status: ServerStatus) -> None:
        previous = self.samples[-1] if self.samples else None
        if previous is None or status.snapshot_at is None:
            return
        generated = {
            g.name: g.tokens_s or 0.0 for g in generation_rates(previous, status, self.name)
        }
        figures = {
            r.name: (
                r.requests_s or 0.0,
                r.p99_ms if r.p99_ms is not None else math.nan,
                generated.get(r.name, math.nan),
            )
            for r in model_rates(previous, status, self.name)
        }
        self.points.append((status.snapshot_at, figures))

    def _render(self, status: ServerStatus | None) -> None:
        earlier = self._earlier(status) if status is not None else None
        rates = model_rates(earlier, status, self.name) if status is not None else []
        tokens = token_rates(earlier, status) if status is not None else []
        generation = generation_rates(earlier, status, self.name) if status is not None else []
        self.title.value = f"<b>{html.escape(views.monitor_title(status, self.name))}</b>"
        self.plots.value = self.plot_svg()
        live = self._live_metrics(status)
        self._text = views.monitor_text(status, rates, tokens, self.name, generation, live)
        self.body.value = views.monitor_html(
            status, rates, tokens, self.name, title=False, generation=generation, live=live
        )
        if self._snapshot is not None and self.ticks % 10 == 0:  # the saved copy, now and then
            self._snapshot.update(self.static_html(), self.static_text())

    def _live_metrics(self, status: ServerStatus | None) -> dict[str, LiveFigures]:
        """Each served model's live metrics, read again once ``live_every_s`` has passed since
        the last read (not on every tick: feedback arrives far slower than ticks)."""
        if status is None:
            return {}
        now = self._clock()
        out = {}
        for model in [self.name] if self.name else sorted(status.models):
            cached = self.live.get(model)
            if cached is None or now - cached[0] >= self.live_every_s:
                read = api.served_live_metrics(status, model, settings=self.settings)
                cached = self.live[model] = (now, read.get(model, {}))
            if cached[1]:
                out[model] = cached[1]
        return out

    def plot_svg(self) -> str:
        """Requests/s and p99 latency per model over the last ``window_s`` seconds."""
        if not self.points:
            return ""
        now = self.points[-1][0]
        xs = [t - now for t, _ in self.points]
        names = sorted({n for _, figures in self.points for n in figures})

        def series(index: int) -> list[tuple[str, list[float]]]:
            return [
                (
                    name,
                    [
                        figures.get(name, (math.nan, math.nan, math.nan))[index]
                        for _, figures in self.points
                    ],
                )
                for name in names
            ]

        common: dict[str, Any] = {
            "x_values": xs,
            "x_label": "seconds ago",
            "width": 400,
            "y_min": 0.0,
        }
        charts = [
            line_chart(series(0), y_label="requests/s", **common),
            line_chart(series(1), y_label="p99 latency (ms)", **common),
        ]
        generated = [
            (name, values)
            for name, values in series(2)
            if any(not math.isnan(v) for v in values)  # language models only
        ]
        if generated:
            charts.append(line_chart(generated, y_label="tokens/s", **common))
        charts.append(self.drift_svg())
        return f"<div style='display:flex;flex-wrap:wrap'>{''.join(charts)}</div>"

    def drift_svg(self) -> str:
        """Per served version and feature, a mark per tick: flagged (red) or not; the label
        says since when a flagged feature has stayed flagged. Empty without drift checks."""
        keys = sorted(
            {
                (model, version, feature)
                for tick in self.drift_marks
                for (model, version), check in tick.items()
                for feature in check.psi
            }
        )
        if not keys:
            return ""
        rows = []
        for model, version, feature in keys:
            marks: list[bool | None] = []
            since: float | None = None  # the check that began the current flagged run
            for tick in self.drift_marks:
                check = tick.get((model, version))
                if check is None or feature not in check.psi:
                    marks.append(None)  # not checked yet: neither flagged nor clear
                    continue
                flagged = feature in check.flagged
                marks.append(flagged)
                if not flagged:
                    since = None
                elif since is None:
                    since = check.time
            note = f"since {views.clock(since)}" if since is not None else ""
            rows.append((f"{model} v{version} {feature}", marks, note))
        return flag_strip(rows, width=400, x_label="drift flags per tick, oldest left")

    def static_html(self) -> str:
        return f"<div>{self.title.value}{self.plots.value}{self.body.value}</div>"

    def static_text(self) -> str:
        return self._text or views.monitor_title(None, self.name)


def snapshot_views(settings: Settings, name: str | None) -> tuple[str, str]:
    """(text, HTML) of one status snapshot: ``%monitor`` where widgets do not render (figures
    since the process started; rates need a second snapshot)."""
    status = api.server_status(settings=settings)
    rates = model_rates(None, status, name) if status is not None else []
    tokens = token_rates(None, status) if status is not None else []
    generation = generation_rates(None, status, name) if status is not None else []
    live = api.served_live_metrics(status, name, settings=settings)
    return (
        views.monitor_text(status, rates, tokens, name, generation, live),
        views.monitor_html(status, rates, tokens, name, generation=generation, live=live),
    )
