"""Dashboard benchmark: what a live ``%monitor`` costs the service it watches, and how long the
calls behind the dashboards take.

    .venv/bin/python bench/dashboard.py [--duration S] [--rounds N] [--python-client] [--keep-home]

1. A throwaway home with 20 registered models and 200 versions, each with a run holding its
   metrics: the served MLP 32→256→256→10 (registered as ``%train`` does, then deployed) plus
   versions written through the MLflow client that point at its files (``api.models()`` reads
   only metadata, so they are the same load for it).
2. Single-row JSON predictions at 16 connections (wrk, or ``bench/_load.py``) for ``--duration``
   seconds, alternately without and with a ``ServiceMonitor`` polling the status snapshot once a
   second in this process (the real widget, ticking without a front end), ``--rounds`` times;
   req/s of each kind is the median of its runs.
3. ``api.server_status()`` (one ``GET /v1/status``) idle and under load, and ``api.models()``
   over the 200 versions: median and p95 of repeated calls.

Goals: req/s with the monitor within 3% of without; one snapshot ≤ 50 ms. Prints a table with
PASS/FAIL and writes it to ``bench/results-dashboard.md``; everything started here is stopped by
PID.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results-dashboard.md"
sys.path.insert(0, str(HERE))  # the benchmark's helpers, next to this script
sys.path.insert(0, str(HERE.parent))  # kernel_magics from the checkout

from _load_tools import SINGLE_JSON, Endpoint, Loader  # noqa: E402
from _log import log  # noqa: E402
from _model import NAME, make_bodies, register_versions  # noqa: E402
from _procs import private_home, stop_children, stop_leftover_server  # noqa: E402

MODELS, VERSIONS = 20, 200
GOAL_SLOWDOWN, GOAL_SNAPSHOT_MS = 0.03, 50.0


def fill_store(settings: Any) -> None:
    """NAME v1, v2 (real) and metadata-only versions up to MODELS models, VERSIONS versions."""
    from kernel_magics.store import Store

    register_versions(settings)
    store = Store(settings)
    source = store.resolve(NAME, 1)
    names = [NAME] + [f"model-{i:02d}" for i in range(1, MODELS)]
    with store.tracking():  # a "models:/" source resolves through the fluent tracking URI
        for k, name in enumerate(names):
            count = VERSIONS // MODELS - (2 if name == NAME else 0)  # NAME has two real ones
            add_versions(store, name, count, source)
            log(f"store: {name} ready ({k + 1}/{len(names)})")


def add_versions(store: Any, name: str, count: int, source: Any) -> None:
    """``count`` versions of ``name``, each with a finished run holding a few metrics, pointing
    at ``source``'s files with its tags (what ``api.models()`` reads of a version)."""
    from kernel_magics.store import TAG_FORMAT, TAG_SHA256, TAG_TASK

    client, experiment = store.client, store.experiment_id()
    if not store.model_exists(name):
        client.create_registered_model(name)
    tags = {TAG_SHA256: source.sha256 or "", TAG_TASK: "classification", TAG_FORMAT: "pt2"}
    for v in range(count):
        run = client.create_run(experiment, run_name=f"{name}-train", tags={"km.model": name})
        for epoch in range(1, 6):
            client.log_metric(run.info.run_id, "val_loss", 1.0 / (epoch + v), step=epoch)
        client.log_metric(run.info.run_id, "accuracy", 0.8 + 0.01 * v, step=5)
        client.set_terminated(run.info.run_id)
        client.create_model_version(name, source=source.source, run_id=run.info.run_id, tags=tags)


def timed(fn: Callable[[], Any], calls: int) -> tuple[float, float]:
    """(median, p95) of ``calls`` calls of ``fn``, in ms."""
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(0.95 * len(times)))]


