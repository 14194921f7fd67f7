"""``%models`` where widgets render: a browser of registered models and their versions.

Pick a model, then a version: its metrics, params, size, creation time, format, lineage
(``km.parent``, ``km.recipe``), tags and whether it is live. Deploy, Rollback and Undeploy call
``kernel_magics.api`` on a background thread, so the kernel keeps running cells while a version
loads, and answer inline in one line (errors too: never a traceback). Two versions side by side:
their metrics (the better value in bold), the params that differ, and their training curves
overlaid from the runs' metric histories.
"""

from __future__ import annotations

import concurrent.futures
import html
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kernel_magics import api, display
from kernel_magics.config import Settings
from kernel_magics.display import dashboards as views
from kernel_magics.display.svg import line_chart
from kernel_magics.metric_names import key_metrics
from kernel_magics.widgets.front_end import Snapshot, show_with_snapshot

CURVES = ("train_loss", "val_loss")  # the loss curves of a comparison

if TYPE_CHECKING:
    from kernel_magics.catalog import ModelSummary, VersionRow


class RegistryBrowser:
    """Opens on ``name`` when given, else on the most recently changed model (the one the
    notebook just trained), not the alphabetically first."""

    def __init__(self, settings: Settings, name: str | None = None) -> None:
        import ipywidgets as widgets

        self.settings, self.focus = settings, name
        self.summaries: list[ModelSummary] = []
        self._pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="km-registry")
        self._futures: list[concurrent.futures.Future[Any]] = []
        self._snapshot: Snapshot | None = None
        self._answer_text = ""
        self._quiet_observers = False  # set while the browser itself changes the pickers

        def button(description: str, style: str = "", tooltip: str = "") -> Any:
            made = widgets.Button(description=description, button_style=style, tooltip=tooltip)
            made.layout.width, made.layout.flex = "auto", "0 0 auto"  # never squeezed
            return made

        self.model_picker = widgets.Dropdown(description="model")
        self.refresh_button = button("Refresh", tooltip="read the registry again")
        # A table of every version (nothing cut off) and a picker naming the one acted on.
        self.versions = widgets.Dropdown(description="version", layout={"width": "auto"})
        self.version_table = widgets.HTML()
        self.details = widgets.HTML()
        self.deploy_button = button("Deploy", "success", "make the selected version live")
        self.rollback_button = button("Rollback", "", "back to the version live before")
        self.undeploy_button = button("Undeploy", "warning", "stop serving this model")
        self.answer = widgets.HTML()
        self.compare_a = widgets.Dropdown(description="compare", layout={"width": "180px"})
        self.compare_b = widgets.Dropdown(description="with", layout={"width": "160px"})
        self.compare_button = button("Compare")
        self.comparison = widgets.HTML()
        self.box = widgets.VBox(
            [
                widgets.HBox([self.model_picker, self.refresh_button]),
                self.version_table,
                self.versions,
                self.details,
                widgets.HBox([self.deploy_button, self.rollback_button, self.undeploy_button]),
                self.answer,
                widgets.HBox([self.compare_a, self.compare_b, self.compare_button]),
                self.comparison,
            ]
        )
        self.model_picker.observe(lambda _: self._picked(self._model_changed), "value")
        self.versions.observe(lambda _: self._picked(self._version_changed), "value")
        self.refresh_button.on_click(lambda _: self._background(self.refresh))
        self.deploy_button.on_click(lambda _: self.deploy())
        self.rollback_button.on_click(lambda _: self.rollback())
        self.undeploy_button.on_click(lambda _: self.undeploy())
        self.compare_button.on_click(lambda _: self._background(self.compare))

    # -- showing --------------------------------------------------------------------------------
    def show(self) -> None:
        self.refresh()
        self._snapshot = show_with_snapshot(self.box, self.static_html(), self.static_text())

    def static_html(self) -> str:
        answer = f"<p>{self.answer.value}</p>" if self._answer_text else ""
        return display.models_html(self.summaries) + answer

    def static_text(self) -> str:
        text = display.models_text(self.summaries)
        return f"{text}\n{self._answer_text}" if self._answer_text else text

    def wait(self, timeout: float = 120) -> None:
        """Wait for the background work started so far (tests, and scripts driving it)."""
        while self._futures:
            pending, self._futures = self._futures, []
            concurrent.futures.wait(pending, timeout)

    # -- what is selected -----------------------------------------------------------------------
    def summary(self) -> ModelSummary | None:
        return next((s for s in self.summaries if s.name == self.model_picker.value), None)

    def version(self) -> VersionRow | None:
        summary = self.summary()
        if summary is None:
            return None
        return next((v for v in summary.versions if v.version == self.versions.value), None)

    def _picked(self, react: Callable[[], None]) -> None:
        if not self._quiet_observers:
            react()

    def refresh(self) -> None:
        """Read the registry and what is live again; keep the selection where it still exists."""
        self.summaries = api.models(settings=self.settings)
        names = [s.name for s in self.summaries]
        keep = self.model_picker.value if self.model_picker.value in names else None
        if keep is None:
            keep = self.focus if self.focus in names else _latest(self.summaries)
        self._quiet_observers = True
        try:
            self.model_picker.options = names
            self.model_picker.value = keep
        finally:
            self._quiet_observers = False
        self._model_changed()
        if self._snapshot is not None:
            self._snapshot.update(self.static_html(), self.static_text())

    def _model_changed(self) -> None:
        summary = self.summary()
        rows = list(reversed(summary.versions)) if summary else []  # newest first
        live = summary.live_version if summary else None
        options = [(views.version_label(v, live), v.version) for v in rows]
        keep = self.versions.value if self.versions.value in [o[1] for o in options] else None
        pick = keep if keep is not None else live
        choices = [(f"v{v.version}", v.version) for v in rows]
        self._quiet_observers = True
        try:
            self.versions.options = options
            self.versions.value = pick if pick is not None else (rows[0].version if rows else None)
            self.compare_a.options, self.compare_b.options = choices, choices
            if len(rows) >= 2:
                self.compare_a.value, self.compare_b.value = rows[1].version, rows[0].version
        finally:
            self._quiet_observers = False
        self._version_changed()

    def _version_changed(self) -> None:
        row, summary = self.version(), self.summary()
        self.version_table.value = views.versions_table_html(summary, row) if summary else ""
        if row is None or summary is None:
            self.details.value = ""
            return
        live = summary.live_version
        self.details.value = views.version_details_html(summary.name, row, live, None, None)
        self._background(lambda: self._load_details(summary.name, row, live))

    def _load_details(self, name: str, row: VersionRow, live: int | None) -> None:
        params = api.run_params(row.run_id, settings=self.settings) if row.run_id else {}
        try:
            size = api.version_size(name, row.version, settings=self.settings)
        except Exception:  # files missing from the store: the deploy would say so
            size = None
        if self.version() is row:  # still the one selected
            self.details.value = views.version_details_html(name, row, live, params, size)

    # -- actions --------------------------------------------------------------------------------
    def deploy(self) -> concurrent.futures.Future[Any] | None:
        summary, row = self.summary(), self.version()
        if summary is None or row is None:
            return None
        return self._act(
            "deploy",
            summary.name,
            lambda: api.deploy(summary.name, row.version, settings=self.settings),
            f"v{row.version}",
        )

    def rollback(self) -> concurrent.futures.Future[Any] | None:
        summary = self.summary()
        if summary is None:
            return None
        return self._act(
            "rollback", summary.name, lambda: api.rollback(summary.name, settings=self.settings)
        )

    def undeploy(self) -> concurrent.futures.Future[Any] | None:
        summary = self.summary()
        if summary is None:
            return None
        return self._act(
            "undeploy", summary.name, lambda: api.undeploy(summary.name, settings=self.settings)
        )

    def _act(
        self, action: str, name: str, call: Callable[[], Any], what: str = ""
    ) -> concurrent.futures.Future[Any]:
        buttons = (self.deploy_button, self.rollback_button, self.undeploy_button)
        for b in buttons:
            b.disabled = True
        self._say(views.pending_line(action, name, what))

        def run() -> None:
            try:
                result = call()
                self._say(display.transition_line(result), display.transition_html(result))
            except Exception as err:  # one line, whatever failed: never a traceback here
                self._say(display.one_line(err), error=True)
            finally:
                for b in buttons:
                    b.disabled = False
            self.refresh()

        return self._background(run)

    def _say(self, text: str, html_text: str | None = None, *, error: bool = False) -> None:
        self._answer_text = text
        if html_text is None:
            colour = "color:#cf222e;" if error else ""
            html_text = f"<span style='{colour}'>{html.escape(text)}</span>"
        self.answer.value = html_text.removeprefix("<p>").removesuffix("</p>")

    # -- comparison -----------------------------------------------------------------------------
    def compare(self) -> None:
        summary = self.summary()
        if summary is None:
            return
        picked = [self.compare_a.value, self.compare_b.value]
        rows = [v for p in picked for v in summary.versions if v.version == p]
        if len(rows) < 2 or rows[0].version == rows[1].version:
            self.comparison.value = "<p>pick two different versions to compare</p>"
            return
        params = [
            api.run_params(r.run_id, settings=self.settings) if r.run_id else {} for r in rows
        ]
        self.comparison.value = views.comparison_html(
            summary.name, rows, params, self._curves(rows)
        )

    def _curves(self, rows: list[VersionRow]) -> str:
        """Loss curves of both runs in one chart, their key metric in another."""
        losses, metric_series = [], []
        keys = list(key_metrics(rows[0].metrics, rows[0].task))[:1]
        for row in rows:
            if not row.run_id:
                continue
            for key in CURVES:
                values = [v for _, v in api.metric_history(row.run_id, key, settings=self.settings)]
                losses.append((f"v{row.version} {key}", values))
            for key in keys:
                values = [v for _, v in api.metric_history(row.run_id, key, settings=self.settings)]
                metric_series.append((f"v{row.version} {key}", values))
        charts = [line_chart(losses, width=440)] if losses else []
        if metric_series:
            charts.append(line_chart(metric_series, width=440, y_label=keys[0]))
        return f"<div style='display:flex;flex-wrap:wrap'>{''.join(charts)}</div>"

    def _background(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        future = self._pool.submit(_quiet, fn)
        self._futures.append(future)
        return future


def _latest(summaries: list[ModelSummary]) -> str | None:
    """The model whose newest version was created last (None: no models)."""
    dated = [(max((v.created for v in s.versions), default=0.0), s.name) for s in summaries]
    return max(dated)[1] if dated else None


def _quiet(fn: Callable[[], Any]) -> Any:
    """A background call whose failure must not vanish silently nor print a traceback."""
    import logging

    try:
        return fn()
    except Exception as err:
        logging.getLogger(__name__).warning("registry browser: %s", display.one_line(err))
        return None
