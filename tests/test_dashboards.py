"""The notebook dashboards and the status snapshot, with nothing faked.

A real InteractiveShell with the extension, a real store in a throwaway home and the real
inference process. The widgets are built and driven from Python (``button.click()``), and what
a click did is checked through ``kernel_magics.api``: the live version, the run's status. The
module shares one home and one process; the tests run in file order. The Stop button's click
arriving *while a cell runs* needs a real kernel: one is started with jupyter_client.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import torch.nn as nn
from IPython.core.error import UsageError
from kit.kernel import DIGITS_SETUP, execute, ipykernel

from kernel_magics import api, display
from kernel_magics.config import load_settings
from kernel_magics.errors import InvalidInput, NotFound, TrainingInterrupted
from kernel_magics.magics._results import TrainingStopped
from kernel_magics.records import ServerStatus
from kernel_magics.training.progress import register_progress
from kernel_magics.widgets import progress as widget_progress
from kernel_magics.widgets.front_end import widgets_render
from kernel_magics.widgets.monitor import ServiceMonitor, snapshot_views
from kernel_magics.widgets.registry import RegistryBrowser

MODEL = "digits"


def mlp(hidden: int = 16) -> nn.Module:
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


@pytest.fixture(scope="module")
def served(ns: Any) -> Any:
    """digits v1 and v2 (v2 live, v1 its standby), and a few answered and failed requests."""
    X, y = ns.user_ns["X"], ns.user_ns["y"]
    for hidden in (16, 24):
        api.train(mlp(hidden), X, y, name=MODEL, epochs=2, lr=0.01, progress="none")
    api.deploy(MODEL, 1)
    api.deploy(MODEL, 2)
    for _ in range(5):
        api.predict(MODEL, X[:4])
    with pytest.raises(NotFound):
        api.predict("nope", X[:1])
    return load_settings()


@pytest.fixture
def widgets_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in JupyterLab: the dashboards are widgets (a plain shell prints their repr)."""
    monkeypatch.setenv("KERNEL_MAGICS_WIDGETS", "1")


def live_version() -> int | None:
    (summary,) = [s for s in api.models() if s.name == MODEL]
    assert summary.served_version == summary.live_version  # the process serves the alias
    return summary.live_version


# -- the status snapshot -------------------------------------------------------------------------
def test_snapshot_route_answers_everything_in_one_request(served: Any) -> None:
    status = api.server_status()
    assert status is not None
    assert status.url
    token = api.server_token()
    assert requests.get(f"{status.url}/v1/status", timeout=10).status_code == 401
    doc = requests.get(
        f"{status.url}/v1/status", headers={"Authorization": f"Bearer {token}"}, timeout=10
    ).json()
    assert {"time", "worker", "supervisor", "models", "versions", "usage", "errors", "log"} <= set(
        doc
    )
    (model,) = doc["models"]
    assert (model["name"], model["version"], model["standby_version"]) == (MODEL, 2, 1)
    stats = model["stats"]
    assert stats["requests"] == 5
    assert stats["rows"] == 20
    assert stats["errors"] == 0
    assert stats["mean_batch_size"] == 4.0
    assert 0 < stats["p50_ms"] <= stats["p99_ms"]
    assert {(v["model"], v["version"]) for v in doc["versions"]} == {(MODEL, 1), (MODEL, 2)}
    assert doc["usage"]["default"]["requests"] >= 6
    assert doc["unknown_model_errors"] == 1
    assert doc["errors"][-1]["status"] == 404
    assert "'nope'" in doc["errors"][-1]["message"]
    assert doc["supervisor"]["pid"] == status.pid
    assert doc["worker"]["pid"] in status.workers
    assert any("deploy digits: v1 → v2" in line for line in doc["log"])