def load_runs(
    loader: Loader, endpoint: Endpoint, body: str, settings: Any, duration: float, rounds: int
) -> dict[str, list[float]]:
    """req/s without and with a monitor, alternating (ABBA...) so drift hits both alike."""
    from kernel_magics.widgets.monitor import ServiceMonitor

    loader.warm_up(endpoint, SINGLE_JSON, body, duration)
    figures: dict[str, list[float]] = {"without": [], "with": []}
    order = ["without", "with", "with", "without"] * ((rounds + 1) // 2)
    for kind in order[: 2 * rounds]:
        monitor = None
        if kind == "with":
            monitor = ServiceMonitor(settings, interval_s=1.0)
            monitor.start()
        try:
            result = loader.measure(f"{kind} monitor", endpoint, SINGLE_JSON, body, duration)
        finally:
            if monitor is not None:
                monitor.stop()
                log(f"monitor: {monitor.ticks} polls, last error: {monitor.last_error or 'none'}")
        figures[kind].append(result["req_s"])
    return figures


def snapshot_under_load(
    loader: Loader, endpoint: Endpoint, body: str, duration: float
) -> tuple[float, float]:
    from kernel_magics import api

    out: dict[str, tuple[float, float]] = {}

    def poll() -> None:
        time.sleep(1.0)  # the load has started
        out["t"] = timed(api.server_status, max(5, int(duration - 2)))

    thread = threading.Thread(target=poll)
    thread.start()
    loader.run(endpoint, SINGLE_JSON, body, duration)
    thread.join()
    return out["t"]


def table(rows: list[tuple[str, str, str, str]]) -> str:
    head = ("metric", "value", "goal", "result")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=8.0, help="seconds per load run")
    p.add_argument("--rounds", type=int, default=3, help="runs of each kind (with, without)")
    p.add_argument("--python-client", action="store_true", help="do not use wrk even if present")
    p.add_argument("--keep-home", action="store_true", help="keep the temporary home folder")
    args = p.parse_args(argv)
    tmp, home = private_home(
        "km-bench-dash-", KERNEL_MAGICS_AUTOSTART="0", KERNEL_MAGICS_PROGRESS="none"
    )
    started = time.monotonic()
    try:
        from kernel_magics import api
        from kernel_magics.config import load_settings

        settings = load_settings()
        fill_store(settings)
        api.deploy(NAME, 1)
        status = api.server_status()
        assert status is not None
        assert status.url
        port = int(status.url.rsplit(":", 1)[1])
        endpoint = Endpoint(port, f"/v1/models/{NAME}:predict", api.server_token())
        body = make_bodies(tmp).files["ours_1"]
        loader = Loader(tmp, force_python=args.python_client)
        load_avg = os.getloadavg()[0]

        idle = timed(api.server_status, 200)
        models = timed(api.models, 10)
        versions = sum(len(s.versions) for s in api.models())
        busy = snapshot_under_load(loader, endpoint, body, args.duration)
        runs = load_runs(loader, endpoint, body, settings, args.duration, args.rounds)
        without, with_ = statistics.median(runs["without"]), statistics.median(runs["with"])
        slowdown = (without - with_) / without if without else 0.0

        def verdict(ok: bool) -> str:
            return "**PASS**" if ok else "**FAIL**"

        rows = [
            ("1-row JSON, 16 conn: req/s without a monitor", f"{without:.0f}", "—", "info"),
            ("1-row JSON, 16 conn: req/s with %monitor polling 1/s", f"{with_:.0f}", "—", "info"),
            (
                "slowdown with the monitor",
                f"{100 * slowdown:+.1f}%",
                f"≤ {100 * GOAL_SLOWDOWN:.0f}%",
                verdict(slowdown <= GOAL_SLOWDOWN),
            ),
            (
                "api.server_status() idle: median (p95)",
                f"{idle[0]:.2f} ms ({idle[1]:.2f} ms)",
                f"≤ {GOAL_SNAPSHOT_MS:.0f} ms",
                verdict(idle[0] <= GOAL_SNAPSHOT_MS),
            ),
            (
                "api.server_status() under load: median (p95)",
                f"{busy[0]:.2f} ms ({busy[1]:.2f} ms)",
                f"≤ {GOAL_SNAPSHOT_MS:.0f} ms",
                verdict(busy[0] <= GOAL_SNAPSHOT_MS),
            ),
            (
                f"api.models(), {MODELS} models / {versions} versions: median (p95)",
                f"{models[0]:.0f} ms ({models[1]:.0f} ms)",
                "—",
                "info",
            ),
        ]
        report = (
            f"# Dashboard benchmark ({time.strftime('%Y-%m-%d %H:%M')})\n"
            f"\n## Dashboards ({loader.tool}, {args.duration:g} s per run, median of "
            f"{args.rounds} runs each, alternated; 1-min load average {load_avg:.1f} on "
            f"{os.cpu_count()} cores)\n\n"
            f"{table(rows)}\n"
            "\nreq/s per run: without "
            + ", ".join(f"{r:.0f}" for r in runs["without"])
            + "; with "
            + ", ".join(f"{r:.0f}" for r in runs["with"])
            + "\n"
        )
        print("\n" + report)
        RESULTS.write_text(report)  # what docs/dashboards.md links: never copied by hand
        print(f"written to {RESULTS}; total {time.monotonic() - started:.0f} s")
        return 0 if slowdown <= GOAL_SLOWDOWN and idle[0] <= GOAL_SNAPSHOT_MS else 1
    finally:
        try:
            from kernel_magics import api as _api

            _api.server_stop()
        except Exception as err:  # the process may never have started
            log(f"stop: {err}")
        stop_children()
        stop_leftover_server(home)
        if not args.keep_home:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