def test_server_status_is_one_call_to_the_process(served: Any) -> None:
    from kernel_magics.api._context import _target  # the target api.server_status() talks through

    target = _target(served)
    calls: list[str] = []
    request = target.http.request

    def counted(method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(path)
        return request(method, path, *args, **kwargs)

    target.http.request = counted  # a spy: the real request still goes out
    try:
        status = api.server_status()
    finally:
        del target.http.request
    assert calls == ["/v1/status"]
    assert isinstance(status, ServerStatus)
    assert status.models[MODEL].stats is not None
    assert status.models[MODEL].stats.requests == 5
    assert status.errors[-1].status == 404


def test_run_metrics_reads_only_the_runs_asked_for(served: Any) -> None:
    from kernel_magics.store import RUN_ID_BATCH, Store

    store = Store(served)
    run_ids = [v.run_id for v in store.versions(MODEL)]
    missing = [f"{i:032x}" for i in range(RUN_ID_BATCH + 20)]  # more than one batch of IN (...)
    found = store.run_metrics([*missing, *run_ids])
    assert set(found) == set(run_ids)
    assert all({"accuracy", "val_loss"} <= set(m) for m in found.values())


# -- the registry browser ------------------------------------------------------------------------
def test_registry_browser_buttons_change_what_is_live(served: Any, widgets_on: None) -> None:
    browser = RegistryBrowser(served)
    browser.show()
    assert browser.model_picker.value == MODEL
    assert browser.versions.value == 2
    labels = [label for label, _ in browser.versions.options]  # newest first
    assert labels[0].startswith("v2 · LIVE · accuracy=")
    assert labels[1].startswith("v1 · accuracy=")
    browser.versions.value = 1
    started = time.perf_counter()
    browser.deploy_button.click()
    clicked = time.perf_counter() - started
    assert browser.deploy_button.disabled  # while it runs; the kernel is free meanwhile
    browser.wait()
    assert clicked < 0.1
    assert live_version() == 1
    assert browser.answer.value.startswith("<b>digits</b> v1")
    assert "already loaded (standby)" in browser.answer.value  # v1 was the standby
    browser.rollback_button.click()
    browser.wait()
    assert live_version() == 2
    assert "again" in browser.answer.value
    browser.undeploy_button.click()
    browser.wait()
    assert live_version() is None
    assert "no longer served" in browser.answer.value
    browser.undeploy_button.click()  # nothing to undeploy: one line, in red, no traceback
    browser.wait()
    assert "digits is not deployed" in browser.answer.value
    assert "Traceback" not in browser.answer.value
    assert "#cf222e" in browser.answer.value
    browser.versions.value = 2
    browser.deploy_button.click()
    browser.wait()
    assert live_version() == 2
    assert not browser.deploy_button.disabled
    assert "digits v2 is live" in browser.static_text()  # the saved notebook's copy


def test_registry_browser_details_and_comparison(served: Any, widgets_on: None) -> None:
    browser = RegistryBrowser(served)
    browser.refresh()
    browser.versions.value = 1
    browser.wait()
    details = browser.details.value
    for expected in ("digits v1", "created", "pt2", "KB", "params", "lr", "0.01", "km.sha256"):
        assert expected in details, expected
    browser.compare_button.click()
    browser.wait()
    comparison = browser.comparison.value
    assert "v1 vs v2" in comparison
    assert "param hidden" not in comparison
    for label in ("v1 train_loss", "v2 val_loss", "v1 accuracy", "v2 accuracy"):
        assert f'data-label="{label}"' in comparison, label
    assert "<b>" in comparison  # the better value of each metric


def test_registry_browser_opens_on_the_newest_model(
    served: Any, ns: Any, widgets_on: None, capsys: Any
) -> None:
    """The model the notebook just trained, not the alphabetically first; %models NAME opens
    on NAME; every version in a readable table (the full creation time, nothing cut off)."""
    X, y = ns.user_ns["X"], ns.user_ns["y"]
    api.train(mlp(8), X, y, name="zz-newest", epochs=1, progress="none")
    browser = RegistryBrowser(served)
    browser.refresh()
    assert browser.model_picker.value == "zz-newest"  # after "digits" alphabetically
    named = RegistryBrowser(served, MODEL)
    named.refresh()
    assert named.model_picker.value == MODEL
    assert named.versions.value == live_version()
    table = named.version_table.value
    (summary,) = [s for s in named.summaries if s.name == MODEL]
    for row in summary.versions:
        assert f"v{row.version}" in table
        assert display.when(row.created) in table
    assert table.index(">v2<") < table.index(">v1<")  # newest first
    assert f"<b>v{live_version()}</b>" in table
    assert "LIVE" in table
    ns.run_line_magic("models", f"{MODEL} --static")
    out = capsys.readouterr().out
    assert MODEL in out
    assert "zz-newest" not in out
    with pytest.raises(UsageError, match="no registered model named 'nope'"):
        ns.run_line_magic("models", "nope --static")


# -- the service monitor -------------------------------------------------------------------------
def test_monitor_polls_without_blocking_and_its_timer_stops(
    served: Any, ns: Any, widgets_on: None
) -> None:
    monitor = ServiceMonitor(served, MODEL, interval_s=0.2)
    monitor.show()
    assert monitor.is_running
    assert ServiceMonitor.running[MODEL] is monitor
    X = ns.user_ns["X"]
    deadline = time.monotonic() + 20
    while monitor.ticks < 8 and time.monotonic() < deadline:
        api.predict(MODEL, X[:8])  # the kernel keeps working while the monitor polls
    assert monitor.ticks >= 8, monitor.last_error
    body = monitor.body.value
    assert "req/s" in body
    assert "digits" in body
    assert "v2" in body
    assert "p99 ms" in body
    assert "<svg" in monitor.plots.value
    assert 'data-label="digits"' in monitor.plots.value
    rates = [r for r in monitor.points if MODEL in r[1]]
    assert any(figures[MODEL][0] > 0 for _, figures in rates)  # requests/s seen
    again = ServiceMonitor(served, MODEL, interval_s=0.2)
    again.show()  # re-running the cell: the first monitor's timer stops
    assert not monitor.is_running
    assert again.is_running
    again.stop_button.click()
    assert not again.is_running
    assert MODEL not in ServiceMonitor.running
    ticks = again.ticks
    time.sleep(0.6)
    assert again.ticks == ticks
    assert again.stop_button.disabled


def test_monitor_stop_magic_and_minutes(
    served: Any, ns: Any, widgets_on: None, capsys: Any
) -> None:
    ns.run_line_magic("monitor", "--interval 0.2")
    assert None in ServiceMonitor.running
    ns.run_line_magic("monitor", "--stop")
    assert "1 monitor stopped." in capsys.readouterr().out
    assert not ServiceMonitor.running
    short = ServiceMonitor(served, interval_s=0.2, minutes=0.005)  # 0.3 s
    short.show()
    time.sleep(1.5)
    assert not short.is_running


def test_monitor_tells_client_errors_from_server_errors(served: Any, ns: Any) -> None:
    """A client's wrong shape (400) is no failure of the service: 4xx and 5xx are apart; a
    quiet window keeps the figures of the text view instead of "–"; rates never go below 0."""
    X = ns.user_ns["X"]
    before = api.server_status().models[MODEL].stats
    with pytest.raises(InvalidInput):
        api.predict(MODEL, X[:2, :10])
    stats = api.server_status().models[MODEL].stats
    assert stats.client_errors == before.client_errors + 1
    assert stats.server_errors == before.server_errors == 0
    monitor = ServiceMonitor(served, MODEL, interval_s=60)
    monitor.tick()
    monitor.tick()  # nothing happened in between: a window without requests
    text, _ = snapshot_views(served, MODEL)
    header, _, row = monitor.static_text().splitlines()[1:4]
    assert header.split()[7:9] == ["4xx", "5xx"]
    cells = row.split()
    assert cells[3] != "–"
    assert cells[6] == "0.0%"
    assert cells[5].endswith("%")
    assert float(cells[5].rstrip("%")) > 0  # the bad request, as a client error
    static_row = text.splitlines()[3].split()
    assert static_row[3:7] == cells[3:7]  # p50, p99, 4xx, 5xx: the same figures as the text view
    svg = monitor.plot_svg()
    ticks = re.findall(r'text-anchor="end"[^>]*>([^<]+)<', svg)
    assert ticks, ticks
    assert min(float(t) for t in ticks) >= 0, ticks


# -- where widgets do not render -----------------------------------------------------------------
def test_static_views_under_a_plain_shell(served: Any, ns: Any, capsys: Any) -> None:
    assert not widgets_render()  # a terminal shell: no front end
    ns.run_line_magic("models", "")
    out = capsys.readouterr().out
    assert "LIVE" in out
    assert "served" not in out.splitlines()[0]
    ns.run_line_magic("monitor", MODEL)
    out = capsys.readouterr().out
    assert "req/s" in out
    assert "digits  v2" in out
    assert "recent errors:" in out
    ns.run_line_magic("models", "--static")
    assert "LIVE" in capsys.readouterr().out


# -- training: the Stop button, the summary ------------------------------------------------------
class ClickStopAfter(widget_progress.WidgetProgress):
    """The real widget; its Stop button is clicked after the third batch, as a user would."""

    def step(self, loss: float) -> None:
        super().step(loss)
        if self.done == 3:
            self.stop_button.click()


def killed_runs(name: str) -> list[Any]:
    from kernel_magics.store import Store

    store = Store(load_settings())
    runs = store.client.search_runs(
        [store.experiment_id()], filter_string=f"tags.`km.model` = '{name}'"
    )
    return [r for r in runs if r.info.status == "KILLED"]


def test_stop_button_ends_a_training_like_an_interrupt(ns: Any) -> None:
    X, y = ns.user_ns["X"], ns.user_ns["y"]
    reporter = ClickStopAfter()
    with pytest.raises(TrainingInterrupted, match="training stopped at epoch 1/50"):
        api.train(mlp(), X, y, name="stopped", epochs=50, progress=reporter)
    assert reporter.done == 3
    assert reporter.bar.bar_style == "warning"
    assert reporter.stop_button.disabled
    assert len(killed_runs("stopped")) == 1
    assert "stopped" not in [s.name for s in api.models()]
    # the kernel is usable: the next training registers as usual
    assert api.train(mlp(), X, y, name="stopped", epochs=1, progress="none").version == 1


@contextlib.contextmanager
def progress_setting(ns: Any, mode: str) -> Iterator[None]:
    """``%config KernelMagics.progress = mode`` for a block, then the trait's default again."""
    (magics,) = [c for c in ns.configurables if type(c).__name__ == "KernelMagics"]
    ns.run_line_magic("config", f'KernelMagics.progress = "{mode}"')
    try:
        yield
    finally:
        ns.config.KernelMagics.pop("progress", None)
        magics.progress = magics.trait_defaults("progress")


def test_stopped_train_magic_says_it_once(ns: Any, run_cell: Any) -> None:
    register_progress("widget", ClickStopAfter)
    try:
        run_cell(ns, "import torch.nn as nn\nsmall = lambda: nn.Sequential(nn.Linear(64, 10))")
        with progress_setting(ns, "widget"), pytest.raises(TrainingStopped) as caught:
            ns.run_line_magic("train", "small() --data X y --epochs 30 --name halted")
        (line,) = caught.value._render_traceback_()
        (run,) = killed_runs("halted")
        assert (
            line == f"run {run.info.run_id} is recorded as KILLED in MLflow; nothing was registered"
        )
        assert "UsageError" not in line
        assert "interrupted" not in line
    finally:
        widget_progress.register()


def test_train_summary_names_the_version_it_registered(ns: Any) -> None:
    made: list[widget_progress.WidgetProgress] = []
    register_progress("widget", lambda: made.append(widget_progress.WidgetProgress()) or made[-1])
    try:
        with progress_setting(ns, "widget"):
            result = ns.run_line_magic("train", "small() --data X y --epochs 3 --name named")
    finally:
        widget_progress.register()
    assert (result.name, result.version) == ("named", 1)
    (widget,) = made
    assert "named v1 registered" in widget.title.value
    assert "Training" not in widget.title.value
    out = ns.display_formatter.format(result)[0]["text/plain"]
    assert out.startswith("named v1 registered")


def test_training_widget_polish(ns: Any) -> None:
    from kernel_magics.training.config import TrainConfig
    from kernel_magics.training.data import prepare_data
    from kernel_magics.training.fit import fit

    reporter = widget_progress.WidgetProgress()
    data = prepare_data(ns.user_ns["X"][:400], ns.user_ns["y"][:400])
    fit(mlp(), data, TrainConfig(epochs=12), progress=reporter)
    reporter.conclude("digits v7 registered")
    summary = reporter.summary_html(reporter.status, reporter.message)
    assert "digits v7 registered" in summary
    assert "Training" not in summary
    assert "line-height" in reporter.table.value  # not double-spaced inside a widget
    seconds = reporter.table.value.split("<td")[-1]
    assert seconds.endswith(" ms</td></tr></table>") or " s</td>" in seconds
    assert 'data-label="accuracy"' in reporter.metrics_plot.value  # metrics beside the loss
    ticks = [t.split(">")[-1] for t in reporter.plot.value.split("</text>")]
    assert {"2", "4", "6", "8", "10", "12"} <= set(ticks)  # evenly spaced epochs
    assert "elapsed" in reporter.label.value or reporter.status == "done"


# -- polish of the lifecycle magics --------------------------------------------------------------
def test_help_and_usage(ns: Any, capsys: Any) -> None:
    ns.run_line_magic("models", "--help")
    out = capsys.readouterr().out
    assert out.startswith("Usage:")
    assert "--static" in out
    doc = ns.find_line_magic("train").__doc__
    assert not doc.startswith("::")
    assert "Examples::" not in doc
    assert "Examples:" in doc
    usage = doc.split("\n\n")[0]
    assert usage.split()[1:3] == ["%train", "MODEL_EXPR"]
    assert "{adam,adamw,sgd,rmsprop}" in usage
    with pytest.raises(UsageError, match="invalid choice: 'lbfgs'"):
        ns.run_line_magic("train", "Net() --data X y --optimizer lbfgs")
    with pytest.raises(UsageError, match=r"unknown sub-command 'staus' \(choose from status,"):
        ns.run_line_magic("serve", "staus")


def test_one_not_found_wording_naming_what_exists(served: Any, ns: Any) -> None:
    expected = r"no registered model named 'nope' \(registered: .*digits"
    for magic, line in (("deploy", "nope"), ("rollback", "nope"), ("undeploy", "nope")):
        with pytest.raises(UsageError, match=expected):
            ns.run_line_magic(magic, line)
    with pytest.raises(UsageError, match=r"no deployed model named 'nope' \(deployed: digits\)"):
        ns.run_line_magic("predict", "nope X[:1]")


def test_transition_and_prediction_views(served: Any, ns: Any, capsys: Any) -> None:
    assert not api.deploy(MODEL, 1).reused  # v1 loads; v2 stays loaded as the standby
    back = api.rollback(MODEL)  # to v2: nothing to load
    assert back.version == 2
    assert back.reused
    assert display.transition_line(back).endswith("already loaded (standby)")
    html_view = display.transition_html(back)
    assert display.LIVE_BADGE in html_view
    assert f"{back.url}/v1/models/digits:predict" in html_view
    labels = ns.run_line_magic("predict", "digits X[:3]")
    assert repr(labels).startswith("array([")
    assert isinstance(labels, np.ndarray)
    assert "<b>digits</b>" in labels._repr_html_()
    assert "3 predictions" in labels._repr_html_()
    assert (labels == 1)._repr_html_() is None  # a derived array is a plain array again
    ns.run_line_magic("serve", "logs --lines 200")
    logs = capsys.readouterr().out
    assert "deploy digits: v- → v1 (first deploy)" in logs
    assert "activated digits v1 (first deploy)" in logs
    assert "<pre" in display.logs_html(logs)


def test_a_supervisor_stopped_from_a_terminal_is_reaped(tmp_path: Path) -> None:
    """The watchdog (autostart) started it as the kernel's child; `kernel-magics serve stop`
    from another process stops it; no <defunct> entry stays behind."""
    from kernel_magics.warmup import start_server, stop_watchdog

    settings = load_settings(home=tmp_path / "home")
    start_server(settings)
    try:
        deadline = time.monotonic() + 60
        while api.server_status(settings=settings) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        pid = api.server_status(settings=settings).pid
        env = {**os.environ, "KERNEL_MAGICS_HOME": str(tmp_path / "home")}
        cli = [str(Path(sys.executable).parent / "kernel-magics"), "serve", "stop"]
        subprocess.run(cli, env=env, check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + 5
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not Path(f"/proc/{pid}").exists()  # a zombie would still be listed
    finally:
        stop_watchdog()


# -- a real kernel: the click arrives while the cell runs ----------------------------------------
def test_stop_click_reaches_a_kernel_busy_training(km_home: Path, served: Any) -> None:
    with ipykernel(km_home) as client:
        assert execute(client, DIGITS_SETUP) == "ok"
        cell = client.execute(
            "%train nn.Sequential(nn.Linear(64, 10)) --data X y --epochs 500 --batch-size 8 "
            "--name clicked"
        )
        stop_comm, clicked, errors = _click_stop(client, cell)
        assert stop_comm
        assert clicked is not None
        reply = client.get_shell_msg(timeout=60)
        assert reply["parent_header"]["msg_id"] == cell
        assert reply["content"]["status"] == "error"
        assert any("recorded as KILLED" in e for e in errors)
        assert not any("UsageError" in e for e in errors)
        assert execute(client, "assert 1 + 1 == 2") == "ok"  # the kernel goes on
    assert len(killed_runs("clicked")) == 1
    assert "clicked" not in [s.name for s in api.models()]


def _click_stop(client: Any, cell: str) -> tuple[str | None, float | None, list[str]]:
    """Wait for the Stop button's comm, click it (the comm message a front end sends) once the
    bar moved, and collect the cell's error lines until it is idle."""
    stop_comm, clicked, errors = None, None, []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            msg = client.get_iopub_msg(timeout=1)
        except queue.Empty:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "comm_open" and content["data"]["state"].get("description") == "Stop":
            stop_comm = content["comm_id"]
        elif kind == "comm_msg" and stop_comm and clicked is None:
            if content["data"].get("state", {}).get("value"):  # the bar has moved: training
                click = {"method": "custom", "content": {"event": "click"}}
                message = client.session.msg("comm_msg", {"comm_id": stop_comm, "data": click})
                client.shell_channel.send(message)
                clicked = time.monotonic()
        elif kind == "error":
            errors += content["traceback"]
        elif (
            kind == "status"
            and content["execution_state"] == "idle"
            and msg["parent_header"].get("msg_id") == cell
        ):
            break
    return stop_comm, clicked, errors
